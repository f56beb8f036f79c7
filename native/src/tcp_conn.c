/*
 * tcp_conn.c - a TCP connection's lifetime: references, creation, shutdown, and
 * closing it with every request pending on it failed (see tcp.h).
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "errors.h"
#include "tcp.h"

static int g_trace = -1;
bool bi_trace_on(void) {
    if (g_trace < 0) {
        const char *e = getenv("KVPORT_TRACE");
        g_trace = e && *e && *e != '0';
    }
    return g_trace;
}

void bi_conn_ref(bi_conn *c) { atomic_fetch_add(&c->refs, 1); }

void bi_conn_put(bi_conn *c) {
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1) return;
    /* Last reference: the connection is closed and out of epoll (the progress thread
     * holds a reference while it is registered). */
    while (c->th) {
        bi_txi *t = c->th;
        c->th = t->next;
        tcp_txi_dispose(t);
    }
    while (c->pend) {
        bi_pend *p = c->pend;
        c->pend = p->next;
        tcp_pend_free(p);
    }
    if (c->stx) {
        kvp_stx_fini(c->stx);
        free(c->stx);
    }
    if (c->srx) {
        kvp_srx_fini(c->srx);
        free(c->srx);
    }
    tcp_serve_put(c->serve);
    kvp_close(c->fd);
    free(c->body);
    pthread_mutex_destroy(&c->rx_mu);
    pthread_mutex_destroy(&c->tx_mu);
    free(c);
}

void bi_conns_forget_remote(bi_agent *a, bi_remote *rm) {
    for (bi_conn *c = a->conns; c; c = c->next)
        if (c->remote == rm) c->remote = NULL;
}

bool bi_conn_alive(bi_conn *c) { return !atomic_load(&c->dead) && !atomic_load(&c->broken); }

bi_conn *tcp_conn_new(bi_agent *a, int fd, bool inbound) {
    bi_conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    if (pthread_mutex_init(&c->rx_mu, NULL) != 0) {
        free(c);
        return NULL;
    }
    if (pthread_mutex_init(&c->tx_mu, NULL) != 0) {
        pthread_mutex_destroy(&c->rx_mu);
        free(c);
        return NULL;
    }
    c->ev.kind = EV_CONN;
    atomic_init(&c->refs, 1);
    atomic_init(&c->dead, false);
    atomic_init(&c->broken, false);
    c->a = a;
    c->fd = fd;
    c->inbound = inbound;
    c->rx = RX_HDR;
    c->rx_vdev = -1;
    return c;
}

void bi_conn_shutdown(bi_conn *c) {
    pthread_mutex_lock(&c->tx_mu);
    if (!atomic_load(&c->dead) && c->fd >= 0) {
        atomic_store(&c->broken, true);
        (void)shutdown(c->fd, SHUT_RDWR);
    }
    pthread_mutex_unlock(&c->tx_mu);
}

void tcp_set_sockopts(int fd) {
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    int idle = 30, intvl = 10, cnt = 3;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    /* Socket buffers are left to the kernel's autotuning, which grows them up to
     * tcp_wmem/tcp_rmem max (MiBs); a fixed SO_SNDBUF/SO_RCVBUF would disable it and,
     * without privileges, be capped lower (wmem_max). */
}


/* ---------------------------------------------------------------- closing ---- */

/* Closes c and fails what was pending on it. Progress thread only. The list's
 * reference is dropped by the caller after the current epoll batch. */
void tcp_conn_fail(bi_conn *c, int32_t status, const char *why) {
    bi_agent *a = c->a;
    if (c->stage_err[0]) why = c->stage_err;
    TRACE("conn to %s (%s) failed: %s", c->peer, c->inbound ? "in" : "out", why);
    pthread_mutex_lock(&c->tx_mu);
    if (atomic_load(&c->dead)) {
        pthread_mutex_unlock(&c->tx_mu);
        return;
    }
    atomic_store(&c->dead, true);
    (void)epoll_ctl(a->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    kvp_close(c->fd);
    c->fd = -1;
    if (c->stx) kvp_stx_reset(c->stx); /* no copy may outlive the frames it stages */
    while (c->th) {
        bi_txi *t = c->th;
        c->th = t->next;
        tcp_txi_dispose(t);
    }
    c->tt = NULL;
    pthread_mutex_unlock(&c->tx_mu);

    pthread_mutex_lock(&c->rx_mu);
    bi_pend *pend = c->pend;
    c->pend = NULL;
    c->cur = NULL;
    if (c->srx) (void)kvp_srx_drain(c->srx);
    c->rx_vdev = -1;
    pthread_mutex_unlock(&c->rx_mu);
    char msg[600];
    snprintf(msg, sizeof msg, "connection to agent %s lost: %.300s", c->peer[0] ? c->peer : "?",
             why);
    while (pend) {
        bi_pend *p = pend;
        pend = p->next;
        bi_req_finish(p->req, p->post_id, status, msg);
        tcp_pend_free(p);
    }
    bi_conn *drop = NULL;
    pthread_mutex_lock(&a->mu);
    for (bi_conn **pp = &a->conns; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            if (c->inbound && a->n_inbound > 0) a->n_inbound--;
            if (c->inbound && !c->hello_done && a->n_unhello > 0) a->n_unhello--;
            break;
        }
    }
    c->next = NULL;
    if (c->remote && c->remote->conn == c) {
        c->remote->conn = NULL;
        drop = c;
    }
    pthread_mutex_unlock(&a->mu);
    if (drop) bi_conn_put(drop);
}
