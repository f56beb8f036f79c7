/*
 * engine_nixl_glue.h - what api.c needs from the nixl engine (engine_nixl_glue.c).
 * Nothing here needs NIXL: the engine itself is a module loaded at run time.
 */
#ifndef KVP_ENGINE_NIXL_GLUE_H
#define KVP_ENGINE_NIXL_GLUE_H
#include "common.h"

typedef struct kvp_agent kvp_agent;
typedef struct kvpn_module kvpn_module;

/* The loaded module, loading it on first call; NULL when not available. */
const kvpn_module *kvp_nixl_module(void);
/* Whether a module file was found (built), loadable or not. */
bool kvp_nixl_built(void);
/* Why the module is not available ("" when it is). */
const char *kvp_nixl_reason(void);
/* Paths tried, as "path(what),path(what)". */
const char *kvp_nixl_searched(void);
/* Creates a nixl-engine agent. requested: the engine asked for ("nixl" or "auto"),
 * reported by kvp_agent_info. Fails KVP_ERR_NOT_SUPPORTED when the module is missing. */
int32_t kvp_nixl_create(const char *name, const char *requested, const char *backends,
                        const char *params, kvp_agent **out);
/* kvp_engine_probe("nixl") report (without searched=); *available: NIXL usable. */
int32_t kvp_nixl_probe(kvp_buf *out, bool *available);

#endif
