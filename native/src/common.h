/*
 * common.h - small helpers shared by every file of the native shim.
 *
 * Everything here is internal (hidden visibility); only functions marked KVP_API are
 * exported from libkvport.so.
 */
#ifndef KVP_COMMON_H
#define KVP_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../include/kvport.h"

#define KVP_API __attribute__((visibility("default")))
#define KVP_HIDDEN __attribute__((visibility("hidden")))
#define KVP_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define KVP_UNUSED(x) ((void)(x))

#define KVP_MIN(a, b) ((a) < (b) ? (a) : (b))
#define KVP_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Library version reported by kvp_engine_probe. */
#define KVP_VERSION_STRING "0.1.0"

/* Largest agent name (bytes, without NUL). */
#define KVP_NAME_MAX 255
/* Largest notification (bytes). */
#define KVP_NOTIF_MAX (64u * 1024u)

/* Little-endian encoding helpers: the metadata and wire formats are little-endian
 * whatever the host, so they are written byte by byte (no unaligned access, no UB). */
static inline void kvp_put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void kvp_put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void kvp_put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint16_t kvp_get_u16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t kvp_get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static inline uint64_t kvp_get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* "Sized out" convention of the header: *len always gets the full size, bytes are
 * copied only when they fit. Returns KVP_SUCCESS. */
int32_t kvp_sized_out(const void *src, uint64_t n, uint8_t *buf, uint64_t cap,
                      uint64_t *len);

/* Monotonic clock in nanoseconds. */
uint64_t kvp_now_ns(void);
/* Absolute CLOCK_MONOTONIC deadline timeout_ms from now (for pthread_cond_timedwait on
 * condvars created with kvp_cond_init). */
struct timespec kvp_deadline_ms(int64_t timeout_ms);
/* Condvar that measures timeouts on CLOCK_MONOTONIC (immune to wall-clock jumps). */
int kvp_cond_init(pthread_cond_t *cv);
/* pthread_create of a thread of the library's own that takes no signal of the runtime's
 * (they stay with the runtime's threads): every signal blocked in it. Returns
 * pthread_create's result. */
int kvp_thread_start(pthread_t *th, void *(*fn)(void *), void *arg);

/* Growable byte buffer used by encoders. */
typedef struct kvp_buf {
    uint8_t *p;
    size_t len, cap;
    bool oom;
} kvp_buf;
void kvp_buf_reserve(kvp_buf *b, size_t extra);
void kvp_buf_put(kvp_buf *b, const void *src, size_t n);
void kvp_buf_u8(kvp_buf *b, uint8_t v);
void kvp_buf_u16(kvp_buf *b, uint16_t v);
void kvp_buf_u32(kvp_buf *b, uint32_t v);
void kvp_buf_u64(kvp_buf *b, uint64_t v);
void kvp_buf_free(kvp_buf *b);

/* Bounds-checked reader used by every decoder: once a read runs past the end, ok turns
 * false and every later read returns zeros, so parsers check ok once at the end (or
 * before trusting a count) and can never read out of bounds. */
typedef struct kvp_reader {
    const uint8_t *p;
    size_t len, off;
    bool ok;
} kvp_reader;
static inline kvp_reader kvp_reader_make(const uint8_t *p, size_t len) {
    kvp_reader r = {p, len, 0, p != NULL || len == 0};
    return r;
}
static inline size_t kvp_reader_left(const kvp_reader *r) {
    return r->ok ? r->len - r->off : 0;
}
static inline const uint8_t *kvp_read_bytes(kvp_reader *r, size_t n) {
    if (!r->ok || n > r->len - r->off) {
        r->ok = false;
        return NULL;
    }
    const uint8_t *q = r->p + r->off;
    r->off += n;
    return q;
}
static inline uint8_t kvp_read_u8(kvp_reader *r) {
    const uint8_t *q = kvp_read_bytes(r, 1);
    return q ? q[0] : 0;
}
static inline uint16_t kvp_read_u16(kvp_reader *r) {
    const uint8_t *q = kvp_read_bytes(r, 2);
    return q ? kvp_get_u16(q) : 0;
}
static inline uint32_t kvp_read_u32(kvp_reader *r) {
    const uint8_t *q = kvp_read_bytes(r, 4);
    return q ? kvp_get_u32(q) : 0;
}
static inline uint64_t kvp_read_u64(kvp_reader *r) {
    const uint8_t *q = kvp_read_bytes(r, 8);
    return q ? kvp_get_u64(q) : 0;
}

/* SipHash-2-4 of n bytes under a 128-bit key (a keyed hash: proc_tag of metadata). */
uint64_t kvp_siphash24(const uint8_t key[16], const uint8_t *p, size_t n);

/* FNV-1a 64. */
uint64_t kvp_fnv1a(uint64_t h, const uint8_t *p, size_t n);
#define KVP_FNV_OFFSET 0xcbf29ce484222325ULL

/* Overflow-safe "a + b <= limit" for ranges. */
static inline bool kvp_range_ok(uint64_t addr, uint64_t len, uint64_t base, uint64_t blen) {
    return addr >= base && len <= blen && addr - base <= blen - len;
}

/* Close an fd, retrying nothing (close must not be retried on Linux), ignoring -1. */
void kvp_close(int fd);

#endif
