/* errors.c - thread-local last error (kvp_last_error) and status names. */
#include "errors.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char t_msg[KVP_MSG_MAX];
static _Thread_local int32_t t_status;

int32_t kvp_err(int32_t status, const char *fmt, ...) {
    t_status = status;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t_msg, sizeof t_msg, fmt, ap);
    va_end(ap);
    if (n < 0) t_msg[0] = '\0';
    return status;
}

int32_t kvp_err_wrap(int32_t status, const char *fmt, ...) {
    char old[KVP_MSG_MAX];
    memcpy(old, t_msg, sizeof old);
    char pre[KVP_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    if (n < 0) pre[0] = '\0';
    return kvp_err(status, "%s: %s", pre, old);
}

void kvp_err_clear(void) {
    t_msg[0] = '\0';
    t_status = KVP_SUCCESS;
}

int32_t kvp_err_status(void) { return t_status; }

const char *kvp_err_text(void) { return t_msg; }

KVP_API uint64_t kvp_last_error(char *buf, uint64_t cap) {
    size_t n = strlen(t_msg);
    if (buf && cap > 0) {
        size_t c = n < cap - 1 ? n : (size_t)(cap - 1);
        memcpy(buf, t_msg, c);
        buf[c] = '\0';
    }
    return n;
}

KVP_API const char *kvp_status_name(int32_t status) {
    switch (status) {
    case KVP_IN_PROG: return "NIXL_IN_PROG";
    case KVP_SUCCESS: return "NIXL_SUCCESS";
    case KVP_ERR_NOT_POSTED: return "NIXL_ERR_NOT_POSTED";
    case KVP_ERR_INVALID_PARAM: return "NIXL_ERR_INVALID_PARAM";
    case KVP_ERR_BACKEND: return "NIXL_ERR_BACKEND";
    case KVP_ERR_NOT_FOUND: return "NIXL_ERR_NOT_FOUND";
    case KVP_ERR_MISMATCH: return "NIXL_ERR_MISMATCH";
    case KVP_ERR_NOT_ALLOWED: return "NIXL_ERR_NOT_ALLOWED";
    case KVP_ERR_REPOST_ACTIVE: return "NIXL_ERR_REPOST_ACTIVE";
    case KVP_ERR_UNKNOWN: return "NIXL_ERR_UNKNOWN";
    case KVP_ERR_NOT_SUPPORTED: return "NIXL_ERR_NOT_SUPPORTED";
    case KVP_ERR_REMOTE_DISCONNECT: return "NIXL_ERR_REMOTE_DISCONNECT";
    case KVP_ERR_CANCELED: return "NIXL_ERR_CANCELED";
    case KVP_ERR_NO_TELEMETRY: return "NIXL_ERR_NO_TELEMETRY";
    default: return "NIXL_ERR_UNKNOWN_STATUS";
    }
}

KVP_API uint32_t kvp_abi_version(void) { return KVP_ABI_VERSION; }
