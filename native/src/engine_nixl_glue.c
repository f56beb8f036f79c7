/*
 * engine_nixl_glue.c - the nixl engine as seen from libkvport.so.
 *
 * libkvport.so never links NIXL. The nixl engine is a separate module,
 * libkvport_nixl.so (engine_nixl*.cpp, built only when NIXL is found), which this file
 * dlopens on first use and puts behind the engine vtable of engine.h. So one
 * libkvport.so serves machines with and without NIXL: without the module, or when the
 * module cannot load (libnixl.so missing at run time), the nixl engine is "not
 * available" with the reason and the paths tried, and engine "auto" takes the builtin.
 *
 * Where the module is looked for, in order:
 *   1. $KVPORT_NIXL_MODULE (a path to libkvport_nixl.so),
 *   2. the folder of libkvport.so itself (native/build/ after `make`).
 * Before loading it, when $NIXL_PREFIX is set, $NIXL_PREFIX/lib/x86_64-linux-gnu (then
 * lib64, lib) /libnixl.so is loaded first, so a NIXL installed elsewhere than at build
 * time is the one used; otherwise the module finds libnixl.so through its RUNPATH (the
 * NIXL_PREFIX of the build) or LD_LIBRARY_PATH.
 */
#include "engine.h" /* first: common.h defines _GNU_SOURCE (dladdr) */

#include <dlfcn.h>
#include <stdio.h>
#include <sys/stat.h>

#include "engine_nixl.h"
#include "engine_nixl_glue.h"
#include "errors.h"
#include "notify.h"

/* ------------------------------------------------------------- the module ---- */

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static const kvpn_module *g_mod;
static bool g_module_file;    /* a module file was found (loadable or not) */
static char g_reason[1600];   /* why the module is not available */
static char g_searched[2048]; /* what was actually tried: see load_once */
static char g_module_path[1024];

static void searched_add(const char *path, const char *what) {
    size_t n = strlen(g_searched);
    snprintf(g_searched + n, sizeof g_searched - n, "%s%s(%s)", n ? "," : "", path, what);
}

static bool file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Folder of libkvport.so. */
static bool self_dir(char *out, size_t cap) {
    Dl_info info;
    if (!dladdr((void *)&kvp_abi_version, &info) || !info.dli_fname) return false;
    snprintf(out, cap, "%s", info.dli_fname);
    char *slash = strrchr(out, '/');
    if (!slash) return false;
    *slash = 0;
    return true;
}

static void preload_nixl(void) {
    const char *pre = getenv("NIXL_PREFIX");
    if (!pre || !*pre) return;
    const char *sub[] = {"/lib/x86_64-linux-gnu", "/lib64", "/lib"};
    for (size_t i = 0; i < sizeof sub / sizeof sub[0]; i++) {
        char p[1024];
        snprintf(p, sizeof p, "%s%s/libnixl.so", pre, sub[i]);
        if (!file_exists(p)) {
            searched_add(p, "missing");
            continue;
        }
        if (dlopen(p, RTLD_NOW | RTLD_GLOBAL)) {
            searched_add(p, "loaded");
            return;
        }
        const char *e = dlerror();
        searched_add(p, "found, failed to load");
        snprintf(g_reason, sizeof g_reason, "%.1000s failed to load: %.500s", p, e ? e : "?");
        return;
    }
}

static bool try_module(const char *path) {
    if (!file_exists(path)) {
        searched_add(path, "missing");
        return false;
    }
    g_module_file = true;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        searched_add(path, "found, failed to load");
        snprintf(g_reason, sizeof g_reason,
                 "NIXL is not available: %.600s could not be loaded: %.700s (point NIXL_PREFIX "
                 "or LD_LIBRARY_PATH at NIXL's lib folder)",
                 path, e ? e : "?");
        return false;
    }
    kvpn_module_get_fn get = (kvpn_module_get_fn)dlsym(h, KVPN_MODULE_SYMBOL);
    const kvpn_module *m = get ? get(KVPN_MODULE_ABI) : NULL;
    if (!m) {
        searched_add(path, "wrong module ABI");
        snprintf(g_reason, sizeof g_reason,
                 "NIXL is not available: %.1000s is not a nixl engine module of ABI %d "
                 "(rebuild with `make -C native`)",
                 path, KVPN_MODULE_ABI);
        dlclose(h);
        return false;
    }
    searched_add(path, "loaded");
    snprintf(g_module_path, sizeof g_module_path, "%.1000s", path);
    g_mod = m; /* never unloaded: NIXL and its plugins stay for the process */
    return true;
}

/* The searched list names only what was tried, with what was found:
 *   - $NIXL_PREFIX's libnixl.so (loaded / missing / found, failed to load), only when
 *     NIXL_PREFIX is set (without it libnixl.so comes through the module's RUNPATH or
 *     LD_LIBRARY_PATH, and the loader's message in the reason says which file failed);
 *   - each module path (loaded / missing / found, failed to load);
 *   - the NIXL header a build looks for (header present / header missing), which tells
 *     "the module was not built" from "NIXL is not installed". */
static void load_once(void) {
    const char *pre = getenv("NIXL_PREFIX");
    if (!pre || !*pre) pre = "/opt/nvidia/nvda_nixl";
    char hdr[1100];
    snprintf(hdr, sizeof hdr, "%.1000s/include/nixl.h", pre);
    bool have_hdr = file_exists(hdr);
    if (have_hdr)
        snprintf(g_reason, sizeof g_reason,
                 "NIXL is not available to this library: it was built without the nixl "
                 "engine (no " KVPN_MODULE_FILE " next to it, although NIXL is installed at "
                 "%.1000s; `make -C native` builds it)",
                 pre);
    else
        snprintf(g_reason, sizeof g_reason,
                 "NIXL is not available: this library was built without the nixl engine "
                 "(no " KVPN_MODULE_FILE " found; install NIXL and rebuild, see docs/NIXL.md)");
    const char *env = getenv("KVPORT_NIXL_MODULE");
    char dir[1024], path[1100];
    bool have_dir = self_dir(dir, sizeof dir);
    bool any_file = (env && *env && file_exists(env)) ||
                    (have_dir && (snprintf(path, sizeof path, "%s/" KVPN_MODULE_FILE, dir),
                                  file_exists(path)));
    if (any_file) preload_nixl();
    if (!(env && *env && try_module(env)) && have_dir) {
        snprintf(path, sizeof path, "%s/" KVPN_MODULE_FILE, dir);
        (void)try_module(path);
    }
    searched_add(hdr, have_hdr ? "header present" : "header missing");
}

const kvpn_module *kvp_nixl_module(void) {
    pthread_once(&g_once, load_once);
    return g_mod;
}

bool kvp_nixl_built(void) {
    kvp_nixl_module();
    return g_mod != NULL || g_module_file;
}

const char *kvp_nixl_reason(void) {
    kvp_nixl_module();
    return g_mod ? "" : g_reason;
}

const char *kvp_nixl_searched(void) {
    kvp_nixl_module();
    return g_searched;
}

static void put_str(kvp_buf *b, const char *str) { kvp_buf_put(b, str, strlen(str)); }

/* Copies the module's message into our last error. */
static int32_t from_mod(int32_t st) {
    if (st < 0) {
        const char *m = g_mod->last_error();
        return kvp_err(st, "%s", m && *m ? m : kvp_status_name(st));
    }
    return st;
}

/* Calls a module function with the sized-out convention and appends its bytes to out. */
typedef int32_t (*sized_fn)(void *ctx, uint8_t *buf, uint64_t cap, uint64_t *len);
static int32_t sized_into(kvp_buf *out, sized_fn fn, void *ctx) {
    uint8_t small[4096];
    uint64_t len = 0;
    int32_t st = fn(ctx, small, sizeof small, &len);
    if (st != KVP_SUCCESS) return from_mod(st);
    if (len <= sizeof small) {
        kvp_buf_put(out, small, (size_t)len);
        return KVP_SUCCESS;
    }
    for (int tries = 0; tries < 4; tries++) {
        uint8_t *big = malloc((size_t)len);
        if (!big) return kvp_err(KVP_ERR_BACKEND, "out of memory (%llu bytes)",
                                 (unsigned long long)len);
        uint64_t cap = len;
        st = fn(ctx, big, cap, &len);
        if (st != KVP_SUCCESS) {
            free(big);
            return from_mod(st);
        }
        if (len <= cap) {
            kvp_buf_put(out, big, (size_t)len);
            free(big);
            return KVP_SUCCESS;
        }
        free(big); /* it grew meanwhile: retry with the new size */
    }
    return kvp_err(KVP_ERR_BACKEND, "nixl engine: output kept growing");
}

/* ------------------------------------------------------------- the agent ---- */

typedef struct nixl_agent {
    kvp_agent base;
    uint64_t mh; /* the module's agent handle */
    void *mo;    /* the module's agent object (agent_object): the hot calls take it */
    char requested[16];
    /* kvp_event_notify: the notifier the module's watcher signals (published once the
     * watcher runs; stopped by n_destroy, after the module joined the watcher). */
    _Atomic(kvp_notifier *) notifier;
    atomic_bool notify_taken; /* kvp_event_notify was called (once per agent) */
} nixl_agent;

#define MH(a) (((nixl_agent *)(a))->mh)
#define MO(a) (((nixl_agent *)(a))->mo)

static void n_destroy(kvp_agent *a) {
    g_mod->agent_destroy(MH(a)); /* joins the module's watcher, if agent_wake did not */
    /* Nothing signals any more. Never joined (as the builtin engine's): a notifier thread
     * may be inside a callback that waits for this very thread (Deno). */
    kvp_notifier *n = atomic_exchange(&((nixl_agent *)a)->notifier, NULL);
    if (n) kvp_notifier_stop(n);
    kvp_agent_base_fini(a);
    free(a);
}

static void n_wake_all(kvp_agent *a) {
    g_mod->agent_wake(MH(a)); /* waits end; the watcher is joined */
    /* The destroy is an event too (as for the builtin engine): waiters look again and
     * see the agent gone. No lock is held here (a direct notifier calls fn now). */
    kvp_notifier *n = atomic_load_explicit(&((nixl_agent *)a)->notifier, memory_order_acquire);
    if (n) kvp_notifier_signal(n);
}

/* ------------------------------------------------------------- events ---- */

/* The module's watcher thread calls this with no lock of the module held. */
static void watch_signal(void *ctx) { kvp_notifier_signal(ctx); }

static int32_t n_event_notify(kvp_agent *a, kvp_event_fn fn, uint64_t ctx, uint32_t flags) {
    nixl_agent *na = (nixl_agent *)a;
    if (atomic_exchange(&na->notify_taken, true))
        return kvp_err(KVP_ERR_NOT_ALLOWED, "kvp_event_notify: agent %s has a notifier already",
                       a->name);
    kvp_notifier *n = NULL;
    int32_t st = kvp_notifier_start(fn, ctx, flags, a->name, &n);
    if (st == KVP_SUCCESS) {
        st = g_mod->agent_watch(MH(a), watch_signal, n);
        if (st == KVP_SUCCESS) {
            atomic_store_explicit(&na->notifier, n, memory_order_release);
            return KVP_SUCCESS;
        }
        st = from_mod(st);
        kvp_notifier_stop(n); /* the watcher never ran: nothing else holds n */
    }
    atomic_store(&na->notify_taken, false);
    return st;
}

static int32_t n_event_ack(kvp_agent *a) {
    kvp_notifier *n = atomic_load_explicit(&((nixl_agent *)a)->notifier, memory_order_acquire);
    if (n) kvp_notifier_ack(n);
    return KVP_SUCCESS;
}

static int32_t info_fn(void *ctx, uint8_t *b, uint64_t c, uint64_t *l) {
    return g_mod->agent_info(*(uint64_t *)ctx, b, c, l);
}
static int32_t n_info(kvp_agent *a, kvp_buf *out) {
    int32_t st = sized_into(out, info_fn, &MH(a));
    if (st != KVP_SUCCESS) return st;
    put_str(out, "requested_engine=");
    put_str(out, ((nixl_agent *)a)->requested);
    put_str(out, "\nmodule=");
    put_str(out, g_module_path);
    put_str(out, "\n");
    return KVP_SUCCESS;
}

static int32_t n_reg(kvp_agent *a, int32_t mt, const uint64_t *addrs, const uint64_t *lens,
                     const uint64_t *devs, uint64_t count, const char *meta, uint64_t *out) {
    uint64_t *zeros = NULL;
    if (!devs) { /* kvport.h lets DRAM callers pass no devs */
        zeros = calloc((size_t)count, sizeof *zeros);
        if (!zeros) return kvp_err(KVP_ERR_BACKEND, "out of memory");
        devs = zeros;
    }
    int32_t st = from_mod(g_mod->reg(MH(a), mt, addrs, lens, devs, count, meta, out));
    free(zeros);
    return st;
}

static int32_t n_dereg(kvp_agent *a, uint64_t reg) { return from_mod(g_mod->dereg(MH(a), reg)); }

static int32_t md_fn(void *ctx, uint8_t *b, uint64_t c, uint64_t *l) {
    return g_mod->local_metadata(*(uint64_t *)ctx, b, c, l);
}
static int32_t n_local_md(kvp_agent *a, kvp_buf *out) { return sized_into(out, md_fn, &MH(a)); }

static int32_t n_load_remote(kvp_agent *a, const uint8_t *blob, uint64_t len,
                             char name_out[KVP_NAME_MAX + 1]) {
    uint64_t n = 0;
    int32_t st = g_mod->load_remote_metadata(MH(a), blob, len, (uint8_t *)name_out,
                                             KVP_NAME_MAX, &n);
    if (st != KVP_SUCCESS) return from_mod(st);
    if (n > KVP_NAME_MAX)
        return kvp_err(KVP_ERR_MISMATCH, "peer name of %llu bytes exceeds %d",
                       (unsigned long long)n, KVP_NAME_MAX);
    name_out[n] = 0;
    return KVP_SUCCESS;
}

static int32_t n_invalidate(kvp_agent *a, const char *remote) {
    return from_mod(g_mod->invalidate_remote(MH(a), remote));
}

static int32_t n_prep(kvp_agent *a, const char *remote, kvp_dlist *l, uint64_t *out) {
    if (l->n == 0) return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_prep_dlist: the list is empty");
    uint64_t *v = malloc((size_t)l->n * 3 * sizeof *v);
    if (!v) return kvp_err(KVP_ERR_BACKEND, "out of memory for %llu descriptors",
                           (unsigned long long)l->n);
    uint64_t *addrs = v, *lens = v + l->n, *devs = v + 2 * l->n;
    for (uint64_t i = 0; i < l->n; i++) {
        addrs[i] = l->d[i].addr;
        lens[i] = l->d[i].len;
        devs[i] = l->d[i].dev;
    }
    int32_t st = from_mod(g_mod->prep_dlist(MH(a), remote, l->mem_type, addrs, lens, devs, l->n,
                                            out));
    free(v);
    return st;
}

static int32_t n_prepped_release(kvp_agent *a, uint64_t p) {
    return from_mod(g_mod->prepped_release(MH(a), p));
}

static int32_t n_xfer_create(kvp_agent *a, int32_t op, uint64_t lp, const uint32_t *li,
                             uint64_t rp, const uint32_t *ri, uint64_t count,
                             const uint8_t *notif, uint64_t notif_len, uint64_t *out) {
    return from_mod(
        g_mod->xfer_create(MH(a), op, lp, li, rp, ri, count, notif, notif_len, out));
}

/* The hot pair: on the module's agent object, which stays valid while this call holds
 * the agent (api.c), so the module looks nothing up. */
static int32_t n_xfer_post(kvp_agent *a, uint64_t r) {
    return from_mod(g_mod->xfer_post_on(MO(a), r));
}
static int32_t n_xfer_status(kvp_agent *a, uint64_t r) {
    return from_mod(g_mod->xfer_status_on(MO(a), r));
}
static int32_t n_xfer_wait(kvp_agent *a, uint64_t r, int64_t t) {
    return from_mod(g_mod->xfer_wait(MH(a), r, t));
}

struct msg_ctx {
    uint64_t agent, req;
};
static int32_t msg_fn(void *ctx, uint8_t *b, uint64_t c, uint64_t *l) {
    struct msg_ctx *m = ctx;
    return g_mod->xfer_message(m->agent, m->req, b, c, l);
}
static int32_t n_xfer_message(kvp_agent *a, uint64_t r, kvp_buf *out) {
    struct msg_ctx m = {MH(a), r};
    return sized_into(out, msg_fn, &m);
}

static int32_t n_xfer_release(kvp_agent *a, uint64_t r) {
    return from_mod(g_mod->xfer_release(MH(a), r));
}

static int32_t n_notif_send(kvp_agent *a, const char *remote, const uint8_t *msg, uint64_t len) {
    return from_mod(g_mod->notif_send(MH(a), remote, msg, len));
}
static int32_t n_notif_take(kvp_agent *a, uint8_t *buf, uint64_t cap, uint64_t *len,
                            uint64_t *count) {
    return from_mod(g_mod->notif_take(MH(a), buf, cap, len, count));
}
static int32_t n_notif_wait(kvp_agent *a, int64_t t) {
    return from_mod(g_mod->notif_wait(MH(a), t));
}

static const kvp_engine_ops nixl_ops = {
    .name = "nixl",
    .destroy = n_destroy,
    .wake_all = n_wake_all,
    .info = n_info,
    .reg = n_reg,
    .dereg = n_dereg,
    .local_md = n_local_md,
    .load_remote = n_load_remote,
    .invalidate = n_invalidate,
    .prep = n_prep,
    .prepped_release = n_prepped_release,
    .xfer_create = n_xfer_create,
    .xfer_post = n_xfer_post,
    .xfer_status = n_xfer_status,
    .xfer_wait = n_xfer_wait,
    .xfer_message = n_xfer_message,
    .xfer_release = n_xfer_release,
    .notif_send = n_notif_send,
    .notif_take = n_notif_take,
    .notif_wait = n_notif_wait,
    /* No event_fd: the builtin engine's only (kvp_event_notify covers both runtimes). */
    .event_notify = n_event_notify,
    .event_ack = n_event_ack,
};

int32_t kvp_nixl_create(const char *name, const char *requested, const char *backends,
                        const char *params, kvp_agent **out) {
    *out = NULL;
    if (!kvp_nixl_module())
        return kvp_err(KVP_ERR_NOT_SUPPORTED, "%s (searched %s)", g_reason,
                       g_searched[0] ? g_searched : "nothing");
    nixl_agent *na = calloc(1, sizeof *na);
    if (!na) return kvp_err(KVP_ERR_BACKEND, "out of memory");
    atomic_init(&na->notifier, NULL);
    atomic_init(&na->notify_taken, false);
    int32_t st = kvp_agent_base_init(&na->base, &nixl_ops, name);
    if (st != KVP_SUCCESS) {
        free(na);
        return st;
    }
    snprintf(na->requested, sizeof na->requested, "%s", requested);
    st = g_mod->agent_create(name, backends, params, &na->mh);
    if (st == KVP_SUCCESS && !(na->mo = g_mod->agent_object(na->mh))) {
        g_mod->agent_destroy(na->mh);
        st = kvp_err(KVP_ERR_BACKEND, "nixl engine: the new agent has no object");
    } else if (st != KVP_SUCCESS) {
        st = from_mod(st);
    }
    if (st != KVP_SUCCESS) {
        kvp_agent_base_fini(&na->base);
        free(na);
        return st;
    }
    *out = &na->base;
    return KVP_SUCCESS;
}

static int32_t probe_fn(void *ctx, uint8_t *b, uint64_t c, uint64_t *l) {
    (void)ctx;
    return g_mod->probe(b, c, l);
}

int32_t kvp_nixl_probe(kvp_buf *out, bool *available) {
    *available = false;
    const char *head = "engine=nixl\n";
    kvp_buf_put(out, head, strlen(head));
    if (!kvp_nixl_module()) {
        put_str(out, "available=0\nreason=");
        put_str(out, g_reason);
        put_str(out, "\nplugins=\nversion=\n");
    } else {
        kvp_buf body = {0};
        int32_t st = sized_into(&body, probe_fn, NULL);
        if (st != KVP_SUCCESS) {
            /* The module loaded but NIXL failed inside (e.g. a plugin threw). */
            put_str(out, "available=0\nreason=NIXL loaded but failed: ");
            put_str(out, kvp_err_text());
            put_str(out, "\n");
        } else {
            kvp_buf_put(out, body.p, body.len);
            *available = body.len >= 12 && memmem(body.p, body.len, "available=1\n", 12) != NULL;
        }
        kvp_buf_free(&body);
        put_str(out, "module=");
        put_str(out, g_module_path);
        put_str(out, "\n");
    }
    return KVP_SUCCESS;
}
