/*
 * builtin.h - internals of the builtin engine.
 *
 * Threads of one agent:
 *   - the caller's threads (API calls);
 *   - io_threads copy workers (bi_pool): same-host copies (memcpy into a mapped peer
 *     memfd, or process_vm_writev/readv), loopback memcpy and file pread/pwrite;
 *   - one progress thread (epoll): the TCP listener, every connection (both as target:
 *     data lands without the application calling anything, and as initiator: acks and
 *     READ data), pidfds of same-host peers (death detection).
 *
 * Locks, in the order they may be taken:
 *   a->mu (agent state, requests, remotes, notif queue)
 *     -> c->tx_mu (a connection's send queue)   -> a->reg_rw (read side)
 *   (kvp_xfer_post queues TCP frames after leaving a->mu, since sending VRAM waits for
 *   staging copies under tx_mu; r->tcp_posting makes cancels and re-posts wait.)
 *   rm->map_mu (a remote's mappings, agent page snapshot) is taken without a->mu held,
 *   and takes nothing else.
 *   c->rx_mu (initiator pending requests of a connection) is never held while taking
 *   a->mu or tx_mu; pool->mu is never held while taking anything else.
 * a->reg_rw protects the local region index: the target side holds it for reading
 * around every recv/send that touches registered memory, so kvp_deregister (write
 * side) cannot return while a peer's bytes are being written into that memory.
 */
#ifndef KVP_BUILTIN_H
#define KVP_BUILTIN_H

#include <sys/uio.h>

#include "agent_page.h"
#include "notify.h"
#include "common.h"
#include "engine.h"
#include "hostid.h"
#include "metadata.h"
#include "wire.h"

typedef struct bi_agent bi_agent;
typedef struct bi_conn bi_conn;
typedef struct bi_remote bi_remote;
typedef struct bi_req bi_req;

/* Tag at the start of everything registered with epoll. */
enum bi_ev_kind { EV_WAKE = 1, EV_LISTEN, EV_CONN, EV_PIDFD };
typedef struct bi_ev {
    int kind;
} bi_ev;

/* ---------------------------------------------------------------- regions ---- */

/* Sorted index of regions: key (mem_type, dev for VRAM/FILE, addr). maxend[i] is the
 * largest end among entries of the same (mem_type, dev) group up to i, so overlapping
 * registrations are still found. */
typedef struct bi_index {
    uint64_t n;
    const kvp_md_region **e;
    uint64_t *maxend;
} bi_index;

int32_t bi_index_build(bi_index *ix, const kvp_md_region **regs, uint64_t n);
void bi_index_free(bi_index *ix);
/* Region containing [addr, addr+len) of that type and device, or NULL. */
const kvp_md_region *bi_index_find(const bi_index *ix, int32_t mem_type, uint64_t dev,
                                   uint64_t addr, uint64_t len);

/* One kvp_register call. Prepared lists and requests keep a reference to each
 * registration their local descriptors lie in, and check it at every post: a list
 * prepared before a deregistration can never reach the memory afterwards. */
typedef struct bi_reg {
    kvp_obj obj;
    bi_agent *a;
    uint64_t handle;
    int32_t mem_type;
    uint64_t n;
    kvp_md_region *r;   /* local regions, metadata form (memfd/IPC info filled in) */
    bool *file_direct;  /* FILE: the fd has O_DIRECT */
    int32_t *slot;      /* each region's slot in the agent page, -1 when not published */
    uint64_t gen;       /* registration generation (a->reg_gen; never reused) */
    bool dying;         /* kvp_deregister started (a->mu): no new post may use it */
    bool dead;          /* deregistered (under a->mu) */
    struct bi_reg *next;
} bi_reg;

/* --------------------------------------------------------------- remotes ---- */

/* An immutable snapshot of a peer's metadata with its region index (refcounted: a
 * re-sent blob with new regions installs a new snapshot; lists prepared against the
 * old one keep it). */
typedef struct bi_rmd {
    atomic_uint refs;
    kvp_md md;
    bi_index idx;
} bi_rmd;
void bi_rmd_put(bi_rmd *m);

/* A peer's VRAM allocation opened through its CUDA IPC handle. */
typedef struct bi_ipc {
    uint8_t handle[KVP_CUDA_IPC_BYTES];
    int32_t dev;
    uint64_t base;
} bi_ipc;

/* A peer memfd mapped into this process. */
typedef struct bi_map {
    uint64_t ino;
    int32_t fdno;
    uint8_t *base;
    uint64_t size;
    /* Extents of BI_POP_EXTENT bytes already faulted in here (bi_remote_prefault), for
     * writing (popw) and for reading (popr); NULL when the bitmaps could not be had
     * (then every request prefaults, as before). Under the remote's map_mu. */
    uint64_t *popw, *popr;
    /* The prefault-ahead thread of the remote in this mapping (prefault.c; map_mu): where
     * it goes on (bytes from base) and where it stops (peer_prefault_ahead bytes past
     * the furthest page a request faulted in itself); ahead_at >= ahead_end: nothing to
     * do. */
    uint64_t ahead_at, ahead_end;
} bi_map;

/* Granularity of the prefault bitmaps of a peer mapping. */
#define BI_POP_EXTENT (64u << 10)
/* Whether extent i of bitmap bm is marked; marks it (under the remote's map_mu). */
#define BI_POP_HAS(bm, i) (((bm)[(i) / 64] >> ((i) % 64)) & 1u)
#define BI_POP_MARK(bm, i) ((bm)[(i) / 64] |= 1ull << ((i) % 64))

/* What a peer's agent page said last (rm->map_mu): its live regions, indexed. */
typedef struct bi_snap {
    uint64_t seq;        /* the page's reg_seq of this snapshot */
    uint64_t n;
    kvp_md_region *r;    /* owner = slot index + 1 */
    uint64_t *gen;
    bi_index idx;
} bi_snap;

struct bi_remote {
    bi_ev ev;            /* EV_PIDFD */
    bi_agent *a;
    char name[KVP_NAME_MAX + 1];
    uint8_t token[16];
    bi_rmd *rmd;         /* current snapshot (a->mu) */
    /* Locality is proven, never taken from the blob: claims_host when the blob says same
     * boot id and pid namespace (and UCX on both ends); same_host only once the peer
     * answered the challenge of bi_tcp_conn_get with the secret of the agent page at
     * /proc/<pid>/fd/<page_fd> (or it is same_process); until then TCP. */
    bool claims_host;
    int proof;           /* 0 not tried, 1 proven, -1 failed (a->mu) */
    atomic_bool same_host;
    bool same_process;   /* the blob was encoded in this very process (proc_tag) by a
                            live agent with its token: plain memcpy under its locks */
    uint64_t starttime;  /* from the blob: checked against the pid once proven */
    uint32_t pid;
    int pidfd;           /* -1 if none (a->mu); closed as soon as the peer died */
    atomic_bool dead;    /* peer process gone */
    bool died;           /* its death was seen (pidfd, cross-memory attach): once nothing
                            refers to it, everything of it is released (a->mu) */
    bool invalid;        /* invalidated or dropped from the table (a->mu) */
    /* Prepared lists, requests and calls in progress that use it; a remote leaves the
     * table only at 0 (and is freed by the progress thread, see bi_remote_drop_locked). */
    atomic_uint refs;
    uint64_t used;       /* a->use_seq when last loaded, prepared against or posted to */
    int cma;             /* 0 untested, 1 works, -1 refused (a->mu) */
    pthread_mutex_t map_mu;
    bi_map *maps;
    size_t nmaps;
    bi_ipc *ipcs;        /* (map_mu) */
    size_t nipcs;
    /* The prefault-ahead thread (prefault.c; map_mu): it faults in the peer's pages that
     * exist (resident in its memfd) before requests touch them. ahead_stop: ends it for
     * good (bi_remote_unmap_all joins it first). */
    pthread_t ahead;
    bool ahead_running, ahead_joinable, ahead_stop;
    /* Its agent page (map_mu): the live registrations every same-host copy is checked
     * against (and pinned in) when it starts. */
    int32_t page_fd;
    uint64_t page_ino, page_size;
    int page_state;      /* 0 not opened yet, 1 open, -1 cannot be opened */
    ap_peer page;
    bi_snap snap;
    bi_conn *conn;       /* outbound connection (a->mu), NULL until needed */
    char host[256];
    uint16_t port;
    struct bi_remote *next;
};

/* --------------------------------------------------------- prepared lists ---- */

enum bi_side { SIDE_LOCAL = 0, SIDE_REMOTE = 1, SIDE_SELF = 2 };

typedef struct bi_prepped {
    kvp_obj obj;
    bi_agent *a;
    uint64_t handle;
    int side;
    bi_remote *remote;   /* SIDE_REMOTE (remotes live until agent destroy) */
    bi_rmd *rmd;         /* SIDE_REMOTE: snapshot the list was checked against (ref) */
    int32_t mem_type;
    uint64_t n;
    kvp_desc *d;
    uint32_t *ridx;      /* SIDE_REMOTE: index of each descriptor's region in rmd */
    bi_reg **dreg;       /* SIDE_LOCAL/SELF: the registration each descriptor lies in */
    bi_reg **uregs;      /* the distinct ones, one reference each */
    uint32_t nuregs;
    bool *direct;        /* FILE lists: the descriptor's fd has O_DIRECT */
    struct bi_prepped *next;
} bi_prepped;

/* -------------------------------------------------------------- requests ---- */

enum bi_path { PATH_NONE, PATH_MEM, PATH_FILE, PATH_CMA, PATH_TCP, PATH_CUDA, PATH_COUNT };
enum bi_state { RS_IDLE, RS_ACTIVE, RS_DONE };

/* One merged piece. mem: local memory address; other: the other end, as a pointer in
 * this process (PATH_MEM: loopback or a mapped peer memfd; PATH_CUDA: any address
 * cudaMemcpy can reach: ours, a same-process peer's, a peer's VRAM opened through CUDA
 * IPC, a peer memfd mapped here), a peer address (CMA, TCP) or a file offset
 * (PATH_FILE, fd). fd: the file descriptor (FILE) or CUDA device to use (CUDA). rdev:
 * device of the remote side (same-process checks; TCP: the peer's CUDA device when its
 * side is VRAM). ldev: CUDA device of mem when the local side is VRAM staged through
 * host memory (TCP, FILE), else -1. */
typedef struct bi_piece {
    uint64_t mem, other, len;
    int32_t fd;
    bool direct;
    uint64_t rdev;
    int32_t ldev;
    uint64_t raddr;  /* same-host and same-process peers: the peer's own address (grants) */
} bi_piece;

/* A job of the copy workers: pieces p0..p1 inclusive, from offset o0 in p0 to offset
 * e1 (exclusive) in p1. */
typedef struct bi_job {
    uint32_t p0, p1;
    uint64_t o0, e1;
} bi_job;

/* Send-queue item (see tcp.h). */
typedef struct bi_txi bi_txi;

struct bi_req {
    kvp_obj obj;
    bi_agent *a;
    uint64_t handle;
    int32_t op;
    int path;
    int32_t rtype;       /* memory type of the remote side */
    int32_t ltype;       /* memory type of the local side */
    bool out;            /* data flows from mem to other (WRITE; FILE: to the file) */
    bi_remote *remote;   /* NULL for loopback */
    uint64_t np;
    bi_piece *p;
    uint64_t total;
    uint32_t nj;
    bi_job *jobs;
    uint8_t *notif;
    uint32_t notif_len;
    /* TCP: preallocated frames, reused on every post (never queued twice: an active
     * request cannot be posted again, and a finished one has none queued). */
    bi_txi *tx;
    uint32_t ntx;
    /* state (a->mu) */
    int state;
    int32_t status;
    char msg[512];
    uint64_t post_id;
    bool released;
    pthread_cond_t cv;
    bi_conn *conn;       /* connection used by the current post (ref), or NULL */
    /* PATH_CUDA: the merged pieces as copy arrays (built with the jobs); cb_onedev when
     * every piece is on one device (cb_dev) */
    void **cb_dst;
    const void **cb_src;
    size_t *cb_len;
    int32_t cb_dev;
    bool cb_onedev;
    bool cb_kernel;      /* both ends device memory, several pieces: the copy kernel */
    /* PATH_CUDA posted without a worker (a->mu): copies queued by the post, completion
     * found by whoever waits or polls (the event recorded after the copies) */
    void *cu_ev;
    bool cu_pending, cu_waiting;
    /* PATH_CUDA with a worker (a notification to send, or waiters on the agent's
     * events): the post queued the copies and recorded this event after them; the
     * worker only waits for it, so its wake-up overlaps the copy instead of preceding
     * it. Handed over under pool->mu: the worker's job or a cancel takes it. */
    void *cu_launched;
    uint64_t cu_launched_at; /* kvp_now_ns() once queued (pool->mu) */
    /* TCP: the posting thread is queueing the frames outside a->mu (a->mu) */
    bool tcp_posting;
    /* job accounting (pool->mu) */
    uint32_t next_job, jobs_done, running;
    uint64_t pool_post;
    bool queued, cancel;
    int32_t job_err;
    char job_msg[400];
    bi_req *qnext;
    /* TCP: frames of this request still in a send queue (c->tx_mu) */
    uint32_t txq;
    /* Local registrations the request's memory lies in (a reference each), checked at
     * every post under a->mu; kvp_deregister fails the active posts that use one. */
    bi_reg **lregs;
    uint32_t nlregs;
    /* Same-host peer: the slots of its agent page the pieces lie in, with the
     * generation seen when the request was made; pinned for the length of a post
     * (pinned, a->mu) so that the peer's deregistration waits for the copy. */
    int32_t *pslot;
    uint64_t *pgen;
    uint32_t npin;
    bool pinned;
    struct bi_req *next, *prev; /* agent's list (a->mu) */
};

/* ------------------------------------------------------------ worker pool ---- */

typedef struct bi_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_idle;
    bi_req *head, *tail;
    bool stop;
    int nthreads;
    pthread_t *th;
    bi_agent *a;
} bi_pool;

/* ------------------------------------------------------------------ agent ---- */

typedef struct bi_notif {
    struct bi_notif *next;
    uint32_t name_len, msg_len;
    uint8_t data[]; /* name then msg */
} bi_notif;

struct bi_agent {
    kvp_agent base;
    pthread_mutex_t mu;
    bool dying;                 /* (mu) set by wake_all */
    uint32_t caps;              /* KVP_CAP_* backends */
    bool force_tcp;             /* backends=TCP only, or transport=tcp */
    uint8_t token[16];
    kvp_hostid id;
    char listen_host[256], advertise[256];
    uint16_t port;
    uint32_t io_threads;
    uint32_t connect_timeout_ms;
    uint64_t inline_max;        /* requests up to this many bytes complete inside post */
    uint64_t mem_inline_max;    /* memory copies (same host, loopback) up to this many
                                 * bytes complete inside post */
    uint64_t vram_inline_max;   /* device-to-device copies up to this many bytes complete
                                 * inside post (queued, then their event waited for) */
    uint64_t cached_read_max;   /* buffered file READs up to this many bytes that the page
                                 * cache holds complete inside post (never waiting for I/O) */
    uint64_t prefault_ahead;    /* bytes of a peer memfd mapping faulted in, in the
                                 * background, past the furthest page a request faulted
                                 * in itself (prefault.c); 0: none */
    bool vram_kernel;           /* vram_copy=auto: scattered VRAM<->VRAM pages by kernel */
    /* registrations */
    pthread_rwlock_t reg_rw;
    uint64_t reg_epoch;         /* bumped by every deregistration (reg_rw write) */
    uint64_t reg_gen;           /* last registration generation handed out (mu) */
    uint32_t dereg_timeout_ms;  /* how long a deregistration waits for peers' copies */
    ap_page page;               /* the agent page (slots written under mu) */
    /* page grants (grants.c): grant_rw is taken after reg_rw, never before it */
    bool page_grants;           /* page_grants=on: peers reach granted ranges only */
    uint32_t max_grants;
    pthread_rwlock_t grant_rw;
    struct bi_grant *grants;    /* live grants (grant_rw) */
    ap_grant *gtab;             /* their ranges, sorted (grant_rw) */
    uint64_t gn;
    atomic_uint_fast64_t grant_epoch; /* bumped by every change of the table */
    atomic_uint_fast64_t n_grants_refused;
    bi_index lidx;              /* (reg_rw) */
    bi_reg *regs;               /* (mu + reg_rw write to modify) */
    /* remotes, lists, requests (mu) */
    bi_remote *remotes, *retired;
    bi_remote *rm_free;         /* dropped remotes the progress thread frees (mu) */
    uint64_t nremotes, use_seq;
    uint32_t max_remotes;       /* table limit: full = evict an unused one, else refuse */
    atomic_uint_fast64_t n_remotes_evicted, n_remotes_refused, n_remotes_released;
    /* Peers' CUDA IPC handles open in this process now (bi_remote_ipc_open). */
    atomic_uint_fast64_t n_ipc_open;
    bi_prepped *prepped;
    bi_req *reqs;
    uint64_t post_seq;
    /* notifications (mu) */
    bi_notif *nq_head, *nq_tail;
    /* Our end of the event socket handed out by kvp_event_fd, -1 when none (set under
     * mu, read without it by bi_event). */
    atomic_int event_w;
    /* The notifier of kvp_event_notify, NULL when none (set under mu, read without it by
     * bi_event; stopped at destroy, once nothing signals any more). */
    _Atomic(kvp_notifier *) notifier;
    uint64_t nq_count, nq_bytes;
    pthread_cond_t nq_cv;
    uint32_t max_notifs;        /* queue limit (records) ... */
    uint64_t max_notif_bytes;   /* ... and bytes: full = connections stop being read */
    atomic_bool nq_full;
    bool notif_paused;          /* some connection waits for room (mu) */
    /* data-plane limits (see native/README.md) */
    uint32_t max_read_queue;    /* served READ pieces queued per connection */
    uint32_t max_inbound_conns;
    uint32_t hello_timeout_ms;
    uint32_t n_inbound;         /* (mu) */
    uint32_t n_unhello;         /* inbound connections still without HELLO (mu) */
    atomic_uint_fast64_t n_read_queue_full, n_conns_refused, n_hello_timeouts, n_notifs_refused;
    /* threads */
    bi_pool pool;
    int epfd, wakefd, lfd;
    int spare_fd;               /* reserve fd, see accept_all */
    bi_ev ev_wake, ev_listen;
    pthread_t progress;
    bool progress_started;
    atomic_bool stopping;
    bi_conn *conns;             /* every connection (mu) */
    /* posts per path and inline completions (reported by kvp_agent_info) */
    atomic_uint_fast64_t n_posts[PATH_COUNT], n_inline;
    atomic_uint_fast64_t n_dereg_timeouts; /* deregistrations that gave up waiting for peers */
    /* VRAM <-> FILE staging rings, one per job running (stage_mu) */
    pthread_mutex_t stage_mu;
    struct bi_fstage *fstage;
    atomic_uint_fast64_t n_staged;  /* VRAM requests staged through host memory */
    /* GPU posts whose copies the post queued for a worker to wait on, and where their
     * time went (ns, summed): queueing in the post, the worker's start after that (its
     * wake-up, overlapped with the copy) and its wait for the copies' event. */
    atomic_uint_fast64_t n_cu_launched, cu_queue_ns, cu_hop_ns, cu_event_wait_ns;
    /* kvp_xfer_create / kvp_xfer_post calls and the time spent in them (ns, summed) */
    atomic_uint_fast64_t n_create_calls, create_ns, n_post_calls, post_ns;
    /* Bytes of peer memfd mappings faulted in by kvp_xfer_create (on the caller's
     * thread, before the request can start) and ahead of requests (prefault.c) */
    atomic_uint_fast64_t prefault_create_bytes, prefault_ahead_bytes;
    /* kvp_now_ns() (CLOCK_MONOTONIC, one clock for every process of the host) when the
     * last request finished and when the last notification was queued: benchmarks set
     * them against their own marks (kvp_agent_info's clock_ns gives the offset) to tell
     * a thread's or a process's wake-up from JavaScript. */
    atomic_uint_fast64_t last_done_ns, last_notif_in_ns;
    /* GPU jobs whose copies one thread queued and waited for (a post inline, or a worker
     * given the whole job), and the time of each half (ns, summed); notifications sent to
     * a peer when a request finished, and the time the sends took. */
    atomic_uint_fast64_t n_cu_direct, cu_direct_queue_ns, cu_direct_wait_ns;
    atomic_uint_fast64_t n_notif_sends, notif_send_ns;
    struct bi_agent *live_next; /* registry of live agents of this process */
};

/* builtin_agent.c */
bi_agent *bi_of(kvp_agent *a);
/* A live agent of this process with that token (a reference: kvp_obj_put it), or
 * NULL once it is being destroyed. Same-process peers are reached through it, so that
 * a copy never writes into memory its owner has deregistered or freed. */
bi_agent *bi_live_get(const uint8_t token[16]);
/* Remote by name (a->mu held), NULL if none. Invalidated ones are not returned. */
bi_remote *bi_remote_find(bi_agent *a, const char *name);
/* A reference on a remote for a call in progress (taken under a->mu). */
void bi_remote_ref(bi_remote *rm);
void bi_remote_unref(bi_remote *rm);
/* Releases, under a->mu, the remotes that nothing refers to any more and that died or
 * were invalidated: unlinked here, freed by the progress thread (its epoll may still
 * hold an event of their pidfd in the batch being handled). */
void bi_remotes_sweep_locked(bi_agent *a);
/* Progress thread (or destroy): frees the dropped remotes. */
void bi_remotes_free_dropped(bi_agent *a);

/* xfer.c */
/* Marks a request done if it is still on post post_id (a->mu taken inside). */
void bi_req_finish(bi_req *r, uint64_t post_id, int32_t status, const char *msg);
/* The same with a->mu held. */
void bi_req_finish_locked(bi_req *r, uint64_t post_id, int32_t status, const char *msg);
/* Cancels r and, when it was active, finishes it with status/msg (a->mu NOT held). */
void bi_req_fail_active(bi_req *r, int32_t status, const char *msg);
/* Successful end of the data movement: sends the transfer-bound notification (if any)
 * after the data, then finishes. */
void bi_req_complete(bi_req *r, uint64_t post_id);
/* Cancels the active post of a request: after it returns no worker, progress thread or
 * send queue touches the request's memory. a->mu NOT held. */
void bi_req_cancel(bi_req *r);

/* pool.c */
int32_t bi_pool_start(bi_pool *p, bi_agent *a, int nthreads);
void bi_pool_stop(bi_pool *p);
/* Queues the jobs of r (current post). */
void bi_pool_submit(bi_pool *p, bi_req *r);
/* Removes r's queued jobs and waits until no worker runs one. Returns true when a
 * worker completed the last job (and so finished the request itself). */
bool bi_pool_cancel(bi_pool *p, bi_req *r);
/* Under a->mu at post: resets r's job counters and counts the caller as a running
 * worker, so a concurrent cancel waits for the inline run. */
void bi_pool_claim_inline(bi_pool *p, bi_req *r);
/* Runs every job of r in the calling thread (small requests), after the claim. */
void bi_pool_run_inline(bi_pool *p, bi_req *r, uint64_t post_id);
/* Ends a claim without running jobs (the caller did the work itself). */
void bi_pool_leave(bi_pool *p, bi_req *r);
/* Under a->mu at post, for a buffered file READ of DRAM: whether every piece may be
 * tried from the page cache inside post (see bi_pool_try_cached). */
bool bi_req_cached_read_ok(const bi_req *r);
/* After bi_pool_claim_inline: reads every piece from the page cache without waiting for
 * the disk (RWF_NOWAIT) and completes r; when some data is not cached, hands r to the
 * workers instead (unless a cancel came meanwhile). Leaves the claim. Returns whether
 * r was completed here. */
bool bi_pool_try_cached(bi_pool *p, bi_req *r, uint64_t post_id);
/* Runs r's jobs that no worker has claimed yet in the calling thread (a waiter of r,
 * which would otherwise sleep until a worker finished them). a->mu NOT held. */
void bi_pool_help(bi_pool *p, bi_req *r);

/* copy.c: PATH_CUDA without a worker: queues the copies and records the completion
 * event (r->cu_ev), or finishes the request with the error. After
 * bi_pool_claim_inline; leaves the claim. */
void bi_cuda_post_async(bi_req *r, uint64_t post_id);
/* copy.c: PATH_CUDA completed by a worker: queues the copies and records an event here,
 * then hands r to a worker that waits for that event and completes r (its notification
 * included), or finishes r with the error. After bi_pool_claim_inline; leaves it. */
void bi_cuda_post_launched(bi_req *r, uint64_t post_id);
/* After bi_pool_claim_inline: sets r->cu_launched = ev and queues r for a worker
 * (unless a cancel came meanwhile: then the cancel waits for ev); leaves the claim. */
void bi_pool_submit_launched(bi_pool *p, bi_req *r, void *ev);
/* Takes r->cu_launched (NULL when none is left) and when it was set (*at, may be NULL). */
void *bi_pool_take_launched(bi_pool *p, bi_req *r, uint64_t *at);
/* copy.c: executes one job; returns KVP status and fills msg on failure. */
int32_t bi_job_exec(bi_req *r, const bi_job *j, char *msg, size_t cap);
/* copy.c: reads every piece of a buffered file READ from the page cache, never waiting
 * for the device (preadv2 RWF_NOWAIT). False when some data is not cached or a read
 * failed: then nothing is known of the pages and the workers do it all again. */
bool bi_file_read_cached(bi_req *r);
/* Builds r->jobs for r->p (chunking). */
int32_t bi_jobs_build(bi_req *r, uint32_t nthreads);
/* Same-host helpers. */
/* Maps a peer memfd (once, cached; address space only) and gives its base. */
int32_t bi_remote_map(bi_remote *rm, const kvp_md_region *g, uint8_t **out);
/* Faults in [addr, addr+len) of a peer mapping made by bi_remote_map (the ranges a
 * request touches, at creation), skipping the whole extents an earlier request faulted
 * in already (a page table walk of 28 MiB costs about 1.5 ms on a small VM). */
void bi_remote_prefault(bi_remote *rm, uint64_t addr, uint64_t len, bool write);
/* Opens (once, cached) the CUDA IPC handle of a peer's VRAM region on device dev; *out
 * is the device address of the allocation's base in this process. */
int32_t bi_remote_ipc_open(bi_remote *rm, const kvp_md_region *g, int32_t dev, uint64_t *out);
void bi_remote_unmap_all(bi_remote *rm);
/* prefault.c: ends the remote's prefault-ahead thread for good and waits for it
 * (rm->map_mu not held). */
void bi_prefault_ahead_stop(bi_remote *rm);
/* prefault.c: a request faulted in its own pages of mapping m up to byte offset `end`
 * (rm->map_mu held): the thread does the peer_prefault_ahead bytes after it, where the
 * next requests go (started if it is not running; a failure only leaves it undone). */
void bi_prefault_ahead_hint_locked(bi_remote *rm, bi_map *m, uint64_t end);
/* prefault.c: madvise(MADV_POPULATE_*) of [addr, addr+len), page-aligned outwards;
 * false when it failed, which is harmless (the copy faults the pages in itself). */
bool bi_prefault_range(uint64_t addr, uint64_t len, bool write);
/* The peer's live region (from its agent page) holding [addr, addr+len) of that type
 * and device: a copy of it in *out, its slot and generation. KVP_ERR_NOT_FOUND when
 * the page does not list it, KVP_ERR_NOT_SUPPORTED when the page cannot be read. */
int32_t bi_remote_live_region(bi_remote *rm, int32_t mem_type, uint64_t dev, uint64_t addr,
                              uint64_t len, kvp_md_region *out, int32_t *slot, uint64_t *gen);
/* Pins r->pslot (a->mu held); false (with msg) when the peer deregistered one. */
bool bi_req_pin(bi_req *r, char *msg, size_t cap);
void bi_req_unpin(bi_req *r);
void bi_remote_page_close(bi_remote *rm);
/* Probes process_vm_readv on one byte of the peer (1 works, -1 refused). */
int bi_cma_probe(bi_remote *rm, uint64_t addr);
/* True when the peer process is known to be gone (pidfd readable). */
bool bi_remote_gone(bi_remote *rm);

/* tcp_*.c (TCP transport, see tcp.h) */
int32_t bi_tcp_start(bi_agent *a);
void bi_tcp_stop(bi_agent *a);
/* Returns a referenced live outbound connection to the remote, connecting (with the
 * connect timeout) and saying hello when there is none. */
int32_t bi_tcp_conn_get(bi_agent *a, bi_remote *rm, bi_conn **out);
/* A remote whose blob claims the same host: connects (once) to run the challenge, so
 * that the request being made can use the same-host paths when it passes. */
void bi_remote_prove(bi_agent *a, bi_remote *rm);
/* The agent page secret of a claimed same-host peer (opens its page). */
int32_t bi_remote_page_secret(bi_remote *rm, uint8_t out[16]);
/* The answer to a locality challenge: a keyed hash of nonce and both tokens. */
void bi_prove_tag(const uint8_t secret[16], const uint8_t nonce[16], const uint8_t init_tok[16],
                  const uint8_t target_tok[16], uint8_t out[16]);
void bi_conn_put(bi_conn *c);
/* Shuts a connection down; the progress thread then closes it and fails what was
 * pending on it. */
void bi_conn_shutdown(bi_conn *c);
/* Queues a notification frame. */
int32_t bi_tcp_send_notif(bi_conn *c, const uint8_t *msg, uint32_t len);
/* Starts a TCP request on c (frames queued, pending entry added). */
int32_t bi_tcp_post(bi_conn *c, bi_req *r, uint64_t post_id);
/* Removes r's frames from c's queue and its pending entry (cancel). */
void bi_tcp_cancel(bi_conn *c, bi_req *r);
/* Prebuilds r->tx frames at request creation. */
int32_t bi_tcp_prepare(bi_req *r);
void bi_tcp_free_frames(bi_req *r);
bool bi_conn_alive(bi_conn *c);
void bi_conn_ref(bi_conn *c);
/* The remote is leaving (a->mu held): no connection points at it any more. */
void bi_conns_forget_remote(bi_agent *a, bi_remote *rm);

/* grants.c */
/* May the peer with this token reach [addr, addr+len) with access (KVP_GRANT_*)? Always
 * yes when the agent does not enforce grants. Takes grant_rw (read); counts refusals. */
bool bi_grant_allows(bi_agent *a, const uint8_t token[16], int32_t mem_type, uint64_t dev,
                     uint64_t addr, uint64_t len, uint32_t access);
/* The same on a table (own or a peer's published one), no lock. */
bool bi_grants_cover(const ap_grant *tab, uint64_t n, const uint8_t token[16], int32_t mt,
                     uint64_t dev, uint64_t addr, uint64_t len, uint32_t access,
                     uint64_t now_ns);
/* A registration is going: its granted ranges go with it. */
void bi_grants_drop_reg(bi_agent *a, bi_reg *r);
void bi_grants_free_all(bi_agent *a);
uint64_t bi_grants_count(bi_agent *a);
int32_t bi_grant(kvp_agent *a, const char *remote, int32_t mem_type, const uint64_t *addrs,
                 const uint64_t *lens, const uint64_t *devs, uint64_t count, uint32_t access,
                 int64_t expires_ms, uint64_t *out);
int32_t bi_revoke(kvp_agent *a, uint64_t grant);
int32_t bi_grant_each(kvp_agent *a, const char *remote, int32_t mem_type, const uint64_t *addrs,
                      const uint64_t *lens, const uint64_t *devs, uint64_t count,
                      uint32_t access, int64_t expires_ms, uint64_t *out);
int32_t bi_revoke_each(kvp_agent *a, const uint64_t *grants, uint64_t count);

/* notif.c */
/* Queues a notification. From the wire it is always taken (connections pause at frame
 * boundaries while the queue is full, so it is exceeded by at most one per
 * connection); from this process (wire = false) a full queue refuses it: false. */
bool bi_notif_push(bi_agent *a, const char *from, uint32_t from_len, const uint8_t *msg,
                   uint32_t len, bool wire);
bool bi_notif_full(bi_agent *a);
void bi_notif_free_all(bi_agent *a);

/* files.c: file helpers for the workers. */
int32_t bi_file_rw(bool to_file, int fd, bool direct, uint8_t *mem, uint64_t off,
                   uint64_t len, char *msg, size_t cap);
/* The same for VRAM memory (device ldev), staged through pinned host memory with the
 * copies overlapped with the file I/O. */
int32_t bi_file_rw_vram(bi_agent *a, bool to_file, int fd, bool direct, int32_t ldev,
                        uint64_t mem, uint64_t off, uint64_t len, char *msg, size_t cap);
/* Frees the agent's staging rings (destroy). */
void bi_fstage_free_all(bi_agent *a);

/* Ops tables of the builtin engine are split by file; builtin_agent.c assembles them. */
int32_t bi_xfer_create(kvp_agent *a, int32_t op, uint64_t lp, const uint32_t *li, uint64_t rp,
                       const uint32_t *ri, uint64_t count, const uint8_t *notif,
                       uint64_t notif_len, uint64_t *out);
int32_t bi_xfer_post(kvp_agent *a, uint64_t req);
int32_t bi_xfer_status(kvp_agent *a, uint64_t req);
int32_t bi_xfer_wait(kvp_agent *a, uint64_t req, int64_t timeout_ms);
int32_t bi_xfer_message(kvp_agent *a, uint64_t req, kvp_buf *out);
int32_t bi_xfer_release(kvp_agent *a, uint64_t req);
/* Cancels and drops every request (destroy) or those of one remote (invalidate). */
void bi_reqs_cancel_for(bi_agent *a, bi_remote *rm, int32_t status, const char *msg);
int32_t bi_notif_send(kvp_agent *a, const char *remote, const uint8_t *msg, uint64_t len);
int32_t bi_notif_take(kvp_agent *a, uint8_t *buf, uint64_t cap, uint64_t *len,
                      uint64_t *count);
/* One event: a byte on the event socket of kvp_event_fd and a signal to the notifier
 * of kvp_event_notify, where handed out (never blocks). No lock of the library held
 * (a direct notifier's callback runs here). */
void bi_event(bi_agent *a);
/* The same under a->mu: a direct notifier is called by bi_event_flush, which the
 * caller calls once it released a->mu. */
void bi_event_locked(bi_agent *a);
void bi_event_flush(void);
int32_t bi_event_fd(kvp_agent *a, int32_t *out);
int32_t bi_event_notify(kvp_agent *a, kvp_event_fn fn, uint64_t ctx, uint32_t flags);
int32_t bi_event_ack(kvp_agent *a);
/* Whether someone sleeps on this agent's events (kvp_event_fd or kvp_event_notify): then
 * only a finishing worker completes a request, so that the event is signalled. */
bool bi_events_wanted(bi_agent *a);
int32_t bi_notif_wait(kvp_agent *a, int64_t timeout_ms);

#endif
