/* util.c - helpers of common.h. */
#include "common.h"

#include <signal.h>
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

int kvp_thread_start(pthread_t *th, void *(*fn)(void *), void *arg) {
    /* The new thread inherits the mask in place when it is made. */
    sigset_t all, old;
    sigfillset(&all);
    int mrc = pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(th, NULL, fn, arg);
    if (mrc == 0) (void)pthread_sigmask(SIG_SETMASK, &old, NULL);
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

/* SipHash-2-4 (Aumasson and Bernstein): two compression rounds per 8-byte word, four
 * finalization rounds. */
static inline uint64_t rotl64(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }
#define SIPROUND                                                                            \
    do {                                                                                    \
        v0 += v1; v1 = rotl64(v1, 13); v1 ^= v0; v0 = rotl64(v0, 32);                       \
        v2 += v3; v3 = rotl64(v3, 16); v3 ^= v2;                                            \
        v0 += v3; v3 = rotl64(v3, 21); v3 ^= v0;                                            \
        v2 += v1; v1 = rotl64(v1, 17); v1 ^= v2; v2 = rotl64(v2, 32);                       \
    } while (0)

uint64_t kvp_siphash24(const uint8_t key[16], const uint8_t *p, size_t n) {
    uint64_t k0 = kvp_get_u64(key), k1 = kvp_get_u64(key + 8);
    uint64_t v0 = k0 ^ 0x736f6d6570736575ull, v1 = k1 ^ 0x646f72616e646f6dull;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ull, v3 = k1 ^ 0x7465646279746573ull;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t m = kvp_get_u64(p + i);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t last = (uint64_t)(n & 0xff) << 56;
    for (size_t j = 0; i + j < n; j++) last |= (uint64_t)p[i + j] << (8 * j);
    v3 ^= last;
    SIPROUND;
    SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}
#undef SIPROUND
