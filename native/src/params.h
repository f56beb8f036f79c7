/* params.h - "key=value" lines of kvp_agent_create. */
#ifndef KVP_PARAMS_H
#define KVP_PARAMS_H
#include "common.h"

typedef struct kvp_param {
    char *backend; /* "UCX" for "UCX.key=value", NULL for a plain key */
    char *key;
    char *value;
    bool used;
} kvp_param;

typedef struct kvp_params {
    kvp_param *v;
    size_t n;
} kvp_params;

/* Parses text (NULL or "" = none). Blank lines and lines starting with '#' are skipped;
 * whitespace around keys and values is trimmed. A line without '=' is
 * KVP_ERR_INVALID_PARAM naming it. */
int32_t kvp_params_parse(const char *text, kvp_params *out);
void kvp_params_free(kvp_params *p);
/* Value of a plain key (or of BACKEND.key for any backend); NULL when absent. Marks it
 * used. The last occurrence wins. */
const char *kvp_params_get(kvp_params *p, const char *key);
/* Parses an unsigned integer value in [lo, hi]; KVP_ERR_INVALID_PARAM naming the key. */
int32_t kvp_params_uint(kvp_params *p, const char *key, uint64_t lo, uint64_t hi,
                        uint64_t dflt, uint64_t *out);

#endif
