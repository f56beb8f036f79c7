/*
 * xfer.c - transfer requests of the builtin engine: creation (validation, merging,
 * choice of path), post, status, wait, release and cancellation.
 *
 * Paths: PATH_MEM (memcpy: loopback, same process, or a same-host peer's memfd mapped
 * here), PATH_CMA (process_vm_writev/readv into a same-host peer), PATH_FILE
 * (pread/pwrite, loopback only), PATH_TCP (tcp_*.c). The first three are split into jobs
 * for the copy workers, or run inside kvp_xfer_post when small.
 */
#include <poll.h>
#include <sys/epoll.h>
#include <unistd.h>
#include <stdio.h>

#include "builtin.h"
#include "errors.h"

static void req_release_obj(kvp_obj *o) {
    bi_req *r = (bi_req *)o;
    if (r->conn) bi_conn_put(r->conn);
    if (r->remote) bi_remote_unref(r->remote);
    bi_tcp_free_frames(r);
    free(r->p);
    free(r->jobs);
    free(r->cb_dst);
    free(r->cb_src);
    free(r->cb_len);
    free(r->notif);
    for (uint32_t i = 0; i < r->nlregs; i++) kvp_obj_put(&r->lregs[i]->obj);
    free(r->lregs);
    free(r->pslot);
    free(r->pgen);
    pthread_cond_destroy(&r->cv);
    free(r);
}

static bi_prepped *prepped_get(bi_agent *a, uint64_t h, const char *which) {
    bi_prepped *p = (bi_prepped *)kvp_handle_get(h, KVP_H_PREPPED);
    if (!p) {
        char tmp[KVP_MSG_MAX];
        snprintf(tmp, sizeof tmp, "%s", kvp_err_text());
        kvp_err(kvp_err_status(), "%s: %s", which, tmp);
        return NULL;
    }
    if (p->a != a) {
        kvp_obj_put(&p->obj);
        kvp_err(KVP_ERR_INVALID_PARAM, "%s 0x%llx was prepared by another agent, not %s", which,
                (unsigned long long)h, a->base.name);
        return NULL;
    }
    return p;
}

static bi_req *req_get(bi_agent *a, uint64_t h) {
    bi_req *r = (bi_req *)kvp_handle_get(h, KVP_H_REQ);
    if (!r) return NULL;
    if (r->a != a) {
        kvp_obj_put(&r->obj);
        kvp_err(KVP_ERR_INVALID_PARAM, "request 0x%llx belongs to another agent, not %s",
                (unsigned long long)h, a->base.name);
        return NULL;
    }
    return r;
}

/* ---------------------------------------------------------------- create ---- */

typedef struct pair_ctx {
    bi_req *r;
    uint64_t cap;
    uint64_t raddr; /* the peer's address of the next piece (grant checks) */
} pair_ctx;

static int32_t add_piece(pair_ctx *c, uint64_t mem, uint64_t other, uint64_t len, int32_t fd,
                         bool direct, uint64_t rdev, int32_t ldev) {
    bi_req *r = c->r;
    if (len == 0) return KVP_SUCCESS;
    if (r->np > 0) {
        bi_piece *l = &r->p[r->np - 1];
        /* Merge consecutive descriptors: both ends continue where the last piece ended
         * (for VRAM: one cudaMemcpy for a run of consecutive pages). */
        if (l->mem + l->len == mem && l->other + l->len == other && l->fd == fd &&
            l->direct == direct && l->rdev == rdev && l->ldev == ldev &&
            l->raddr + l->len == c->raddr && l->len + len >= l->len) {
            l->len += len;
            r->total += len;
            return KVP_SUCCESS;
        }
    }
    if (r->np == c->cap) {
        uint64_t nc = c->cap ? c->cap * 2 : 16;
        bi_piece *np = realloc(r->p, (size_t)nc * sizeof *np);
        if (!np) return kvp_err(KVP_ERR_BACKEND, "out of memory building the request");
        r->p = np;
        c->cap = nc;
    }
    r->p[r->np++] = (bi_piece){mem, other, len, fd, direct, rdev, ldev, c->raddr};
    r->total += len;
    return KVP_SUCCESS;
}

/* Records that r uses local registration g (once, with a reference). */
static int32_t use_reg(bi_req *r, bi_reg *g, uint32_t *cap) {
    for (uint32_t k = r->nlregs; k-- > 0;)
        if (r->lregs[k] == g) return KVP_SUCCESS;
    if (r->nlregs == *cap) {
        uint32_t nc = *cap ? *cap * 2 : 2;
        bi_reg **n = realloc(r->lregs, (size_t)nc * sizeof *n);
        if (!n) return kvp_err(KVP_ERR_BACKEND, "out of memory building the request");
        r->lregs = n;
        *cap = nc;
    }
    kvp_obj_ref(&g->obj);
    r->lregs[r->nlregs++] = g;
    return KVP_SUCCESS;
}

/* Records the peer slot a piece lies in (once per slot). */
static int32_t use_slot(bi_req *r, int32_t slot, uint64_t gen, uint32_t *cap) {
    for (uint32_t k = r->npin; k-- > 0;)
        if (r->pslot[k] == slot) return KVP_SUCCESS;
    if (r->npin == *cap) {
        uint32_t nc = *cap ? *cap * 2 : 2;
        int32_t *ns = realloc(r->pslot, (size_t)nc * sizeof *ns);
        if (ns) r->pslot = ns;
        uint64_t *ng = ns ? realloc(r->pgen, (size_t)nc * sizeof *ng) : NULL;
        if (!ns || !ng) return kvp_err(KVP_ERR_BACKEND, "out of memory building the request");
        r->pgen = ng;
        *cap = nc;
    }
    r->pslot[r->npin] = slot;
    r->pgen[r->npin] = gen;
    r->npin++;
    return KVP_SUCCESS;
}

/* Same host: the target's grants (published in its agent page) must cover every piece
 * for us, now. */
static int32_t peer_grants_check(bi_req *r) {
    bi_remote *rm = r->remote;
    uint32_t access = r->out ? KVP_GRANT_WRITE : KVP_GRANT_READ;
    uint64_t now = kvp_now_ns();
    for (uint64_t i = 0; i < r->np; i++) {
        const bi_piece *p = &r->p[i];
        int ok = ap_peer_grants_allow(&rm->page, r->a->token, r->rtype,
                                      r->rtype == KVP_VRAM ? p->rdev : 0, p->raddr, p->len,
                                      access, now);
        if (ok == 1) continue;
        return kvp_err(KVP_ERR_NOT_ALLOWED,
                       "agent %s does not grant agent %s a %s of %llu bytes at 0x%llx%s (page "
                       "grants)",
                       rm->name, r->a->base.name, r->out ? "write" : "read",
                       (unsigned long long)p->len, (unsigned long long)p->raddr,
                       ok < 0 ? "; its grant table kept changing while read" : "");
    }
    return KVP_SUCCESS;
}

/* Every local registration r uses must still be registered (a->mu held). */
static int32_t lregs_check_locked(bi_req *r) {
    for (uint32_t i = 0; i < r->nlregs; i++) {
        const bi_reg *g = r->lregs[i];
        if (g->dying || g->dead)
            return kvp_err(KVP_ERR_NOT_FOUND,
                           "local memory of this request was deregistered (registration 0x%llx "
                           "of agent %s) after its list was prepared; register it again and "
                           "prepare a new list",
                           (unsigned long long)g->handle, r->a->base.name);
    }
    return KVP_SUCCESS;
}

/* Same-host pieces: every one must lie in a live region of the peer's agent page; the
 * page's copy of the region (memfd, CUDA IPC handle) is the one used. Returns
 * KVP_ERR_NOT_SUPPORTED when the page cannot be used (the caller falls back to TCP). */
static int32_t live_piece(bi_req *r, int32_t mt, const kvp_desc *rd, kvp_md_region *g,
                          uint32_t *cap) {
    int32_t slot;
    uint64_t gen;
    int32_t st = bi_remote_live_region(r->remote, mt, rd->dev, rd->addr, rd->len, g, &slot, &gen);
    if (st == KVP_SUCCESS) st = use_slot(r, slot, gen, cap);
    return st;
}

/* The TCP transport for the whole request (the peer checks every range). */
static int32_t build_remote_tcp(bi_req *r, bi_prepped *L, const uint32_t *li, bi_prepped *R,
                                const uint32_t *ri, uint64_t count) {
    pair_ctx pc = {r, 0, 0};
    int32_t st = KVP_SUCCESS;
    r->path = PATH_TCP;
    for (uint64_t i = 0; i < count && st == KVP_SUCCESS; i++)
        st = add_piece(&pc, L->d[li[i]].addr, R->d[ri[i]].addr, L->d[li[i]].len, -1, false, 0,
                       -1);
    return st;
}

/* Chooses how to reach a peer and fills the pieces. */
static int32_t build_remote(bi_req *r, bi_prepped *L, const uint32_t *li, bi_prepped *R,
                            const uint32_t *ri, uint64_t count) {
    bi_agent *a = r->a;
    bi_remote *rm = R->remote;
    pair_ctx pc = {r, 0, 0};
    int32_t st = KVP_SUCCESS;
    uint32_t pcap = 0;
    r->path = PATH_TCP;
    bool cma_ok = false;
    if (rm->same_host && rm->same_process) {
        r->path = PATH_MEM;
    } else if (rm->same_host) {
        /* Every piece must lie in a live region of the peer's page; all in memfds: map
         * them (memcpy); otherwise cross-memory attach when permitted; else TCP. */
        bool all_memfd = true, live = true;
        kvp_md_region g;
        for (uint64_t i = 0; i < count && live; i++) {
            st = live_piece(r, KVP_DRAM, &R->d[ri[i]], &g, &pcap);
            if (st != KVP_SUCCESS) live = false;
            else if (!(g.flags & KVP_MDR_MEMFD)) all_memfd = false;
        }
        if (!live) {
            /* Not in its page (deregistered since, or no page): TCP, where the peer
             * checks the ranges itself. */
            kvp_err_clear();
            st = KVP_SUCCESS;
            r->npin = 0;
        } else if (all_memfd) {
            r->path = PATH_MEM;
        } else {
            pthread_mutex_lock(&a->mu);
            int cma = rm->cma;
            pthread_mutex_unlock(&a->mu);
            if (cma == 0 && count > 0) {
                cma = bi_cma_probe(rm, R->d[ri[0]].addr);
                pthread_mutex_lock(&a->mu);
                rm->cma = cma;
                pthread_mutex_unlock(&a->mu);
            }
            cma_ok = cma >= 0;
            r->path = cma_ok ? PATH_CMA : PATH_TCP;
            if (!cma_ok) r->npin = 0;
        }
    }
    for (uint64_t i = 0; i < count && st == KVP_SUCCESS; i++) {
        const kvp_desc *ld = &L->d[li[i]], *rd = &R->d[ri[i]];
        uint64_t other = rd->addr;
        if (r->path == PATH_MEM && !rm->same_process) {
            kvp_md_region g;
            int32_t slot;
            uint64_t gen;
            st = bi_remote_live_region(rm, KVP_DRAM, 0, rd->addr, rd->len, &g, &slot, &gen);
            uint8_t *base = NULL;
            if (st == KVP_SUCCESS) st = bi_remote_map(rm, &g, &base);
            if (st != KVP_SUCCESS) {
                /* Cannot map it after all: TCP for the whole request. */
                kvp_err_clear();
                free(r->p);
                r->p = NULL;
                r->np = 0;
                r->total = 0;
                r->npin = 0;
                return build_remote_tcp(r, L, li, R, ri, count);
            }
            other = (uint64_t)(uintptr_t)(base + g.memfd_off + (rd->addr - g.addr));
            bi_remote_prefault(rm, other, ld->len, r->out);
        }
        pc.raddr = rd->addr;
        st = add_piece(&pc, ld->addr, other, ld->len, -1, false, 0, -1);
    }
    return st;
}

/* VRAM on either side with a peer on another host (or forced to TCP): the TCP
 * transport stages VRAM through pinned host memory on whichever side has it (tcp_*.c,
 * stage.c), so a process without CUDA can still write into a GPU peer's pages. */
static int32_t build_remote_staged(bi_req *r, bi_prepped *L, const uint32_t *li, bi_prepped *R,
                                   const uint32_t *ri, uint64_t count) {
    pair_ctx pc = {r, 0, 0};
    int32_t st = KVP_SUCCESS;
    r->path = PATH_TCP;
    for (uint64_t i = 0; i < count && st == KVP_SUCCESS; i++) {
        const kvp_desc *ld = &L->d[li[i]], *rd = &R->d[ri[i]];
        st = add_piece(&pc, ld->addr, rd->addr, ld->len, -1, false,
                       R->mem_type == KVP_VRAM ? rd->dev : 0,
                       L->mem_type == KVP_VRAM ? (int32_t)ld->dev : -1);
    }
    return st;
}

/* VRAM on either side with a peer: everything goes through cudaMemcpy with addresses
 * valid in this process. */
static int32_t build_remote_cuda(bi_req *r, bi_prepped *L, const uint32_t *li, bi_prepped *R,
                                 const uint32_t *ri, uint64_t count) {
    bi_remote *rm = R->remote;
    int32_t lt = L->mem_type, rt = R->mem_type;
    if (!rm->same_host) return build_remote_staged(r, L, li, R, ri, count);
    r->path = PATH_CUDA;
    pair_ctx pc = {r, 0, 0};
    int32_t st = KVP_SUCCESS;
    uint32_t pcap = 0;
    for (uint64_t i = 0; i < count && st == KVP_SUCCESS; i++) {
        const kvp_desc *ld = &L->d[li[i]], *rd = &R->d[ri[i]];
        /* The device whose context runs the copy: ours when local is VRAM; else the
         * peer's ordinal (same numbering on one host unless CUDA_VISIBLE_DEVICES
         * differs). */
        int32_t dev = (int32_t)(lt == KVP_VRAM ? ld->dev : rd->dev);
        uint64_t other = rd->addr;
        if (!rm->same_process) {
            kvp_md_region gl;
            const kvp_md_region *g = &gl;
            st = live_piece(r, rt, rd, &gl, &pcap);
            if (st != KVP_SUCCESS) break;
            if (rt == KVP_VRAM) {
                uint64_t base;
                st = bi_remote_ipc_open(rm, g, dev, &base);
                if (st != KVP_SUCCESS) break;
                other = base + g->ipc_off + (rd->addr - g->addr);
            } else if (g->flags & KVP_MDR_MEMFD) {
                uint8_t *base;
                st = bi_remote_map(rm, g, &base);
                if (st != KVP_SUCCESS) break;
                other = (uint64_t)(uintptr_t)(base + g->memfd_off + (rd->addr - g->addr));
                bi_remote_prefault(rm, other, ld->len, r->out);
            } else {
                st = kvp_err(KVP_ERR_NOT_SUPPORTED,
                             "VRAM to agent %s's DRAM at 0x%llx needs that memory to come from "
                             "kvp_mem_alloc (shareable); cross-memory attach cannot reach a GPU",
                             rm->name, (unsigned long long)rd->addr);
                break;
            }
        }
        pc.raddr = rd->addr;
        st = add_piece(&pc, ld->addr, other, ld->len, dev, false, rd->dev, -1);
    }
    return st;
}

static int32_t xfer_create(kvp_agent *ka, int32_t op, uint64_t lp, const uint32_t *li,
                           uint64_t rp, const uint32_t *ri, uint64_t count, const uint8_t *notif,
                           uint64_t notif_len, uint64_t *out) {
    bi_agent *a = bi_of(ka);
    bi_prepped *L = prepped_get(a, lp, "local_prepped");
    if (!L) return kvp_err_status();
    bi_prepped *R = prepped_get(a, rp, "remote_prepped");
    if (!R) {
        kvp_obj_put(&L->obj);
        return kvp_err_status();
    }
    int32_t st = KVP_SUCCESS;
    bi_req *r = NULL;
    if (L->side != SIDE_LOCAL)
        st = kvp_err(KVP_ERR_INVALID_PARAM,
                     "local_prepped must be a list prepared for the local side (remote \"\"), "
                     "but it was prepared for a remote");
    else if (R->side == SIDE_LOCAL)
        st = kvp_err(KVP_ERR_INVALID_PARAM,
                     "remote_prepped was prepared for the local side (remote \"\"); prepare it "
                     "with the peer's name, or this agent's own name (\"%s\") for loopback",
                     a->base.name);
    /* A peer claiming the same host is tried once (challenge) before the path is chosen. */
    if (st == KVP_SUCCESS && R->side == SIDE_REMOTE) bi_remote_prove(a, R->remote);
    if (st == KVP_SUCCESS && R->side == SIDE_REMOTE) {
        pthread_mutex_lock(&a->mu);
        bool invalid = R->remote->invalid;
        pthread_mutex_unlock(&a->mu);
        if (invalid)
            st = kvp_err(KVP_ERR_NOT_FOUND,
                         "agent %s was invalidated; load its metadata again and prepare new lists",
                         R->remote->name);
    }
    /* Indices and pairwise lengths. */
    for (uint64_t i = 0; st == KVP_SUCCESS && i < count; i++) {
        if (li[i] >= L->n)
            st = kvp_err(KVP_ERR_INVALID_PARAM,
                         "local_idx[%llu] = %u is out of range: the local list has %llu "
                         "descriptors",
                         (unsigned long long)i, li[i], (unsigned long long)L->n);
        else if (ri[i] >= R->n)
            st = kvp_err(KVP_ERR_INVALID_PARAM,
                         "remote_idx[%llu] = %u is out of range: the remote list has %llu "
                         "descriptors",
                         (unsigned long long)i, ri[i], (unsigned long long)R->n);
        else if (L->d[li[i]].len != R->d[ri[i]].len)
            st = kvp_err(KVP_ERR_MISMATCH,
                         "pair %llu: local descriptor %u has %llu bytes but remote descriptor "
                         "%u has %llu",
                         (unsigned long long)i, li[i], (unsigned long long)L->d[li[i]].len,
                         ri[i], (unsigned long long)R->d[ri[i]].len);
    }
    /* Memory types. */
    int32_t lt = L->mem_type, rt = R->mem_type;
    bool vram = lt == KVP_VRAM || rt == KVP_VRAM;
    /* FILE <-> VRAM: staged through pinned host memory by the copy workers (files.c);
     * GPUDirect Storage (GDS) is the nixl engine's. */
    if (st == KVP_SUCCESS && lt == KVP_FILE && rt == KVP_FILE)
        st = kvp_err(KVP_ERR_NOT_SUPPORTED, "FILE to FILE transfers are not supported");
    if (st == KVP_SUCCESS && (lt == KVP_FILE || rt == KVP_FILE) && R->side != SIDE_SELF)
        st = kvp_err(KVP_ERR_INVALID_PARAM, "FILE transfers are loopback only");
    if (st == KVP_SUCCESS) {
        r = calloc(1, sizeof *r);
        if (!r || kvp_cond_init(&r->cv) != 0) {
            free(r);
            r = NULL;
            st = kvp_err(KVP_ERR_BACKEND, "out of memory creating a request");
        }
    }
    if (st == KVP_SUCCESS) {
        kvp_obj_init(&r->obj, KVP_H_REQ, req_release_obj);
        r->a = a;
        r->op = op;
        r->rtype = rt;
        r->ltype = lt;
        r->state = RS_IDLE;
        r->status = KVP_ERR_NOT_POSTED;
        if (notif_len) {
            r->notif = malloc((size_t)notif_len);
            if (!r->notif) st = kvp_err(KVP_ERR_BACKEND, "out of memory");
            else memcpy(r->notif, notif, (size_t)notif_len);
            r->notif_len = (uint32_t)notif_len;
        }
    }
    if (st == KVP_SUCCESS) {
        /* The local registrations it uses: checked now and at every post. */
        uint32_t cap = 0;
        for (uint64_t i = 0; i < count && st == KVP_SUCCESS; i++) {
            st = use_reg(r, L->dreg[li[i]], &cap);
            if (st == KVP_SUCCESS && R->side == SIDE_SELF) st = use_reg(r, R->dreg[ri[i]], &cap);
        }
        if (st == KVP_SUCCESS) {
            pthread_mutex_lock(&a->mu);
            st = lregs_check_locked(r);
            pthread_mutex_unlock(&a->mu);
        }
    }
    if (st == KVP_SUCCESS) {
        pair_ctx pc = {r, 0, 0};
        if (R->side == SIDE_SELF) {
            if (lt == KVP_FILE || rt == KVP_FILE) {
                r->path = PATH_FILE;
                /* WRITE moves local -> remote: to the file when the remote side is FILE. */
                r->out = (op == KVP_WRITE) == (rt == KVP_FILE);
                for (uint64_t i = 0; i < count && st == KVP_SUCCESS; i++) {
                    const kvp_desc *ld = &L->d[li[i]], *rd = &R->d[ri[i]];
                    const kvp_desc *m = lt == KVP_FILE ? rd : ld, *f = lt == KVP_FILE ? ld : rd;
                    bool dir = lt == KVP_FILE ? L->direct[li[i]] : R->direct[ri[i]];
                    int32_t mt = lt == KVP_FILE ? rt : lt;
                    st = add_piece(&pc, m->addr, f->addr, m->len, (int32_t)f->dev, dir, 0,
                                   mt == KVP_VRAM ? (int32_t)m->dev : -1);
                }
            } else if (vram) {
                r->path = PATH_CUDA;
                r->out = op == KVP_WRITE;
                for (uint64_t i = 0; i < count && st == KVP_SUCCESS; i++) {
                    const kvp_desc *ld = &L->d[li[i]], *rd = &R->d[ri[i]];
                    st = add_piece(&pc, ld->addr, rd->addr, ld->len,
                                   (int32_t)(lt == KVP_VRAM ? ld->dev : rd->dev), false, rd->dev,
                                   -1);
                }
            } else {
                r->path = PATH_MEM;
                r->out = op == KVP_WRITE;
                for (uint64_t i = 0; i < count && st == KVP_SUCCESS; i++)
                    st = add_piece(&pc, L->d[li[i]].addr, R->d[ri[i]].addr, L->d[li[i]].len, -1,
                                   false, 0, -1);
            }
        } else {
            r->remote = R->remote;
            bi_remote_ref(r->remote); /* the request's own: the list may go first */
            r->out = op == KVP_WRITE;
            st = vram ? build_remote_cuda(r, L, li, R, ri, count)
                      : build_remote(r, L, li, R, ri, count);
        }
    }
    if (st == KVP_SUCCESS) {
        if (r->path == PATH_TCP) st = bi_tcp_prepare(r);
        else st = bi_jobs_build(r, a->io_threads);
    }
    if (st == KVP_SUCCESS) st = kvp_handle_insert(&r->obj, &r->handle);
    if (st == KVP_SUCCESS) {
        pthread_mutex_lock(&a->mu);
        r->next = a->reqs;
        if (a->reqs) a->reqs->prev = r;
        a->reqs = r;
        pthread_mutex_unlock(&a->mu);
        *out = r->handle;
    }
    if (r) kvp_obj_put(&r->obj);
    kvp_obj_put(&L->obj);
    kvp_obj_put(&R->obj);
    return st;
}

/* ----------------------------------------------------------------- finish ---- */

void bi_req_finish_locked(bi_req *r, uint64_t post_id, int32_t status, const char *msg) {
    if (r->post_id == post_id && r->state == RS_ACTIVE) {
        r->state = RS_DONE;
        r->status = status;
        atomic_store_explicit(&r->a->last_done_ns, kvp_now_ns(), memory_order_relaxed);
        snprintf(r->msg, sizeof r->msg, "%s", msg ? msg : "");
        /* The data movement of this post has ended (every path finishes only after its
         * copies): the peer may deregister the memory now. */
        bi_req_unpin(r);
        pthread_cond_broadcast(&r->cv);
        bi_event_locked(r->a);
    }
}

void bi_req_finish(bi_req *r, uint64_t post_id, int32_t status, const char *msg) {
    bi_agent *a = r->a;
    pthread_mutex_lock(&a->mu);
    bi_req_finish_locked(r, post_id, status, msg);
    pthread_mutex_unlock(&a->mu);
    bi_event_flush();
}

bool bi_remote_gone(bi_remote *rm) {
    if (atomic_load(&rm->dead)) return true;
    /* Under a->mu: kvp_invalidate_remote closes the pidfd under it, and a closed fd
     * number may already belong to something else. The poll does not block. */
    bool gone = false;
    bi_agent *a = rm->a;
    pthread_mutex_lock(&a->mu);
    if (rm->pidfd >= 0) {
        struct pollfd pf = {.fd = rm->pidfd, .events = POLLIN};
        int n = poll(&pf, 1, 0);
        gone = n > 0 && (pf.revents & (POLLIN | POLLHUP | POLLERR));
        if (gone) {
            /* Nothing more to learn from it: the descriptor goes now. */
            (void)epoll_ctl(a->epfd, EPOLL_CTL_DEL, rm->pidfd, NULL);
            kvp_close(rm->pidfd);
            rm->pidfd = -1;
            atomic_store(&rm->dead, true);
            rm->died = true;
        }
    }
    pthread_mutex_unlock(&a->mu);
    return gone;
}

void bi_req_complete(bi_req *r, uint64_t post_id) {
    bi_agent *a = r->a;
    char msg[512];
    if (r->remote && r->path != PATH_TCP && !r->remote->same_process &&
        bi_remote_gone(r->remote)) {
        snprintf(msg, sizeof msg, "peer %s (pid %u) exited during the transfer",
                 r->remote->name, r->remote->pid);
        bi_req_finish(r, post_id, KVP_ERR_REMOTE_DISCONNECT, msg);
        return;
    }
    if (r->notif_len > 0) {
        if (!r->remote) {
            if (!bi_notif_push(a, a->base.name, (uint32_t)strlen(a->base.name), r->notif,
                               r->notif_len, false)) {
                snprintf(msg, sizeof msg,
                         "the data landed but the notification queue of agent %s is full "
                         "(max_notifs=%u): take notifications",
                         a->base.name, a->max_notifs);
                bi_req_finish(r, post_id, KVP_ERR_BACKEND, msg);
                return;
            }
        } else {
            pthread_mutex_lock(&a->mu);
            bi_conn *c = r->conn;
            if (c) bi_conn_ref(c);
            pthread_mutex_unlock(&a->mu);
            uint64_t t0 = kvp_now_ns();
            int32_t st = c ? bi_tcp_send_notif(c, r->notif, r->notif_len)
                           : kvp_err(KVP_ERR_REMOTE_DISCONNECT, "no connection");
            atomic_fetch_add_explicit(&a->n_notif_sends, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&a->notif_send_ns, kvp_now_ns() - t0, memory_order_relaxed);
            if (c) bi_conn_put(c);
            if (st != KVP_SUCCESS) {
                snprintf(msg, sizeof msg,
                         "the data landed but the notification to %s could not be sent: %s",
                         r->remote->name, kvp_err_text());
                bi_req_finish(r, post_id, KVP_ERR_REMOTE_DISCONNECT, msg);
                return;
            }
        }
    }
    bi_req_finish(r, post_id, KVP_SUCCESS, "");
}

void bi_req_cancel(bi_req *r) {
    bi_agent *a = r->a;
    pthread_mutex_lock(&a->mu);
    bi_conn *c = r->conn;
    if (c) bi_conn_ref(c);
    pthread_mutex_unlock(&a->mu);
    /* Always wait for workers, even for a finished request: the worker that finished it
     * may still be on its way out of the job. */
    (void)bi_pool_cancel(&a->pool, r);
    /* Copies a post queued for a worker that never ran (the cancel took r out of the
     * queue): wait for them here. */
    void *launched = bi_pool_take_launched(&a->pool, r, NULL);
    if (launched) {
        (void)kvp_cuda_event_wait(r->cb_dev, launched);
        kvp_cuda_event_put(r->cb_dev, launched);
    }
    /* Copies queued by an asynchronous CUDA post: wait for them (after whoever is
     * waiting for them now). */
    pthread_mutex_lock(&a->mu);
    while (r->cu_waiting || r->tcp_posting) pthread_cond_wait(&r->cv, &a->mu);
    void *ev = NULL;
    if (r->cu_pending) {
        ev = r->cu_ev;
        r->cu_ev = NULL;
        r->cu_pending = false;
    }
    pthread_mutex_unlock(&a->mu);
    if (ev) {
        (void)kvp_cuda_event_wait(r->cb_dev, ev);
        kvp_cuda_event_put(r->cb_dev, ev);
    }
    if (c) {
        bi_tcp_cancel(c, r);
        bi_conn_put(c);
    }
}

void bi_req_fail_active(bi_req *r, int32_t status, const char *msg) {
    bi_agent *a = r->a;
    pthread_mutex_lock(&a->mu);
    bool active = r->state == RS_ACTIVE;
    uint64_t post = r->post_id;
    pthread_mutex_unlock(&a->mu);
    bi_req_cancel(r);
    if (active) bi_req_finish(r, post, status, msg);
}

void bi_reqs_cancel_for(bi_agent *a, bi_remote *rm, int32_t status, const char *msg) {
    pthread_mutex_lock(&a->mu);
    size_t n = 0;
    for (bi_req *r = a->reqs; r; r = r->next)
        if (!rm || r->remote == rm) n++;
    bi_req **v = n ? malloc(n * sizeof *v) : NULL;
    size_t k = 0;
    if (v) {
        for (bi_req *r = a->reqs; r; r = r->next) {
            if (rm && r->remote != rm) continue;
            kvp_obj_ref(&r->obj);
            v[k++] = r;
        }
    }
    pthread_mutex_unlock(&a->mu);
    if (n && !v) {
        /* Out of memory: cancel one at a time under fresh lookups (slow, but correct). */
        for (;;) {
            bi_req *t = NULL;
            pthread_mutex_lock(&a->mu);
            for (bi_req *r = a->reqs; r; r = r->next)
                if ((!rm || r->remote == rm) && r->state == RS_ACTIVE) {
                    t = r;
                    kvp_obj_ref(&t->obj);
                    break;
                }
            pthread_mutex_unlock(&a->mu);
            if (!t) break;
            bi_req_fail_active(t, status, msg);
            kvp_obj_put(&t->obj);
        }
        return;
    }
    for (size_t i = 0; i < k; i++) {
        bi_req_fail_active(v[i], status, msg);
        kvp_obj_put(&v[i]->obj);
    }
    free(v);
}

/* ------------------------------------------------------------------- post ---- */

static int32_t xfer_post(kvp_agent *ka, uint64_t h) {
    bi_agent *a = bi_of(ka);
    bi_req *r = req_get(a, h);
    if (!r) return kvp_err_status();
    int32_t st = KVP_SUCCESS;
    bi_remote *rm = r->remote;
    pthread_mutex_lock(&a->mu);
    if (a->dying) st = kvp_err(KVP_ERR_CANCELED, "agent %s is being destroyed", a->base.name);
    else if (r->released) st = kvp_err(KVP_ERR_NOT_FOUND, "request is being released");
    else if (r->state == RS_ACTIVE)
        st = kvp_err(KVP_ERR_REPOST_ACTIVE,
                     "request 0x%llx is still in progress; wait for it or release it before "
                     "posting again",
                     (unsigned long long)h);
    else if (rm && rm->invalid)
        st = kvp_err(KVP_ERR_NOT_FOUND, "agent %s was invalidated", rm->name);
    pthread_mutex_unlock(&a->mu);
    if (st == KVP_SUCCESS && rm && !rm->same_process && rm->same_host && bi_remote_gone(rm))
        st = kvp_err(KVP_ERR_REMOTE_DISCONNECT, "peer %s (pid %u) has exited", rm->name, rm->pid);
    if (st == KVP_SUCCESS && rm && rm->same_process) {
        bi_agent *peer = bi_live_get(rm->token);
        if (peer) kvp_obj_put(&peer->base.obj);
        else st = kvp_err(KVP_ERR_REMOTE_DISCONNECT,
                          "agent %s (in this process) was destroyed; invalidate it", rm->name);
    }
    if (st != KVP_SUCCESS) {
        kvp_obj_put(&r->obj);
        return st;
    }
    /* A connection is needed for TCP data and for notifications to a peer. Connecting
     * can block (bounded by connect_timeout_ms), so it happens before taking a->mu. */
    bi_conn *c = NULL;
    if (rm && (r->path == PATH_TCP || r->notif_len > 0)) {
        st = bi_tcp_conn_get(a, rm, &c);
        if (st != KVP_SUCCESS) {
            kvp_obj_put(&r->obj);
            return st;
        }
    }
    bool run_inline = false, cu_async = false, cu_launch = false, tcp_post = false;
    bool try_cached = false;
    uint64_t post_id = 0;
    bi_conn *old = NULL;
    pthread_mutex_lock(&a->mu);
    /* The previous post may still be queueing its frames (they would be queued twice). */
    while (r->tcp_posting) pthread_cond_wait(&r->cv, &a->mu);
    if (a->dying) st = kvp_err(KVP_ERR_CANCELED, "agent %s is being destroyed", a->base.name);
    else if (r->released) st = kvp_err(KVP_ERR_NOT_FOUND, "request is being released");
    else if (r->state == RS_ACTIVE)
        st = kvp_err(KVP_ERR_REPOST_ACTIVE, "request 0x%llx is still in progress",
                     (unsigned long long)h);
    else if (rm && rm->invalid)
        st = kvp_err(KVP_ERR_NOT_FOUND, "agent %s was invalidated", rm->name);
    else if (rm && !rm->same_process && rm->same_host && atomic_load(&rm->dead))
        st = kvp_err(KVP_ERR_REMOTE_DISCONNECT, "peer %s (pid %u) has exited", rm->name, rm->pid);
    if (st == KVP_SUCCESS) st = lregs_check_locked(r);
    if (st == KVP_SUCCESS && rm) rm->used = ++a->use_seq;
    char pin_msg[400];
    if (st == KVP_SUCCESS && !bi_req_pin(r, pin_msg, sizeof pin_msg))
        st = kvp_err(KVP_ERR_NOT_FOUND, "%s", pin_msg);
    if (st == KVP_SUCCESS && r->pinned) {
        st = peer_grants_check(r);
        if (st != KVP_SUCCESS) bi_req_unpin(r);
    }
    if (st == KVP_SUCCESS) {
        post_id = ++a->post_seq;
        r->post_id = post_id;
        r->state = RS_ACTIVE;
        r->status = KVP_IN_PROG;
        r->msg[0] = '\0';
        atomic_fetch_add_explicit(&a->n_posts[r->path], 1, memory_order_relaxed);
        if ((r->path == PATH_TCP || r->path == PATH_FILE) &&
            (r->ltype == KVP_VRAM || r->rtype == KVP_VRAM))
            atomic_fetch_add_explicit(&a->n_staged, 1, memory_order_relaxed);
        old = r->conn;
        r->conn = c;
        c = NULL;
        if (r->path == PATH_TCP && r->np > 0) {
            /* Queued and sent outside a->mu: sending VRAM waits for the staging copies
             * (a whole device-to-host copy), which must stall neither the caller's
             * other calls nor the progress thread. A cancel waits for tcp_posting. */
            tcp_post = true;
            r->tcp_posting = true;
        } else if (r->np == 0 || r->total <= a->inline_max ||
                   ((r->path == PATH_MEM || r->path == PATH_CMA) &&
                    r->total <= a->mem_inline_max) ||
                   (r->path == PATH_CUDA && r->ltype == KVP_VRAM && r->rtype == KVP_VRAM &&
                    r->total <= a->vram_inline_max)) {
            /* A memory copy of a chunk or so costs about what the thread hops around a
             * worker do (its wake-up, then the waiter's: tens of microseconds each on a
             * busy host), so it runs here; files (the disk) and TCP never do past
             * inline_max. Device to device, a chunk copies in microseconds (28 MiB: some
             * 15 us on an H200) where a worker's wake-up on a VM costs 30-90 us: the
             * post queues the copies and waits for them itself. */
            run_inline = true;
            atomic_fetch_add_explicit(&a->n_inline, 1, memory_order_relaxed);
            bi_pool_claim_inline(&a->pool, r); /* counts as a running worker */
        } else if (bi_req_cached_read_ok(r)) {
            /* A buffered read of a chunk or so: from the page cache, a read in this thread
             * costs what the copy does, where a worker adds two thread hops (its wake-up
             * and the waiter's) that cost as much as the copy of a few MiB. Data not
             * cached goes to the workers: this thread never waits for the disk. */
            try_cached = true;
            bi_pool_claim_inline(&a->pool, r);
        } else if (r->path == PATH_CUDA && r->cb_onedev && !(rm && rm->same_process)) {
            /* GPU copies: queued right here (microseconds). Without a notification or
             * event waiters, whoever waits or polls completes the request: no worker
             * hop at all. Otherwise (a notification to send promptly, or waiters that
             * sleep on the agent's events, kvp_event_fd / kvp_event_notify, which a
             * finishing worker signals) a worker waits for the copies' event: it wakes
             * while the GPU copies, not before the copies start. (A same-process peer,
             * copied under its lock, takes a worker for the whole job.) */
            if (r->notif_len == 0 && !bi_events_wanted(a)) cu_async = true;
            else cu_launch = true;
            bi_pool_claim_inline(&a->pool, r);
        } else {
            bi_pool_submit(&a->pool, r);
        }
    }
    pthread_mutex_unlock(&a->mu);
    if (old) bi_conn_put(old);
    if (c) bi_conn_put(c);
    if (tcp_post) {
        int32_t ts = bi_tcp_post(r->conn, r, post_id);
        char tmsg[sizeof r->msg];
        if (ts != KVP_SUCCESS) snprintf(tmsg, sizeof tmsg, "%s", kvp_err_text());
        pthread_mutex_lock(&a->mu);
        if (ts != KVP_SUCCESS) bi_req_finish_locked(r, post_id, ts, tmsg);
        r->tcp_posting = false;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&a->mu);
        bi_event_flush();
    }
    if (st == KVP_SUCCESS && run_inline) bi_pool_run_inline(&a->pool, r, post_id);
    if (st == KVP_SUCCESS && try_cached && bi_pool_try_cached(&a->pool, r, post_id))
        atomic_fetch_add_explicit(&a->n_inline, 1, memory_order_relaxed);
    if (st == KVP_SUCCESS && cu_async) bi_cuda_post_async(r, post_id);
    if (st == KVP_SUCCESS && cu_launch) bi_cuda_post_launched(r, post_id);
    if (st == KVP_SUCCESS) {
        pthread_mutex_lock(&a->mu);
        if (r->post_id == post_id && r->state == RS_DONE) {
            st = r->status;
            if (st != KVP_SUCCESS) kvp_err(st, "%s", r->msg);
        } else {
            st = KVP_IN_PROG;
        }
        pthread_mutex_unlock(&a->mu);
    }
    kvp_obj_put(&r->obj);
    return st;
}

/* The engine's own time in create and post, summed (kvp_agent_info: xfer_creates,
 * xfer_create_ns, xfer_post_calls, xfer_post_ns): what of a request's "create + post" is
 * native, for the benchmarks' timelines. Two clock reads a call (tens of ns). */
int32_t bi_xfer_create(kvp_agent *ka, int32_t op, uint64_t lp, const uint32_t *li, uint64_t rp,
                       const uint32_t *ri, uint64_t count, const uint8_t *notif,
                       uint64_t notif_len, uint64_t *out) {
    uint64_t t0 = kvp_now_ns();
    int32_t st = xfer_create(ka, op, lp, li, rp, ri, count, notif, notif_len, out);
    bi_agent *a = bi_of(ka);
    atomic_fetch_add_explicit(&a->n_create_calls, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&a->create_ns, kvp_now_ns() - t0, memory_order_relaxed);
    return st;
}

int32_t bi_xfer_post(kvp_agent *ka, uint64_t h) {
    uint64_t t0 = kvp_now_ns();
    int32_t st = xfer_post(ka, h);
    bi_agent *a = bi_of(ka);
    atomic_fetch_add_explicit(&a->n_post_calls, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&a->post_ns, kvp_now_ns() - t0, memory_order_relaxed);
    return st;
}

/* ---------------------------------------------------------- status / wait ---- */

static int32_t state_result(bi_agent *a, bi_req *r) {
    if (r->released) return kvp_err(KVP_ERR_CANCELED, "the request was released meanwhile");
    if (a->dying) return kvp_err(KVP_ERR_CANCELED, "agent %s is being destroyed", a->base.name);
    switch (r->state) {
    case RS_IDLE:
        return kvp_err(KVP_ERR_NOT_POSTED, "request 0x%llx was never posted",
                       (unsigned long long)r->handle);
    case RS_ACTIVE: return KVP_IN_PROG;
    default:
        if (r->status != KVP_SUCCESS) return kvp_err(r->status, "%s", r->msg);
        return KVP_SUCCESS;
    }
}

/* An asynchronous CUDA post: completes the request once its event has (block: wait
 * for it; else only ask). a->mu held on entry and on return, dropped meanwhile. */
static void cuda_poll_locked(bi_agent *a, bi_req *r, bool block) {
    if (r->state != RS_ACTIVE || !r->cu_pending || r->cu_waiting) return;
    r->cu_waiting = true;
    void *ev = r->cu_ev;
    int32_t dev = r->cb_dev;
    uint64_t post = r->post_id;
    pthread_mutex_unlock(&a->mu);
    int32_t st = block ? kvp_cuda_event_wait(dev, ev) : kvp_cuda_event_query(dev, ev);
    char msg[400] = "";
    if (st != KVP_SUCCESS && st != KVP_IN_PROG) snprintf(msg, sizeof msg, "%s", kvp_err_text());
    pthread_mutex_lock(&a->mu);
    r->cu_waiting = false;
    bool done = st != KVP_IN_PROG && r->cu_pending && r->post_id == post &&
                r->state == RS_ACTIVE;
    if (done) {
        r->cu_pending = false;
        r->cu_ev = NULL;
    }
    pthread_cond_broadcast(&r->cv); /* a cancel may wait for cu_waiting */
    pthread_mutex_unlock(&a->mu);
    if (done) {
        kvp_cuda_event_put(dev, ev);
        if (st == KVP_SUCCESS) bi_req_complete(r, post);
        else bi_req_finish(r, post, st, msg);
    }
    pthread_mutex_lock(&a->mu);
}

int32_t bi_xfer_status(kvp_agent *ka, uint64_t h) {
    bi_agent *a = bi_of(ka);
    bi_req *r = req_get(a, h);
    if (!r) return kvp_err_status();
    pthread_mutex_lock(&a->mu);
    if (r->cu_pending && !r->released && !a->dying) cuda_poll_locked(a, r, false);
    int32_t st = state_result(a, r);
    pthread_mutex_unlock(&a->mu);
    kvp_obj_put(&r->obj);
    return st;
}

int32_t bi_xfer_wait(kvp_agent *ka, uint64_t h, int64_t timeout_ms) {
    bi_agent *a = bi_of(ka);
    bi_req *r = req_get(a, h);
    if (!r) return kvp_err_status();
    struct timespec dl = kvp_deadline_ms(timeout_ms);
    pthread_mutex_lock(&a->mu);
    if (timeout_ms > 0 && r->path == PATH_MEM && r->state == RS_ACTIVE && !a->dying &&
        !r->released) {
        /* A memory copy still queued: this thread copies what no worker has started
         * rather than sleep until one has (it would only wait for them). Saves a
         * thread hop at each end: no worker wake-up before the first job and, when this
         * thread copies the last one, none after. Memory copies only: they end in
         * bounded time (a file job could block past the wait's deadline). */
        pthread_mutex_unlock(&a->mu);
        bi_pool_help(&a->pool, r);
        pthread_mutex_lock(&a->mu);
    }
    bool polled = false;
    while (r->state == RS_ACTIVE && !a->dying && !r->released) {
        if (r->cu_pending && !r->cu_waiting && (timeout_ms > 0 || !polled)) {
            /* GPU copies in flight: wait for their event here (a copy takes
             * milliseconds at most), then the request completes. */
            cuda_poll_locked(a, r, timeout_ms > 0);
            polled = true;
            continue;
        }
        int rc = pthread_cond_timedwait(&r->cv, &a->mu, &dl);
        if (rc == ETIMEDOUT) break;
    }
    int32_t st = state_result(a, r);
    pthread_mutex_unlock(&a->mu);
    kvp_obj_put(&r->obj);
    return st;
}

int32_t bi_xfer_message(kvp_agent *ka, uint64_t h, kvp_buf *out) {
    bi_agent *a = bi_of(ka);
    bi_req *r = req_get(a, h);
    if (!r) return kvp_err_status();
    pthread_mutex_lock(&a->mu);
    if (r->state == RS_DONE && r->status != KVP_SUCCESS) kvp_buf_put(out, r->msg, strlen(r->msg));
    pthread_mutex_unlock(&a->mu);
    kvp_obj_put(&r->obj);
    return KVP_SUCCESS;
}

int32_t bi_xfer_release(kvp_agent *ka, uint64_t h) {
    bi_agent *a = bi_of(ka);
    bi_req *r = req_get(a, h);
    if (!r) return kvp_err_status();
    pthread_mutex_lock(&a->mu);
    if (r->released) {
        pthread_mutex_unlock(&a->mu);
        kvp_obj_put(&r->obj);
        return kvp_err(KVP_ERR_NOT_FOUND, "request 0x%llx is already being released",
                       (unsigned long long)h);
    }
    r->released = true;
    if (r->prev) r->prev->next = r->next;
    else if (a->reqs == r) a->reqs = r->next;
    if (r->next) r->next->prev = r->prev;
    r->next = r->prev = NULL;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&a->mu);
    bi_req_fail_active(r, KVP_ERR_CANCELED, "request released");
    kvp_handle_drop(h, &r->obj);
    kvp_obj_put(&r->obj);
    pthread_mutex_lock(&a->mu);
    bi_remotes_sweep_locked(a); /* a dead or invalidated peer may be unused now */
    pthread_mutex_unlock(&a->mu);
    return KVP_SUCCESS;
}
