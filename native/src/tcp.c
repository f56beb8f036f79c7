/*
 * tcp.c - the builtin engine's TCP transport (protocol in wire.h).
 *
 * Each agent listens; an initiator opens one connection per peer on first need
 * (connect and HELLO bounded by connect_timeout_ms) and keeps it. All sockets are
 * non-blocking and driven by the agent's progress thread (epoll), so a target never
 * has to call anything for data to land, and no socket operation blocks without bound.
 *
 * Zero-copy on our side of the socket: WRITE payloads are sent straight from the
 * initiator's registered memory (sendmsg over an iovec of header + data) and received
 * straight into the validated destination (recv into the target's memory); READ data
 * likewise. Posting threads send inline until the socket buffer is full; the progress
 * thread continues on EPOLLOUT.
 *
 * VRAM (either side) is staged through pinned host memory (stage.c), overlapped with
 * the socket: a connection's tx ring queues device-to-host copies of the VRAM payloads
 * next in its send queue while earlier bytes are sent; its rx ring receives a VRAM
 * payload slot by slot and queues each slot's host-to-device copy while the next slot
 * is received. A WRITE is acknowledged, and a READ completes, only after those copies
 * have finished.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "builtin.h"
#include "errors.h"
#include "stage.h"

#define RX_BUDGET (64ull << 20)   /* bytes per connection per wakeup (fairness) */
#define SCRATCH (64u << 10)
#define TX_IOV 64
#define IOV_CAP (1ull << 30)

static const uint8_t g_zeros[SCRATCH];

/* KVPORT_TRACE=1: one stderr line per frame-level event (debugging aid, off by default). */
static int g_trace = -1;
static bool trace_on(void) {
    if (g_trace < 0) {
        const char *e = getenv("KVPORT_TRACE");
        g_trace = e && *e && *e != '0';
    }
    return g_trace;
}
#define TRACE(...)                                                                          \
    do {                                                                                    \
        if (trace_on()) {                                                                   \
            fprintf(stderr, "kvport[%d] ", (int)getpid());                                  \
            fprintf(stderr, __VA_ARGS__);                                                   \
            fputc('\n', stderr);                                                            \
        }                                                                                   \
    } while (0)

struct bi_txi {
    bi_txi *next;
    uint8_t hbuf[W_HDR + 16];
    uint8_t *hdyn;        /* header + body when larger than hbuf (owned) */
    uint32_t hlen, hoff;
    const uint8_t *pay;
    uint64_t plen, poff;
    bi_req *req;          /* frames of a request (not owned), NULL otherwise */
    struct bi_batch *batch;
    bool owned;           /* free the item once sent */
    bool zero;            /* send zeros for the rest of the payload */
    bool served;          /* payload is this agent's registered memory (target READ) */
    int32_t vram;         /* payload is VRAM of CUDA device vram - 1 (0: host memory) */
    uint64_t epoch;
    uint64_t saddr;       /* served: address of the payload start */
};

typedef struct bi_batch {
    uint32_t left;
    bi_txi items[];
} bi_batch;

typedef struct bi_pend {
    struct bi_pend *next;
    uint64_t post_id;
    bi_req *req;  /* ref */
    uint64_t left; /* READ: pieces still expected */
} bi_pend;

enum { RX_HDR, RX_BODY, RX_PAY };
enum { PAY_DISCARD, PAY_WRITE, PAY_READ };

struct bi_conn {
    bi_ev ev;
    atomic_uint refs;
    bi_agent *a;
    int fd;
    bool inbound;
    bi_remote *remote;  /* outbound: the peer (remotes outlive connections) */
    char peer[KVP_NAME_MAX + 1];
    uint32_t peer_len;
    bool hello_done;
    /* rx: progress thread only */
    int rx;
    uint8_t hdr[W_HDR];
    uint32_t hgot;
    w_hdr h;
    uint8_t *body;
    uint32_t bcap, bgot;
    int pay;
    uint8_t *dst;
    uint64_t left;
    uint64_t epoch;
    uint64_t w_req;
    int32_t w_err;
    char w_msg[512];
    uint64_t r_err_req;
    int32_t rx_vdev;     /* CUDA device of the payload being received, -1: host memory */
    kvp_srx *srx;        /* staging into VRAM (progress thread; rx_mu for READ data) */
    /* initiator side (rx_mu) */
    pthread_mutex_t rx_mu;
    bi_pend *pend;
    bi_pend *cur;
    /* tx (tx_mu) */
    pthread_mutex_t tx_mu;
    bi_txi *th, *tt;
    bool out_armed;
    kvp_stx *stx;        /* staging out of VRAM (tx_mu) */
    char stage_err[400]; /* why staging failed (the connection is then shut down) */
    atomic_bool dead;    /* closed: nothing is sent any more */
    atomic_bool broken;  /* shut down, the progress thread will close it */
    bool freed_pending;  /* progress thread: in the deferred list */
    struct bi_conn *next;
};

/* ------------------------------------------------------------- lifetime ---- */

void bi_conn_ref(bi_conn *c) { atomic_fetch_add(&c->refs, 1); }

static void txi_dispose(bi_txi *t);

void bi_conn_put(bi_conn *c) {
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1) return;
    /* Last reference: the connection is closed and out of epoll (the progress thread
     * holds a reference while it is registered). */
    while (c->th) {
        bi_txi *t = c->th;
        c->th = t->next;
        txi_dispose(t);
    }
    while (c->pend) {
        bi_pend *p = c->pend;
        c->pend = p->next;
        kvp_obj_put(&p->req->obj);
        free(p);
    }
    if (c->stx) {
        kvp_stx_fini(c->stx);
        free(c->stx);
    }
    if (c->srx) {
        kvp_srx_fini(c->srx);
        free(c->srx);
    }
    kvp_close(c->fd);
    free(c->body);
    pthread_mutex_destroy(&c->rx_mu);
    pthread_mutex_destroy(&c->tx_mu);
    free(c);
}

bool bi_conn_alive(bi_conn *c) { return !atomic_load(&c->dead) && !atomic_load(&c->broken); }

static bi_conn *conn_new(bi_agent *a, int fd, bool inbound) {
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

static void set_sockopts(int fd) {
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

/* ------------------------------------------------------------------ send ---- */

static void txi_dispose(bi_txi *t) {
    if (t->req) {
        t->req->txq--;
        return; /* belongs to the request */
    }
    if (t->batch) {
        bi_batch *b = t->batch;
        if (--b->left == 0) free(b);
        return;
    }
    if (t->owned) {
        free(t->hdyn);
        free(t);
    }
}

static void arm_out(bi_conn *c, bool on) {
    if (c->out_armed == on) return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = &c->ev};
    if (epoll_ctl(c->a->epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0) c->out_armed = on;
}

/* Served payloads (target READ): make sure the range is still registered; otherwise the
 * rest of that payload is sent as zeros (the stream must keep its framing). Caller holds
 * reg_rw for reading. */
static void revalidate_served(bi_agent *a, bi_txi *t) {
    if (!t->served || t->zero || t->epoch == a->reg_epoch) return;
    if (bi_index_find(&a->lidx, t->vram ? KVP_VRAM : KVP_DRAM,
                      t->vram ? (uint64_t)(t->vram - 1) : 0, t->saddr, t->plen))
        t->epoch = a->reg_epoch;
    else t->zero = true;
}

/* ----------------------------------------------------------- VRAM staging ---- */

static bool stage_tx_ensure(bi_conn *c) {
    if (c->stx) return true;
    c->stx = malloc(sizeof *c->stx);
    if (!c->stx) return false;
    kvp_stx_init(c->stx, &kvp_stage_cuda_ops, 0, 0);
    return true;
}

static bool stage_rx_ensure(bi_conn *c) {
    if (c->srx) return true;
    c->srx = malloc(sizeof *c->srx);
    if (!c->srx) return false;
    kvp_srx_init(c->srx, &kvp_stage_cuda_ops, 0, 0);
    return true;
}

/* Staging out of VRAM failed: nothing sensible can go on the wire for that frame, so
 * the connection is shut down (what was pending on it fails with this message). */
static void stage_tx_fail(bi_conn *c) {
    snprintf(c->stage_err, sizeof c->stage_err, "staging VRAM through host memory failed: %.300s",
             c->stx && c->stx->r.msg[0] ? c->stx->r.msg : kvp_err_text());
    atomic_store(&c->broken, true);
    (void)shutdown(c->fd, SHUT_RDWR);
}

/* Queues device-to-host copies of the VRAM payloads next in the send queue, as far as
 * the ring has room, so that they run while earlier bytes are on the wire. Continues
 * after the last chunk fed (whose frame is still queued: a frame leaves the queue only
 * once its chunks were consumed, and removals reset the ring). tx_mu held; on inbound
 * connections reg_rw too (locked). */
static bool stage_prefetch(bi_conn *c, bool locked) {
    kvp_stx *s = c->stx;
    if (!s || kvp_stx_full(s)) return true;
    const void *tk;
    uint64_t tend;
    bi_txi *t;
    uint64_t from;
    if (kvp_stx_tail(s, &tk, &tend)) {
        t = (bi_txi *)(uintptr_t)tk;
        from = tend;
    } else {
        t = c->th;
        from = t ? t->poff : 0;
    }
    int idle = 0; /* items looked at since the last VRAM one (bounded walk) */
    while (t && !kvp_stx_full(s) && idle < 64) {
        if (t->vram && locked) revalidate_served(c->a, t);
        if (t->vram && !t->zero && from < t->plen) {
            uint64_t taken = 0;
            int32_t st = kvp_stx_feed(s, t, t->vram - 1, (uint64_t)(uintptr_t)t->pay, from,
                                      t->plen - from, &taken);
            if (st != KVP_SUCCESS) return false;
            if (taken < t->plen - from) break; /* ring full (or another device next) */
            idle = 0;
        } else {
            idle++;
        }
        t = t->next;
        from = t ? t->poff : 0;
    }
    return true;
}

/* Sends as much as the socket takes. Caller holds c->tx_mu. */
static void tx_flush_locked(bi_conn *c) {
    bi_agent *a = c->a;
    while (c->th && !atomic_load(&c->dead) && !atomic_load(&c->broken)) {
        struct iovec iov[TX_IOV];
        int n = 0;
        bool locked = false;
        if (c->inbound) {
            pthread_rwlock_rdlock(&a->reg_rw);
            locked = true;
        }
        if (c->stx && !stage_prefetch(c, locked)) {
            if (locked) pthread_rwlock_unlock(&a->reg_rw);
            stage_tx_fail(c);
            return;
        }
        bool failed = false;
        for (bi_txi *t = c->th; t && n < TX_IOV - 1; t = t->next) {
            if (t->hoff < t->hlen) {
                uint8_t *h = t->hdyn ? t->hdyn : t->hbuf;
                iov[n].iov_base = h + t->hoff;
                iov[n].iov_len = t->hlen - t->hoff;
                n++;
            }
            if (t->poff < t->plen) {
                if (locked) revalidate_served(a, t);
                if (t->zero && t->vram && c->stx && kvp_stx_holds(c->stx, t))
                    kvp_stx_reset(c->stx); /* its staged chunks will not be sent */
                uint64_t left = t->plen - t->poff;
                if (t->zero) {
                    iov[n].iov_base = (void *)g_zeros;
                    iov[n].iov_len = (size_t)KVP_MIN(left, (uint64_t)SCRATCH);
                    n++;
                    break; /* the item is not done after this entry */
                }
                if (t->vram) {
                    /* The staged copy of the next bytes (waits for its copy). */
                    const uint8_t *sp = NULL;
                    uint64_t sn = 0;
                    int32_t st = c->stx ? kvp_stx_front(c->stx, t, t->poff, &sp, &sn)
                                        : KVP_ERR_BACKEND;
                    if (st == KVP_ERR_NOT_FOUND) {
                        kvp_stx_reset(c->stx);
                        st = stage_prefetch(c, locked)
                                 ? kvp_stx_front(c->stx, t, t->poff, &sp, &sn)
                                 : KVP_ERR_BACKEND;
                    }
                    if (st != KVP_SUCCESS) {
                        failed = true;
                        break;
                    }
                    iov[n].iov_base = (void *)sp;
                    iov[n].iov_len = (size_t)sn;
                    n++;
                    break; /* one staged chunk per send */
                }
                iov[n].iov_base = (void *)(t->pay + t->poff);
                iov[n].iov_len = (size_t)KVP_MIN(left, IOV_CAP);
                n++;
                if (left > IOV_CAP) break;
            }
        }
        if (failed) {
            if (locked) pthread_rwlock_unlock(&a->reg_rw);
            stage_tx_fail(c);
            return;
        }
        struct msghdr mh;
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = iov;
        mh.msg_iovlen = (size_t)n;
        ssize_t got = sendmsg(c->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        int e = errno;
        if (locked) pthread_rwlock_unlock(&a->reg_rw);
        if (got < 0) {
            if (e == EINTR) continue;
            if (e == EAGAIN || e == EWOULDBLOCK) {
                arm_out(c, true);
                return;
            }
            atomic_store(&c->broken, true);
            (void)shutdown(c->fd, SHUT_RDWR); /* the progress thread closes and fails it */
            return;
        }
        uint64_t left = (uint64_t)got;
        while (c->th && left > 0) {
            bi_txi *t = c->th;
            uint64_t hl = t->hlen - t->hoff;
            uint64_t take = KVP_MIN(hl, left);
            t->hoff += (uint32_t)take;
            left -= take;
            if (left > 0 || t->hoff == t->hlen) {
                uint64_t pl = t->plen - t->poff;
                take = KVP_MIN(pl, left);
                t->poff += take;
                left -= take;
                if (t->vram && !t->zero && take > 0) kvp_stx_consume(c->stx, take);
            }
            if (t->hoff == t->hlen && t->poff == t->plen) {
                c->th = t->next;
                if (!c->th) c->tt = NULL;
                txi_dispose(t);
            } else {
                break;
            }
        }
        /* Items of zero payload fully covered by the header bytes are popped above; an
         * item whose header was just finished with no payload left also pops here. */
        while (c->th && c->th->hoff == c->th->hlen && c->th->poff == c->th->plen) {
            bi_txi *t = c->th;
            c->th = t->next;
            if (!c->th) c->tt = NULL;
            txi_dispose(t);
        }
    }
    if (!c->th && c->fd >= 0 && !atomic_load(&c->dead)) arm_out(c, false);
}

static void tx_append_locked(bi_conn *c, bi_txi *t) {
    t->next = NULL;
    if (c->tt) c->tt->next = t;
    else c->th = t;
    c->tt = t;
}

/* Queues an owned control frame (header + body, no payload) and flushes. */
static int32_t send_ctrl(bi_conn *c, uint8_t op, int32_t status, uint64_t req_id,
                         const void *body, uint32_t blen) {
    bi_txi *t = calloc(1, sizeof *t);
    if (!t) return kvp_err(KVP_ERR_BACKEND, "out of memory");
    t->owned = true;
    uint8_t *h = t->hbuf;
    if (W_HDR + blen > sizeof t->hbuf) {
        t->hdyn = malloc(W_HDR + blen);
        if (!t->hdyn) {
            free(t);
            return kvp_err(KVP_ERR_BACKEND, "out of memory");
        }
        h = t->hdyn;
    }
    w_hdr wh = {op, 0, blen, status, req_id, 0};
    w_hdr_put(h, &wh);
    if (blen) memcpy(h + W_HDR, body, blen);
    t->hlen = W_HDR + blen;
    pthread_mutex_lock(&c->tx_mu);
    if (atomic_load(&c->dead) || atomic_load(&c->broken)) {
        pthread_mutex_unlock(&c->tx_mu);
        free(t->hdyn);
        free(t);
        return kvp_err(KVP_ERR_REMOTE_DISCONNECT, "connection to %s is closed",
                       c->peer[0] ? c->peer : "peer");
    }
    tx_append_locked(c, t);
    tx_flush_locked(c);
    pthread_mutex_unlock(&c->tx_mu);
    return KVP_SUCCESS;
}

int32_t bi_tcp_send_notif(bi_conn *c, const uint8_t *msg, uint32_t len) {
    return send_ctrl(c, W_NOTIF, 0, 0, msg, len);
}

/* ------------------------------------------------------- request frames ---- */

void bi_tcp_free_frames(bi_req *r) {
    for (uint32_t i = 0; i < r->ntx; i++) free(r->tx[i].hdyn);
    free(r->tx);
    r->tx = NULL;
    r->ntx = 0;
}

/* READ_REQ frames: at most W_READ_PIECES_PER_FRAME pieces each, and, when the peer's
 * side is VRAM, one device per frame (the device travels in the header). */
static uint64_t read_frames(const bi_req *r, bool build, bi_txi *tx, int32_t *st) {
    bool vram = r->rtype == KVP_VRAM;
    uint64_t n = 0, first = 0;
    while (first < r->np) {
        uint64_t cnt = 1;
        while (first + cnt < r->np && cnt < W_READ_PIECES_PER_FRAME &&
               (!vram || r->p[first + cnt].rdev == r->p[first].rdev))
            cnt++;
        if (build) {
            uint32_t blen = (uint32_t)(8 + 16 * cnt);
            bi_txi *t = &tx[n];
            t->hdyn = malloc(W_HDR + blen);
            if (!t->hdyn) {
                *st = kvp_err(KVP_ERR_BACKEND, "out of memory preparing frames");
                return n;
            }
            w_hdr wh = {W_READ_REQ, (uint16_t)((first + cnt == r->np ? W_FLAG_ACK : 0) |
                                               (vram ? W_FLAG_VRAM : 0)),
                        blen, vram ? (int32_t)r->p[first].rdev : 0, 0, 0};
            w_hdr_put(t->hdyn, &wh);
            kvp_put_u32(t->hdyn + W_HDR, (uint32_t)first);
            kvp_put_u32(t->hdyn + W_HDR + 4, (uint32_t)cnt);
            for (uint64_t i = 0; i < cnt; i++) {
                uint8_t *q = t->hdyn + W_HDR + 8 + 16 * i;
                kvp_put_u64(q, r->p[first + i].other);
                kvp_put_u64(q + 8, r->p[first + i].len);
            }
            t->hlen = W_HDR + blen;
            t->req = (bi_req *)r;
        }
        n++;
        first += cnt;
    }
    return n;
}

int32_t bi_tcp_prepare(bi_req *r) {
    if (r->np == 0) return KVP_SUCCESS;
    if (r->np > UINT32_MAX) return kvp_err(KVP_ERR_INVALID_PARAM, "too many pieces");
    int32_t st = KVP_SUCCESS;
    uint64_t n = r->op == KVP_WRITE ? r->np : read_frames(r, false, NULL, &st);
    r->tx = calloc((size_t)n, sizeof *r->tx);
    if (!r->tx) return kvp_err(KVP_ERR_BACKEND, "out of memory preparing frames");
    r->ntx = (uint32_t)n;
    if (r->op == KVP_WRITE) {
        bool vram = r->rtype == KVP_VRAM;
        for (uint64_t i = 0; i < n; i++) {
            bi_txi *t = &r->tx[i];
            const bi_piece *p = &r->p[i];
            w_hdr wh = {W_WRITE,
                        (uint16_t)((i + 1 == n ? W_FLAG_ACK : 0) | (vram ? W_FLAG_VRAM : 0)), 8,
                        vram ? (int32_t)p->rdev : 0, 0, p->len};
            w_hdr_put(t->hbuf, &wh);
            kvp_put_u64(t->hbuf + W_HDR, p->other);
            t->hlen = W_HDR + 8;
            t->pay = (const uint8_t *)(uintptr_t)p->mem;
            t->plen = p->len;
            t->vram = p->ldev >= 0 ? p->ldev + 1 : 0; /* staged out of our VRAM */
            t->req = r;
        }
        return KVP_SUCCESS;
    }
    (void)read_frames(r, true, r->tx, &st);
    if (st != KVP_SUCCESS) bi_tcp_free_frames(r);
    return st;
}

int32_t bi_tcp_post(bi_conn *c, bi_req *r, uint64_t post_id) {
    bi_pend *p = calloc(1, sizeof *p);
    if (!p) return kvp_err(KVP_ERR_BACKEND, "out of memory");
    p->post_id = post_id;
    p->req = r;
    kvp_obj_ref(&r->obj);
    p->left = r->op == KVP_READ ? r->np : 0;
    pthread_mutex_lock(&c->rx_mu);
    p->next = c->pend;
    c->pend = p;
    pthread_mutex_unlock(&c->rx_mu);
    pthread_mutex_lock(&c->tx_mu);
    if (atomic_load(&c->dead) || atomic_load(&c->broken)) {
        pthread_mutex_unlock(&c->tx_mu);
        bi_tcp_cancel(c, r);
        return kvp_err(KVP_ERR_REMOTE_DISCONNECT, "connection to %s is closed", c->peer);
    }
    if (r->op == KVP_WRITE && r->ltype == KVP_VRAM && !stage_tx_ensure(c)) {
        pthread_mutex_unlock(&c->tx_mu);
        bi_tcp_cancel(c, r);
        return kvp_err(KVP_ERR_BACKEND, "out of memory staging VRAM for %s", c->peer);
    }
    TRACE("post %llu: %u frames to %s (queue %s)", (unsigned long long)post_id, r->ntx, c->peer,
          c->th ? "busy" : "empty");
    for (uint32_t i = 0; i < r->ntx; i++) {
        bi_txi *t = &r->tx[i];
        uint8_t *h = t->hdyn ? t->hdyn : t->hbuf;
        kvp_put_u64(h + 16, post_id);
        t->hoff = 0;
        t->poff = 0;
        t->zero = false;
        tx_append_locked(c, t);
        r->txq++;
    }
    tx_flush_locked(c);
    pthread_mutex_unlock(&c->tx_mu);
    return KVP_SUCCESS;
}

static void tx_purge(bi_conn *c, bi_req *r) {
    /* Send side: unlink r's frames. A frame already partly on the wire is replaced by
     * a filler carrying the rest of its header and zeros for the rest of its payload,
     * so the stream stays well framed and r's memory is no longer referenced. */
    pthread_mutex_lock(&c->tx_mu);
    /* The ring may hold chunks of r's frames (or, after them, of others): start over. */
    if (r->txq > 0 && c->stx) kvp_stx_reset(c->stx);
    if (r->txq > 0) {
        bi_txi *prev = NULL;
        for (bi_txi *t = c->th; t;) {
            bi_txi *next = t->next;
            if (t->req != r) {
                prev = t;
                t = next;
                continue;
            }
            bi_txi *fill = NULL;
            TRACE("purge frame of post %llu: head=%d hoff=%u/%u poff=%llu/%llu",
                  (unsigned long long)kvp_get_u64((t->hdyn ? t->hdyn : t->hbuf) + 16),
                  t == c->th, t->hoff, t->hlen, (unsigned long long)t->poff,
                  (unsigned long long)t->plen);
            if (t == c->th && (t->hoff > 0 || t->poff > 0)) {
                fill = calloc(1, sizeof *fill);
                uint32_t hl = t->hlen - t->hoff;
                if (fill && hl > 0) {
                    fill->hdyn = malloc(hl);
                    if (!fill->hdyn) {
                        free(fill);
                        fill = NULL;
                    } else {
                        memcpy(fill->hdyn, (t->hdyn ? t->hdyn : t->hbuf) + t->hoff, hl);
                    }
                }
                if (fill) {
                    fill->owned = true;
                    fill->hlen = hl;
                    fill->plen = t->plen - t->poff;
                    fill->zero = true;
                } else if (!atomic_load(&c->dead)) {
                    /* Cannot keep the stream framed: close the connection instead. */
                    atomic_store(&c->broken, true);
                    (void)shutdown(c->fd, SHUT_RDWR);
                }
            }
            if (fill) {
                fill->next = next;
                if (prev) prev->next = fill;
                else c->th = fill;
                if (c->tt == t) c->tt = fill;
                prev = fill;
            } else {
                if (prev) prev->next = next;
                else c->th = next;
                if (c->tt == t) c->tt = prev;
            }
            r->txq--;
            t = next;
        }
    }
    pthread_mutex_unlock(&c->tx_mu);
}

void bi_tcp_cancel(bi_conn *c, bi_req *r) {
    /* Receive side first: after this the progress thread writes no byte into r's
     * memory (it checks c->cur under rx_mu around every recv). */
    bi_pend *drop = NULL;
    pthread_mutex_lock(&c->rx_mu);
    /* Copies staged into r's VRAM may still be queued: wait for them (the progress
     * thread queues them under rx_mu, so none starts after this). */
    if (c->srx && r->ltype == KVP_VRAM) (void)kvp_srx_drain(c->srx);
    for (bi_pend **pp = &c->pend; *pp;) {
        bi_pend *p = *pp;
        if (p->req == r) {
            if (c->cur == p) c->cur = NULL;
            *pp = p->next;
            p->next = drop;
            drop = p;
        } else {
            pp = &p->next;
        }
    }
    pthread_mutex_unlock(&c->rx_mu);
    while (drop) {
        bi_pend *p = drop;
        drop = p->next;
        kvp_obj_put(&p->req->obj);
        free(p);
    }
    tx_purge(c, r);
}

/* -------------------------------------------------------------- connect ---- */

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
        set_sockopts(fd);
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
    bi_conn *c = conn_new(a, fd, false);
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
    rm->conn = c;          /* the remote's reference (refs = 1 from conn_new) */
    bi_conn_ref(c);        /* the agent list's / progress thread's reference */
    c->next = a->conns;
    a->conns = c;
    bi_conn_ref(c);        /* the caller's */
    *out = c;
    pthread_mutex_unlock(&a->mu);
    if (old) bi_conn_put(old);
    return KVP_SUCCESS;
}

/* ----------------------------------------------------- progress: failure ---- */

/* Closes c and fails what was pending on it. Progress thread only. The list's
 * reference is dropped by the caller after the current epoll batch. */
static void conn_fail(bi_conn *c, int32_t status, const char *why) {
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
        txi_dispose(t);
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
        kvp_obj_put(&p->req->obj);
        free(p);
    }
    bi_conn *drop = NULL;
    pthread_mutex_lock(&a->mu);
    for (bi_conn **pp = &a->conns; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
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

/* ------------------------------------------------------ progress: receive ---- */

static void sanitize_msg(const uint8_t *b, uint32_t n, char *out, size_t cap) {
    size_t k = 0;
    for (uint32_t i = 0; i < n && k + 1 < cap; i++) out[k++] = (b[i] < 0x20 || b[i] == 0x7f) ? ' ' : (char)b[i];
    out[k] = '\0';
}

static bi_pend *pend_take(bi_conn *c, uint64_t post_id) {
    for (bi_pend **pp = &c->pend; *pp; pp = &(*pp)->next) {
        if ((*pp)->post_id == post_id) {
            bi_pend *p = *pp;
            *pp = p->next;
            p->next = NULL;
            return p;
        }
    }
    return NULL;
}

/* A READ that cannot land (staging into VRAM failed): the request fails, the rest of
 * its data is dropped. Progress thread; rx_mu NOT held. */
static void read_fail(bi_conn *c, uint64_t post_id, const char *what) {
    char m[600];
    snprintf(m, sizeof m, "%s: %.400s", what,
             c->srx && c->srx->r.msg[0] ? c->srx->r.msg : kvp_err_text());
    if (c->srx) c->srx->r.msg[0] = '\0';
    pthread_mutex_lock(&c->rx_mu);
    bi_pend *p = pend_take(c, post_id);
    if (p && c->cur == p) c->cur = NULL;
    if (c->srx) (void)kvp_srx_drain(c->srx);
    pthread_mutex_unlock(&c->rx_mu);
    if (!p) return;
    tx_purge(c, p->req);
    bi_req_finish(p->req, p->post_id, KVP_ERR_BACKEND, m);
    kvp_obj_put(&p->req->obj);
    free(p);
}

/* Handles a complete header+body. Returns false when the connection must close (why
 * set). May switch the receiver to payload mode. */
static bool dispatch(bi_conn *c, const char **why) {
    bi_agent *a = c->a;
    w_hdr *h = &c->h;
    TRACE("rx %s op %u req %llu flags %u body %u payload %llu", c->inbound ? "in" : "out",
          h->op, (unsigned long long)h->req_id, h->flags, h->body_len,
          (unsigned long long)h->payload_len);
    const uint8_t *b = c->body;
    c->rx = RX_HDR;
    c->hgot = 0;
    if (c->inbound) {
        if (!c->hello_done && h->op != W_HELLO) {
            *why = "frame before HELLO";
            return false;
        }
        switch (h->op) {
        case W_HELLO: {
            if (c->hello_done || h->body_len < 33 || h->body_len != 33u + b[32] || b[32] == 0) {
                *why = "malformed HELLO";
                return false;
            }
            if (memcmp(b, a->token, 16) != 0) {
                static const char m[] = "token mismatch: you hold metadata of an earlier "
                                        "incarnation of this agent";
                uint8_t f[W_HDR + sizeof m];
                w_hdr wh = {W_HELLO_ERR, 0, sizeof m - 1, KVP_ERR_NOT_ALLOWED, 0, 0};
                w_hdr_put(f, &wh);
                memcpy(f + W_HDR, m, sizeof m - 1);
                (void)send(c->fd, f, W_HDR + sizeof m - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
                *why = "stale HELLO refused";
                return false;
            }
            c->peer_len = b[32];
            memcpy(c->peer, b + 33, c->peer_len);
            c->peer[c->peer_len] = '\0';
            c->hello_done = true;
            return send_ctrl(c, W_HELLO_OK, 0, 0, NULL, 0) == KVP_SUCCESS ||
                   (*why = "cannot answer HELLO", false);
        }
        case W_WRITE: {
            if (h->body_len != 8) {
                *why = "malformed WRITE";
                return false;
            }
            uint64_t addr = kvp_get_u64(b);
            if (h->req_id != c->w_req) {
                c->w_req = h->req_id;
                c->w_err = KVP_SUCCESS;
                c->w_msg[0] = '\0';
            }
            int32_t vdev = (h->flags & W_FLAG_VRAM) ? h->status : -1;
            if ((h->flags & W_FLAG_VRAM) && vdev < 0) {
                *why = "malformed WRITE (VRAM device)";
                return false;
            }
            pthread_rwlock_rdlock(&a->reg_rw);
            bool ok = bi_index_find(&a->lidx, vdev >= 0 ? KVP_VRAM : KVP_DRAM,
                                    vdev >= 0 ? (uint64_t)vdev : 0, addr, h->payload_len) != NULL;
            c->epoch = a->reg_epoch;
            pthread_rwlock_unlock(&a->reg_rw);
            if (!ok && c->w_err == KVP_SUCCESS) {
                c->w_err = KVP_ERR_INVALID_PARAM;
                snprintf(c->w_msg, sizeof c->w_msg,
                         "agent %s refused a write of %llu bytes at 0x%llx%s: not inside its "
                         "registered memory",
                         a->base.name, (unsigned long long)h->payload_len,
                         (unsigned long long)addr, vdev >= 0 ? " (VRAM)" : "");
            }
            c->rx_vdev = -1;
            if (ok && vdev >= 0) {
                /* Lands in our VRAM: received into pinned slots, copied to the device. */
                int32_t st = stage_rx_ensure(c) ? kvp_srx_begin(c->srx, vdev, addr)
                                                : kvp_err(KVP_ERR_BACKEND, "out of memory");
                if (st == KVP_SUCCESS) {
                    c->rx_vdev = vdev;
                } else {
                    ok = false;
                    if (c->w_err == KVP_SUCCESS) {
                        c->w_err = st;
                        snprintf(c->w_msg, sizeof c->w_msg,
                                 "agent %s cannot stage a write into VRAM of device %d: %.150s",
                                 a->base.name, vdev, kvp_err_text());
                    }
                }
            }
            c->rx = RX_PAY;
            c->pay = ok ? PAY_WRITE : PAY_DISCARD;
            c->dst = (uint8_t *)(uintptr_t)addr;
            c->left = h->payload_len;
            return true;
        }
        case W_READ_REQ: {
            if (h->body_len < 8) {
                *why = "malformed READ_REQ";
                return false;
            }
            uint32_t first = kvp_get_u32(b), cnt = kvp_get_u32(b + 4);
            if (cnt > W_READ_PIECES_PER_FRAME || h->body_len != 8u + 16u * cnt) {
                *why = "malformed READ_REQ";
                return false;
            }
            if (c->r_err_req == h->req_id && h->req_id != 0) return true; /* already failed */
            int32_t vdev = (h->flags & W_FLAG_VRAM) ? h->status : -1;
            if ((h->flags & W_FLAG_VRAM) && vdev < 0) {
                *why = "malformed READ_REQ (VRAM device)";
                return false;
            }
            pthread_rwlock_rdlock(&a->reg_rw);
            uint64_t epoch = a->reg_epoch;
            uint32_t bad = UINT32_MAX;
            for (uint32_t i = 0; i < cnt && bad == UINT32_MAX; i++) {
                const uint8_t *q = b + 8 + 16 * i;
                if (!bi_index_find(&a->lidx, vdev >= 0 ? KVP_VRAM : KVP_DRAM,
                                   vdev >= 0 ? (uint64_t)vdev : 0, kvp_get_u64(q),
                                   kvp_get_u64(q + 8)))
                    bad = i;
            }
            pthread_rwlock_unlock(&a->reg_rw);
            if (bad != UINT32_MAX) {
                char m[400];
                const uint8_t *q = b + 8 + 16 * bad;
                int ml = snprintf(m, sizeof m,
                                  "agent %s refused a read of %llu bytes at 0x%llx (piece %u): "
                                  "not inside its registered memory",
                                  a->base.name, (unsigned long long)kvp_get_u64(q + 8),
                                  (unsigned long long)kvp_get_u64(q), first + bad);
                c->r_err_req = h->req_id;
                return send_ctrl(c, W_READ_ERR, KVP_ERR_INVALID_PARAM, h->req_id, m,
                                 (uint32_t)KVP_MIN((size_t)ml, sizeof m - 1)) == KVP_SUCCESS ||
                       (*why = "cannot answer READ_REQ", false);
            }
            if (cnt == 0) return true;
            bi_batch *bt = calloc(1, sizeof *bt + (size_t)cnt * sizeof(bi_txi));
            if (!bt) {
                *why = "out of memory serving a read";
                return false;
            }
            bt->left = cnt;
            for (uint32_t i = 0; i < cnt; i++) {
                const uint8_t *q = b + 8 + 16 * i;
                bi_txi *t = &bt->items[i];
                uint64_t addr = kvp_get_u64(q), len = kvp_get_u64(q + 8);
                w_hdr wh = {W_READ_DATA, 0, 8, 0, h->req_id, len};
                w_hdr_put(t->hbuf, &wh);
                kvp_put_u32(t->hbuf + W_HDR, first + i);
                kvp_put_u32(t->hbuf + W_HDR + 4, 0);
                t->hlen = W_HDR + 8;
                t->pay = (const uint8_t *)(uintptr_t)addr;
                t->plen = len;
                t->served = true;
                t->saddr = addr;
                t->epoch = epoch;
                t->batch = bt;
                t->vram = vdev >= 0 ? vdev + 1 : 0; /* staged out of our VRAM */
            }
            pthread_mutex_lock(&c->tx_mu);
            if (vdev >= 0 && !stage_tx_ensure(c)) {
                pthread_mutex_unlock(&c->tx_mu);
                free(bt);
                *why = "out of memory serving a read of VRAM";
                return false;
            }
            for (uint32_t i = 0; i < cnt; i++) tx_append_locked(c, &bt->items[i]);
            tx_flush_locked(c);
            pthread_mutex_unlock(&c->tx_mu);
            return true;
        }
        case W_NOTIF:
            bi_notif_push(a, c->peer, c->peer_len, b, h->body_len);
            return true;
        default:
            *why = "frame not expected from an initiator";
            return false;
        }
    }
    /* Outbound connection: answers to our requests. */
    switch (h->op) {
    case W_WRITE_ACK: {
        pthread_mutex_lock(&c->rx_mu);
        bi_pend *p = pend_take(c, h->req_id);
        pthread_mutex_unlock(&c->rx_mu);
        if (!p) return true; /* cancelled meanwhile */
        if (h->status == KVP_SUCCESS) {
            bi_req_complete(p->req, p->post_id);
        } else {
            char m[W_MAX_MSG + 1];
            sanitize_msg(b, h->body_len, m, sizeof m);
            int32_t st = h->status < 0 && h->status >= KVP_ERR_NO_TELEMETRY ? h->status
                                                                            : KVP_ERR_BACKEND;
            bi_req_finish(p->req, p->post_id, st, m);
        }
        kvp_obj_put(&p->req->obj);
        free(p);
        return true;
    }
    case W_READ_ERR: {
        pthread_mutex_lock(&c->rx_mu);
        bi_pend *p = pend_take(c, h->req_id);
        pthread_mutex_unlock(&c->rx_mu);
        if (!p) return true;
        /* Later READ_REQ frames of the request may still be queued: unlink them before
         * the request can finish (and be posted again). */
        tx_purge(c, p->req);
        char m[W_MAX_MSG + 1];
        sanitize_msg(b, h->body_len, m, sizeof m);
        int32_t st = h->status < 0 && h->status >= KVP_ERR_NO_TELEMETRY ? h->status
                                                                        : KVP_ERR_BACKEND;
        bi_req_finish(p->req, p->post_id, st, m);
        kvp_obj_put(&p->req->obj);
        free(p);
        return true;
    }
    case W_READ_DATA: {
        if (h->body_len != 8) {
            *why = "malformed READ_DATA";
            return false;
        }
        uint32_t idx = kvp_get_u32(b);
        c->rx = RX_PAY;
        c->left = h->payload_len;
        c->pay = PAY_DISCARD;
        pthread_mutex_lock(&c->rx_mu);
        bi_pend *p = NULL;
        for (bi_pend *q = c->pend; q; q = q->next)
            if (q->post_id == h->req_id) p = q;
        c->rx_vdev = -1;
        uint64_t fail_post = 0;
        bi_req *fail_req = NULL;
        if (p) {
            bi_req *r = p->req;
            if (idx >= r->np || r->p[idx].len != h->payload_len) {
                pthread_mutex_unlock(&c->rx_mu);
                *why = "READ_DATA does not match the request";
                return false;
            }
            c->cur = p;
            c->dst = (uint8_t *)(uintptr_t)r->p[idx].mem;
            c->pay = PAY_READ;
            if (r->p[idx].ldev >= 0) {
                /* Lands in our VRAM: staged through pinned slots. */
                int32_t st = stage_rx_ensure(c)
                                 ? kvp_srx_begin(c->srx, r->p[idx].ldev, r->p[idx].mem)
                                 : kvp_err(KVP_ERR_BACKEND, "out of memory");
                if (st == KVP_SUCCESS) {
                    c->rx_vdev = r->p[idx].ldev;
                } else {
                    fail_post = p->post_id;
                    fail_req = r;
                    c->cur = NULL;
                    c->pay = PAY_DISCARD;
                }
            }
        }
        pthread_mutex_unlock(&c->rx_mu);
        if (fail_req) read_fail(c, fail_post, "staging READ data into VRAM failed");
        return true;
    }
    default:
        *why = "frame not expected from a target";
        return false;
    }
}

/* End of a payload: acks and completions. */
static bool payload_done(bi_conn *c, const char **why) {
    bi_agent *a = c->a;
    c->rx = RX_HDR;
    c->hgot = 0;
    if (c->h.op == W_WRITE) {
        c->rx_vdev = -1;
        if (c->h.flags & W_FLAG_ACK) {
            /* Staged VRAM: acknowledge only once the last copies to the device are done
             * (the initiator then notifies the peer, which may read the pages at once). */
            if (c->srx) {
                int32_t st = kvp_srx_drain(c->srx);
                if (st != KVP_SUCCESS && c->w_err == KVP_SUCCESS) {
                    c->w_err = st;
                    snprintf(c->w_msg, sizeof c->w_msg,
                             "agent %s: copying a staged write into VRAM failed: %.150s",
                             a->base.name, c->srx->r.msg[0] ? c->srx->r.msg : kvp_err_text());
                }
                c->srx->r.msg[0] = '\0';
            }
            if (send_ctrl(c, W_WRITE_ACK, c->w_err, c->h.req_id, c->w_msg,
                          (uint32_t)strlen(c->w_msg)) != KVP_SUCCESS) {
                *why = "cannot send WRITE_ACK";
                return false;
            }
        }
        return true;
    }
    /* READ_DATA */
    bi_pend *done = NULL;
    int32_t dst = KVP_SUCCESS;
    char dmsg[600] = "";
    pthread_mutex_lock(&c->rx_mu);
    bi_pend *p = c->cur;
    c->cur = NULL;
    if (p && c->pay == PAY_READ) {
        if (p->left > 0) p->left--;
        if (p->left == 0) {
            /* Staged into VRAM: complete once the copies to the device are done. */
            if (c->srx && p->req->ltype == KVP_VRAM) {
                dst = kvp_srx_drain(c->srx);
                if (dst != KVP_SUCCESS)
                    snprintf(dmsg, sizeof dmsg, "copying READ data into VRAM failed: %.400s",
                             c->srx->r.msg[0] ? c->srx->r.msg : kvp_err_text());
                c->srx->r.msg[0] = '\0';
            }
            done = pend_take(c, p->post_id);
        }
    }
    c->rx_vdev = -1;
    pthread_mutex_unlock(&c->rx_mu);
    if (done) {
        if (dst == KVP_SUCCESS) bi_req_complete(done->req, done->post_id);
        else bi_req_finish(done->req, done->post_id, dst, dmsg);
        kvp_obj_put(&done->req->obj);
        free(done);
    }
    KVP_UNUSED(a);
    return true;
}

/* Reads what is available. Returns false when the connection must close. */
static bool conn_rx(bi_conn *c, uint8_t *scratch, int32_t *status, const char **why) {
    bi_agent *a = c->a;
    uint64_t budget = RX_BUDGET;
    *status = KVP_ERR_REMOTE_DISCONNECT;
    while (budget > 0) {
        ssize_t n;
        if (c->rx == RX_HDR) {
            n = recv(c->fd, c->hdr + c->hgot, W_HDR - c->hgot, 0);
        } else if (c->rx == RX_BODY) {
            n = recv(c->fd, c->body + c->bgot, c->h.body_len - c->bgot, 0);
        } else {
            if (c->left == 0) {
                if (!payload_done(c, why)) return false;
                continue;
            }
            size_t want = (size_t)KVP_MIN(c->left, KVP_MIN(budget, (uint64_t)1 << 30));
            if (c->pay == PAY_WRITE) {
                pthread_rwlock_rdlock(&a->reg_rw);
                if (c->epoch != a->reg_epoch) {
                    /* Something was deregistered since the frame was validated. */
                    if (bi_index_find(&a->lidx, c->rx_vdev >= 0 ? KVP_VRAM : KVP_DRAM,
                                      c->rx_vdev >= 0 ? (uint64_t)c->rx_vdev : 0,
                                      (uint64_t)(uintptr_t)c->dst, c->left)) {
                        c->epoch = a->reg_epoch;
                    } else {
                        c->pay = PAY_DISCARD;
                        if (c->w_err == KVP_SUCCESS) {
                            c->w_err = KVP_ERR_NOT_FOUND;
                            snprintf(c->w_msg, sizeof c->w_msg,
                                     "agent %s deregistered the destination during the write",
                                     a->base.name);
                        }
                        pthread_rwlock_unlock(&a->reg_rw);
                        continue;
                    }
                }
                if (c->rx_vdev >= 0) {
                    /* Into a pinned slot; full slots are copied to the device meanwhile. */
                    uint8_t *sp = NULL;
                    uint64_t room = 0;
                    int32_t st = kvp_srx_space(c->srx, &sp, &room);
                    n = st == KVP_SUCCESS ? recv(c->fd, sp, (size_t)KVP_MIN((uint64_t)want, room), 0)
                                          : -2;
                    if (n > 0) st = kvp_srx_commit(c->srx, (uint64_t)n, (uint64_t)n == c->left);
                    if (st != KVP_SUCCESS) {
                        if (c->w_err == KVP_SUCCESS) {
                            c->w_err = st;
                            snprintf(c->w_msg, sizeof c->w_msg,
                                     "agent %s: staging a write into VRAM failed: %.150s",
                                     a->base.name,
                                     c->srx->r.msg[0] ? c->srx->r.msg : kvp_err_text());
                        }
                        c->pay = PAY_DISCARD;
                        if (n == -2) {
                            pthread_rwlock_unlock(&a->reg_rw);
                            continue;
                        }
                    }
                } else {
                    n = recv(c->fd, c->dst, want, 0);
                }
                pthread_rwlock_unlock(&a->reg_rw);
            } else if (c->pay == PAY_READ) {
                pthread_mutex_lock(&c->rx_mu);
                if (!c->cur) {
                    c->pay = PAY_DISCARD; /* request cancelled */
                    pthread_mutex_unlock(&c->rx_mu);
                    continue;
                }
                uint64_t fail_post = 0;
                if (c->rx_vdev >= 0) {
                    uint8_t *sp = NULL;
                    uint64_t room = 0;
                    int32_t st = kvp_srx_space(c->srx, &sp, &room);
                    n = st == KVP_SUCCESS ? recv(c->fd, sp, (size_t)KVP_MIN((uint64_t)want, room), 0)
                                          : -2;
                    if (n > 0) st = kvp_srx_commit(c->srx, (uint64_t)n, (uint64_t)n == c->left);
                    if (st != KVP_SUCCESS) {
                        fail_post = c->cur->post_id;
                        c->pay = PAY_DISCARD;
                    }
                } else {
                    n = recv(c->fd, c->dst, want, 0);
                }
                pthread_mutex_unlock(&c->rx_mu);
                if (fail_post) read_fail(c, fail_post, "staging READ data into VRAM failed");
                if (n == -2) continue;
            } else {
                n = recv(c->fd, scratch, KVP_MIN(want, (size_t)SCRATCH), 0);
            }
        }
        if (n == 0) {
            *why = c->rx == RX_HDR && c->hgot == 0 ? "peer closed the connection"
                                                    : "peer closed the connection mid-frame";
            return false;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
            *why = strerror(errno);
            return false;
        }
        budget = (uint64_t)n >= budget ? 0 : budget - (uint64_t)n;
        if (c->rx == RX_HDR) {
            c->hgot += (uint32_t)n;
            if (c->hgot < W_HDR) continue;
            if (!w_hdr_get(c->hdr, &c->h, why)) return false;
            if (c->h.body_len > 0) {
                if (c->bcap < c->h.body_len) {
                    uint8_t *nb = realloc(c->body, c->h.body_len);
                    if (!nb) {
                        *why = "out of memory";
                        return false;
                    }
                    c->body = nb;
                    c->bcap = c->h.body_len;
                }
                c->bgot = 0;
                c->rx = RX_BODY;
                continue;
            }
            if (!dispatch(c, why)) return false;
        } else if (c->rx == RX_BODY) {
            c->bgot += (uint32_t)n;
            if (c->bgot < c->h.body_len) continue;
            if (!dispatch(c, why)) return false;
        } else {
            c->dst += n;
            c->left -= (uint64_t)n;
        }
        /* A payload that is complete (or empty) is finished now, not on the next event:
         * no more bytes may come to trigger one. */
        if (c->rx == RX_PAY && c->left == 0 && !payload_done(c, why)) return false;
    }
    return true;
}

/* -------------------------------------------------------------- progress ---- */

static void accept_all(bi_agent *a) {
    for (;;) {
        int fd = accept4(a->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) continue;
            if ((errno == EMFILE || errno == ENFILE) && a->spare_fd >= 0) {
                /* Out of descriptors: the pending connection would keep the (level-
                 * triggered) listener readable and this thread spinning. Free the
                 * reserve fd, take the connection, refuse it, take the reserve back. */
                kvp_close(a->spare_fd);
                int drop = accept4(a->lfd, NULL, NULL, SOCK_CLOEXEC);
                kvp_close(drop);
                a->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                if (drop >= 0) continue;
            }
            return; /* EAGAIN (or nothing more can be done now) */
        }
        set_sockopts(fd);
        bi_conn *c = conn_new(a, fd, true);
        if (!c) {
            kvp_close(fd);
            continue;
        }
        pthread_mutex_lock(&a->mu);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &c->ev};
        if (epoll_ctl(a->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
            pthread_mutex_unlock(&a->mu);
            bi_conn_put(c);
            continue;
        }
        c->next = a->conns; /* the list's reference is the one from conn_new */
        a->conns = c;
        pthread_mutex_unlock(&a->mu);
    }
}

static void pidfd_event(bi_agent *a, bi_remote *rm) {
    pthread_mutex_lock(&a->mu);
    if (rm->pidfd >= 0) {
        atomic_store(&rm->dead, true);
        /* Stop watching; the fd itself is closed on invalidate/destroy. */
        (void)epoll_ctl(a->epfd, EPOLL_CTL_DEL, rm->pidfd, NULL);
    }
    pthread_mutex_unlock(&a->mu);
}

static void *progress_main(void *arg) {
    bi_agent *a = arg;
    struct epoll_event evs[64];
    uint8_t *scratch = malloc(SCRATCH);
    bi_conn *deferred[64];
    while (!atomic_load(&a->stopping)) {
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
                accept_all(a);
            } else if (e->kind == EV_PIDFD) {
                pidfd_event(a, (bi_remote *)(void *)e);
            } else if (e->kind == EV_CONN) {
                bi_conn *c = (bi_conn *)(void *)e;
                if (c->fd < 0 || !scratch) continue; /* closed earlier in this batch */
                const char *why = NULL;
                int32_t st = KVP_ERR_REMOTE_DISCONNECT;
                bool ok = true;
                if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                    ok = conn_rx(c, scratch, &st, &why);
                if (ok && (evs[i].events & EPOLLOUT)) {
                    pthread_mutex_lock(&c->tx_mu);
                    tx_flush_locked(c);
                    pthread_mutex_unlock(&c->tx_mu);
                }
                if (ok && atomic_load(&c->broken)) {
                    ok = false;
                    why = "connection shut down";
                }
                if (!ok) {
                    conn_fail(c, st, why ? why : "error");
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

/* ----------------------------------------------------------- start / stop ---- */

static int32_t listen_on(bi_agent *a) {
    char ps[8];
    snprintf(ps, sizeof ps, "%u", a->port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int rc = getaddrinfo(a->listen_host, ps, &hints, &res);
    if (rc != 0)
        return kvp_err(KVP_ERR_INVALID_PARAM, "listen_host \"%s\" does not resolve: %s",
                       a->listen_host, gai_strerror(rc));
    int32_t st = KVP_SUCCESS;
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0) {
        st = kvp_err(KVP_ERR_BACKEND, "socket: %s", strerror(errno));
    } else if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
               bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 128) != 0) {
        st = kvp_err(KVP_ERR_BACKEND, "cannot listen on %s:%u: %s", a->listen_host, a->port,
                     strerror(errno));
    } else {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
            st = kvp_err(KVP_ERR_BACKEND, "getsockname: %s", strerror(errno));
        } else if (ss.ss_family == AF_INET) {
            a->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        } else {
            a->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        }
    }
    freeaddrinfo(res);
    if (st != KVP_SUCCESS) {
        kvp_close(fd);
        return st;
    }
    a->lfd = fd;
    return KVP_SUCCESS;
}

int32_t bi_tcp_start(bi_agent *a) {
    a->ev_wake.kind = EV_WAKE;
    a->ev_listen.kind = EV_LISTEN;
    int32_t st = listen_on(a);
    if (st != KVP_SUCCESS) return st;
    a->epfd = epoll_create1(EPOLL_CLOEXEC);
    a->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    a->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (a->epfd < 0 || a->wakefd < 0) {
        st = kvp_err(KVP_ERR_BACKEND, "epoll/eventfd: %s", strerror(errno));
    } else {
        struct epoll_event e1 = {.events = EPOLLIN, .data.ptr = &a->ev_wake};
        struct epoll_event e2 = {.events = EPOLLIN, .data.ptr = &a->ev_listen};
        if (epoll_ctl(a->epfd, EPOLL_CTL_ADD, a->wakefd, &e1) != 0 ||
            epoll_ctl(a->epfd, EPOLL_CTL_ADD, a->lfd, &e2) != 0)
            st = kvp_err(KVP_ERR_BACKEND, "epoll_ctl: %s", strerror(errno));
    }
    if (st == KVP_SUCCESS) {
        int rc = pthread_create(&a->progress, NULL, progress_main, a);
        if (rc != 0) st = kvp_err(KVP_ERR_BACKEND, "cannot start the progress thread: %s",
                                  strerror(rc));
        else a->progress_started = true;
    }
    if (st != KVP_SUCCESS) {
        kvp_close(a->lfd);
        kvp_close(a->wakefd);
        kvp_close(a->epfd);
        kvp_close(a->spare_fd);
        a->lfd = a->wakefd = a->epfd = a->spare_fd = -1;
    }
    return st;
}

void bi_tcp_stop(bi_agent *a) {
    if (a->progress_started) {
        atomic_store(&a->stopping, true);
        uint64_t one = 1;
        ssize_t w = write(a->wakefd, &one, sizeof one);
        KVP_UNUSED(w);
        pthread_join(a->progress, NULL);
        a->progress_started = false;
    }
    /* Now the only thread: close every connection, failing what was pending. */
    for (;;) {
        pthread_mutex_lock(&a->mu);
        bi_conn *c = a->conns;
        pthread_mutex_unlock(&a->mu);
        if (!c) break;
        conn_fail(c, KVP_ERR_CANCELED, "agent destroyed");
        bi_conn_put(c);
    }
    kvp_close(a->lfd);
    kvp_close(a->wakefd);
    kvp_close(a->spare_fd);
    a->lfd = a->wakefd = a->spare_fd = -1;
}
