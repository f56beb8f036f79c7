/*
 * engine_nixl.h - the seam between libkvport.so and the nixl engine module.
 *
 * The nixl engine lives in its own shared object, libkvport_nixl.so, built only when
 * NIXL's headers and library are found. libkvport.so never links NIXL: it dlopens the
 * module when an agent asks for engine "nixl" or "auto" (or when the engine is probed),
 * so one libkvport.so works on machines with and without NIXL.
 *
 * The module exports a single C symbol, kvpn_module_get(), that returns a table of
 * plain C functions. Their shapes follow kvport.h, with three differences:
 *  - agents and the objects inside them (registrations, prepared lists, requests) are
 *    the module's own 64-bit handles (never reused, so stale ones are
 *    KVP_ERR_NOT_FOUND), which the host keeps inside its own handle table;
 *  - descriptor lists are the host's objects, so prep_dlist receives their contents;
 *  - a failing call leaves its message in the module's thread-local last error, which
 *    the host copies into its own (last_error), and errors of a request are kept on
 *    the request (xfer_message), exactly as kvport.h says.
 * Statuses are NIXL's nixl_status_t values, which are the KVP_* values.
 *
 * This header is C, and is included by the C host and by the C++ module.
 */
#ifndef KVP_ENGINE_NIXL_H
#define KVP_ENGINE_NIXL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever kvpn_module changes shape. */
#define KVPN_MODULE_ABI 3

/* File name of the module, looked for next to libkvport.so. */
#define KVPN_MODULE_FILE "libkvport_nixl.so"
/* The one exported symbol. */
#define KVPN_MODULE_SYMBOL "kvpn_module_get"

typedef struct kvpn_module {
    uint32_t abi;          /* KVPN_MODULE_ABI */
    const char *version;   /* NIXL version the module was built against, e.g. "1.4.0" */
    const char *build;     /* "key=value\n" lines about the build (prefix, compiler) */

    /* The calling thread's message from the module's last failing call ("" if none). */
    const char *(*last_error)(void);

    /* "key=value\n" report: available, reason, version, ucx_version, plugins,
     * plugin_dir, plugin.<NAME>=mems:...;params:..., searched (module side). */
    int32_t (*probe)(uint8_t *buf, uint64_t cap, uint64_t *len);

    /* kvp_agent_create without the engine argument. */
    int32_t (*agent_create)(const char *name, const char *backends, const char *params,
                            uint64_t *out_agent);
    /* Wakes every wait on the agent (they return KVP_ERR_CANCELED) and refuses new calls;
     * the host calls it when kvp_agent_destroy starts, then agent_destroy once every
     * caller has left. */
    int32_t (*agent_wake)(uint64_t agent);
    int32_t (*agent_destroy)(uint64_t agent);
    int32_t (*agent_info)(uint64_t agent, uint8_t *buf, uint64_t cap, uint64_t *len);

    int32_t (*reg)(uint64_t agent, int32_t mem_type, const uint64_t *addrs,
                   const uint64_t *lens, const uint64_t *devs, uint64_t count,
                   const char *meta, uint64_t *out_reg);
    int32_t (*dereg)(uint64_t agent, uint64_t reg);

    int32_t (*local_metadata)(uint64_t agent, uint8_t *buf, uint64_t cap, uint64_t *len);
    int32_t (*load_remote_metadata)(uint64_t agent, const uint8_t *blob, uint64_t len,
                                    uint8_t *name_buf, uint64_t cap, uint64_t *name_len);
    int32_t (*invalidate_remote)(uint64_t agent, const char *remote_name);

    /* kvp_prep_dlist with the list's contents instead of its handle. */
    int32_t (*prep_dlist)(uint64_t agent, const char *remote, int32_t mem_type,
                          const uint64_t *addrs, const uint64_t *lens, const uint64_t *devs,
                          uint64_t count, uint64_t *out_prepped);
    int32_t (*prepped_release)(uint64_t agent, uint64_t prepped);

    int32_t (*xfer_create)(uint64_t agent, int32_t op, uint64_t local_prepped,
                           const uint32_t *local_idx, uint64_t remote_prepped,
                           const uint32_t *remote_idx, uint64_t count, const uint8_t *notif,
                           uint64_t notif_len, uint64_t *out_req);
    int32_t (*xfer_post)(uint64_t agent, uint64_t req);
    int32_t (*xfer_status)(uint64_t agent, uint64_t req);
    int32_t (*xfer_wait)(uint64_t agent, uint64_t req, int64_t timeout_ms);
    int32_t (*xfer_message)(uint64_t agent, uint64_t req, uint8_t *buf, uint64_t cap,
                            uint64_t *len);
    int32_t (*xfer_release)(uint64_t agent, uint64_t req);

    int32_t (*notif_send)(uint64_t agent, const char *remote, const uint8_t *msg,
                          uint64_t len);
    int32_t (*notif_take)(uint64_t agent, uint8_t *buf, uint64_t cap, uint64_t *len,
                          uint64_t *count);
    int32_t (*notif_wait)(uint64_t agent, int64_t timeout_ms);

    /* The hot calls (kvp_xfer_post, kvp_xfer_status) on the agent's own object instead
     * of its handle. agent_object returns it (NULL for an unknown handle); it stays valid
     * until agent_destroy. The host makes these calls only while it holds its own
     * reference on the agent (api.c), which kvp_agent_destroy waits out before it calls
     * agent_destroy, so they skip the module's agent lookup and call count. */
    void *(*agent_object)(uint64_t agent);
    int32_t (*xfer_post_on)(void *agent, uint64_t req);
    int32_t (*xfer_status_on)(void *agent, uint64_t req);

    /* ABI 3: starts the agent's watcher, a thread of the module that calls signal(ctx)
     * whenever one of the agent's posted requests left IN_PROG (seen by the watcher's own
     * poll) or notifications were queued, with no lock of the module held; it polls
     * NIXL (which has no completion callback): a request from 50 us after its post, then
     * every 1/16 of its age (32 us to 1 ms); notifications with a backoff to 1 ms. Once
     * per agent (again: KVP_ERR_NOT_ALLOWED). agent_wake and agent_destroy stop and join
     * it: no call of signal runs after either returned. */
    int32_t (*agent_watch)(uint64_t agent, void (*signal)(void *ctx), void *ctx);
} kvpn_module;

/* Returns the module's table when the host speaks abi, else NULL. */
typedef const kvpn_module *(*kvpn_module_get_fn)(uint32_t abi);

#ifdef __cplusplus
}
#endif

#endif
