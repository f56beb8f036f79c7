/*
 * tcp_progress.c - the agent's progress thread: epoll over the listener, every
 * connection (receives, EPOLLOUT continuation, failure) and the pidfds of same-host
 * peers (death detection) (see tcp.h).
 */
#include <stdio.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "tcp.h"

/* A same-host peer exited: its pidfd goes at once, and everything else of it as soon
 * as nothing refers to it (a decoder facing restarting prefillers for weeks must not
 * keep one descriptor per sender it has ever seen). */
static void pidfd_event(bi_agent *a, bi_remote *rm) {
    pthread_mutex_lock(&a->mu);
    if (rm->pidfd >= 0) {
        atomic_store(&rm->dead, true);
        rm->died = true;
        (void)epoll_ctl(a->epfd, EPOLL_CTL_DEL, rm->pidfd, NULL);
        kvp_close(rm->pidfd);
        rm->pidfd = -1;
        bi_remotes_sweep_locked(a);
    }
    pthread_mutex_unlock(&a->mu);
}

void *tcp_progress_main(void *arg) {
    bi_agent *a = arg;
    struct epoll_event evs[64];
    uint8_t *scratch = malloc(SCRATCH);
    bi_conn *deferred[64];
    while (!atomic_load(&a->stopping)) {
        /* Remotes dropped since the last batch: no event of theirs can come any more. */
        bi_remotes_free_dropped(a);
        int n = epoll_wait(a->epfd, evs, 64, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            break;
        }
        int nd = 0;
        for (int i = 0; i < n; i++) {
            bi_ev *e = evs[i].data.ptr;
            if (e->kind == EV_WAKE) {
                uint64_t v;
                ssize_t r = read(a->wakefd, &v, sizeof v);
                KVP_UNUSED(r);
            } else if (e->kind == EV_LISTEN) {
                tcp_accept_all(a);
            } else if (e->kind == EV_PIDFD) {
                pidfd_event(a, (bi_remote *)(void *)e);
            } else if (e->kind == EV_CONN) {
                bi_conn *c = (bi_conn *)(void *)e;
                if (c->fd < 0 || !scratch) continue; /* closed earlier in this batch */
                const char *why = NULL;
                int32_t st = KVP_ERR_REMOTE_DISCONNECT;
                bool ok = true;
                if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                    ok = tcp_conn_rx(c, scratch, &st, &why);
                if (ok && (evs[i].events & EPOLLOUT)) {
                    pthread_mutex_lock(&c->tx_mu);
                    tcp_tx_flush_locked(c);
                    pthread_mutex_unlock(&c->tx_mu);
                }
                if (ok && atomic_load(&c->broken)) {
                    ok = false;
                    why = "connection shut down";
                }
                if (!ok) {
                    tcp_conn_fail(c, st, why ? why : "error");
                    if (nd < 64) deferred[nd++] = c;
                    else bi_conn_put(c); /* cannot happen: at most 64 events a batch */
                }
            }
        }
        /* Drop the list references of connections closed in this batch, now that no
         * event of the batch can refer to them any more. */
        for (int i = 0; i < nd; i++) bi_conn_put(deferred[i]);
    }
    free(scratch);
    return NULL;
}
