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

void tcp_resume_notif_paused(bi_agent *a) {
    pthread_mutex_lock(&a->mu);
    a->notif_paused = false;
    for (bi_conn *c = a->conns; c; c = c->next) {
        pthread_mutex_lock(&c->tx_mu);
        if (c->rx_paused & PAUSE_NOTIF) {
            c->rx_paused &= ~(uint32_t)PAUSE_NOTIF;
            tcp_conn_events_locked(c);
        }
        pthread_mutex_unlock(&c->tx_mu);
    }
    pthread_mutex_unlock(&a->mu);
}

/* Inbound connections that said no HELLO in time are closed (a stranger holding
 * sockets open does not keep them); returns the epoll timeout until the next deadline
 * (-1: none). Progress thread. */
static int hello_deadlines(bi_agent *a) {
    uint64_t now = kvp_now_ns(), next = UINT64_MAX;
    bi_conn *late[64];
    int nl = 0;
    pthread_mutex_lock(&a->mu);
    if (a->n_unhello == 0) { /* the common case: no scan */
        pthread_mutex_unlock(&a->mu);
        return -1;
    }
    for (bi_conn *c = a->conns; c; c = c->next) {
        if (!c->inbound || c->hello_done || c->fd < 0) continue;
        if (c->hello_deadline_ns <= now && nl < 64) late[nl++] = c;
        else if (c->hello_deadline_ns < next) next = c->hello_deadline_ns;
    }
    pthread_mutex_unlock(&a->mu);
    for (int i = 0; i < nl; i++) {
        atomic_fetch_add(&a->n_hello_timeouts, 1);
        tcp_conn_fail(late[i], KVP_ERR_REMOTE_DISCONNECT, "no HELLO within hello_timeout_ms");
        bi_conn_put(late[i]); /* the list's reference (no event of it is pending) */
    }
    if (nl == 64) return 0; /* more may be late: come back at once */
    if (next == UINT64_MAX) return -1;
    uint64_t ms = (next - now + 999999) / 1000000;
    return ms > 60000 ? 60000 : (int)ms;
}

void *tcp_progress_main(void *arg) {
    bi_agent *a = arg;
    struct epoll_event evs[64];
    uint8_t *scratch = malloc(SCRATCH);
    bi_conn *deferred[64];
    while (!atomic_load(&a->stopping)) {
        /* Remotes dropped since the last batch: no event of theirs can come any more. */
        bi_remotes_free_dropped(a);
        int timeout = hello_deadlines(a);
        int n = epoll_wait(a->epfd, evs, 64, timeout);
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
                pthread_mutex_lock(&a->mu);
                bool resume = a->notif_paused;
                pthread_mutex_unlock(&a->mu);
                if (resume && !bi_notif_full(a)) tcp_resume_notif_paused(a);
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
