/*
 * builtin_agent.c - the builtin engine's agent: creation and destruction, registration,
 * metadata, remote agents and prepared lists. Transfers are in xfer.c, the copy
 * workers in pool.c/copy.c, TCP in tcp_*.c (see tcp.h), notifications in notif.c.
 */
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "builtin.h"
#include "cuda_loader.h"
#include "errors.h"
#include "memory.h"

bi_agent *bi_of(kvp_agent *a) { return (bi_agent *)a; }

/* ------------------------------------------------------ live agent registry ---- */

static pthread_mutex_t g_live_mu = PTHREAD_MUTEX_INITIALIZER;
static bi_agent *g_live;

static void live_add(bi_agent *a) {
    pthread_mutex_lock(&g_live_mu);
    a->live_next = g_live;
    g_live = a;
    pthread_mutex_unlock(&g_live_mu);
}

static void live_remove(bi_agent *a) {
    pthread_mutex_lock(&g_live_mu);
    for (bi_agent **pp = &g_live; *pp; pp = &(*pp)->live_next) {
        if (*pp == a) {
            *pp = a->live_next;
            break;
        }
    }
    a->live_next = NULL;
    pthread_mutex_unlock(&g_live_mu);
}

bi_agent *bi_live_get(const uint8_t token[16]) {
    bi_agent *found = NULL;
    pthread_mutex_lock(&g_live_mu);
    for (bi_agent *a = g_live; a; a = a->live_next) {
        if (memcmp(a->token, token, 16) == 0) {
            kvp_obj_ref(&a->base.obj);
            found = a;
            break;
        }
    }
    pthread_mutex_unlock(&g_live_mu);
    return found;
}

static void bi_destroy(kvp_agent *ka);
static void bi_wake_all(kvp_agent *ka);
static int32_t bi_info(kvp_agent *ka, kvp_buf *out);
static int32_t bi_register(kvp_agent *ka, int32_t mem_type, const uint64_t *addrs,
                      const uint64_t *lens, const uint64_t *devs, uint64_t count,
                      const char *meta, uint64_t *out_reg);
static int32_t bi_dereg(kvp_agent *ka, uint64_t reg);
static int32_t bi_local_md(kvp_agent *ka, kvp_buf *out);
static int32_t bi_load_remote(kvp_agent *ka, const uint8_t *blob, uint64_t len,
                              char name_out[KVP_NAME_MAX + 1]);
static int32_t bi_invalidate(kvp_agent *ka, const char *remote);
static int32_t bi_prep(kvp_agent *ka, const char *remote, kvp_dlist *l, uint64_t *out);
static int32_t bi_prepped_release(kvp_agent *ka, uint64_t prepped);

static const kvp_engine_ops g_builtin_ops = {
    .name = "builtin",
    .destroy = bi_destroy,
    .wake_all = bi_wake_all,
    .info = bi_info,
    .reg = bi_register,
    .dereg = bi_dereg,
    .local_md = bi_local_md,
    .load_remote = bi_load_remote,
    .invalidate = bi_invalidate,
    .prep = bi_prep,
    .prepped_release = bi_prepped_release,
    .xfer_create = bi_xfer_create,
    .xfer_post = bi_xfer_post,
    .xfer_status = bi_xfer_status,
    .xfer_wait = bi_xfer_wait,
    .xfer_message = bi_xfer_message,
    .xfer_release = bi_xfer_release,
    .notif_send = bi_notif_send,
    .notif_take = bi_notif_take,
    .notif_wait = bi_notif_wait,
    .event_fd = bi_event_fd,
    .event_notify = bi_event_notify,
    .event_ack = bi_event_ack,
    .grant = bi_grant,
    .revoke = bi_revoke,
    .grant_each = bi_grant_each,
    .revoke_each = bi_revoke_each,
};

/* ---------------------------------------------------------------- create ---- */

static const char *const g_known_params[] = {
    "listen_host", "listen_port", "advertise_host", "io_threads",
    "connect_timeout_ms", "transport", "inline_max", "vram_copy", "dereg_timeout_ms",
    "max_remotes", "page_grants", "max_grants", "max_read_queue", "max_inbound_conns",
    "hello_timeout_ms", "max_notifs", "max_notif_bytes", "cached_read_max", "mem_inline_max",
    "vram_inline_max", "peer_prefault_ahead", NULL,
};

/* Copy workers by default: half the cores this process may run on, 2 to 8. One thread
 * copying memory nobody touched lately is bound by its misses, not by the memory (a
 * cold 4 MiB copy: 650-700 us on the 16-core H200 host, 6 GB/s), so more workers copy
 * faster: there P2P's 64 x 4 MiB retrieve went from 15-16 to 23-25 GB/s with 8 instead
 * of 4 (2026-12-04), PD's 64 x 28 MiB from 11.8 to 17.9 GB/s with 4 instead of 2. A
 * 2-core machine keeps 2, where more would only take turns with the application; idle
 * workers sleep. */
static uint32_t default_io_threads(void) {
    long n = 0;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
    if (n <= 0) n = sysconf(_SC_NPROCESSORS_ONLN);
    long q = n / 2;
    return (uint32_t)(q < 2 ? 2 : q > 8 ? 8 : q);
}

static int32_t apply_params(bi_agent *a, kvp_params *pp) {
    const char *v;
    uint64_t x;
    int32_t st;
    /* Loopback unless the configuration names an address (0.0.0.0 only when asked):
     * a data plane must not be reachable from networks nobody chose. */
    v = kvp_params_get(pp, "listen_host");
    snprintf(a->listen_host, sizeof a->listen_host, "%s", v && *v ? v : "127.0.0.1");
    if ((st = kvp_params_uint(pp, "listen_port", 0, 65535, 0, &x)) != KVP_SUCCESS) return st;
    a->port = (uint16_t)x;
    if ((st = kvp_params_uint(pp, "io_threads", 1, 64, default_io_threads(), &x)) != KVP_SUCCESS)
        return st;
    a->io_threads = (uint32_t)x;
    if ((st = kvp_params_uint(pp, "connect_timeout_ms", 1, 600000, 5000, &x)) != KVP_SUCCESS)
        return st;
    a->connect_timeout_ms = (uint32_t)x;
    if ((st = kvp_params_uint(pp, "inline_max", 0, 16u << 20, 64u << 10, &x)) != KVP_SUCCESS)
        return st;
    a->inline_max = x;
    if ((st = kvp_params_uint(pp, "cached_read_max", 0, 64u << 20, 4u << 20, &x)) != KVP_SUCCESS)
        return st;
    a->cached_read_max = x;
    /* 1 MiB: a 256 KiB PD chunk still copies in the caller (the hops around a worker
     * would cost more than the copy), but a 4 MiB P2P chunk is split over the workers:
     * on the H200 host the holder's part of a one-chunk retrieve went from 725-854 to
     * 347-685 us (2026-12-04, 5 interleaved rounds), where one thread copies cold memory
     * at 6 GB/s. */
    if ((st = kvp_params_uint(pp, "mem_inline_max", 0, 64u << 20, 1u << 20, &x)) != KVP_SUCCESS)
        return st;
    a->mem_inline_max = x;
    if ((st = kvp_params_uint(pp, "vram_inline_max", 0, 1u << 30, 32u << 20, &x)) != KVP_SUCCESS)
        return st;
    a->vram_inline_max = x;
    if ((st = kvp_params_uint(pp, "peer_prefault_ahead", 0, 1ull << 40, 512ull << 20, &x)) !=
        KVP_SUCCESS)
        return st;
    a->prefault_ahead = x;
    if ((st = kvp_params_uint(pp, "dereg_timeout_ms", 0, 600000, 10000, &x)) != KVP_SUCCESS)
        return st;
    a->dereg_timeout_ms = (uint32_t)x;
    if ((st = kvp_params_uint(pp, "max_remotes", 1, 1u << 20, 1024, &x)) != KVP_SUCCESS)
        return st;
    a->max_remotes = (uint32_t)x;
    if ((st = kvp_params_uint(pp, "max_grants", 1, AP_GRANT_CAP_MAX, 65536, &x)) != KVP_SUCCESS)
        return st;
    a->max_grants = (uint32_t)x;
    if ((st = kvp_params_uint(pp, "max_read_queue", 1, 1u << 24, 16384, &x)) != KVP_SUCCESS)
        return st;
    a->max_read_queue = (uint32_t)x;
    if ((st = kvp_params_uint(pp, "max_inbound_conns", 1, 65536, 256, &x)) != KVP_SUCCESS)
        return st;
    a->max_inbound_conns = (uint32_t)x;
    if ((st = kvp_params_uint(pp, "hello_timeout_ms", 1, 600000, a->connect_timeout_ms, &x)) !=
        KVP_SUCCESS)
        return st;
    a->hello_timeout_ms = (uint32_t)x;
    if ((st = kvp_params_uint(pp, "max_notifs", 1, 1u << 24, 65536, &x)) != KVP_SUCCESS)
        return st;
    a->max_notifs = (uint32_t)x;
    if ((st = kvp_params_uint(pp, "max_notif_bytes", 64u << 10, 1ull << 34, 64ull << 20, &x)) !=
        KVP_SUCCESS)
        return st;
    a->max_notif_bytes = x;
    v = kvp_params_get(pp, "page_grants");
    if (v && *v) {
        if (strcmp(v, "on") == 0) a->page_grants = true;
        else if (strcmp(v, "off") != 0)
            return kvp_err(KVP_ERR_INVALID_PARAM,
                           "param page_grants=\"%s\" is not one of on, off", v);
    }
    v = kvp_params_get(pp, "transport");
    if (v && *v) {
        if (strcmp(v, "tcp") == 0) a->force_tcp = true;
        else if (strcmp(v, "auto") != 0)
            return kvp_err(KVP_ERR_INVALID_PARAM,
                           "param transport=\"%s\" is not one of auto, tcp", v);
    }
    v = kvp_params_get(pp, "vram_copy");
    a->vram_kernel = true;
    if (v && *v) {
        if (strcmp(v, "memcpy") == 0) a->vram_kernel = false;
        else if (strcmp(v, "auto") != 0)
            return kvp_err(KVP_ERR_INVALID_PARAM,
                           "param vram_copy=\"%s\" is not one of auto, memcpy", v);
    }
    v = kvp_params_get(pp, "advertise_host");
    if (v && *v) {
        snprintf(a->advertise, sizeof a->advertise, "%s", v);
    } else if (strcmp(a->listen_host, "0.0.0.0") != 0 && strcmp(a->listen_host, "::") != 0) {
        /* Listening on one address only: that is the one peers can reach. */
        snprintf(a->advertise, sizeof a->advertise, "%s", a->listen_host);
    } else {
        kvp_default_advertise(a->advertise, sizeof a->advertise);
    }
    /* Plain keys must be known (typos fail loudly); "BACKEND.key" lines that the builtin
     * engine does not use are accepted and ignored, since they are meant for NIXL
     * plugins. */
    for (size_t i = 0; i < pp->n; i++) {
        if (pp->v[i].backend) continue;
        bool known = false;
        for (size_t k = 0; g_known_params[k]; k++)
            if (strcmp(pp->v[i].key, g_known_params[k]) == 0) known = true;
        if (!known)
            return kvp_err(KVP_ERR_INVALID_PARAM,
                           "unknown param \"%s\" for the builtin engine (known: listen_host, "
                           "listen_port, advertise_host, io_threads, connect_timeout_ms, "
                           "transport, inline_max, vram_copy, dereg_timeout_ms, max_remotes, "
                           "page_grants, max_grants, max_read_queue, max_inbound_conns, "
                           "hello_timeout_ms, max_notifs, max_notif_bytes, cached_read_max, "
                           "mem_inline_max, vram_inline_max, peer_prefault_ahead; "
                           "prefix a key with "
                           "BACKEND. to pass it to a backend)",
                           pp->v[i].key);
    }
    return KVP_SUCCESS;
}

int32_t kvp_builtin_create(const char *name, uint32_t caps, kvp_params *pp, kvp_agent **out) {
    bi_agent *a = calloc(1, sizeof *a);
    if (!a) return kvp_err(KVP_ERR_BACKEND, "out of memory creating agent %s", name);
    int32_t st = kvp_agent_base_init(&a->base, &g_builtin_ops, name);
    if (st != KVP_SUCCESS) {
        free(a);
        return st;
    }
    a->caps = caps;
    a->force_tcp = (caps & KVP_CAP_TCP) && !(caps & KVP_CAP_UCX);
    a->epfd = a->wakefd = a->lfd = a->spare_fd = -1;
    atomic_init(&a->event_w, -1);
    atomic_init(&a->notifier, NULL);
    st = apply_params(a, pp);
    if (st != KVP_SUCCESS) {
        kvp_agent_base_fini(&a->base);
        free(a);
        return st;
    }
    kvp_random_bytes(a->token, sizeof a->token);
    kvp_hostid_self(&a->id);
    /* Without an agent page same-host peers cannot check what is registered when they
     * copy, so they use TCP (where this agent checks itself): not fatal. */
    if (ap_create(&a->page, a->token, 4096, a->max_grants) != KVP_SUCCESS) kvp_err_clear();
    ap_grants_enforce(&a->page, a->page_grants);
    bool mu = false, rw = false, cv = false, smu = false, grw = false;
    if (pthread_mutex_init(&a->mu, NULL) == 0) mu = true;
    if (pthread_rwlock_init(&a->reg_rw, NULL) == 0) rw = true;
    if (pthread_rwlock_init(&a->grant_rw, NULL) == 0) grw = true;
    if (kvp_cond_init(&a->nq_cv) == 0) cv = true;
    if (pthread_mutex_init(&a->stage_mu, NULL) == 0) smu = true;
    if (!mu || !rw || !cv || !smu || !grw) {
        ap_destroy(&a->page);
        if (grw) pthread_rwlock_destroy(&a->grant_rw);
        if (mu) pthread_mutex_destroy(&a->mu);
        if (rw) pthread_rwlock_destroy(&a->reg_rw);
        if (cv) pthread_cond_destroy(&a->nq_cv);
        if (smu) pthread_mutex_destroy(&a->stage_mu);
        kvp_agent_base_fini(&a->base);
        free(a);
        return kvp_err(KVP_ERR_BACKEND, "cannot initialize agent locks");
    }
    atomic_init(&a->stopping, false);
    st = bi_tcp_start(a);
    if (st == KVP_SUCCESS) {
        st = bi_pool_start(&a->pool, a, (int)a->io_threads);
        if (st != KVP_SUCCESS) bi_tcp_stop(a);
    }
    if (st != KVP_SUCCESS) {
        ap_destroy(&a->page);
        pthread_rwlock_destroy(&a->grant_rw);
        pthread_mutex_destroy(&a->mu);
        pthread_rwlock_destroy(&a->reg_rw);
        pthread_cond_destroy(&a->nq_cv);
        pthread_mutex_destroy(&a->stage_mu);
        kvp_agent_base_fini(&a->base);
        free(a);
        return st;
    }
    live_add(a);
    *out = &a->base;
    return KVP_SUCCESS;
}

static void bi_wake_all(kvp_agent *ka) {
    bi_agent *a = bi_of(ka);
    /* No same-process peer may start a copy into our memory from now on; one running
     * holds a reference, which kvp_agent_destroy waits for. */
    live_remove(a);
    pthread_mutex_lock(&a->mu);
    a->dying = true;
    for (bi_req *r = a->reqs; r; r = r->next) pthread_cond_broadcast(&r->cv);
    pthread_cond_broadcast(&a->nq_cv);
    pthread_mutex_unlock(&a->mu);
    bi_event(a);
}

static void remote_free(bi_agent *a, bi_remote *rm) {
    if (rm->pidfd >= 0) {
        (void)epoll_ctl(a->epfd, EPOLL_CTL_DEL, rm->pidfd, NULL);
        kvp_close(rm->pidfd);
        rm->pidfd = -1;
    }
    bi_remote_unmap_all(rm);
    bi_remote_page_close(rm);
    if (rm->conn) bi_conn_put(rm->conn);
    if (rm->rmd) bi_rmd_put(rm->rmd);
    pthread_mutex_destroy(&rm->map_mu);
    free(rm);
}

void bi_remote_ref(bi_remote *rm) { atomic_fetch_add(&rm->refs, 1); }
void bi_remote_unref(bi_remote *rm) { atomic_fetch_sub(&rm->refs, 1); }

/* Takes rm out of the table (a->mu held): nothing refers to it (refs 0, checked by the
 * caller), so no list, request or call can reach it any more. Its pidfd and
 * connection go now; the rest is freed by the progress thread. */
static void remote_drop_locked(bi_agent *a, bi_remote *rm) {
    bool found = false;
    for (bi_remote **pp = &a->remotes; *pp && !found; pp = &(*pp)->next)
        if (*pp == rm) {
            *pp = rm->next;
            a->nremotes--;
            found = true;
            break;
        }
    for (bi_remote **pp = &a->retired; *pp && !found; pp = &(*pp)->next)
        if (*pp == rm) {
            *pp = rm->next;
            found = true;
            break;
        }
    rm->invalid = true;
    if (rm->pidfd >= 0) {
        (void)epoll_ctl(a->epfd, EPOLL_CTL_DEL, rm->pidfd, NULL);
        kvp_close(rm->pidfd);
        rm->pidfd = -1;
    }
    bi_conns_forget_remote(a, rm);
    if (rm->conn) bi_conn_shutdown(rm->conn);
    rm->next = a->rm_free;
    a->rm_free = rm;
    if (a->wakefd >= 0) {
        uint64_t one = 1;
        ssize_t w = write(a->wakefd, &one, sizeof one);
        KVP_UNUSED(w);
    }
}

void bi_remotes_sweep_locked(bi_agent *a) {
    for (bi_remote *rm = a->remotes, *next; rm; rm = next) {
        next = rm->next;
        if (rm->died && atomic_load(&rm->refs) == 0) {
            remote_drop_locked(a, rm);
            atomic_fetch_add(&a->n_remotes_released, 1);
        }
    }
    for (bi_remote *rm = a->retired, *next; rm; rm = next) {
        next = rm->next;
        if (atomic_load(&rm->refs) == 0) remote_drop_locked(a, rm);
    }
}

void bi_remotes_free_dropped(bi_agent *a) {
    pthread_mutex_lock(&a->mu);
    bi_remote *l = a->rm_free;
    a->rm_free = NULL;
    pthread_mutex_unlock(&a->mu);
    while (l) {
        bi_remote *rm = l;
        l = rm->next;
        remote_free(a, rm);
    }
}

/* The table is full: drops the remote least recently used among those nothing refers
 * to (the dead first). False when every one is in use. a->mu held. */
static bool evict_one_locked(bi_agent *a) {
    bi_remote *victim = NULL;
    for (bi_remote *rm = a->remotes; rm; rm = rm->next) {
        if (atomic_load(&rm->refs) != 0) continue;
        bool dead = atomic_load(&rm->dead);
        if (!victim || (dead && !atomic_load(&victim->dead)) ||
            (dead == atomic_load(&victim->dead) && rm->used < victim->used))
            victim = rm;
    }
    if (!victim) return false;
    remote_drop_locked(a, victim);
    atomic_fetch_add(&a->n_remotes_evicted, 1);
    return true;
}

static void bi_destroy(kvp_agent *ka) {
    bi_agent *a = bi_of(ka);
    live_remove(a);
    pthread_mutex_lock(&a->mu);
    a->dying = true;
    pthread_mutex_unlock(&a->mu);
    /* 1. Requests: cancel (no byte touched afterwards) and drop their handles. */
    bi_reqs_cancel_for(a, NULL, KVP_ERR_CANCELED, "agent destroyed");
    for (;;) {
        pthread_mutex_lock(&a->mu);
        bi_req *r = a->reqs;
        if (r) {
            a->reqs = r->next;
            if (r->next) r->next->prev = NULL;
            r->next = r->prev = NULL;
            r->released = true;
        }
        pthread_mutex_unlock(&a->mu);
        if (!r) break;
        kvp_handle_drop(r->handle, &r->obj);
    }
    /* 2. Threads: the progress thread first (it owns every connection), then workers. */
    bi_tcp_stop(a);
    bi_pool_stop(&a->pool);
    bi_fstage_free_all(a);
    /* 3. Lists, registrations, remotes. */
    while (a->prepped) {
        bi_prepped *p = a->prepped;
        a->prepped = p->next;
        p->next = NULL;
        kvp_handle_drop(p->handle, &p->obj);
    }
    while (a->regs) {
        bi_reg *g = a->regs;
        a->regs = g->next;
        g->next = NULL;
        g->dead = true;
        kvp_handle_drop(g->handle, &g->obj);
    }
    bi_index_free(&a->lidx);
    while (a->remotes) {
        bi_remote *rm = a->remotes;
        a->remotes = rm->next;
        remote_free(a, rm);
    }
    while (a->retired) {
        bi_remote *rm = a->retired;
        a->retired = rm->next;
        remote_free(a, rm);
    }
    bi_remotes_free_dropped(a);
    bi_notif_free_all(a);
    bi_grants_free_all(a);
    pthread_rwlock_destroy(&a->grant_rw);
    ap_destroy(&a->page);
    kvp_close(a->epfd);
    /* Nothing signals any more: the reader of kvp_event_fd sees end of file. */
    int ew = atomic_exchange(&a->event_w, -1);
    if (ew >= 0) kvp_close(ew);
    /* Never joined here: its thread may be inside a callback that waits for this very
     * thread (Deno); it exits after that call, holding its own reference. */
    kvp_notifier *nt = atomic_exchange(&a->notifier, NULL);
    if (nt) kvp_notifier_stop(nt);
    pthread_mutex_destroy(&a->mu);
    pthread_rwlock_destroy(&a->reg_rw);
    pthread_cond_destroy(&a->nq_cv);
    pthread_mutex_destroy(&a->stage_mu);
    kvp_agent_base_fini(&a->base);
    free(a);
}

static int32_t bi_info(kvp_agent *ka, kvp_buf *out) {
    bi_agent *a = bi_of(ka);
    char line[1024];
    snprintf(line, sizeof line,
             "name=%s\nengine=builtin\nbackends=%s%s%s\nlisten=%s:%u\nadvertise=%s:%u\n"
             "io_threads=%u\ntransport=%s\nconnect_timeout_ms=%u\ninline_max=%llu\n"
             "cached_read_max=%llu\nmem_inline_max=%llu\nvram_inline_max=%llu\nvram_copy=%s\n",
             a->base.name, (a->caps & KVP_CAP_UCX) ? "UCX," : "",
             (a->caps & KVP_CAP_TCP) ? "TCP," : "", (a->caps & KVP_CAP_POSIX) ? "POSIX" : "",
             a->listen_host, a->port, a->advertise, a->port, a->io_threads,
             a->force_tcp ? "tcp" : "auto", a->connect_timeout_ms,
             (unsigned long long)a->inline_max, (unsigned long long)a->cached_read_max,
             (unsigned long long)a->mem_inline_max, (unsigned long long)a->vram_inline_max,
             a->vram_kernel ? "auto" : "memcpy");
    /* Tidy a trailing comma in backends when POSIX is absent. */
    char *b = strstr(line, "backends=");
    if (b) {
        char *nl = strchr(b, '\n');
        if (nl && nl[-1] == ',') memmove(nl - 1, nl, strlen(nl) + 1);
    }
    kvp_buf_put(out, line, strlen(line));
    /* Which data paths posts took: lets tests and benchmarks check that same-host data
     * really bypassed sockets. */
    snprintf(line, sizeof line,
             "posts_mem=%llu\nposts_cma=%llu\nposts_tcp=%llu\nposts_file=%llu\n"
             "posts_cuda=%llu\nposts_inline=%llu\nposts_staged=%llu\n",
             (unsigned long long)atomic_load(&a->n_posts[PATH_MEM]),
             (unsigned long long)atomic_load(&a->n_posts[PATH_CMA]),
             (unsigned long long)atomic_load(&a->n_posts[PATH_TCP]),
             (unsigned long long)atomic_load(&a->n_posts[PATH_FILE]),
             (unsigned long long)atomic_load(&a->n_posts[PATH_CUDA]),
             (unsigned long long)atomic_load(&a->n_inline),
             (unsigned long long)atomic_load(&a->n_staged));
    kvp_buf_put(out, line, strlen(line));
    snprintf(line, sizeof line,
             "cuda_launched=%llu\ncuda_queue_ns=%llu\ncuda_worker_hop_ns=%llu\n"
             "cuda_event_wait_ns=%llu\ncuda_direct=%llu\ncuda_direct_queue_ns=%llu\n"
             "cuda_direct_wait_ns=%llu\nnotif_sends=%llu\nnotif_send_ns=%llu\n",
             (unsigned long long)atomic_load(&a->n_cu_launched),
             (unsigned long long)atomic_load(&a->cu_queue_ns),
             (unsigned long long)atomic_load(&a->cu_hop_ns),
             (unsigned long long)atomic_load(&a->cu_event_wait_ns),
             (unsigned long long)atomic_load(&a->n_cu_direct),
             (unsigned long long)atomic_load(&a->cu_direct_queue_ns),
             (unsigned long long)atomic_load(&a->cu_direct_wait_ns),
             (unsigned long long)atomic_load(&a->n_notif_sends),
             (unsigned long long)atomic_load(&a->notif_send_ns));
    kvp_buf_put(out, line, strlen(line));
    snprintf(line, sizeof line,
             "xfer_creates=%llu\nxfer_create_ns=%llu\nxfer_post_calls=%llu\nxfer_post_ns=%llu\n"
             "peer_prefault_ahead=%llu\nprefault_create_bytes=%llu\nprefault_ahead_bytes=%llu\n",
             (unsigned long long)atomic_load(&a->n_create_calls),
             (unsigned long long)atomic_load(&a->create_ns),
             (unsigned long long)atomic_load(&a->n_post_calls),
             (unsigned long long)atomic_load(&a->post_ns), (unsigned long long)a->prefault_ahead,
             (unsigned long long)atomic_load(&a->prefault_create_bytes),
             (unsigned long long)atomic_load(&a->prefault_ahead_bytes));
    kvp_buf_put(out, line, strlen(line));
    /* Stamps on the host's monotonic clock (see last_done_ns in builtin.h). The notifier is
     * the agent's until destroy, so it cannot go while the agent is in use here. */
    kvp_notifier *nt = atomic_load_explicit(&a->notifier, memory_order_acquire);
    uint64_t call_ns = nt ? kvp_notifier_last_call_ns(nt) : 0;
    snprintf(line, sizeof line,
             "clock_ns=%llu\nlast_done_ns=%llu\nlast_notif_in_ns=%llu\nwake_call_ns=%llu\n",
             (unsigned long long)kvp_now_ns(),
             (unsigned long long)atomic_load(&a->last_done_ns),
             (unsigned long long)atomic_load(&a->last_notif_in_ns), (unsigned long long)call_ns);
    kvp_buf_put(out, line, strlen(line));
    snprintf(line, sizeof line, "dereg_timeout_ms=%u\ndereg_timeouts=%llu\n", a->dereg_timeout_ms,
             (unsigned long long)atomic_load(&a->n_dereg_timeouts));
    kvp_buf_put(out, line, strlen(line));
    pthread_mutex_lock(&a->mu);
    uint64_t nq = a->nq_count, nqb = a->nq_bytes;
    uint32_t nin = a->n_inbound;
    pthread_mutex_unlock(&a->mu);
    snprintf(line, sizeof line,
             "max_read_queue=%u\nread_queue_full=%llu\nmax_inbound_conns=%u\ninbound_conns=%u\n"
             "conns_refused=%llu\nhello_timeout_ms=%u\nhello_timeouts=%llu\nmax_notifs=%u\n"
             "max_notif_bytes=%llu\nnotifs_queued=%llu\nnotif_bytes_queued=%llu\n"
             "notifs_refused=%llu\n",
             a->max_read_queue, (unsigned long long)atomic_load(&a->n_read_queue_full),
             a->max_inbound_conns, nin, (unsigned long long)atomic_load(&a->n_conns_refused),
             a->hello_timeout_ms, (unsigned long long)atomic_load(&a->n_hello_timeouts),
             a->max_notifs, (unsigned long long)a->max_notif_bytes, (unsigned long long)nq,
             (unsigned long long)nqb, (unsigned long long)atomic_load(&a->n_notifs_refused));
    kvp_buf_put(out, line, strlen(line));
    snprintf(line, sizeof line, "page_grants=%s\nmax_grants=%u\ngrants=%llu\ngrants_refused=%llu\n"
             "grant_tables=%llu\n",
             a->page_grants ? "on" : "off", a->max_grants,
             (unsigned long long)bi_grants_count(a),
             (unsigned long long)atomic_load(&a->n_grants_refused),
             (unsigned long long)atomic_load(&a->grant_epoch));
    kvp_buf_put(out, line, strlen(line));
    /* The remote agent table: its limit, what is in it, what left it and why. */
    pthread_mutex_lock(&a->mu);
    uint64_t nrm = a->nremotes, ndead = 0;
    uint64_t nsame = 0;
    for (bi_remote *rm = a->remotes; rm; rm = rm->next) {
        ndead += atomic_load(&rm->dead);
        nsame += atomic_load(&rm->same_host);
    }
    pthread_mutex_unlock(&a->mu);
    snprintf(line, sizeof line,
             "max_remotes=%u\nremotes=%llu\nremotes_dead=%llu\nremotes_released=%llu\n"
             "remotes_evicted=%llu\nremotes_refused=%llu\nremotes_same_host=%llu\n"
             "ipc_handles_open=%llu\n",
             a->max_remotes, (unsigned long long)nrm, (unsigned long long)ndead,
             (unsigned long long)atomic_load(&a->n_remotes_released),
             (unsigned long long)atomic_load(&a->n_remotes_evicted),
             (unsigned long long)atomic_load(&a->n_remotes_refused), (unsigned long long)nsame,
             (unsigned long long)atomic_load(&a->n_ipc_open));
    kvp_buf_put(out, line, strlen(line));
    /* Which copy kernel device 0 runs (machine code or JIT-compiled PTX), once loaded. */
    int sm = 0;
    const char *ki = kvp_cuda_kernel_image(0, &sm);
    if (ki[0]) {
        snprintf(line, sizeof line, "vram_copy_kernel_dev0=%s sm_%d\n", ki, sm);
        kvp_buf_put(out, line, strlen(line));
    }
    /* Why scattered VRAM pages are not copied by the library's kernel, once known. */
    const char *kn = kvp_cuda_kernel_note();
    if (kn[0]) {
        snprintf(line, sizeof line, "vram_copy_note=%s\n", kn);
        kvp_buf_put(out, line, strlen(line));
    }
    return KVP_SUCCESS;
}

/* ------------------------------------------------------------ registration ---- */

static void reg_release(kvp_obj *o) {
    bi_reg *g = (bi_reg *)o;
    free(g->r);
    free(g->file_direct);
    free(g->slot);
    free(g);
}

/* Rebuilds the local index from the live registrations. Caller holds reg_rw (write). */
static int32_t rebuild_local_index(bi_agent *a) {
    uint64_t n = 0;
    for (bi_reg *g = a->regs; g; g = g->next) n += g->n;
    const kvp_md_region **v = n ? malloc((size_t)n * sizeof *v) : NULL;
    if (n && !v) return kvp_err(KVP_ERR_BACKEND, "out of memory indexing registrations");
    uint64_t k = 0;
    for (bi_reg *g = a->regs; g; g = g->next)
        for (uint64_t i = 0; i < g->n; i++) v[k++] = &g->r[i];
    int32_t st = bi_index_build(&a->lidx, v, n);
    free(v);
    return st;
}

static int32_t fill_region(bi_agent *a, int32_t mt, uint64_t i, uint64_t addr, uint64_t len,
                           uint64_t dev, kvp_md_region *r, bool *direct) {
    memset(r, 0, sizeof *r);
    r->mem_type = mt;
    r->addr = addr;
    r->len = len;
    r->dev = dev;
    r->memfd = -1;
    if (mt == KVP_DRAM) {
        r->dev = 0;
        if (addr == 0 || len == 0 || addr + len < addr)
            return kvp_err(KVP_ERR_INVALID_PARAM,
                           "kvp_register: DRAM region %llu (addr 0x%llx, len %llu) is empty, "
                           "NULL or wraps around",
                           (unsigned long long)i, (unsigned long long)addr,
                           (unsigned long long)len);
        kvp_memfd_info mi;
        if (kvp_mem_find_memfd(addr, len, &mi)) {
            r->flags |= KVP_MDR_MEMFD;
            r->memfd = mi.fd;
            r->memfd_ino = mi.ino;
            r->memfd_off = addr - mi.base;
            r->memfd_size = mi.size;
        }
        return KVP_SUCCESS;
    }
    if (mt == KVP_VRAM) {
        int32_t st = kvp_cuda_check_dev((int64_t)dev);
        if (st != KVP_SUCCESS)
            return kvp_err_wrap(st == KVP_ERR_INVALID_PARAM ? st : KVP_ERR_NOT_SUPPORTED,
                                "kvp_register: VRAM region %llu on device %llu",
                                (unsigned long long)i, (unsigned long long)dev);
        if (addr == 0 || len == 0 || addr + len < addr)
            return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_register: VRAM region %llu is empty or "
                           "NULL", (unsigned long long)i);
        uint64_t base = addr;
        (void)kvp_mem_find_vram(addr, len, (int32_t)dev, &base);
        kvp_cuda_prepare_copy_kernel((int32_t)dev);
        /* A same-host peer opens the allocation through this handle (CUDA IPC works on
         * whole allocations: hence the base and the offset). Without it the region is
         * still usable locally and over TCP. */
        if (kvp_cuda_ipc_get((int32_t)dev, base, r->ipc) == KVP_SUCCESS) {
            r->flags |= KVP_MDR_IPC;
            r->ipc_off = addr - base;
        }
        kvp_err_clear();
        return KVP_SUCCESS;
    }
    if (mt == KVP_FILE) {
        if (!(a->caps & KVP_CAP_POSIX))
            return kvp_err(KVP_ERR_NOT_SUPPORTED,
                           "kvp_register: FILE needs the POSIX backend (agent %s was created "
                           "without it)", a->base.name);
        if (dev > INT32_MAX)
            return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_register: FILE region %llu: dev %llu is "
                           "not a file descriptor", (unsigned long long)i,
                           (unsigned long long)dev);
        struct stat st;
        if (fstat((int)dev, &st) != 0)
            return kvp_err(KVP_ERR_INVALID_PARAM,
                           "kvp_register: FILE region %llu: fd %llu is not usable: %s",
                           (unsigned long long)i, (unsigned long long)dev, strerror(errno));
        int fl = fcntl((int)dev, F_GETFL);
        if (fl < 0)
            return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_register: fcntl(fd %llu) failed: %s",
                           (unsigned long long)dev, strerror(errno));
        if ((fl & O_ACCMODE) != O_RDWR)
            return kvp_err(KVP_ERR_INVALID_PARAM,
                           "kvp_register: FILE region %llu: fd %llu must be open read-write",
                           (unsigned long long)i, (unsigned long long)dev);
        *direct = (fl & O_DIRECT) != 0;
        if (len == 0) {
            if ((uint64_t)st.st_size <= addr)
                return kvp_err(KVP_ERR_INVALID_PARAM,
                               "kvp_register: FILE region %llu: len 0 means \"to the end of the "
                               "file\" but offset %llu is at or past the end (size %lld)",
                               (unsigned long long)i, (unsigned long long)addr,
                               (long long)st.st_size);
            r->len = (uint64_t)st.st_size - addr;
        }
        if (r->addr + r->len < r->addr)
            return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_register: FILE region %llu wraps around",
                           (unsigned long long)i);
        return KVP_SUCCESS;
    }
    return kvp_err(KVP_ERR_NOT_SUPPORTED,
                   "kvp_register: %s memory needs the nixl engine (%s)", kvp_mem_type_name(mt),
                   kvp_nixl_unavailable_reason());
}

static int32_t bi_register(kvp_agent *ka, int32_t mt, const uint64_t *addrs, const uint64_t *lens,
                      const uint64_t *devs, uint64_t count, const char *meta, uint64_t *out) {
    bi_agent *a = bi_of(ka);
    KVP_UNUSED(meta);
    if (count > (SIZE_MAX / sizeof(kvp_md_region)) / 2)
        return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_register: %llu regions is too many",
                       (unsigned long long)count);
    bi_reg *g = calloc(1, sizeof *g);
    kvp_md_region *r = calloc((size_t)count, sizeof *r);
    bool *dir = calloc((size_t)count, sizeof *dir);
    int32_t *slot = malloc((size_t)count * sizeof *slot);
    if (!g || !r || !dir || !slot) {
        free(g);
        free(r);
        free(dir);
        free(slot);
        return kvp_err(KVP_ERR_BACKEND, "out of memory registering %llu regions",
                       (unsigned long long)count);
    }
    kvp_obj_init(&g->obj, KVP_H_REG, reg_release);
    g->a = a;
    g->mem_type = mt;
    g->n = count;
    g->r = r;
    g->file_direct = dir;
    g->slot = slot;
    for (uint64_t i = 0; i < count; i++) {
        slot[i] = -1;
        int32_t st = fill_region(a, mt, i, addrs[i], lens[i], devs ? devs[i] : 0, &r[i], &dir[i]);
        if (st != KVP_SUCCESS) {
            kvp_obj_put(&g->obj);
            return st;
        }
        r[i].owner = g;
    }
    int32_t st = kvp_handle_insert(&g->obj, &g->handle);
    if (st != KVP_SUCCESS) {
        kvp_obj_put(&g->obj);
        return st;
    }
    pthread_mutex_lock(&a->mu);
    pthread_rwlock_wrlock(&a->reg_rw);
    g->gen = ++a->reg_gen;
    g->next = a->regs;
    a->regs = g;
    st = rebuild_local_index(a);
    if (st != KVP_SUCCESS) a->regs = g->next;
    /* Published in the agent page for same-host peers (memory they can reach). */
    if (st == KVP_SUCCESS && (mt == KVP_DRAM || mt == KVP_VRAM))
        for (uint64_t i = 0; i < count; i++) slot[i] = ap_slot_add(&a->page, &r[i], g->gen);
    pthread_rwlock_unlock(&a->reg_rw);
    pthread_mutex_unlock(&a->mu);
    if (st != KVP_SUCCESS) {
        kvp_handle_drop(g->handle, &g->obj);
        kvp_obj_put(&g->obj);
        return st;
    }
    *out = g->handle;
    kvp_obj_put(&g->obj); /* the table and the agent list keep it */
    return KVP_SUCCESS;
}

/* True when request r uses registration g (a->mu held). */
static bool req_uses(const bi_req *r, const bi_reg *g) {
    for (uint32_t i = 0; i < r->nlregs; i++)
        if (r->lregs[i] == g) return true;
    return false;
}

/*
 * Deregistration, in three steps so that nothing touches the memory once it returns:
 *  1. dying (a->mu): no post may start on the registration from now on (posts check
 *     their registrations under a->mu), and the posts in flight that use it are failed
 *     with KVP_ERR_CANCELED (cancelling waits for the workers and unlinks TCP frames);
 *  2. its slots in the agent page stop granting pins, and the deregistration waits (up
 *     to dereg_timeout_ms) for same-host peers' copies that hold one;
 *  3. removal from the index under reg_rw (write): waits for any target-side recv/send
 *     touching it, later ones see the new epoch and revalidate.
 */
static int32_t bi_dereg(kvp_agent *ka, uint64_t h) {
    bi_agent *a = bi_of(ka);
    bi_reg *g = (bi_reg *)kvp_handle_get(h, KVP_H_REG);
    if (!g) return kvp_err_status();
    if (g->a != a) {
        kvp_obj_put(&g->obj);
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "registration 0x%llx belongs to another agent, not %s",
                       (unsigned long long)h, a->base.name);
    }
    pthread_mutex_lock(&a->mu);
    bool found = false;
    for (bi_reg *q = a->regs; q; q = q->next)
        if (q == g) found = true;
    if (!found || g->dying) {
        pthread_mutex_unlock(&a->mu);
        kvp_obj_put(&g->obj);
        return kvp_err(KVP_ERR_NOT_FOUND, "registration 0x%llx was already deregistered",
                       (unsigned long long)h);
    }
    g->dying = true;
    pthread_mutex_unlock(&a->mu);
    bi_grants_drop_reg(a, g); /* its granted ranges go with it */
    pthread_mutex_lock(&a->mu);
    size_t n = 0, k = 0;
    for (bi_req *r = a->reqs; r; r = r->next)
        if (r->state == RS_ACTIVE && req_uses(r, g)) n++;
    bi_req **busy = n ? malloc(n * sizeof *busy) : NULL;
    if (busy)
        for (bi_req *r = a->reqs; r && k < n; r = r->next)
            if (r->state == RS_ACTIVE && req_uses(r, g)) {
                kvp_obj_ref(&r->obj);
                busy[k++] = r;
            }
    pthread_mutex_unlock(&a->mu);
    char msg[512];
    snprintf(msg, sizeof msg,
             "registration 0x%llx of agent %s was deregistered while this request was in "
             "flight",
             (unsigned long long)h, a->base.name);
    if (n && !busy) {
        /* Out of memory: one at a time under fresh lookups. */
        for (;;) {
            bi_req *t = NULL;
            pthread_mutex_lock(&a->mu);
            for (bi_req *r = a->reqs; r && !t; r = r->next)
                if (r->state == RS_ACTIVE && req_uses(r, g)) {
                    t = r;
                    kvp_obj_ref(&t->obj);
                }
            pthread_mutex_unlock(&a->mu);
            if (!t) break;
            bi_req_fail_active(t, KVP_ERR_CANCELED, msg);
            kvp_obj_put(&t->obj);
        }
    }
    for (size_t i = 0; i < k; i++) {
        bi_req_fail_active(busy[i], KVP_ERR_CANCELED, msg);
        kvp_obj_put(&busy[i]->obj);
    }
    free(busy);
    /* 2. Same-host peers' copies (their pins in the agent page). */
    for (uint64_t i = 0; i < g->n; i++) {
        if (g->slot[i] < 0) continue;
        pthread_mutex_lock(&a->mu);
        int32_t sl = g->slot[i];
        g->slot[i] = -1;
        pthread_mutex_unlock(&a->mu);
        if (!ap_slot_retire(&a->page, sl, a->dereg_timeout_ms))
            atomic_fetch_add(&a->n_dereg_timeouts, 1);
    }
    /* 3. The index. */
    pthread_mutex_lock(&a->mu);
    /* Write side: waits for any recv/send of a peer that is touching registered memory
     * right now; later ones revalidate against the new index (epoch changed). */
    pthread_rwlock_wrlock(&a->reg_rw);
    for (bi_reg **pp = &a->regs; *pp; pp = &(*pp)->next) {
        if (*pp == g) {
            *pp = g->next;
            g->next = NULL;
            break;
        }
    }
    /* Staged VRAM copies are queued on the library's streams and may outlive the
     * recv/send that queued them: wait for them, so that none touches this memory once
     * we return (new ones revalidate against the new index). */
    if (g->mem_type == KVP_VRAM && kvp_cuda_loaded()) kvp_cuda_quiesce();
    g->dead = true;
    a->reg_epoch++;
    int32_t st = rebuild_local_index(a);
    if (st != KVP_SUCCESS) {
        /* Could not allocate a new index: an empty one refuses everything, which is safe
         * (never lets a peer write into memory being deregistered). */
        bi_index_free(&a->lidx);
        st = KVP_SUCCESS;
    }
    pthread_rwlock_unlock(&a->reg_rw);
    pthread_mutex_unlock(&a->mu);
    kvp_handle_drop(h, &g->obj);
    kvp_obj_put(&g->obj);
    return st;
}

/* -------------------------------------------------------------- metadata ---- */

static int32_t bi_local_md(kvp_agent *ka, kvp_buf *out) {
    bi_agent *a = bi_of(ka);
    kvp_md md;
    memset(&md, 0, sizeof md);
    snprintf(md.name, sizeof md.name, "%s", a->base.name);
    memcpy(md.token, a->token, 16);
    memcpy(md.boot_id, a->id.boot_id, 16);
    md.pidns = a->id.pidns;
    md.pid = a->id.pid;
    md.starttime = a->id.starttime;
    snprintf(md.host, sizeof md.host, "%s", a->advertise);
    md.port = a->port;
    md.caps = a->caps;
    if (a->force_tcp) md.caps &= ~KVP_CAP_UCX;
    md.page_fd = a->page.base ? a->page.fd : -1;
    md.page_ino = a->page.ino;
    md.page_size = a->page.size;
    pthread_rwlock_rdlock(&a->reg_rw);
    uint64_t n = 0;
    for (bi_reg *g = a->regs; g; g = g->next)
        if (g->mem_type == KVP_DRAM || g->mem_type == KVP_VRAM) n += g->n;
    int32_t st = KVP_SUCCESS;
    if (n > UINT32_MAX) st = kvp_err(KVP_ERR_BACKEND, "too many regions for metadata");
    if (st == KVP_SUCCESS && n > 0) {
        md.regions = malloc((size_t)n * sizeof *md.regions);
        if (!md.regions) st = kvp_err(KVP_ERR_BACKEND, "out of memory building metadata");
    }
    if (st == KVP_SUCCESS) {
        /* Oldest registration first, so the order is stable across calls. */
        uint64_t k = n;
        for (bi_reg *g = a->regs; g; g = g->next) {
            if (g->mem_type != KVP_DRAM && g->mem_type != KVP_VRAM) continue;
            k -= g->n;
            memcpy(&md.regions[k], g->r, (size_t)g->n * sizeof *g->r);
        }
        md.nregions = n;
    }
    pthread_rwlock_unlock(&a->reg_rw);
    if (st == KVP_SUCCESS) kvp_md_encode(&md, out);
    free(md.regions);
    return st;
}

void bi_rmd_put(bi_rmd *m) {
    if (m && atomic_fetch_sub(&m->refs, 1) == 1) {
        bi_index_free(&m->idx);
        kvp_md_free(&m->md);
        free(m);
    }
}

static int32_t rmd_new(kvp_md *md, bi_rmd **out) {
    bi_rmd *m = calloc(1, sizeof *m);
    const kvp_md_region **v = md->nregions ? malloc((size_t)md->nregions * sizeof *v) : NULL;
    if (!m || (md->nregions && !v)) {
        free(m);
        free(v);
        return kvp_err(KVP_ERR_BACKEND, "out of memory loading metadata");
    }
    atomic_init(&m->refs, 1);
    m->md = *md; /* takes the regions array */
    memset(md, 0, sizeof *md);
    for (uint64_t i = 0; i < m->md.nregions; i++) v[i] = &m->md.regions[i];
    int32_t st = bi_index_build(&m->idx, v, m->md.nregions);
    free(v);
    if (st != KVP_SUCCESS) {
        bi_rmd_put(m);
        return st;
    }
    *out = m;
    return KVP_SUCCESS;
}

bi_remote *bi_remote_find(bi_agent *a, const char *name) {
    for (bi_remote *rm = a->remotes; rm; rm = rm->next)
        if (strcmp(rm->name, name) == 0) return rm;
    return NULL;
}

static void hex16(const uint8_t *t, char out[33]) {
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        out[2 * i] = hx[t[i] >> 4];
        out[2 * i + 1] = hx[t[i] & 15];
    }
    out[32] = '\0';
}

static int32_t bi_load_remote(kvp_agent *ka, const uint8_t *blob, uint64_t len,
                              char name_out[KVP_NAME_MAX + 1]) {
    bi_agent *a = bi_of(ka);
    kvp_md md;
    int32_t st = kvp_md_decode(blob, (size_t)len, &md);
    if (st != KVP_SUCCESS) return st;
    snprintf(name_out, KVP_NAME_MAX + 1, "%s", md.name);
    if (strcmp(md.name, a->base.name) != 0 && memcmp(md.token, a->token, 16) == 0) {
        /* A blob of another name with our own token is a copy of ours: loading it would
         * make this agent write into itself. */
        st = kvp_err(KVP_ERR_NOT_ALLOWED,
                     "metadata of agent %s carries the token of this agent (%s): it is a copy "
                     "of this agent's metadata under another name; refused",
                     md.name, a->base.name);
        kvp_md_free(&md);
        return st;
    }
    if (strcmp(md.name, a->base.name) == 0) {
        /* Our own name: loopback needs no loading. A blob of another incarnation with
         * our name is a configuration error worth reporting. */
        st = memcmp(md.token, a->token, 16) == 0
                 ? KVP_SUCCESS
                 : kvp_err(KVP_ERR_NOT_ALLOWED,
                           "metadata names agent %s, which is this agent's own name but "
                           "another incarnation",
                           md.name);
        kvp_md_free(&md);
        return st;
    }
    /* Fast path: already loaded. */
    pthread_mutex_lock(&a->mu);
    bi_remote *ex = bi_remote_find(a, md.name);
    if (ex) ex->used = ++a->use_seq;
    if (ex) {
        if (memcmp(ex->token, md.token, 16) != 0) {
            char t1[33], t2[33];
            hex16(ex->token, t1);
            hex16(md.token, t2);
            pthread_mutex_unlock(&a->mu);
            st = kvp_err(KVP_ERR_NOT_ALLOWED,
                         "agent %s is already loaded with another incarnation (token %s, new "
                         "blob has %s: the peer restarted?); call kvp_invalidate_remote(\"%s\") "
                         "first",
                         md.name, t1, t2, md.name);
            kvp_md_free(&md);
            return st;
        }
        if (kvp_md_regions_equal(&ex->rmd->md, &md)) {
            pthread_mutex_unlock(&a->mu);
            kvp_md_free(&md);
            return KVP_SUCCESS; /* identical: no-op */
        }
        /* Same incarnation, new region list: install a new snapshot. */
        bi_rmd *m;
        st = rmd_new(&md, &m);
        if (st == KVP_SUCCESS) {
            bi_rmd *old = ex->rmd;
            ex->rmd = m;
            bi_rmd_put(old);
        }
        pthread_mutex_unlock(&a->mu);
        kvp_md_free(&md);
        return st;
    }
    pthread_mutex_unlock(&a->mu);

    bi_remote *rm = calloc(1, sizeof *rm);
    if (!rm) {
        kvp_md_free(&md);
        return kvp_err(KVP_ERR_BACKEND, "out of memory loading %s", name_out);
    }
    if (pthread_mutex_init(&rm->map_mu, NULL) != 0) {
        free(rm);
        kvp_md_free(&md);
        return kvp_err(KVP_ERR_BACKEND, "pthread_mutex_init failed");
    }
    rm->ev.kind = EV_PIDFD;
    rm->a = a;
    rm->pidfd = -1;
    atomic_init(&rm->dead, false);
    atomic_init(&rm->refs, 0);
    snprintf(rm->name, sizeof rm->name, "%s", md.name);
    memcpy(rm->token, md.token, 16);
    snprintf(rm->host, sizeof rm->host, "%s", md.host);
    rm->port = md.port;
    rm->pid = md.pid;
    rm->page_fd = md.page_fd;
    rm->page_ino = md.page_ino;
    rm->page_size = md.page_size;
    static const uint8_t zero[16];
    bool host_eq = memcmp(md.boot_id, zero, 16) != 0 &&
                   memcmp(md.boot_id, a->id.boot_id, 16) == 0 && md.pidns == a->id.pidns &&
                   md.pidns != 0;
    /* What the blob says about locality is a claim: same host is proven by a challenge
     * (bi_remote_prove), same process by the blob's process tag, which only this process
     * can compute, and a live agent of this process with that token. */
    rm->claims_host = host_eq && !a->force_tcp && (a->caps & KVP_CAP_UCX) &&
                      (md.caps & KVP_CAP_UCX);
    rm->starttime = md.starttime;
    atomic_init(&rm->same_host, false);
    if (rm->claims_host && md.pid == a->id.pid && kvp_md_from_this_process(blob, (size_t)len)) {
        bi_agent *peer = bi_live_get(md.token);
        if (peer) {
            rm->same_process = true;
            atomic_store(&rm->same_host, true);
            rm->proof = 1;
            kvp_obj_put(&peer->base.obj);
        }
    }
    bi_rmd *m;
    st = rmd_new(&md, &m);
    kvp_md_free(&md);
    if (st != KVP_SUCCESS) {
        kvp_close(rm->pidfd);
        pthread_mutex_destroy(&rm->map_mu);
        free(rm);
        return st;
    }
    rm->rmd = m;
    pthread_mutex_lock(&a->mu);
    if (bi_remote_find(a, rm->name)) {
        /* Lost a race with another loader of the same name: keep theirs. */
        pthread_mutex_unlock(&a->mu);
        remote_free(a, rm);
        return bi_load_remote(ka, blob, len, name_out);
    }
    /* Bounded: metadata from the network must not grow the table without end. */
    bi_remotes_sweep_locked(a);
    if (a->nremotes >= a->max_remotes && !evict_one_locked(a)) {
        pthread_mutex_unlock(&a->mu);
        atomic_fetch_add(&a->n_remotes_refused, 1);
        remote_free(a, rm);
        return kvp_err(KVP_ERR_NOT_ALLOWED,
                       "cannot load agent %s: the remote agent table of %s is full "
                       "(max_remotes=%u, every one has prepared lists or requests); release "
                       "or invalidate some, or raise max_remotes",
                       name_out, a->base.name, a->max_remotes);
    }
    rm->used = ++a->use_seq;
    a->nremotes++;
    if (rm->pidfd >= 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &rm->ev};
        if (epoll_ctl(a->epfd, EPOLL_CTL_ADD, rm->pidfd, &ev) != 0) {
            /* Without the watch we still poll the pidfd at request completion. */
        }
    }
    rm->next = a->remotes;
    a->remotes = rm;
    pthread_mutex_unlock(&a->mu);
    return KVP_SUCCESS;
}

static int32_t bi_invalidate(kvp_agent *ka, const char *name) {
    bi_agent *a = bi_of(ka);
    pthread_mutex_lock(&a->mu);
    bi_remote *rm = NULL;
    for (bi_remote **pp = &a->remotes; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->name, name) == 0) {
            rm = *pp;
            *pp = rm->next;
            a->nremotes--;
            break;
        }
    }
    if (!rm) {
        pthread_mutex_unlock(&a->mu);
        return kvp_err(KVP_ERR_NOT_FOUND, "kvp_invalidate_remote: agent %s is not loaded in %s",
                       name, a->base.name);
    }
    rm->invalid = true;
    /* Kept (not freed) while prepared lists or requests still point at it (they fail
     * with KVP_ERR_NOT_FOUND because of `invalid`); released by a sweep once none do. */
    rm->next = a->retired;
    a->retired = rm;
    bi_remote_ref(rm); /* ours, for the rest of this call */
    pthread_mutex_unlock(&a->mu);

    char msg[400];
    snprintf(msg, sizeof msg, "agent %s was invalidated (kvp_invalidate_remote)", name);
    bi_reqs_cancel_for(a, rm, KVP_ERR_NOT_FOUND, msg);

    pthread_mutex_lock(&a->mu);
    if (rm->pidfd >= 0) {
        (void)epoll_ctl(a->epfd, EPOLL_CTL_DEL, rm->pidfd, NULL);
        kvp_close(rm->pidfd);
        rm->pidfd = -1;
    }
    bi_conn *c = rm->conn;
    rm->conn = NULL;
    pthread_mutex_unlock(&a->mu);
    if (c) {
        bi_conn_shutdown(c);
        bi_conn_put(c);
    }
    bi_remote_unmap_all(rm);
    pthread_mutex_lock(&a->mu);
    bi_remote_unref(rm);
    bi_remotes_sweep_locked(a);
    pthread_mutex_unlock(&a->mu);
    return KVP_SUCCESS;
}

/* ------------------------------------------------------------ prepared lists ---- */

static void prepped_release_obj(kvp_obj *o) {
    bi_prepped *p = (bi_prepped *)o;
    if (p->remote) bi_remote_unref(p->remote);
    if (p->rmd) bi_rmd_put(p->rmd);
    for (uint32_t i = 0; i < p->nuregs; i++) kvp_obj_put(&p->uregs[i]->obj);
    free(p->uregs);
    free(p->dreg);
    free(p->d);
    free(p->ridx);
    free(p->direct);
    free(p);
}

/* Adds g to the list's distinct registrations (with a reference), once. Lists cover
 * one or a few registrations: a short scan from the last one added. */
static int32_t add_ureg(bi_prepped *p, bi_reg *g) {
    for (uint32_t k = p->nuregs; k-- > 0;)
        if (p->uregs[k] == g) return KVP_SUCCESS;
    if ((p->nuregs & (p->nuregs - 1)) == 0) { /* 0, 1, 2, 4...: grow */
        uint32_t cap = p->nuregs ? p->nuregs * 2 : 1;
        bi_reg **nu = realloc(p->uregs, (size_t)cap * sizeof *nu);
        if (!nu) return kvp_err(KVP_ERR_BACKEND, "out of memory");
        p->uregs = nu;
    }
    kvp_obj_ref(&g->obj);
    p->uregs[p->nuregs++] = g;
    return KVP_SUCCESS;
}

static int32_t bad_desc(bi_agent *a, const char *side, kvp_dlist *l, uint64_t i) {
    return kvp_err(KVP_ERR_INVALID_PARAM,
                   "descriptor %llu of %llu (%s addr 0x%llx len %llu dev %llu) does not lie "
                   "inside memory registered by %s (agent %s); register it first",
                   (unsigned long long)i, (unsigned long long)l->n,
                   kvp_mem_type_name(l->mem_type), (unsigned long long)l->d[i].addr,
                   (unsigned long long)l->d[i].len, (unsigned long long)l->d[i].dev, side,
                   a->base.name);
}

/* A list of a peer's pages is prepared when a channel handshakes, before any request:
 * the same-host proof (a connection and a challenge) and, for VRAM, opening the peer's
 * CUDA IPC handles happen now instead of inside the first request, which would wait for
 * them (some 20 ms for a 900 MiB buffer on an H200). Nothing here fails the preparation:
 * what goes wrong is met again, and reported, by the first transfer. */
static void warm_remote_list(bi_agent *a, bi_prepped *p) {
    bi_remote *rm = p->remote;
    if (rm->same_process || p->n == 0) return;
    bi_remote_prove(a, rm);
    if (p->mem_type == KVP_VRAM && atomic_load(&rm->same_host)) {
        uint32_t last = UINT32_MAX;
        for (uint64_t i = 0; i < p->n; i++) {
            if (p->ridx[i] == last) continue; /* consecutive pages share a region */
            last = p->ridx[i];
            const kvp_md_region *g = &p->rmd->md.regions[last];
            uint64_t base;
            if (g->flags & KVP_MDR_IPC) (void)bi_remote_ipc_open(rm, g, (int32_t)g->dev, &base);
        }
    }
    kvp_err_clear();
}

static int32_t bi_prep(kvp_agent *ka, const char *remote, kvp_dlist *l, uint64_t *out) {
    bi_agent *a = bi_of(ka);
    bi_prepped *p = calloc(1, sizeof *p);
    if (!p) return kvp_err(KVP_ERR_BACKEND, "out of memory");
    kvp_obj_init(&p->obj, KVP_H_PREPPED, prepped_release_obj);
    p->a = a;
    p->mem_type = l->mem_type;
    p->n = l->n;
    if (l->n) {
        p->d = malloc((size_t)l->n * sizeof *p->d);
        if (!p->d) {
            kvp_obj_put(&p->obj);
            return kvp_err(KVP_ERR_BACKEND, "out of memory");
        }
        memcpy(p->d, l->d, (size_t)l->n * sizeof *p->d);
    }
    int32_t st = KVP_SUCCESS;
    bool self = !*remote || strcmp(remote, a->base.name) == 0;
    if (self) {
        p->side = *remote ? SIDE_SELF : SIDE_LOCAL;
        if (l->mem_type != KVP_DRAM && l->mem_type != KVP_VRAM && l->mem_type != KVP_FILE) {
            kvp_obj_put(&p->obj);
            return kvp_err(KVP_ERR_NOT_SUPPORTED, "%s lists need the nixl engine (%s)",
                           kvp_mem_type_name(l->mem_type), kvp_nixl_unavailable_reason());
        }
        if (l->mem_type == KVP_FILE && l->n) {
            p->direct = calloc((size_t)l->n, sizeof *p->direct);
            if (!p->direct) st = kvp_err(KVP_ERR_BACKEND, "out of memory");
        }
        if (st == KVP_SUCCESS && l->n) {
            p->dreg = calloc((size_t)l->n, sizeof *p->dreg);
            if (!p->dreg) st = kvp_err(KVP_ERR_BACKEND, "out of memory");
        }
        pthread_mutex_lock(&a->mu); /* dying registrations are no longer preparable */
        pthread_rwlock_rdlock(&a->reg_rw);
        for (uint64_t i = 0; st == KVP_SUCCESS && i < l->n; i++) {
            const kvp_md_region *r =
                bi_index_find(&a->lidx, l->mem_type, l->d[i].dev, l->d[i].addr, l->d[i].len);
            bi_reg *g = r ? r->owner : NULL;
            if (!r || g->dying) {
                st = bad_desc(a, "this agent", l, i);
                break;
            }
            p->dreg[i] = g;
            /* Which registration holds it tells whether the fd has O_DIRECT. */
            if (p->direct) p->direct[i] = g->file_direct[r - g->r];
            st = add_ureg(p, g);
        }
        pthread_rwlock_unlock(&a->reg_rw);
        pthread_mutex_unlock(&a->mu);
    } else {
        p->side = SIDE_REMOTE;
        pthread_mutex_lock(&a->mu);
        bi_remote *rm = bi_remote_find(a, remote);
        if (!rm) {
            st = kvp_err(KVP_ERR_NOT_FOUND,
                         "agent %s is not loaded in %s (call kvp_load_remote_metadata with its "
                         "metadata first)",
                         remote, a->base.name);
        } else {
            p->remote = rm;
            bi_remote_ref(rm);
            rm->used = ++a->use_seq;
            p->rmd = rm->rmd;
            atomic_fetch_add(&p->rmd->refs, 1);
        }
        pthread_mutex_unlock(&a->mu);
        if (st == KVP_SUCCESS && l->mem_type != KVP_DRAM && l->mem_type != KVP_VRAM)
            st = kvp_err(KVP_ERR_INVALID_PARAM,
                         "a remote agent's %s descriptors cannot be prepared: only DRAM and "
                         "VRAM of a peer are reachable (for files use loopback: remote = own "
                         "name \"%s\")",
                         kvp_mem_type_name(l->mem_type), a->base.name);
        if (st == KVP_SUCCESS && l->n) {
            p->ridx = malloc((size_t)l->n * sizeof *p->ridx);
            if (!p->ridx) st = kvp_err(KVP_ERR_BACKEND, "out of memory");
        }
        for (uint64_t i = 0; st == KVP_SUCCESS && i < l->n; i++) {
            const kvp_md_region *r = bi_index_find(&p->rmd->idx, l->mem_type, l->d[i].dev,
                                                   l->d[i].addr, l->d[i].len);
            if (!r) {
                char side[300];
                snprintf(side, sizeof side, "remote agent %s (as of its last loaded metadata)",
                         remote);
                st = bad_desc(a, side, l, i);
                break;
            }
            p->ridx[i] = (uint32_t)(r - p->rmd->md.regions);
        }
    }
    if (st == KVP_SUCCESS) st = kvp_handle_insert(&p->obj, &p->handle);
    if (st != KVP_SUCCESS) {
        kvp_obj_put(&p->obj);
        return st;
    }
    pthread_mutex_lock(&a->mu);
    p->next = a->prepped;
    a->prepped = p;
    pthread_mutex_unlock(&a->mu);
    if (p->side == SIDE_REMOTE) warm_remote_list(a, p);
    *out = p->handle;
    kvp_obj_put(&p->obj);
    return KVP_SUCCESS;
}

static int32_t bi_prepped_release(kvp_agent *ka, uint64_t h) {
    bi_agent *a = bi_of(ka);
    bi_prepped *p = (bi_prepped *)kvp_handle_get(h, KVP_H_PREPPED);
    if (!p) return kvp_err_status();
    if (p->a != a) {
        kvp_obj_put(&p->obj);
        return kvp_err(KVP_ERR_INVALID_PARAM, "prepared list 0x%llx belongs to another agent",
                       (unsigned long long)h);
    }
    pthread_mutex_lock(&a->mu);
    bool found = false;
    for (bi_prepped **pp = &a->prepped; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&a->mu);
    if (found) kvp_handle_drop(h, &p->obj);
    kvp_obj_put(&p->obj);
    if (!found) return kvp_err(KVP_ERR_NOT_FOUND, "prepared list 0x%llx was already released",
                               (unsigned long long)h);
    pthread_mutex_lock(&a->mu);
    bi_remotes_sweep_locked(a); /* a dead or invalidated peer may be unused now */
    pthread_mutex_unlock(&a->mu);
    return KVP_SUCCESS;
}
