/*
 * tcp_connect.c - outbound connections: connect and the HELLO exchange, both bounded
 * by connect_timeout_ms; the connection is then handed to the progress thread (see
 * tcp.h).
 */
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sys/pidfd.h>

#include "errors.h"
#include "hostid.h"
#include "tcp.h"

static int connect_timeout(const char *host, uint16_t port, uint64_t deadline_ns, char *why,
                           size_t cap) {
    char ps[8];
    snprintf(ps, sizeof ps, "%u", port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, ps, &hints, &res);
    if (rc != 0) {
        snprintf(why, cap, "cannot resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    snprintf(why, cap, "no address for %s", host);
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    ai->ai_protocol);
        if (fd < 0) {
            snprintf(why, cap, "socket: %s", strerror(errno));
            continue;
        }
        tcp_set_sockopts(fd);
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) break;
        if (errno != EINPROGRESS) {
            snprintf(why, cap, "connect to %s:%u: %s", host, port, strerror(errno));
            kvp_close(fd);
            fd = -1;
            continue;
        }
        for (;;) {
            uint64_t now = kvp_now_ns();
            int ms = now >= deadline_ns ? 0 : (int)((deadline_ns - now + 999999) / 1000000);
            struct pollfd pf = {.fd = fd, .events = POLLOUT};
            int pr = poll(&pf, 1, ms);
            if (pr < 0 && errno == EINTR) continue;
            if (pr <= 0) {
                snprintf(why, cap, "connect to %s:%u timed out", host, port);
                kvp_close(fd);
                fd = -1;
                break;
            }
            int err = 0;
            socklen_t el = sizeof err;
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0) err = errno;
            if (err != 0) {
                snprintf(why, cap, "connect to %s:%u: %s", host, port, strerror(err));
                kvp_close(fd);
                fd = -1;
            }
            break;
        }
    }
    freeaddrinfo(res);
    return fd;
}

/* Blocking-with-deadline helpers for the HELLO exchange (the socket is non-blocking). */
static bool io_all(int fd, bool wr, uint8_t *p, size_t n, uint64_t deadline_ns) {
    size_t done = 0;
    while (done < n) {
        ssize_t k = wr ? send(fd, p + done, n - done, MSG_NOSIGNAL) : recv(fd, p + done, n - done, 0);
        if (k > 0) {
            done += (size_t)k;
            continue;
        }
        if (k == 0) return false;
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return false;
        uint64_t now = kvp_now_ns();
        if (now >= deadline_ns) {
            errno = ETIMEDOUT;
            return false;
        }
        struct pollfd pf = {.fd = fd, .events = wr ? POLLOUT : POLLIN};
        int pr = poll(&pf, 1, (int)((deadline_ns - now + 999999) / 1000000));
        if (pr < 0 && errno != EINTR) return false;
    }
    return true;
}

/* The locality challenge on a fresh connection, after HELLO (blocking, with the connect
 * deadline): we read the secret of the page the blob points at (through /proc, so only
 * on this host), the target proves it knows it. Returns 1 proven, -1 not. */
static int prove(bi_agent *a, bi_remote *rm, int fd, uint64_t deadline) {
    uint8_t secret[16];
    if (bi_remote_page_secret(rm, secret) != KVP_SUCCESS) {
        kvp_err_clear();
        return -1; /* cannot read its page: not the same host (or not permitted) */
    }
    uint8_t f[W_HDR + 16], want[16], rh[W_HDR], got[16];
    w_hdr wh = {W_PROVE, 0, 16, 0, 0, 0};
    w_hdr_put(f, &wh);
    kvp_random_bytes(f + W_HDR, 16);
    bi_prove_tag(secret, f + W_HDR, a->token, rm->token, want);
    memset(secret, 0, sizeof secret);
    w_hdr h;
    const char *bad = NULL;
    if (!io_all(fd, true, f, sizeof f, deadline) || !io_all(fd, false, rh, W_HDR, deadline) ||
        !w_hdr_get(rh, &h, &bad) || h.op != W_PROVE_ACK || h.body_len != 16 ||
        !io_all(fd, false, got, 16, deadline))
        return -1;
    uint8_t d = 0;
    for (int i = 0; i < 16; i++) d |= (uint8_t)(want[i] ^ got[i]);
    TRACE("locality of %s: %s", rm->name, d == 0 && h.status == KVP_SUCCESS ? "proven" : "refused");
    return d == 0 && h.status == KVP_SUCCESS ? 1 : -1;
}

/* Proven: the same-host paths open, and its death is watched through a pidfd (its start
 * time checked, so a reused pid is never mistaken for it). */
static void proven(bi_agent *a, bi_remote *rm, int result) {
    int pfd = -1;
    if (result > 0) {
        pfd = pidfd_open((pid_t)rm->pid, 0);
        if (pfd >= 0 && kvp_pid_starttime(rm->pid) != rm->starttime) {
            kvp_close(pfd);
            pfd = -1;
            result = -1; /* the pid now belongs to another process */
        }
    }
    pthread_mutex_lock(&a->mu);
    if (rm->proof == 0 && !rm->invalid) {
        rm->proof = result;
        if (result > 0) {
            atomic_store(&rm->same_host, true);
            rm->pidfd = pfd;
            pfd = -1;
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &rm->ev};
            (void)epoll_ctl(a->epfd, EPOLL_CTL_ADD, rm->pidfd, &ev); /* else polled */
        }
    }
    pthread_mutex_unlock(&a->mu);
    kvp_close(pfd);
}

void bi_remote_prove(bi_agent *a, bi_remote *rm) {
    pthread_mutex_lock(&a->mu);
    bool need = rm->claims_host && rm->proof == 0 && !rm->invalid;
    pthread_mutex_unlock(&a->mu);
    if (!need) return;
    bi_conn *c = NULL;
    if (bi_tcp_conn_get(a, rm, &c) == KVP_SUCCESS) bi_conn_put(c);
    else kvp_err_clear(); /* unreachable: the request (TCP) will say so */
    pthread_mutex_lock(&a->mu);
    if (rm->proof == 0) rm->proof = -1; /* tried once: TCP for this incarnation */
    pthread_mutex_unlock(&a->mu);
}

int32_t bi_tcp_conn_get(bi_agent *a, bi_remote *rm, bi_conn **out) {
    pthread_mutex_lock(&a->mu);
    if (rm->invalid) {
        pthread_mutex_unlock(&a->mu);
        return kvp_err(KVP_ERR_NOT_FOUND, "agent %s was invalidated", rm->name);
    }
    if (rm->conn && bi_conn_alive(rm->conn)) {
        bi_conn_ref(rm->conn);
        *out = rm->conn;
        pthread_mutex_unlock(&a->mu);
        return KVP_SUCCESS;
    }
    char host[256];
    snprintf(host, sizeof host, "%s", rm->host);
    uint16_t port = rm->port;
    bool need_proof = rm->claims_host && rm->proof == 0;
    pthread_mutex_unlock(&a->mu);

    uint64_t deadline = kvp_now_ns() + (uint64_t)a->connect_timeout_ms * 1000000ull;
    char why[300];
    int fd = connect_timeout(host, port, deadline, why, sizeof why);
    if (fd < 0)
        return kvp_err(KVP_ERR_REMOTE_DISCONNECT, "cannot reach agent %s at %s:%u: %s", rm->name,
                       host, port, why);
    /* HELLO: the token we expect the peer to have, ours, our name. */
    size_t nlen = strlen(a->base.name);
    uint8_t hello[W_HDR + 33 + KVP_NAME_MAX];
    w_hdr wh = {W_HELLO, 0, (uint32_t)(33 + nlen), 0, 0, 0};
    w_hdr_put(hello, &wh);
    memcpy(hello + W_HDR, rm->token, 16);
    memcpy(hello + W_HDR + 16, a->token, 16);
    hello[W_HDR + 32] = (uint8_t)nlen;
    memcpy(hello + W_HDR + 33, a->base.name, nlen);
    uint8_t rh[W_HDR];
    w_hdr h;
    const char *bad = NULL;
    if (!io_all(fd, true, hello, W_HDR + 33 + nlen, deadline) ||
        !io_all(fd, false, rh, W_HDR, deadline)) {
        int e = errno;
        kvp_close(fd);
        return kvp_err(KVP_ERR_REMOTE_DISCONNECT, "handshake with agent %s at %s:%u failed: %s",
                       rm->name, host, port, e == ETIMEDOUT ? "timed out" : strerror(e));
    }
    if (!w_hdr_get(rh, &h, &bad) || (h.op != W_HELLO_OK && h.op != W_HELLO_ERR)) {
        kvp_close(fd);
        return kvp_err(KVP_ERR_REMOTE_DISCONNECT,
                       "agent %s at %s:%u answered the handshake with garbage (%s)", rm->name,
                       host, port, bad ? bad : "unexpected frame");
    }
    if (h.op == W_HELLO_ERR) {
        char msg[W_MAX_MSG + 1] = "";
        if (h.body_len && io_all(fd, false, (uint8_t *)msg, h.body_len, deadline))
            msg[h.body_len] = '\0';
        kvp_close(fd);
        for (char *q = msg; *q; q++)
            if ((unsigned char)*q < 0x20) *q = ' ';
        return kvp_err(KVP_ERR_REMOTE_DISCONNECT,
                       "agent %s at %s:%u refused the connection: %s (its metadata is stale: "
                       "invalidate it and load the new one)",
                       rm->name, host, port, msg);
    }
    if (need_proof) proven(a, rm, prove(a, rm, fd, deadline));
    bi_conn *c = tcp_conn_new(a, fd, false);
    if (!c) {
        kvp_close(fd);
        return kvp_err(KVP_ERR_BACKEND, "out of memory");
    }
    c->remote = rm;
    snprintf(c->peer, sizeof c->peer, "%s", rm->name);
    c->peer_len = (uint32_t)strlen(c->peer);
    c->hello_done = true;
    pthread_mutex_lock(&a->mu);
    if (rm->conn && bi_conn_alive(rm->conn)) {
        /* Someone else connected meanwhile: use theirs. */
        bi_conn_ref(rm->conn);
        *out = rm->conn;
        pthread_mutex_unlock(&a->mu);
        bi_conn_put(c);
        return KVP_SUCCESS;
    }
    if (a->dying || rm->invalid) {
        pthread_mutex_unlock(&a->mu);
        bi_conn_put(c);
        return kvp_err(KVP_ERR_CANCELED, "agent is being destroyed or peer invalidated");
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &c->ev};
    if (epoll_ctl(a->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        int e = errno;
        pthread_mutex_unlock(&a->mu);
        bi_conn_put(c);
        return kvp_err(KVP_ERR_BACKEND, "epoll_ctl: %s", strerror(e));
    }
    bi_conn *old = rm->conn;
    rm->conn = c;          /* the remote's reference (refs = 1 from tcp_conn_new) */
    bi_conn_ref(c);        /* the agent list's / progress thread's reference */
    c->next = a->conns;
    a->conns = c;
    bi_conn_ref(c);        /* the caller's */
    *out = c;
    pthread_mutex_unlock(&a->mu);
    if (old) bi_conn_put(old);
    return KVP_SUCCESS;
}
