/*
 * copy.c - what a copy job does, and the same-host plumbing it relies on.
 *
 * Same-host data never goes through a socket: a peer region that lies in kvp_mem_alloc
 * memory is a memfd, which we open through /proc/<pid>/fd/<n> and map here once (cached
 * per peer memfd, verified by inode) so that a transfer is a plain memcpy; other peer
 * memory is reached with process_vm_writev/readv (cross-memory attach), in batches of
 * up to IOV_MAX segments.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "builtin.h"
#include "cuda_loader.h"
#include "errors.h"

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

#define CHUNK_MIN (256u << 10)
#define CHUNK_MAX (8u << 20)
#define CHUNK_ALIGN (64u << 10)

int32_t bi_jobs_build(bi_req *r, uint32_t nthreads) {
    free(r->jobs);
    r->jobs = NULL;
    r->nj = 0;
    if (r->np == 0) return KVP_SUCCESS;
    if (r->path == PATH_CUDA) {
        /* One job: it queues every piece's copy on the device's copy stream and waits
         * once, so the GPU runs the copies back to back (consecutive pages were merged
         * into one copy already); splitting it would only add host round trips. The
         * copies are also kept as arrays for one batched call. */
        r->jobs = malloc(sizeof *r->jobs);
        r->cb_dst = malloc((size_t)r->np * sizeof *r->cb_dst);
        r->cb_src = malloc((size_t)r->np * sizeof *r->cb_src);
        r->cb_len = malloc((size_t)r->np * sizeof *r->cb_len);
        if (!r->jobs || !r->cb_dst || !r->cb_src || !r->cb_len)
            return kvp_err(KVP_ERR_BACKEND, "out of memory planning the request");
        r->jobs[0] = (bi_job){0, (uint32_t)(r->np - 1), 0, r->p[r->np - 1].len};
        r->nj = 1;
        r->cb_dev = r->p[0].fd;
        r->cb_onedev = true;
        bool cross_dev = false;
        for (uint64_t i = 0; i < r->np; i++) {
            const bi_piece *p = &r->p[i];
            r->cb_dst[i] = (void *)(uintptr_t)(r->out ? p->other : p->mem);
            r->cb_src[i] = (const void *)(uintptr_t)(r->out ? p->mem : p->other);
            r->cb_len[i] = (size_t)p->len;
            if (p->fd != r->cb_dev) r->cb_onedev = false;
            /* Both ends on one device (p->rdev: the remote end's ordinal when it is VRAM). */
            if (r->ltype == KVP_VRAM && r->rtype == KVP_VRAM && (int64_t)p->rdev != p->fd)
                cross_dev = true;
        }
        /* The copy kernel dereferences both pointers on the local device, which needs
         * peer access to the other end's device. Nothing here enables it for memory of
         * this process on another device (VRAM(0) -> VRAM(1) loopback or a same-process
         * peer: the kernel would fault with an illegal address), and for a peer's VRAM
         * opened through CUDA IPC it is on only when the lazy peer-access enable of
         * cudaIpcOpenMemHandle succeeded. So across devices the runtime's copies
         * (cudaMemcpyDefault: a peer copy, staged by the driver where P2P is missing) are
         * used instead. Ordinals are those each process reported; under different
         * CUDA_VISIBLE_DEVICES they may not tell two physical devices apart. */
        r->cb_kernel = r->a->vram_kernel && r->np > 1 && r->ltype == KVP_VRAM &&
                       r->rtype == KVP_VRAM && !cross_dev;
        return KVP_SUCCESS;
    }
    /* About four jobs per worker so that workers stay balanced, within bounds that keep
     * per-job overhead negligible and a cancel (which waits for running jobs) short. The
     * size is a multiple of 64 KiB so that split pieces keep O_DIRECT alignment. */
    uint64_t chunk = r->total / ((uint64_t)KVP_MAX(nthreads, 1u) * 4);
    if (r->path == PATH_FILE) {
        /* O_DIRECT: each job is one I/O the device serves as a whole, and a device
         * pays per request (a virtio disk: tens of microseconds each), so jobs are at
         * least as large as a piece (a chunk's file), up to CHUNK_MAX: the device, not
         * the split, gives the parallelism. Buffered I/O keeps the split: it copies from
         * the page cache, which two workers do faster than one. */
        bool direct = false;
        uint64_t largest = 0;
        for (uint32_t p = 0; p < r->np; p++) {
            direct = direct || r->p[p].direct;
            largest = KVP_MAX(largest, r->p[p].len);
        }
        if (direct) chunk = KVP_MAX(chunk, largest);
    }
    if (chunk < CHUNK_MIN) chunk = CHUNK_MIN;
    if (chunk > CHUNK_MAX) chunk = CHUNK_MAX;
    chunk = (chunk + CHUNK_ALIGN - 1) / CHUNK_ALIGN * CHUNK_ALIGN;
    uint64_t nj = r->total / chunk + r->np + 1; /* upper bound */
    if (nj > UINT32_MAX) return kvp_err(KVP_ERR_INVALID_PARAM, "request too large");
    bi_job *jobs = malloc((size_t)nj * sizeof *jobs);
    if (!jobs) return kvp_err(KVP_ERR_BACKEND, "out of memory planning the request");
    uint32_t k = 0;
    uint32_t cp = 0;   /* current job start piece */
    uint64_t co = 0;   /* and offset */
    uint64_t acc = 0;  /* bytes in current job */
    for (uint32_t p = 0; p < r->np; p++) {
        uint64_t off = 0, len = r->p[p].len;
        while (off < len) {
            uint64_t take = KVP_MIN(len - off, chunk - acc);
            off += take;
            acc += take;
            if (acc == chunk) {
                jobs[k++] = (bi_job){cp, p, co, off};
                acc = 0;
                if (off == len) {
                    cp = p + 1;
                    co = 0;
                } else {
                    cp = p;
                    co = off;
                }
            }
        }
    }
    if (acc > 0) jobs[k++] = (bi_job){cp, (uint32_t)(r->np - 1), co, r->p[r->np - 1].len};
    r->jobs = jobs;
    r->nj = k;
    return KVP_SUCCESS;
}

/* Iterates the segments of a job: piece index, offset and length of each. */
#define FOR_SEGMENTS(r, j, pi, off, n)                                                     \
    for (uint32_t pi = (j)->p0; pi <= (j)->p1; pi++)                                       \
        for (uint64_t off = (pi == (j)->p0 ? (j)->o0 : 0),                                 \
                      n = (pi == (j)->p1 ? (j)->e1 : (r)->p[pi].len) - off,                \
                      once_ = 1;                                                           \
             once_; once_ = 0)

static int32_t exec_mem(bi_req *r, const bi_job *j) {
    FOR_SEGMENTS(r, j, pi, off, n) {
        const bi_piece *p = &r->p[pi];
        uint8_t *m = (uint8_t *)(uintptr_t)(p->mem + off);
        uint8_t *o = (uint8_t *)(uintptr_t)(p->other + off);
        if (r->out) memmove(o, m, (size_t)n);
        else memmove(m, o, (size_t)n);
    }
    return KVP_SUCCESS;
}

/* cudaMemcpyAsync with cudaMemcpyDefault (unified addressing tells host from device
 * memory, so one call covers DRAM<->VRAM and VRAM<->VRAM, a peer's VRAM opened through
 * CUDA IPC included) on the library's copy stream of each device the job uses, then one
 * event per device and one wait: no host round trip between the copies of a batch. On
 * an error the copies already queued are still waited for, so that nothing touches the
 * request's memory after it finished. */
#define CUDA_JOB_DEVS 8
static int32_t exec_cuda(bi_req *r, const bi_job *j, char *msg, size_t cap) {
    int32_t devs[CUDA_JOB_DEVS];
    int nd = 0;
    int32_t st = KVP_SUCCESS;
    uint64_t launched_at = 0;
    void *launched = bi_pool_take_launched(&r->a->pool, r, &launched_at);
    if (launched) {
        /* The post queued the copies already (bi_cuda_post_launched): only wait. */
        bi_agent *a = r->a;
        uint64_t t0 = kvp_now_ns();
        st = kvp_cuda_event_wait(r->cb_dev, launched);
        if (st != KVP_SUCCESS) snprintf(msg, cap, "%s", kvp_err_text());
        kvp_cuda_event_put(r->cb_dev, launched);
        atomic_fetch_add_explicit(&a->cu_hop_ns, t0 - launched_at, memory_order_relaxed);
        atomic_fetch_add_explicit(&a->cu_event_wait_ns, kvp_now_ns() - t0, memory_order_relaxed);
        return st;
    }
    uint64_t queued_at = kvp_now_ns();
    if (r->cb_onedev && j->p0 == 0 && j->p1 + 1 == r->np && j->o0 == 0 &&
        j->e1 == r->p[r->np - 1].len) {
        /* The whole request on one device: one batched call. */
        devs[nd++] = r->cb_dev;
        st = r->cb_kernel ? kvp_cuda_copy_device_batch(r->cb_dev, KVP_CUDA_Q_COPY, r->cb_dst,
                                                       r->cb_src, r->cb_len, (size_t)r->np)
                          : kvp_cuda_copy_batch(r->cb_dev, KVP_CUDA_Q_COPY, r->cb_dst, r->cb_src,
                                                r->cb_len, (size_t)r->np);
        if (st != KVP_SUCCESS) snprintf(msg, cap, "%s", kvp_err_text());
        goto wait;
    }
    FOR_SEGMENTS(r, j, pi, off, n) {
        if (st != KVP_SUCCESS) continue;
        const bi_piece *p = &r->p[pi];
        uint64_t m = p->mem + off, o = p->other + off;
        int k = 0;
        while (k < nd && devs[k] != p->fd) k++;
        if (k == nd) {
            if (nd == CUDA_JOB_DEVS) {
                /* More devices in one request than we track: synchronous copy. */
                st = r->out ? kvp_cuda_memcpy(p->fd, o, m, n) : kvp_cuda_memcpy(p->fd, m, o, n);
                if (st != KVP_SUCCESS) snprintf(msg, cap, "%s", kvp_err_text());
                continue;
            }
            devs[nd++] = p->fd;
        }
        st = r->out ? kvp_cuda_copy_async(p->fd, KVP_CUDA_Q_COPY, o, m, n, NULL)
                    : kvp_cuda_copy_async(p->fd, KVP_CUDA_Q_COPY, m, o, n, NULL);
        if (st != KVP_SUCCESS) snprintf(msg, cap, "%s", kvp_err_text());
    }
wait:;
    uint64_t wait_at = kvp_now_ns();
    for (int k = 0; k < nd; k++) {
        void *ev = NULL;
        int32_t s2 = kvp_cuda_event_get(devs[k], &ev);
        if (s2 == KVP_SUCCESS) s2 = kvp_cuda_record(devs[k], KVP_CUDA_Q_COPY, ev);
        if (s2 == KVP_SUCCESS) s2 = kvp_cuda_event_wait(devs[k], ev);
        else if (ev) {
            /* Cannot record: wait for the whole stream instead (never return early). */
            kvp_cuda_quiesce();
        }
        kvp_cuda_event_put(devs[k], ev);
        if (s2 != KVP_SUCCESS && st == KVP_SUCCESS) {
            st = s2;
            snprintf(msg, cap, "%s", kvp_err_text());
        }
    }
    bi_agent *ag = r->a;
    atomic_fetch_add_explicit(&ag->n_cu_direct, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&ag->cu_direct_queue_ns, wait_at - queued_at, memory_order_relaxed);
    atomic_fetch_add_explicit(&ag->cu_direct_wait_ns, kvp_now_ns() - wait_at, memory_order_relaxed);
    return st;
}

/* Queues every copy of r (one device) on the copy stream and records an event after
 * them into *ev. On an error finishes r with it (after every copy that may have been
 * queued has ended: none may outlive the request) and returns false. */
static bool queue_recorded(bi_req *r, uint64_t post_id, void **ev_out) {
    int32_t dev = r->cb_dev;
    void *ev = NULL;
    char msg[400] = "";
    int32_t st = kvp_cuda_event_get(dev, &ev);
    if (st == KVP_SUCCESS)
        st = r->cb_kernel ? kvp_cuda_copy_device_batch(dev, KVP_CUDA_Q_COPY, r->cb_dst, r->cb_src,
                                                       r->cb_len, (size_t)r->np)
                          : kvp_cuda_copy_batch(dev, KVP_CUDA_Q_COPY, r->cb_dst, r->cb_src,
                                                r->cb_len, (size_t)r->np);
    if (st == KVP_SUCCESS) st = kvp_cuda_record(dev, KVP_CUDA_Q_COPY, ev);
    if (st != KVP_SUCCESS) {
        snprintf(msg, sizeof msg, "%s", kvp_err_text());
        kvp_cuda_quiesce();
        kvp_cuda_event_put(dev, ev);
        bi_req_finish(r, post_id, st, msg);
        return false;
    }
    *ev_out = ev;
    return true;
}

void bi_cuda_post_launched(bi_req *r, uint64_t post_id) {
    bi_agent *a = r->a;
    uint64_t t0 = kvp_now_ns();
    void *ev = NULL;
    if (!queue_recorded(r, post_id, &ev)) {
        bi_pool_leave(&a->pool, r);
        return;
    }
    atomic_fetch_add_explicit(&a->n_cu_launched, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&a->cu_queue_ns, kvp_now_ns() - t0, memory_order_relaxed);
    bi_pool_submit_launched(&a->pool, r, ev);
}

void bi_cuda_post_async(bi_req *r, uint64_t post_id) {
    bi_agent *a = r->a;
    int32_t dev = r->cb_dev;
    void *ev = NULL;
    if (queue_recorded(r, post_id, &ev)) {
        pthread_mutex_lock(&a->mu);
        if (r->post_id == post_id && r->state == RS_ACTIVE) {
            r->cu_ev = ev;
            r->cu_pending = true;
            ev = NULL;
        }
        pthread_mutex_unlock(&a->mu);
        if (ev) { /* finished meanwhile: still wait for the copies */
            (void)kvp_cuda_event_wait(dev, ev);
            kvp_cuda_event_put(dev, ev);
        }
    }
    bi_pool_leave(&a->pool, r);
}

/* Same-process peer: its memory is our memory, so a stale pointer would fault in our
 * own process. The copy runs under the peer's registration lock, and every segment is
 * checked against its current registrations first: after kvp_deregister (write side of
 * that lock) or kvp_agent_destroy of the peer, no byte is written there. */
static int32_t exec_local_peer(bi_req *r, const bi_job *j, char *msg, size_t cap) {
    bi_remote *rm = r->remote;
    bi_agent *peer = bi_live_get(rm->token);
    if (!peer) {
        atomic_store(&rm->dead, true);
        snprintf(msg, cap, "agent %s (in this process) was destroyed", rm->name);
        return KVP_ERR_REMOTE_DISCONNECT;
    }
    int32_t st = KVP_SUCCESS;
    pthread_rwlock_rdlock(&peer->reg_rw);
    /* Its grants are checked under its grant lock, held for the copy: a revoke waits. */
    if (peer->page_grants) pthread_rwlock_rdlock(&peer->grant_rw);
    uint64_t now = kvp_now_ns();
    FOR_SEGMENTS(r, j, pi, off, n) {
        const bi_piece *p = &r->p[pi];
        if (st == KVP_SUCCESS &&
            !bi_index_find(&peer->lidx, r->rtype, p->rdev, p->other + off, n)) {
            snprintf(msg, cap,
                     "agent %s no longer has 0x%llx (+%llu bytes) registered (deregistered "
                     "since the list was prepared?)",
                     rm->name, (unsigned long long)(p->other + off), (unsigned long long)n);
            st = KVP_ERR_NOT_FOUND;
        }
        if (st == KVP_SUCCESS && peer->page_grants &&
            !bi_grants_cover(peer->gtab, peer->gn, r->a->token, r->rtype, p->rdev, p->other + off,
                             n, r->out ? KVP_GRANT_WRITE : KVP_GRANT_READ, now)) {
            atomic_fetch_add(&peer->n_grants_refused, 1);
            snprintf(msg, cap,
                     "agent %s does not grant agent %s a %s of %llu bytes at 0x%llx (page "
                     "grants)",
                     rm->name, r->a->base.name, r->out ? "write" : "read", (unsigned long long)n,
                     (unsigned long long)(p->other + off));
            st = KVP_ERR_NOT_ALLOWED;
        }
    }
    if (st == KVP_SUCCESS) st = r->path == PATH_CUDA ? exec_cuda(r, j, msg, cap) : exec_mem(r, j);
    if (peer->page_grants) pthread_rwlock_unlock(&peer->grant_rw);
    pthread_rwlock_unlock(&peer->reg_rw);
    kvp_obj_put(&peer->base.obj);
    return st;
}

static int32_t cma_error(bi_req *r, int e, char *msg, size_t cap) {
    bi_remote *rm = r->remote;
    if (e == ESRCH) {
        atomic_store(&rm->dead, true);
        snprintf(msg, cap, "peer %s (pid %u) exited during the transfer", rm->name, rm->pid);
        return KVP_ERR_REMOTE_DISCONNECT;
    }
    if (e == EPERM) {
        snprintf(msg, cap, "cross-memory attach to peer %s (pid %u) was refused: %s", rm->name,
                 rm->pid, strerror(e));
        return KVP_ERR_NOT_ALLOWED;
    }
    if (e == EFAULT) {
        snprintf(msg, cap,
                 "peer %s (pid %u): memory of the transfer is not mapped (peer freed or "
                 "deregistered it?)",
                 rm->name, rm->pid);
        return KVP_ERR_BACKEND;
    }
    snprintf(msg, cap, "process_vm_%sv with peer %s failed: %s", r->out ? "write" : "read",
             rm->name, strerror(e));
    return KVP_ERR_BACKEND;
}

static int32_t exec_cma(bi_req *r, const bi_job *j, char *msg, size_t cap) {
    struct iovec lv[IOV_MAX], rv[IOV_MAX];
    int n = 0;
    pid_t pid = (pid_t)r->remote->pid;
    /* Flushes lv/rv[0..n): loops on partial transfers by advancing both arrays. */
#define FLUSH()                                                                            \
    do {                                                                                   \
        int first = 0;                                                                     \
        while (first < n) {                                                                \
            ssize_t got = r->out ? process_vm_writev(pid, lv + first, (unsigned long)(n - first), \
                                                     rv + first, (unsigned long)(n - first), 0) \
                                 : process_vm_readv(pid, lv + first, (unsigned long)(n - first), \
                                                    rv + first, (unsigned long)(n - first), 0); \
            if (got < 0) {                                                                 \
                if (errno == EINTR) continue;                                              \
                return cma_error(r, errno, msg, cap);                                      \
            }                                                                              \
            if (got == 0) return cma_error(r, EFAULT, msg, cap);                           \
            size_t left = (size_t)got;                                                     \
            while (first < n && left >= lv[first].iov_len) {                               \
                left -= lv[first].iov_len;                                                 \
                first++;                                                                   \
            }                                                                              \
            if (left > 0) {                                                                \
                lv[first].iov_base = (uint8_t *)lv[first].iov_base + left;                 \
                lv[first].iov_len -= left;                                                 \
                rv[first].iov_base = (uint8_t *)rv[first].iov_base + left;                 \
                rv[first].iov_len -= left;                                                 \
            }                                                                              \
        }                                                                                  \
        n = 0;                                                                             \
    } while (0)
    FOR_SEGMENTS(r, j, pi, off, len) {
        const bi_piece *p = &r->p[pi];
        lv[n].iov_base = (void *)(uintptr_t)(p->mem + off);
        lv[n].iov_len = (size_t)len;
        rv[n].iov_base = (void *)(uintptr_t)(p->other + off);
        rv[n].iov_len = (size_t)len;
        n++;
        if (n == IOV_MAX) FLUSH();
    }
    FLUSH();
#undef FLUSH
    return KVP_SUCCESS;
}

static int32_t exec_file(bi_req *r, const bi_job *j, char *msg, size_t cap) {
    FOR_SEGMENTS(r, j, pi, off, n) {
        const bi_piece *p = &r->p[pi];
        int32_t st = p->ldev >= 0
                         ? bi_file_rw_vram(r->a, r->out, p->fd, p->direct, p->ldev, p->mem + off,
                                           p->other + off, n, msg, cap)
                         : bi_file_rw(r->out, p->fd, p->direct,
                                      (uint8_t *)(uintptr_t)(p->mem + off), p->other + off, n,
                                      msg, cap);
        if (st != KVP_SUCCESS) return st;
    }
    return KVP_SUCCESS;
}

bool bi_req_cached_read_ok(const bi_req *r) {
    if (r->path != PATH_FILE || r->out || r->np == 0 || r->total > r->a->cached_read_max)
        return false;
    for (uint64_t i = 0; i < r->np; i++)
        if (r->p[i].direct || r->p[i].ldev >= 0) return false; /* O_DIRECT, or VRAM staging */
    return true;
}

bool bi_file_read_cached(bi_req *r) {
#ifdef RWF_NOWAIT
    for (uint64_t i = 0; i < r->np; i++) {
        const bi_piece *p = &r->p[i];
        uint64_t done = 0;
        while (done < p->len) {
            struct iovec v = {(uint8_t *)(uintptr_t)(p->mem + done),
                              (size_t)KVP_MIN(p->len - done, (uint64_t)1 << 30)};
            ssize_t n = preadv2(p->fd, &v, 1, (off_t)(p->other + done), RWF_NOWAIT);
            if (n < 0 && errno == EINTR) continue;
            /* EAGAIN: not cached; 0: end of file; an error (EOPNOTSUPP on a file system
             * without RWF_NOWAIT): the workers' read reports it properly. */
            if (n <= 0) return false;
            done += (uint64_t)n;
        }
    }
    return true;
#else
    (void)r;
    return false;
#endif
}

int32_t bi_job_exec(bi_req *r, const bi_job *j, char *msg, size_t cap) {
    if (r->remote && atomic_load(&r->remote->dead)) {
        snprintf(msg, cap, "peer %s (pid %u) exited", r->remote->name, r->remote->pid);
        return KVP_ERR_REMOTE_DISCONNECT;
    }
    switch (r->path) {
    case PATH_MEM:
        return r->remote && r->remote->same_process ? exec_local_peer(r, j, msg, cap)
                                                    : exec_mem(r, j);
    case PATH_CMA: return exec_cma(r, j, msg, cap);
    case PATH_FILE: return exec_file(r, j, msg, cap);
    case PATH_CUDA:
        return r->remote && r->remote->same_process ? exec_local_peer(r, j, msg, cap)
                                                    : exec_cuda(r, j, msg, cap);
    default:
        snprintf(msg, cap, "internal error: job on path %d", r->path);
        return KVP_ERR_UNKNOWN;
    }
}

/* ------------------------------------------------------------ peer memfds ---- */

int32_t bi_remote_map(bi_remote *rm, const kvp_md_region *g, uint8_t **out) {
    pthread_mutex_lock(&rm->map_mu);
    for (size_t i = 0; i < rm->nmaps; i++) {
        if (rm->maps[i].ino == g->memfd_ino && rm->maps[i].fdno == g->memfd &&
            rm->maps[i].size >= g->memfd_size) {
            *out = rm->maps[i].base;
            pthread_mutex_unlock(&rm->map_mu);
            return KVP_SUCCESS;
        }
    }
    int32_t st = KVP_SUCCESS;
    char path[64];
    snprintf(path, sizeof path, "/proc/%u/fd/%d", rm->pid, g->memfd);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    struct stat sb;
    void *p = MAP_FAILED;
    if (fd < 0) {
        st = kvp_err(KVP_ERR_NOT_ALLOWED, "cannot open %s of peer %s: %s", path, rm->name,
                     strerror(errno));
    } else if (fstat(fd, &sb) != 0 || (uint64_t)sb.st_ino != g->memfd_ino ||
               (uint64_t)sb.st_size < g->memfd_size) {
        /* Not the memfd the metadata described (fd number reused): never map it. */
        st = kvp_err(KVP_ERR_MISMATCH, "%s of peer %s is not the shared memory its metadata "
                     "describes", path, rm->name);
    } else {
        /* Address space only: pages are mapped as requests touch them (bi_remote_prefault
         * at request creation) and a little ahead of them (prefault.c), never the whole
         * buffer (an 8 GiB decoder buffer would otherwise become every sender's RSS, and
         * a sparse one memory of the machine). */
        p = mmap(NULL, (size_t)g->memfd_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
                 fd, 0);
        if (p == MAP_FAILED)
            st = kvp_err(KVP_ERR_BACKEND, "mmap of %s (%llu bytes) failed: %s", path,
                         (unsigned long long)g->memfd_size, strerror(errno));
    }
    kvp_close(fd); /* the mapping keeps the memory */
    if (st == KVP_SUCCESS) {
        bi_map *nm = realloc(rm->maps, (rm->nmaps + 1) * sizeof *nm);
        if (!nm) {
            munmap(p, (size_t)g->memfd_size);
            st = kvp_err(KVP_ERR_BACKEND, "out of memory");
        } else {
            rm->maps = nm;
            /* One bit per extent, for writing and for reading; without them (out of
             * memory) every request prefaults, which is only slower. */
            size_t words = (size_t)((g->memfd_size / BI_POP_EXTENT + 64) / 64);
            uint64_t *pw = calloc(words, sizeof *pw), *pr = calloc(words, sizeof *pr);
            if (!pw || !pr) {
                free(pw);
                free(pr);
                pw = pr = NULL;
            }
            rm->maps[rm->nmaps++] = (bi_map){g->memfd_ino, g->memfd, p, g->memfd_size, pw, pr, 0, 0};
            *out = p;
        }
    }
    pthread_mutex_unlock(&rm->map_mu);
    return st;
}

/* The mapping of rm holding [addr, addr+len), or NULL (rm->map_mu held; the pointer is
 * good until the lock is left: the array may move). */
static bi_map *map_holding_locked(bi_remote *rm, uint64_t addr, uint64_t len) {
    for (size_t i = 0; i < rm->nmaps; i++) {
        uint64_t b = (uint64_t)(uintptr_t)rm->maps[i].base;
        if (addr >= b && addr - b < rm->maps[i].size && len <= rm->maps[i].size - (addr - b))
            return &rm->maps[i];
    }
    return NULL;
}

void bi_remote_prefault(bi_remote *rm, uint64_t addr, uint64_t len, bool write) {
    if (len == 0) return;
    pthread_mutex_lock(&rm->map_mu);
    bi_map *m = map_holding_locked(rm, addr, len);
    if (!m || !m->popw) {
        pthread_mutex_unlock(&rm->map_mu);
        if (bi_prefault_range(addr, len, write))
            atomic_fetch_add(&rm->a->prefault_create_bytes, len);
        return;
    }
    /* The bitmaps and the mapping live as long as the remote (bi_remote_unmap_all), which
     * the request creating this holds; the array of maps may move, they do not. */
    uint64_t base = (uint64_t)(uintptr_t)m->base, size = m->size;
    uint64_t *popw = m->popw, *popr = m->popr;
    uint64_t off = addr - base, end = off + len;
    uint64_t e0 = off / BI_POP_EXTENT, e1 = (end - 1) / BI_POP_EXTENT;
    pthread_mutex_unlock(&rm->map_mu);
    uint64_t e = e0;
    while (e <= e1) {
        pthread_mutex_lock(&rm->map_mu);
        while (e <= e1 && (BI_POP_HAS(popw, e) || (!write && BI_POP_HAS(popr, e)))) e++;
        uint64_t run = e;
        while (e <= e1 && !(BI_POP_HAS(popw, e) || (!write && BI_POP_HAS(popr, e)))) e++;
        pthread_mutex_unlock(&rm->map_mu);
        if (run == e) break;
        /* Extents run..e-1 are not known to be faulted in: do the part of them inside the
         * piece, and mark those wholly covered (or ending at the end of the mapping).
         * Read faults even for a WRITE: on a shared mapping of a memfd they map the
         * page writable (shmem needs no write notification) and map the neighbours the
         * memfd holds with it (fault-around), where write faults go one page at a time:
         * half the time (3.7 against 6.8 ms per 28 MiB on the 2-core VM), and the copy
         * after it is as fast. Were a kernel to map them read-only, the copy would take
         * the write faults itself: only slower. */
        uint64_t s = KVP_MAX(off, run * BI_POP_EXTENT);
        uint64_t t = KVP_MIN(end, e * BI_POP_EXTENT);
        bool ok = bi_prefault_range(base + s, t - s, false);
        if (ok) atomic_fetch_add(&rm->a->prefault_create_bytes, t - s);
        pthread_mutex_lock(&rm->map_mu);
        /* Marked even when the kernel cannot prefault (before 5.14): no point asking it
         * again for every request. */
        for (uint64_t k = run; k < e; k++) {
            uint64_t ks = k * BI_POP_EXTENT, ke = KVP_MIN(ks + BI_POP_EXTENT, size);
            if (s <= ks && t >= ke) BI_POP_MARK(write ? popw : popr, k);
        }
        /* (Found again: the array of maps may have moved while the lock was left.) */
        bi_map *here = ok ? map_holding_locked(rm, base, 1) : NULL;
        if (here) bi_prefault_ahead_hint_locked(rm, here, t);
        pthread_mutex_unlock(&rm->map_mu);
    }
}

int32_t bi_remote_ipc_open(bi_remote *rm, const kvp_md_region *g, int32_t dev, uint64_t *out) {
    if (!(g->flags & KVP_MDR_IPC))
        return kvp_err(KVP_ERR_NOT_SUPPORTED,
                       "peer %s registered VRAM at 0x%llx without a CUDA IPC handle (its "
                       "cudaIpcGetMemHandle failed), so this process cannot reach it",
                       rm->name, (unsigned long long)g->addr);
    pthread_mutex_lock(&rm->map_mu);
    for (size_t i = 0; i < rm->nipcs; i++) {
        if (rm->ipcs[i].dev == dev && memcmp(rm->ipcs[i].handle, g->ipc, KVP_CUDA_IPC_BYTES) == 0) {
            *out = rm->ipcs[i].base;
            pthread_mutex_unlock(&rm->map_mu);
            return KVP_SUCCESS;
        }
    }
    uint64_t base = 0;
    int32_t st = kvp_cuda_ipc_open(dev, g->ipc, &base);
    if (st == KVP_SUCCESS) {
        bi_ipc *n = realloc(rm->ipcs, (rm->nipcs + 1) * sizeof *n);
        if (!n) {
            (void)kvp_cuda_ipc_close(dev, base);
            st = kvp_err(KVP_ERR_BACKEND, "out of memory");
        } else {
            rm->ipcs = n;
            memcpy(n[rm->nipcs].handle, g->ipc, KVP_CUDA_IPC_BYTES);
            n[rm->nipcs].dev = dev;
            n[rm->nipcs].base = base;
            rm->nipcs++;
            atomic_fetch_add(&rm->a->n_ipc_open, 1);
            *out = base;
        }
    } else {
        st = kvp_err_wrap(st, "opening the CUDA IPC handle of peer %s", rm->name);
    }
    pthread_mutex_unlock(&rm->map_mu);
    return st;
}

void bi_remote_unmap_all(bi_remote *rm) {
    bi_prefault_ahead_stop(rm); /* it works in the mappings */
    pthread_mutex_lock(&rm->map_mu);
    for (size_t i = 0; i < rm->nipcs; i++) (void)kvp_cuda_ipc_close(rm->ipcs[i].dev, rm->ipcs[i].base);
    atomic_fetch_sub(&rm->a->n_ipc_open, rm->nipcs);
    free(rm->ipcs);
    rm->ipcs = NULL;
    rm->nipcs = 0;
    for (size_t i = 0; i < rm->nmaps; i++) {
        munmap(rm->maps[i].base, (size_t)rm->maps[i].size);
        free(rm->maps[i].popw);
        free(rm->maps[i].popr);
    }
    free(rm->maps);
    rm->maps = NULL;
    rm->nmaps = 0;
    pthread_mutex_unlock(&rm->map_mu);
}

int bi_cma_probe(bi_remote *rm, uint64_t addr) {
    uint8_t b;
    struct iovec l = {&b, 1}, r = {(void *)(uintptr_t)addr, 1};
    ssize_t n = process_vm_readv((pid_t)rm->pid, &l, 1, &r, 1, 0);
    return n == 1 ? 1 : -1;
}
