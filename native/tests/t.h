/*
 * t.h - a tiny test harness. TEST(name) registers a test; main (t_main.c) runs each in
 * its own forked process with a time limit, so a crash or hang fails that test only.
 * CHECK* macros print the location, the status names and the library's last error,
 * then exit the test process with status 1.
 */
#ifndef KVP_T_H
#define KVP_T_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../include/kvport.h"

typedef void (*t_fn)(void);
void t_register(const char *name, t_fn fn, int timeout_s);

#define TEST_T(name, secs)                                                                 \
    static void name(void);                                                                \
    __attribute__((constructor)) static void t_reg_##name(void) {                          \
        t_register(#name, name, secs);                                                     \
    }                                                                                      \
    static void name(void)
#define TEST(name) TEST_T(name, 20)

void t_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));
const char *t_lasterr(void);

#define CHECK(c)                                                                           \
    do {                                                                                   \
        if (!(c)) t_fail(__FILE__, __LINE__, "CHECK(%s) failed", #c);                      \
    } while (0)
#define CHECK_MSG(c, ...)                                                                  \
    do {                                                                                   \
        if (!(c)) t_fail(__FILE__, __LINE__, __VA_ARGS__);                                 \
    } while (0)
/* Status check: expr must return want. */
#define CHECK_ST(expr, want)                                                               \
    do {                                                                                   \
        int32_t t_st_ = (expr);                                                            \
        if (t_st_ != (want))                                                               \
            t_fail(__FILE__, __LINE__, "%s returned %s, expected %s; last error: %s", #expr, \
                   kvp_status_name(t_st_), kvp_status_name(want), t_lasterr());            \
    } while (0)
#define OK(expr) CHECK_ST(expr, KVP_SUCCESS)
#define CHECK_ERR_HAS(sub)                                                                 \
    do {                                                                                   \
        if (!strstr(t_lasterr(), (sub)))                                                   \
            t_fail(__FILE__, __LINE__, "last error \"%s\" does not mention \"%s\"",        \
                   t_lasterr(), (sub));                                                    \
    } while (0)

/* ------------------------------------------------------------- helpers ---- */
/* Agent on 127.0.0.1 with an ephemeral port; extra params appended. */
uint64_t t_agent(const char *name, const char *backends, const char *extra_params);
/* The number after `key=` on its own line of kvp_agent_info (fails the test when the
 * agent reports no such line). */
uint64_t t_info_num(uint64_t agent, const char *key);
/* Its metadata (malloc'ed). */
uint8_t *t_md(uint64_t agent, uint64_t *len);
/* Loads blob into agent, returns nothing (checks success). */
void t_load(uint64_t agent, const uint8_t *blob, uint64_t len);
/* Length-prefixed blobs over a pipe/socket between test processes. */
void t_send(int fd, const void *p, uint64_t len);
uint8_t *t_recv(int fd, uint64_t *len);
void t_send_u64(int fd, uint64_t v);
uint64_t t_recv_u64(int fd);
/* Registers one DRAM region and prepares a list of n equal pages over it. */
uint64_t t_prep_pages(uint64_t agent, const char *remote, uint64_t base, uint64_t page,
                      uint32_t n);
/* Fills len bytes with a pattern derived from seed; checks it. */
void t_fill(void *p, uint64_t len, uint32_t seed);
int t_verify(const void *p, uint64_t len, uint32_t seed);
/* Waits for a child; returns its exit status (0 = passed). */
int t_wait_child(int pid);
/* Points KVPORT_CUDART at the stand-in runtime built next to the test binary
 * (build/fake/libcudart.so, tools/fake_cudart.c) before any CUDA use; fails the test when
 * it is missing. Its path goes to lib (cap bytes). */
void t_use_fake_cudart(char *lib, size_t cap);
double t_now(void);

#endif

/* ------------------------------------------------------------ peer process ---- */
/* A target agent in a forked child, driven over a socketpair. Fork peers before the
 * test process creates any agent of its own (a child of a multi-threaded process may
 * inherit locks held by threads that do not exist in it). */
typedef struct t_peer {
    int pid;
    int fd;
    uint8_t *md;
    uint64_t mdlen;
    uint64_t base, size;
} t_peer;
/* anon: 0 = kvp_mem_alloc DRAM (a memfd the initiator maps), 1 = mmap(MAP_ANONYMOUS)
 * (reached by cross-memory attach), 2 = kvp_mem_alloc VRAM on device 0 (CUDA IPC),
 * 3 = kvp_mem_alloc DRAM with KVP_DRAM_PRIVATE (cross-memory attach), 4 = kvp_mem_alloc DRAM
 * with KVP_DRAM_SPARSE (a memfd whose pages exist only once touched). */
void t_peer_start(t_peer *p, const char *name, const char *backends, const char *params,
                  uint64_t size, int anon);
/* A peer forked now (before this process has threads of its own) that starts its agent
 * only at t_peer_go: many peers can come and go one after another. */
void t_peer_fork_gated(t_peer *p, const char *name, const char *backends, const char *params,
                       uint64_t size, int anon);
void t_peer_go(t_peer *p);
void t_peer_fill(t_peer *p, uint64_t off, uint64_t len, uint32_t seed);
int t_peer_verify(t_peer *p, uint64_t off, uint64_t len, uint32_t seed);
/* Waits up to timeout_ms for notifications; when one arrives the peer verifies
 * [off, off+len) against seed at once (len 0: no check). Returns the number of
 * records taken; *verified = 1 when the data was there; from/msg of the first. */
int t_peer_notif(t_peer *p, int timeout_ms, uint64_t off, uint64_t len, uint32_t seed,
                 int *verified, char *from, char *msg);
/* One same-host request of agent a, which loaded the peer as `remote`: n pages of `page`
 * bytes from local m + loff to the peer's buffer at roff (KVP_WRITE) or back (KVP_READ),
 * waited for (20 s at most) and released. */
void t_peer_xfer(uint64_t a, int op, const char *remote, uint64_t m, uint64_t loff, t_peer *p,
                 uint64_t roff, uint64_t page, uint32_t n);
/* The peer deregisters and frees its buffer, then maps other memory at the same
 * address, filled with seed (t_peer_verify checks it). */
void t_peer_dereg(t_peer *p, uint32_t seed);
/* The peer (created with page_grants=on) loads md and grants that agent access
 * (KVP_GRANT_*) to [off, off+len) of its buffer; returns the grant handle. */
uint64_t t_peer_grant(t_peer *p, const uint8_t *md, uint64_t mdlen, uint64_t off, uint64_t len,
                      uint32_t access);
void t_peer_revoke(t_peer *p, uint64_t grant);
void t_peer_stop(t_peer *p);
