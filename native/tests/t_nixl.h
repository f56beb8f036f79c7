/* t_nixl.h - helpers of the nixl engine's tests (t_nixl.c). */
#ifndef T_NIXL_H
#define T_NIXL_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* True (after printing why) when NIXL is not available; fails instead when the Makefile
 * built the module (KVP_TEST_EXPECT_NIXL=1) and it does not load. */
bool nixl_missing(void);
#define NEED_NIXL()                                                                        \
    do {                                                                                   \
        if (nixl_missing()) return;                                                        \
    } while (0)

/* An agent of engine nixl (backends NULL: UCX). */
uint64_t nixl_agent(const char *name, const char *backends, const char *params);
/* "key=value" of an agent's info, copied into out ("" when absent). */
void info_value(uint64_t a, const char *key, char *out, size_t cap);
/* size bytes of DRAM, registered on a (*reg). */
uint64_t alloc_reg(uint64_t a, uint64_t size, uint64_t *reg);
/* A list of n pages of `page` bytes from base, prepared for remote ("" local). */
uint64_t prep_pages(uint64_t a, const char *remote, int32_t mt, uint64_t base, uint64_t dev,
                    uint64_t page, uint32_t n);

#endif
