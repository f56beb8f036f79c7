/* t_nixl.c - helpers of the nixl engine's tests (test_nixl*.c): whether NIXL is here,
 * and agents, memory and prepared lists on it. */
#include <stdlib.h>
#include <string.h>

#include "t.h"
#include "t_nixl.h"

bool nixl_missing(void) {
    /* UCX: loopback only (a run's own UCX_NET_DEVICES wins); quieter NIXL logs. */
    setenv("UCX_NET_DEVICES", "lo", 0);
    setenv("NIXL_LOG_LEVEL", "ERROR", 0);
    uint8_t buf[8192];
    uint64_t len = 0;
    if (kvp_engine_probe("nixl", buf, sizeof buf - 1, &len) != KVP_SUCCESS) return true;
    buf[len < sizeof buf ? len : sizeof buf - 1] = 0;
    if (strstr((char *)buf, "available=1")) return false;
    char *r = strstr((char *)buf, "reason=");
    char *e = r ? strchr(r, '\n') : NULL;
    if (e) *e = 0;
    /* The Makefile sets this when it built the module: a module that was built but does
     * not load (a missing library, a sanitizer runtime it cannot find) fails, rather
     * than skipping every nixl test unnoticed. */
    const char *expect = getenv("KVP_TEST_EXPECT_NIXL");
    CHECK_MSG(!(expect && strcmp(expect, "1") == 0),
              "the nixl engine was built but is not available: %s", r ? r + 7 : (char *)buf);
    printf("    skipped: %s\n", r ? r + 7 : "NIXL not available");
    return true;
}
uint64_t nixl_agent(const char *name, const char *backends, const char *params) {
    uint64_t a = 0;
    OK(kvp_agent_create(name, "nixl", backends ? backends : "UCX", params, &a));
    return a;
}

/* "key=value" of an agent's info, copied into out. */
void info_value(uint64_t a, const char *key, char *out, size_t cap) {
    uint8_t buf[8192];
    uint64_t len = 0;
    OK(kvp_agent_info(a, buf, sizeof buf - 1, &len));
    buf[len] = 0;
    char pat[128];
    snprintf(pat, sizeof pat, "\n%s=", key);
    char *hit = strncmp((char *)buf, pat + 1, strlen(pat + 1)) == 0 ? (char *)buf - 1
                                                                    : strstr((char *)buf, pat);
    out[0] = 0;
    if (!hit) return;
    hit += strlen(pat);
    size_t n = strcspn(hit, "\n");
    snprintf(out, cap, "%.*s", (int)n, hit);
}

uint64_t alloc_reg(uint64_t a, uint64_t size, uint64_t *reg) {
    uint64_t addr = 0;
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &addr));
    OK(kvp_register(a, KVP_DRAM, &addr, &size, NULL, 1, NULL, reg));
    return addr;
}

uint64_t prep_pages(uint64_t a, const char *remote, int32_t mt, uint64_t base,
                           uint64_t dev, uint64_t page, uint32_t n) {
    uint64_t *v = malloc(3 * n * sizeof *v);
    CHECK(v);
    for (uint32_t i = 0; i < n; i++) {
        v[i] = base + (uint64_t)i * page;
        v[n + i] = page;
        v[2 * n + i] = dev;
    }
    uint64_t dl, p;
    OK(kvp_dlist_create(mt, v, v + n, v + 2 * n, n, &dl));
    OK(kvp_prep_dlist(a, remote, dl, &p));
    OK(kvp_dlist_release(dl));
    free(v);
    return p;
}

