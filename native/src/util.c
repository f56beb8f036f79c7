/* util.c - helpers of common.h. */
#include "common.h"

#include <time.h>
#include <unistd.h>

int32_t kvp_sized_out(const void *src, uint64_t n, uint8_t *buf, uint64_t cap,
                      uint64_t *len) {
    if (len) *len = n;
    if (buf && cap >= n && n > 0) memcpy(buf, src, n);
    return KVP_SUCCESS;
}

uint64_t kvp_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

struct timespec kvp_deadline_ms(int64_t timeout_ms) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (timeout_ms < 0) timeout_ms = 0;
    /* Cap at ~100 years so the addition cannot overflow time_t. */
    if (timeout_ms > 3153600000000LL) timeout_ms = 3153600000000LL;
    ts.tv_sec += (time_t)(timeout_ms / 1000);
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec += 1;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

int kvp_cond_init(pthread_cond_t *cv) {
    pthread_condattr_t at;
    int rc = pthread_condattr_init(&at);
    if (rc != 0) return rc;
    rc = pthread_condattr_setclock(&at, CLOCK_MONOTONIC);
    if (rc == 0) rc = pthread_cond_init(cv, &at);
    pthread_condattr_destroy(&at);
    return rc;
}

void kvp_buf_reserve(kvp_buf *b, size_t extra) {
    if (b->oom) return;
    if (extra > SIZE_MAX / 2 - b->len) {
        b->oom = true;
        return;
    }
    if (b->len + extra <= b->cap) return;
    size_t nc = b->cap ? b->cap : 256;
    while (nc < b->len + extra) nc *= 2;
    uint8_t *np = realloc(b->p, nc);
    if (!np) {
        b->oom = true;
        return;
    }
    b->p = np;
    b->cap = nc;
}
void kvp_buf_put(kvp_buf *b, const void *src, size_t n) {
    kvp_buf_reserve(b, n);
    if (b->oom || n == 0) return;
    memcpy(b->p + b->len, src, n);
    b->len += n;
}
void kvp_buf_u8(kvp_buf *b, uint8_t v) { kvp_buf_put(b, &v, 1); }
void kvp_buf_u16(kvp_buf *b, uint16_t v) {
    uint8_t t[2];
    kvp_put_u16(t, v);
    kvp_buf_put(b, t, 2);
}
void kvp_buf_u32(kvp_buf *b, uint32_t v) {
    uint8_t t[4];
    kvp_put_u32(t, v);
    kvp_buf_put(b, t, 4);
}
void kvp_buf_u64(kvp_buf *b, uint64_t v) {
    uint8_t t[8];
    kvp_put_u64(t, v);
    kvp_buf_put(b, t, 8);
}
void kvp_buf_free(kvp_buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

uint64_t kvp_fnv1a(uint64_t h, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

void kvp_close(int fd) {
    if (fd >= 0) (void)close(fd);
}
