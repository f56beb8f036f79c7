/*
 * tcp.h - internals of the builtin engine's TCP transport (protocol in wire.h), shared
 * by its files, each of which does one job:
 *
 *   tcp_conn.c     a connection's lifetime: references, creation, shutdown, and closing
 *                  it with every request pending on it failed
 *   tcp_send.c     the send queue: frames (control frames, request frames, served READ
 *                  data) sent zero-copy from their memory as far as the socket takes
 *   tcp_stage.c    glue to stage.c: VRAM payloads staged through pinned host memory
 *   tcp_frames.c   initiator requests: their prebuilt frames, post and cancel
 *   tcp_connect.c  outbound connections: connect and HELLO, bounded by connect_timeout_ms
 *   tcp_target.c   frames an initiator sends us (HELLO, WRITE, READ_REQ, NOTIF): checked
 *                  against our registrations and served
 *   tcp_recv.c     the receive state machine (header, body, payload) and the answers to
 *                  our own requests (WRITE_ACK, READ_DATA, READ_ERR)
 *   tcp_progress.c the progress thread: epoll over the listener, connections and pidfds
 *   tcp_listen.c   the listener, accepting connections, transport start and stop
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
#ifndef KVP_TCP_H
#define KVP_TCP_H

#include "builtin.h"
#include "stage.h"

#define RX_BUDGET (64ull << 20)   /* bytes per connection per wakeup (fairness) */
#define SCRATCH (64u << 10)
#define TX_IOV 64
#define IOV_CAP (1ull << 30)

/* KVPORT_TRACE=1: one stderr line per frame-level event (debugging aid, off by default). */
bool bi_trace_on(void);
#define TRACE(...)                                                                          \
    do {                                                                                    \
        if (bi_trace_on()) {                                                                \
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
    uint64_t gepoch;      /* served: grant epoch when last checked */
    uint64_t saddr;       /* served: address of the payload start */
    struct bi_serve *end; /* READ_END of that request (ref): header built when sent */
};

/* What serving one READ request (all its READ_REQ frames) came to: shared by its
 * batches and its READ_END frame, which carries err/msg once the data went out. */
typedef struct bi_serve {
    atomic_uint refs;
    uint64_t req_id;
    int32_t err;        /* (tx_mu) first failure while sending the data */
    char msg[320];
} bi_serve;
void tcp_serve_put(bi_serve *s);

typedef struct bi_batch {
    uint32_t left;
    bi_serve *serve;    /* ref */
    struct bi_conn *conn; /* whose served_q counts its items */
    bi_txi items[];
} bi_batch;

typedef struct bi_pend {
    struct bi_pend *next;
    uint64_t post_id;
    bi_req *req;  /* ref */
    uint64_t left; /* READ: pieces still expected */
    uint8_t *got;  /* READ: one bit per piece received (duplicates are refused) */
} bi_pend;
void tcp_pend_free(bi_pend *p);

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
    uint8_t peer_token[16]; /* inbound: the initiator's token from its HELLO */
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
    uint64_t gepoch;     /* grant epoch the payload being received was checked at */
    uint64_t w_req;
    int32_t w_err;
    char w_msg[512];
    uint64_t r_err_req;
    bi_serve *serve;     /* READ being served (progress thread) */
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
    /* Receiving paused (tx_mu): PAUSE_READQ while more than max_read_queue served
     * pieces wait to be sent (a client that never reads stops being read), PAUSE_NOTIF
     * while the notification queue is full. */
    uint32_t rx_paused;
    uint64_t served_q;   /* served READ pieces in the send queue (tx_mu) */
    uint64_t hello_deadline_ns; /* inbound: closed when no HELLO came by then */
    kvp_stx *stx;        /* staging out of VRAM (tx_mu) */
    char stage_err[400]; /* why staging failed (the connection is then shut down) */
    atomic_bool dead;    /* closed: nothing is sent any more */
    atomic_bool broken;  /* shut down, the progress thread will close it */
    bool freed_pending;  /* progress thread: in the deferred list */
    struct bi_conn *next;
};

enum { PAUSE_READQ = 1, PAUSE_NOTIF = 2 };
/* Recomputes the epoll events of c (EPOLLIN unless paused, EPOLLOUT when armed). tx_mu. */
void tcp_conn_events_locked(bi_conn *c);

/* tcp_conn.c */
bi_conn *tcp_conn_new(bi_agent *a, int fd, bool inbound);
void tcp_set_sockopts(int fd);
/* Closes c and fails what was pending on it. Progress thread only (or the only thread
 * left, at stop). The agent list's reference is dropped by the caller. */
void tcp_conn_fail(bi_conn *c, int32_t status, const char *why);

/* tcp_send.c */
void tcp_txi_dispose(bi_txi *t);
/* Served payloads (target READ): make sure the range is still registered; otherwise
 * the rest of that payload is sent as zeros. Caller holds reg_rw for reading. */
void tcp_revalidate_served(bi_conn *c, bi_txi *t);
/* Sends as much as the socket takes. Caller holds c->tx_mu. */
void tcp_tx_flush_locked(bi_conn *c);
void tcp_tx_append_locked(bi_conn *c, bi_txi *t);
/* Queues an owned control frame (header + body, no payload) and flushes. */
int32_t tcp_send_ctrl(bi_conn *c, uint8_t op, int32_t status, uint64_t req_id,
                      const void *body, uint32_t blen);
/* Unlinks r's frames from c's send queue (a frame partly sent is completed with zeros). */
void tcp_tx_purge(bi_conn *c, bi_req *r);

/* tcp_stage.c */
bool tcp_stage_tx_ensure(bi_conn *c);
bool tcp_stage_rx_ensure(bi_conn *c);
/* Staging out of VRAM failed: the connection is shut down with the reason. */
void tcp_stage_tx_fail(bi_conn *c);
/* Queues device-to-host copies of the VRAM payloads next in the send queue. tx_mu
 * held; on inbound connections reg_rw too (locked). */
bool tcp_stage_prefetch(bi_conn *c, bool locked);

/* tcp_target.c: an initiator's frame (inbound connection), header and body complete.
 * Returns false when the connection must close (why set). */
bool tcp_target_dispatch(bi_conn *c, const char **why);
/* End of a WRITE payload: the acknowledgement after the request's last frame. */
bool tcp_target_write_done(bi_conn *c, const char **why);

/* tcp_recv.c */
/* Reads what is available. Returns false when the connection must close. */
bool tcp_conn_rx(bi_conn *c, uint8_t *scratch, int32_t *status, const char **why);
void tcp_sanitize_msg(const uint8_t *b, uint32_t n, char *out, size_t cap);

/* tcp_progress.c: connections paused for a full notification queue read again. */
void tcp_resume_notif_paused(bi_agent *a);

/* tcp_listen.c */
void tcp_accept_all(bi_agent *a);

/* tcp_progress.c */
void *tcp_progress_main(void *arg);

#endif
