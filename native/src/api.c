/*
 * api.c - the exported agent-level functions: handle validation, argument checks that
 * do not depend on the engine, and dispatch through the engine vtable (engine.h).
 */
#include <stdio.h>

#include "engine.h"
#include "engine_nixl_glue.h"
#include "errors.h"
#include "files.h"
#include "metadata.h"

/* ------------------------------------------------------------------ engines ---- */

const char *kvp_nixl_unavailable_reason(void) {
    const char *r = kvp_nixl_reason();
    return *r ? r : "NIXL is available: create the agent with engine \"nixl\" or \"auto\"";
}

/* "searched=..." value: what the nixl engine's loader tried (engine_nixl_glue.c). */
static void nixl_searched(kvp_buf *b) {
    const char *mod = kvp_nixl_searched();
    kvp_buf_put(b, mod, strlen(mod));
}

/* What engine "auto" means: $KVPORT_ENGINE (auto, builtin or nixl) when set. */
static const char *auto_engine(void) {
    const char *e = getenv("KVPORT_ENGINE");
    return (e && (strcmp(e, "builtin") == 0 || strcmp(e, "nixl") == 0)) ? e : "auto";
}

KVP_API int32_t kvp_engines(uint8_t *buf, uint64_t cap, uint64_t *len) {
    kvp_err_clear();
    static const char e[] = "builtin,nixl";
    /* "nixl" when the engine module was built (found next to this library), loadable or
     * not: kvp_engine_probe("nixl") says whether it loads. */
    return kvp_sized_out(e, kvp_nixl_built() ? sizeof e - 1 : 7, buf, cap, len);
}

KVP_API int32_t kvp_engine_probe(const char *engine, uint8_t *buf, uint64_t cap, uint64_t *len) {
    kvp_err_clear();
    if (!engine) return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_engine_probe: engine is NULL");
    kvp_buf b = {0};
    char line[512];
    if (strcmp(engine, "auto") == 0 && strcmp(auto_engine(), "auto") != 0)
        engine = auto_engine(); /* KVPORT_ENGINE decides what auto is */
    bool auto_nixl = false;
    if (strcmp(engine, "auto") == 0 && kvp_nixl_module()) {
        /* auto takes the nixl engine when its module loads and NIXL is usable */
        kvp_nixl_probe(&b, &auto_nixl);
        if (!auto_nixl) {
            kvp_buf_free(&b);
            b = (kvp_buf){0};
        }
    }
    if (auto_nixl) {
        kvp_buf_put(&b, "resolved=nixl\nsearched=", 23);
        nixl_searched(&b);
        kvp_buf_put(&b, "\n", 1);
    } else if (strcmp(engine, "builtin") == 0 || strcmp(engine, "auto") == 0) {
        snprintf(line, sizeof line,
                 "engine=builtin\navailable=1\nreason=\nplugins=UCX,TCP,POSIX\n"
                 "version=" KVP_VERSION_STRING "\nabi=%u\n%s",
                 KVP_ABI_VERSION, engine[0] == 'a' ? "resolved=builtin\n" : "");
        kvp_buf_put(&b, line, strlen(line));
        kvp_buf_put(&b, "searched=", 9);
        if (engine[0] == 'a') nixl_searched(&b);
        kvp_buf_put(&b, "\n", 1);
    } else if (strcmp(engine, "nixl") == 0) {
        bool avail;
        kvp_nixl_probe(&b, &avail);
        kvp_buf_put(&b, "searched=", 9);
        nixl_searched(&b);
        kvp_buf_put(&b, "\n", 1);
    } else {
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "unknown engine \"%.64s\": expected \"auto\", \"builtin\" or \"nixl\"",
                       engine);
    }
    if (b.oom) {
        kvp_buf_free(&b);
        return kvp_err(KVP_ERR_BACKEND, "out of memory");
    }
    int32_t st = kvp_sized_out(b.p, b.len, buf, cap, len);
    kvp_buf_free(&b);
    return st;
}

/* ------------------------------------------------------------------ agents ---- */

static void agent_obj_release(kvp_obj *o) {
    kvp_agent *a = (kvp_agent *)o;
    pthread_mutex_lock(&a->life_mu);
    a->gone = true;
    pthread_cond_broadcast(&a->life_cv);
    pthread_mutex_unlock(&a->life_mu);
}

int32_t kvp_agent_base_init(kvp_agent *a, const kvp_engine_ops *ops, const char *name) {
    kvp_obj_init(&a->obj, KVP_H_AGENT, agent_obj_release);
    a->ops = ops;
    snprintf(a->name, sizeof a->name, "%s", name);
    atomic_init(&a->dying, false);
    a->gone = false;
    a->note[0] = 0;
    if (pthread_mutex_init(&a->life_mu, NULL) != 0)
        return kvp_err(KVP_ERR_BACKEND, "pthread_mutex_init failed");
    if (pthread_cond_init(&a->life_cv, NULL) != 0) {
        pthread_mutex_destroy(&a->life_mu);
        return kvp_err(KVP_ERR_BACKEND, "pthread_cond_init failed");
    }
    return KVP_SUCCESS;
}

void kvp_agent_base_fini(kvp_agent *a) {
    pthread_cond_destroy(&a->life_cv);
    pthread_mutex_destroy(&a->life_mu);
}

/* Backends: the builtin engine serves UCX, TCP and POSIX; names NIXL knows but the
 * builtin engine does not serve are refused with a message naming the nixl engine. */
static int32_t parse_backends(const char *backends, uint32_t *mask) {
    *mask = 0;
    if (!backends || !*backends) {
        *mask = KVP_CAP_UCX | KVP_CAP_POSIX;
        return KVP_SUCCESS;
    }
    const char *p = backends;
    while (*p) {
        while (*p == ',' || *p == ' ') p++;
        if (!*p) break;
        const char *e = p;
        while (*e && *e != ',' && *e != ' ') e++;
        size_t n = (size_t)(e - p);
        char nm[64];
        snprintf(nm, sizeof nm, "%.*s", (int)KVP_MIN(n, sizeof nm - 1), p);
        if (strcmp(nm, "UCX") == 0) *mask |= KVP_CAP_UCX;
        else if (strcmp(nm, "TCP") == 0) *mask |= KVP_CAP_TCP;
        else if (strcmp(nm, "POSIX") == 0) *mask |= KVP_CAP_POSIX;
        else
            return kvp_err(KVP_ERR_NOT_SUPPORTED,
                           "backend %s needs the nixl engine (%s); the builtin engine serves "
                           "UCX, TCP and POSIX",
                           nm, kvp_nixl_unavailable_reason());
        p = e;
    }
    if (*mask == 0) *mask = KVP_CAP_UCX | KVP_CAP_POSIX;
    return KVP_SUCCESS;
}

KVP_API int32_t kvp_agent_create(const char *name, const char *engine, const char *backends,
                                 const char *params, uint64_t *out_agent) {
    kvp_err_clear();
    if (!out_agent) return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_agent_create: out_agent is NULL");
    *out_agent = 0;
    if (!name || !*name || strlen(name) > KVP_NAME_MAX)
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "agent name must be 1..%d bytes, got %zu", KVP_NAME_MAX,
                       name ? strlen(name) : (size_t)0);
    for (const unsigned char *c = (const unsigned char *)name; *c; c++)
        if (*c < 0x20 || *c == 0x7f)
            return kvp_err(KVP_ERR_INVALID_PARAM, "agent name contains a control character");
    const char *eng = (engine && *engine) ? engine : "auto";
    const char *requested = eng;
    if (strcmp(eng, "auto") == 0) eng = auto_engine();
    if (strcmp(eng, "nixl") != 0 && strcmp(eng, "auto") != 0 && strcmp(eng, "builtin") != 0)
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "unknown engine \"%.64s\": expected \"auto\", \"builtin\" or \"nixl\"", eng);
    kvp_agent *a = NULL;
    int32_t st;
    char nixl_why[KVP_MSG_MAX] = "";
    int32_t nixl_st = KVP_SUCCESS;
    if (strcmp(eng, "nixl") == 0) {
        if (!kvp_nixl_module()) {
            kvp_buf b = {0};
            nixl_searched(&b);
            kvp_buf_u8(&b, 0);
            st = kvp_err(KVP_ERR_NOT_SUPPORTED, "%s (searched %s); use engine \"builtin\"",
                         kvp_nixl_unavailable_reason(), b.oom ? "?" : (char *)b.p);
            kvp_buf_free(&b);
            return st;
        }
        st = kvp_nixl_create(name, requested, backends, params, &a);
        if (st != KVP_SUCCESS) return st;
    } else if (strcmp(eng, "auto") == 0 && kvp_nixl_module()) {
        /* auto: the nixl engine when it creates the agent with these backends and
         * params, else the builtin engine (which says why NIXL was not used). */
        st = kvp_nixl_create(name, requested, backends, params, &a);
        if (st != KVP_SUCCESS) {
            nixl_st = st;
            snprintf(nixl_why, sizeof nixl_why, "%s", kvp_err_text());
            kvp_err_clear();
            a = NULL;
        }
    }
    if (!a) {
        uint32_t mask;
        st = parse_backends(backends, &mask);
        kvp_params pp;
        if (st == KVP_SUCCESS) {
            st = kvp_params_parse(params, &pp);
            if (st == KVP_SUCCESS) {
                st = kvp_builtin_create(name, mask, &pp, &a);
                kvp_params_free(&pp);
            }
        }
        if (st != KVP_SUCCESS) {
            if (nixl_st != KVP_SUCCESS) {
                /* NIXL is there and refused: its reason comes first. */
                char mine[KVP_MSG_MAX];
                snprintf(mine, sizeof mine, "%s", kvp_err_text());
                return kvp_err(nixl_st, "%s (engine auto: the builtin engine cannot serve it "
                               "either: %s)", nixl_why, mine);
            }
            return st;
        }
        if (nixl_st != KVP_SUCCESS)
            snprintf(a->note, sizeof a->note, "nixl engine not used (%s): %.560s",
                     kvp_status_name(nixl_st), nixl_why);
    }
    st = kvp_handle_insert(&a->obj, out_agent);
    if (st != KVP_SUCCESS) {
        /* Never published, but an engine may already have lent it out internally (e.g.
         * to same-process peers): tear down exactly as kvp_agent_destroy does. */
        atomic_store(&a->dying, true);
        a->ops->wake_all(a);
        kvp_obj_put(&a->obj);
        pthread_mutex_lock(&a->life_mu);
        while (!a->gone) pthread_cond_wait(&a->life_cv, &a->life_mu);
        pthread_mutex_unlock(&a->life_mu);
        a->ops->destroy(a);
        return st;
    }
    kvp_obj_put(&a->obj); /* the table's reference keeps it */
    return KVP_SUCCESS;
}

/* FILE registrations pin their files (files.c) until deregistered, whatever the engine:
 * one record per registration handle. */
typedef struct file_pins {
    uint64_t agent; /* its handle (never reused, unlike its address) */
    uint64_t reg;
    uint64_t n;
    uint64_t *fds;
    struct file_pins *next;
} file_pins;
static pthread_mutex_t g_pins_mu = PTHREAD_MUTEX_INITIALIZER;
static file_pins *g_pins;

/* Unpins the files of one registration (reg != 0) or of every registration of the
 * agent (reg == 0). */
static void pins_drop(uint64_t a, uint64_t reg) {
    pthread_mutex_lock(&g_pins_mu);
    for (file_pins **pp = &g_pins; *pp;) {
        file_pins *p = *pp;
        if (p->agent == a && (reg == 0 || p->reg == reg)) {
            *pp = p->next;
            kvp_files_unpin(p->fds, p->n);
            free(p->fds);
            free(p);
        } else {
            pp = &p->next;
        }
    }
    pthread_mutex_unlock(&g_pins_mu);
}

KVP_API int32_t kvp_agent_destroy(uint64_t h) {
    kvp_err_clear();
    kvp_agent *a = (kvp_agent *)kvp_handle_take(h, KVP_H_AGENT);
    if (!a) return kvp_err_status();
    atomic_store(&a->dying, true);
    a->ops->wake_all(a);
    kvp_obj_put(&a->obj); /* the table's reference, now ours */
    pthread_mutex_lock(&a->life_mu);
    while (!a->gone) pthread_cond_wait(&a->life_cv, &a->life_mu);
    pthread_mutex_unlock(&a->life_mu);
    a->ops->destroy(a);
    pins_drop(h, 0); /* its registrations are gone with it */
    return KVP_SUCCESS;
}

/* Every other agent call: take a reference, refuse a dying agent, dispatch, put. */
#define WITH_AGENT(h, expr)                                                               \
    do {                                                                                  \
        kvp_err_clear();                                                                  \
        kvp_agent *a_ = (kvp_agent *)kvp_handle_get((h), KVP_H_AGENT);                    \
        if (!a_) return kvp_err_status();                                                 \
        int32_t st_;                                                                      \
        if (atomic_load(&a_->dying))                                                      \
            st_ = kvp_err(KVP_ERR_CANCELED, "agent %s is being destroyed", a_->name);     \
        else {                                                                            \
            kvp_agent *a = a_;                                                            \
            st_ = (expr);                                                                 \
        }                                                                                 \
        kvp_obj_put(&a_->obj);                                                            \
        return st_;                                                                       \
    } while (0)

static int32_t buf_out(int32_t st, kvp_buf *b, uint8_t *buf, uint64_t cap, uint64_t *len) {
    if (st == KVP_SUCCESS && b->oom) st = kvp_err(KVP_ERR_BACKEND, "out of memory");
    if (st == KVP_SUCCESS) st = kvp_sized_out(b->p, b->len, buf, cap, len);
    else if (len) *len = 0;
    kvp_buf_free(b);
    return st;
}

static int32_t do_info(kvp_agent *a, uint8_t *buf, uint64_t cap, uint64_t *len) {
    kvp_buf b = {0};
    int32_t st = a->ops->info(a, &b);
    if (st == KVP_SUCCESS && !a->ops->grant) {
        /* Said plainly: this engine lets a peer reach whole registrations. */
        static const char pg[] = "page_grants=unsupported\n";
        kvp_buf_put(&b, pg, sizeof pg - 1);
    }
    if (st == KVP_SUCCESS && a->note[0]) {
        kvp_buf_put(&b, "engine_note=", 12);
        for (const char *c = a->note; *c; c++) kvp_buf_u8(&b, *c == '\n' ? ' ' : (uint8_t)*c);
        kvp_buf_put(&b, "\n", 1);
    }
    return buf_out(st, &b, buf, cap, len);
}
KVP_API int32_t kvp_agent_info(uint64_t agent, uint8_t *buf, uint64_t cap, uint64_t *len) {
    WITH_AGENT(agent, do_info(a, buf, cap, len));
}

static int32_t do_register(kvp_agent *a, uint64_t ah, int32_t mem_type, const uint64_t *addrs,
                           const uint64_t *lens, const uint64_t *devs, uint64_t count,
                           const char *meta, uint64_t *out_reg) {
    if (!out_reg) return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_register: out_reg is NULL");
    *out_reg = 0;
    if (count == 0) return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_register: count is 0");
    if (!addrs || !lens)
        return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_register: addrs and lens must not be NULL");
    if (mem_type < KVP_DRAM || mem_type > KVP_FILE)
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "kvp_register: memory type %d is not one of DRAM=0 VRAM=1 BLK=2 OBJ=3 "
                       "FILE=4", mem_type);
    if (mem_type != KVP_FILE) return a->ops->reg(a, mem_type, addrs, lens, devs, count, meta, out_reg);
    if (!devs) return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_register: FILE needs devs (the fds)");
    file_pins *p = calloc(1, sizeof *p);
    uint64_t *fds = p ? malloc((size_t)count * sizeof *fds) : NULL;
    if (!p || !fds) {
        free(p);
        return kvp_err(KVP_ERR_BACKEND, "out of memory");
    }
    memcpy(fds, devs, (size_t)count * sizeof *fds);
    int32_t st = kvp_files_pin(fds, count);
    if (st == KVP_SUCCESS) st = a->ops->reg(a, mem_type, addrs, lens, devs, count, meta, out_reg);
    else {
        free(fds);
        free(p);
        return st;
    }
    if (st != KVP_SUCCESS) {
        kvp_files_unpin(fds, count);
        free(fds);
        free(p);
        return st;
    }
    p->agent = ah;
    p->reg = *out_reg;
    p->n = count;
    p->fds = fds;
    pthread_mutex_lock(&g_pins_mu);
    p->next = g_pins;
    g_pins = p;
    pthread_mutex_unlock(&g_pins_mu);
    return KVP_SUCCESS;
}

static int32_t do_deregister(kvp_agent *a, uint64_t ah, uint64_t reg) {
    int32_t st = a->ops->dereg(a, reg);
    if (st == KVP_SUCCESS) pins_drop(ah, reg);
    return st;
}
KVP_API int32_t kvp_register(uint64_t agent, int32_t mem_type, const uint64_t *addrs,
                             const uint64_t *lens, const uint64_t *devs, uint64_t count,
                             const char *meta, uint64_t *out_reg) {
    WITH_AGENT(agent, do_register(a, agent, mem_type, addrs, lens, devs, count, meta, out_reg));
}

KVP_API int32_t kvp_deregister(uint64_t agent, uint64_t reg) {
    WITH_AGENT(agent, do_deregister(a, agent, reg));
}

static int32_t do_md(kvp_agent *a, uint8_t *buf, uint64_t cap, uint64_t *len) {
    kvp_buf b = {0};
    return buf_out(a->ops->local_md(a, &b), &b, buf, cap, len);
}
KVP_API int32_t kvp_local_metadata(uint64_t agent, uint8_t *buf, uint64_t cap, uint64_t *len) {
    WITH_AGENT(agent, do_md(a, buf, cap, len));
}

static int32_t do_load(kvp_agent *a, const uint8_t *blob, uint64_t blen, uint8_t *name_buf,
                       uint64_t cap, uint64_t *name_len) {
    char name[KVP_NAME_MAX + 1] = "";
    if (name_len) *name_len = 0;
    int32_t st = a->ops->load_remote(a, blob, blen, name);
    if (st != KVP_SUCCESS) return st;
    return kvp_sized_out(name, strlen(name), name_buf, cap, name_len);
}
KVP_API int32_t kvp_load_remote_metadata(uint64_t agent, const uint8_t *blob, uint64_t len,
                                         uint8_t *name_buf, uint64_t cap, uint64_t *name_len) {
    WITH_AGENT(agent, do_load(a, blob, len, name_buf, cap, name_len));
}

static int32_t do_invalidate(kvp_agent *a, const char *remote) {
    if (!remote || !*remote)
        return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_invalidate_remote: remote name is empty");
    return a->ops->invalidate(a, remote);
}
KVP_API int32_t kvp_invalidate_remote(uint64_t agent, const char *remote_name) {
    WITH_AGENT(agent, do_invalidate(a, remote_name));
}

static int32_t do_prep(kvp_agent *a, const char *remote, uint64_t dlist, uint64_t *out) {
    if (!out) return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_prep_dlist: out_prepped is NULL");
    *out = 0;
    kvp_dlist *l = kvp_dlist_get(dlist);
    if (!l) return kvp_err_status();
    int32_t st = a->ops->prep(a, remote ? remote : "", l, out);
    kvp_obj_put(&l->obj);
    return st;
}
KVP_API int32_t kvp_prep_dlist(uint64_t agent, const char *remote, uint64_t dlist,
                               uint64_t *out_prepped) {
    WITH_AGENT(agent, do_prep(a, remote, dlist, out_prepped));
}

KVP_API int32_t kvp_prepped_release(uint64_t agent, uint64_t prepped) {
    WITH_AGENT(agent, a->ops->prepped_release(a, prepped));
}

static int32_t do_xfer_create(kvp_agent *a, int32_t op, uint64_t lp, const uint32_t *li,
                              uint64_t rp, const uint32_t *ri, uint64_t count,
                              const uint8_t *notif, uint64_t notif_len, uint64_t *out) {
    if (!out) return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_xfer_create: out_req is NULL");
    *out = 0;
    if (op != KVP_READ && op != KVP_WRITE)
        return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_xfer_create: op %d is neither READ (0) nor "
                       "WRITE (1)", op);
    if (count > 0 && (!li || !ri))
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "kvp_xfer_create: index arrays must not be NULL for %llu pairs",
                       (unsigned long long)count);
    if (count > UINT32_MAX)
        return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_xfer_create: %llu pairs is too many",
                       (unsigned long long)count);
    if (notif_len > KVP_NOTIF_MAX)
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "kvp_xfer_create: notification of %llu bytes exceeds %u bytes",
                       (unsigned long long)notif_len, KVP_NOTIF_MAX);
    if (notif_len > 0 && !notif)
        return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_xfer_create: notif is NULL but notif_len is "
                       "%llu", (unsigned long long)notif_len);
    return a->ops->xfer_create(a, op, lp, li, rp, ri, count, notif, notif_len, out);
}
KVP_API int32_t kvp_xfer_create(uint64_t agent, int32_t op, uint64_t local_prepped,
                                const uint32_t *local_idx, uint64_t remote_prepped,
                                const uint32_t *remote_idx, uint64_t count,
                                const uint8_t *notif, uint64_t notif_len, uint64_t *out_req) {
    WITH_AGENT(agent, do_xfer_create(a, op, local_prepped, local_idx, remote_prepped,
                                     remote_idx, count, notif, notif_len, out_req));
}

KVP_API int32_t kvp_xfer_post(uint64_t agent, uint64_t req) {
    WITH_AGENT(agent, a->ops->xfer_post(a, req));
}

KVP_API int32_t kvp_xfer_status(uint64_t agent, uint64_t req) {
    WITH_AGENT(agent, a->ops->xfer_status(a, req));
}

/* The message of a call's result, handed to the caller with the call: waits may run on
 * a thread (Deno's pool) whose thread-local last error nobody else can read. */
static int32_t msg_out(int32_t st, uint8_t *msg, uint64_t cap, uint64_t *msg_len) {
    const char *t = st < 0 ? kvp_err_text() : "";
    size_t n = strlen(t);
    if (msg_len) *msg_len = n;
    if (msg && cap > 0) {
        size_t c = n < cap - 1 ? n : (size_t)(cap - 1);
        memcpy(msg, t, c);
        msg[c] = '\0';
    }
    return st;
}

static int32_t xfer_wait(uint64_t agent, uint64_t req, int64_t timeout_ms) {
    WITH_AGENT(agent, timeout_ms < 0
                          ? kvp_err(KVP_ERR_INVALID_PARAM,
                                    "kvp_xfer_wait: timeout_ms must be >= 0, got %lld",
                                    (long long)timeout_ms)
                          : a->ops->xfer_wait(a, req, timeout_ms));
}
KVP_API int32_t kvp_xfer_wait(uint64_t agent, uint64_t req, int64_t timeout_ms, uint8_t *msg,
                              uint64_t cap, uint64_t *msg_len) {
    return msg_out(xfer_wait(agent, req, timeout_ms), msg, cap, msg_len);
}

static int32_t do_msg(kvp_agent *a, uint64_t req, uint8_t *buf, uint64_t cap, uint64_t *len) {
    kvp_buf b = {0};
    return buf_out(a->ops->xfer_message(a, req, &b), &b, buf, cap, len);
}
KVP_API int32_t kvp_xfer_message(uint64_t agent, uint64_t req, uint8_t *buf, uint64_t cap,
                                 uint64_t *len) {
    WITH_AGENT(agent, do_msg(a, req, buf, cap, len));
}

KVP_API int32_t kvp_xfer_release(uint64_t agent, uint64_t req) {
    WITH_AGENT(agent, a->ops->xfer_release(a, req));
}

static int32_t do_notif_send(kvp_agent *a, const char *remote, const uint8_t *msg,
                             uint64_t len) {
    if (!remote || !*remote)
        return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_notif_send: remote name is empty");
    if (len > KVP_NOTIF_MAX)
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "kvp_notif_send: %llu bytes exceeds the %u-byte limit",
                       (unsigned long long)len, KVP_NOTIF_MAX);
    if (len > 0 && !msg)
        return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_notif_send: msg is NULL");
    return a->ops->notif_send(a, remote, msg, len);
}
KVP_API int32_t kvp_notif_send(uint64_t agent, const char *remote, const uint8_t *msg,
                               uint64_t len) {
    WITH_AGENT(agent, do_notif_send(a, remote, msg, len));
}

static int32_t do_take(kvp_agent *a, uint8_t *buf, uint64_t cap, uint64_t *len,
                       uint64_t *count) {
    if (!len || !count)
        return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_notif_take: len and count must not be NULL");
    *len = 0;
    *count = 0;
    return a->ops->notif_take(a, buf, buf ? cap : 0, len, count);
}
KVP_API int32_t kvp_notif_take(uint64_t agent, uint8_t *buf, uint64_t cap, uint64_t *len,
                               uint64_t *count) {
    WITH_AGENT(agent, do_take(a, buf, cap, len, count));
}

static int32_t notif_wait(uint64_t agent, int64_t timeout_ms) {
    WITH_AGENT(agent, timeout_ms < 0
                          ? kvp_err(KVP_ERR_INVALID_PARAM,
                                    "kvp_notif_wait: timeout_ms must be >= 0, got %lld",
                                    (long long)timeout_ms)
                          : a->ops->notif_wait(a, timeout_ms));
}
/* The arguments kvp_grant and kvp_grant_each share, checked the same way (fn: which). */
static int32_t check_grant_args(const char *fn, const char *remote, const uint64_t *addrs,
                                const uint64_t *lens, uint64_t count, uint32_t access,
                                int64_t expires_ms) {
    if (!remote || !*remote) return kvp_err(KVP_ERR_INVALID_PARAM, "%s: remote name is empty", fn);
    if (count == 0 || !addrs || !lens)
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "%s: %llu ranges (addrs and lens must not be NULL, count >= 1)", fn,
                       (unsigned long long)count);
    if (count > (1u << 20))
        return kvp_err(KVP_ERR_INVALID_PARAM, "%s: %llu ranges in one call is too many", fn,
                       (unsigned long long)count);
    if (access == 0 || (access & ~(KVP_GRANT_READ | KVP_GRANT_WRITE)))
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "%s: access 0x%x is not READ (1), WRITE (2) or both", fn, access);
    if (expires_ms < 0)
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "%s: expires_ms must be >= 0 (0: until revoked), got %lld", fn,
                       (long long)expires_ms);
    return KVP_SUCCESS;
}

static int32_t grants_unsupported(const char *fn, const kvp_agent *a) {
    return kvp_err(KVP_ERR_NOT_SUPPORTED,
                   "%s: the %s engine enforces no page grants (a peer reaches whole "
                   "registrations, as NIXL's memory keys do); use the builtin engine",
                   fn, a->ops->name);
}

static int32_t do_grant(kvp_agent *a, const char *remote, int32_t mem_type, const uint64_t *addrs,
                        const uint64_t *lens, const uint64_t *devs, uint64_t count,
                        uint32_t access, int64_t expires_ms, uint64_t *out) {
    if (!out) return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_grant: out_grant is NULL");
    *out = 0;
    if (!a->ops->grant) return grants_unsupported("kvp_grant", a);
    int32_t st = check_grant_args("kvp_grant", remote, addrs, lens, count, access, expires_ms);
    if (st != KVP_SUCCESS) return st;
    return a->ops->grant(a, remote, mem_type, addrs, lens, devs, count, access, expires_ms, out);
}
KVP_API int32_t kvp_grant(uint64_t agent, const char *remote, int32_t mem_type,
                          const uint64_t *addrs, const uint64_t *lens, const uint64_t *devs,
                          uint64_t count, uint32_t access, int64_t expires_ms,
                          uint64_t *out_grant) {
    WITH_AGENT(agent, do_grant(a, remote, mem_type, addrs, lens, devs, count, access, expires_ms,
                               out_grant));
}

static int32_t do_revoke(kvp_agent *a, uint64_t grant) {
    if (!a->ops->revoke)
        return kvp_err(KVP_ERR_NOT_SUPPORTED, "kvp_revoke: the %s engine has no page grants",
                       a->ops->name);
    return a->ops->revoke(a, grant);
}
KVP_API int32_t kvp_revoke(uint64_t agent, uint64_t grant) {
    WITH_AGENT(agent, do_revoke(a, grant));
}

static int32_t do_grant_each(kvp_agent *a, const char *remote, int32_t mem_type,
                             const uint64_t *addrs, const uint64_t *lens, const uint64_t *devs,
                             uint64_t count, uint32_t access, int64_t expires_ms,
                             uint64_t *out) {
    if (!out) return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_grant_each: out_grants is NULL");
    int32_t st = check_grant_args("kvp_grant_each", remote, addrs, lens, count, access,
                                  expires_ms);
    if (count > 0 && count <= (1u << 20))
        memset(out, 0, (size_t)count * sizeof *out); /* no handle unless all were made */
    if (st != KVP_SUCCESS) return st;
    if (!a->ops->grant_each) return grants_unsupported("kvp_grant_each", a);
    return a->ops->grant_each(a, remote, mem_type, addrs, lens, devs, count, access, expires_ms,
                              out);
}
KVP_API int32_t kvp_grant_each(uint64_t agent, const char *remote, int32_t mem_type,
                               const uint64_t *addrs, const uint64_t *lens, const uint64_t *devs,
                               uint64_t count, uint32_t access, int64_t expires_ms,
                               uint64_t *out_grants) {
    WITH_AGENT(agent, do_grant_each(a, remote, mem_type, addrs, lens, devs, count, access,
                                    expires_ms, out_grants));
}

static int32_t do_revoke_each(kvp_agent *a, const uint64_t *grants, uint64_t count) {
    if (!a->ops->revoke_each)
        return kvp_err(KVP_ERR_NOT_SUPPORTED,
                       "kvp_revoke_each: the %s engine has no page grants", a->ops->name);
    if (count == 0 || !grants)
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "kvp_revoke_each: %llu grants (grants must not be NULL, count >= 1)",
                       (unsigned long long)count);
    if (count > (1u << 20))
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "kvp_revoke_each: %llu grants in one call is too many",
                       (unsigned long long)count);
    return a->ops->revoke_each(a, grants, count);
}
KVP_API int32_t kvp_revoke_each(uint64_t agent, const uint64_t *grants, uint64_t count) {
    WITH_AGENT(agent, do_revoke_each(a, grants, count));
}

static int32_t do_event_fd(kvp_agent *a, int32_t *out) {
    if (!out) return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_event_fd: fd is NULL");
    *out = -1;
    if (!a->ops->event_fd)
        return kvp_err(KVP_ERR_NOT_SUPPORTED,
                       "kvp_event_fd: the %s engine has no event descriptor; wait with "
                       "kvp_xfer_wait / kvp_notif_wait or poll",
                       a->ops->name);
    return a->ops->event_fd(a, out);
}
KVP_API int32_t kvp_event_fd(uint64_t agent, int32_t *fd) {
    WITH_AGENT(agent, do_event_fd(a, fd));
}

static int32_t do_event_notify(kvp_agent *a, kvp_event_fn fn, uint64_t ctx, uint32_t flags) {
    if (!fn) return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_event_notify: fn is NULL");
    if (flags & ~KVP_EVENT_DIRECT)
        return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_event_notify: unknown flags 0x%x",
                       flags & ~KVP_EVENT_DIRECT);
    if (!a->ops->event_notify)
        return kvp_err(KVP_ERR_NOT_SUPPORTED,
                       "kvp_event_notify: the %s engine has no notifier; wait with "
                       "kvp_xfer_wait / kvp_notif_wait or poll",
                       a->ops->name);
    return a->ops->event_notify(a, fn, ctx, flags);
}
static int32_t do_event_ack(kvp_agent *a) {
    if (!a->ops->event_ack)
        return kvp_err(KVP_ERR_NOT_SUPPORTED, "kvp_event_ack: the %s engine has no notifier",
                       a->ops->name);
    return a->ops->event_ack(a);
}
KVP_API int32_t kvp_event_ack(uint64_t agent) { WITH_AGENT(agent, do_event_ack(a)); }

KVP_API int32_t kvp_event_notify(uint64_t agent, kvp_event_fn fn, uint64_t ctx,
                                 uint32_t flags) {
    WITH_AGENT(agent, do_event_notify(a, fn, ctx, flags));
}

KVP_API int32_t kvp_notif_wait(uint64_t agent, int64_t timeout_ms, uint8_t *msg, uint64_t cap,
                               uint64_t *msg_len) {
    return msg_out(notif_wait(agent, timeout_ms), msg, cap, msg_len);
}
