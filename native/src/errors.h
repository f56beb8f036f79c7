/* errors.h - thread-local last error and status names. */
#ifndef KVP_ERRORS_H
#define KVP_ERRORS_H
#include "common.h"

#define KVP_MSG_MAX 1024

/* Sets the calling thread's last error and returns status (so callers can write
 * `return kvp_err(KVP_ERR_..., "...")`). */
int32_t kvp_err(int32_t status, const char *fmt, ...) KVP_PRINTF(2, 3);
/* Sets status and "<formatted prefix>: <current message>" (the current message is
 * copied first, so it may be passed through freely). */
int32_t kvp_err_wrap(int32_t status, const char *fmt, ...) KVP_PRINTF(2, 3);
/* Clears the calling thread's last error (every API entry point does this first, so a
 * message never outlives the call that caused it). */
void kvp_err_clear(void);
/* Status given to the last kvp_err call of this thread (for helpers that return NULL
 * after setting the error). */
int32_t kvp_err_status(void);
/* The calling thread's current message ("" when none). */
const char *kvp_err_text(void);

#endif
