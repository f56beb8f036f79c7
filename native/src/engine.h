/*
 * engine.h - the seam between the public C ABI (api.c) and an engine.
 *
 * api.c validates the agent handle, keeps the agent alive for the duration of a call
 * (a reference from the handle table) and dispatches through the agent's vtable. An
 * engine owns everything below: its registrations, lists, requests (handles of the
 * shared table, tagged with their type) and threads. The builtin engine lives in
 * builtin_*.c; a later engine over libnixl (C++) implements the same vtable.
 */
#ifndef KVP_ENGINE_H
#define KVP_ENGINE_H
#include "common.h"
#include "dlist.h"
#include "handles.h"
#include "params.h"

typedef struct kvp_agent kvp_agent;

typedef struct kvp_engine_ops {
    const char *name;
    /* Called once the agent left the handle table and every caller has left: frees all
     * the agent owns, including the agent itself. */
    void (*destroy)(kvp_agent *a);
    /* Called at the start of kvp_agent_destroy (handle already gone, other callers may
     * still be inside): wake every blocked wait so that it returns KVP_ERR_CANCELED. */
    void (*wake_all)(kvp_agent *a);
    int32_t (*info)(kvp_agent *a, kvp_buf *out);
    int32_t (*reg)(kvp_agent *a, int32_t mem_type, const uint64_t *addrs, const uint64_t *lens,
                   const uint64_t *devs, uint64_t count, const char *meta, uint64_t *out_reg);
    int32_t (*dereg)(kvp_agent *a, uint64_t reg);
    int32_t (*local_md)(kvp_agent *a, kvp_buf *out);
    int32_t (*load_remote)(kvp_agent *a, const uint8_t *blob, uint64_t len,
                           char name_out[KVP_NAME_MAX + 1]);
    int32_t (*invalidate)(kvp_agent *a, const char *remote);
    int32_t (*prep)(kvp_agent *a, const char *remote, kvp_dlist *l, uint64_t *out);
    int32_t (*prepped_release)(kvp_agent *a, uint64_t prepped);
    int32_t (*xfer_create)(kvp_agent *a, int32_t op, uint64_t lp, const uint32_t *li,
                           uint64_t rp, const uint32_t *ri, uint64_t count,
                           const uint8_t *notif, uint64_t notif_len, uint64_t *out);
    int32_t (*xfer_post)(kvp_agent *a, uint64_t req);
    int32_t (*xfer_status)(kvp_agent *a, uint64_t req);
    int32_t (*xfer_wait)(kvp_agent *a, uint64_t req, int64_t timeout_ms);
    int32_t (*xfer_message)(kvp_agent *a, uint64_t req, kvp_buf *out);
    int32_t (*xfer_release)(kvp_agent *a, uint64_t req);
    int32_t (*notif_send)(kvp_agent *a, const char *remote, const uint8_t *msg, uint64_t len);
    int32_t (*notif_take)(kvp_agent *a, uint8_t *buf, uint64_t cap, uint64_t *len,
                          uint64_t *count);
    int32_t (*notif_wait)(kvp_agent *a, int64_t timeout_ms);
    /* kvp_event_fd; NULL when the engine has none (api.c: NIXL_ERR_NOT_SUPPORTED). */
    int32_t (*event_fd)(kvp_agent *a, int32_t *out);
    /* kvp_event_notify; NULL when the engine has none (NIXL_ERR_NOT_SUPPORTED). */
    int32_t (*event_notify)(kvp_agent *a, kvp_event_fn fn, uint64_t ctx, uint32_t flags);
    int32_t (*event_ack)(kvp_agent *a); /* with event_notify */
    /* Page grants; NULL when the engine enforces none (api.c: NIXL_ERR_NOT_SUPPORTED). */
    int32_t (*grant)(kvp_agent *a, const char *remote, int32_t mem_type, const uint64_t *addrs,
                     const uint64_t *lens, const uint64_t *devs, uint64_t count,
                     uint32_t access, int64_t expires_ms, uint64_t *out);
    int32_t (*revoke)(kvp_agent *a, uint64_t grant);
    /* kvp_grant_each / kvp_revoke_each: a batch, one table rebuild; NULL with grant. */
    int32_t (*grant_each)(kvp_agent *a, const char *remote, int32_t mem_type,
                          const uint64_t *addrs, const uint64_t *lens, const uint64_t *devs,
                          uint64_t count, uint32_t access, int64_t expires_ms, uint64_t *out);
    int32_t (*revoke_each)(kvp_agent *a, const uint64_t *grants, uint64_t count);
} kvp_engine_ops;

/* Base of every engine's agent (first member). */
struct kvp_agent {
    kvp_obj obj;
    const kvp_engine_ops *ops;
    char name[KVP_NAME_MAX + 1];
    atomic_bool dying;
    /* The release callback of obj signals gone; kvp_agent_destroy waits for it. */
    pthread_mutex_t life_mu;
    pthread_cond_t life_cv;
    bool gone;
    /* Why engine "auto" did not take the nixl engine ("" when it did, or not asked);
     * kvp_agent_info reports it as engine_note. */
    char note[640];
};

/* Initializes the base (refs = 1). */
int32_t kvp_agent_base_init(kvp_agent *a, const kvp_engine_ops *ops, const char *name);
void kvp_agent_base_fini(kvp_agent *a);

/* Engine constructors. backends_mask: KVP_CAP_* bits already validated by api.c. */
int32_t kvp_builtin_create(const char *name, uint32_t backends_mask, kvp_params *params,
                           kvp_agent **out);

/* Path and message about NIXL (the nixl engine is not compiled in yet). */
const char *kvp_nixl_unavailable_reason(void);

#endif
