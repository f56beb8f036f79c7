/* test_cuda.c - VRAM paths; each test skips (passes, saying so) without a CUDA device.
 * CUDA is initialised only after peers are forked: a CUDA context does not survive
 * fork. */
#include <unistd.h>

#include "t.h"

static int have_gpu(void) {
    int32_t n = 0;
    if (kvp_cuda_device_count(&n) != KVP_SUCCESS || n < 1) {
        fprintf(stderr, "    skipped: %s\n", t_lasterr());
        return 0;
    }
    return 1;
}

static uint64_t prep_type(uint64_t a, const char *remote, int32_t type, uint64_t base,
                          uint64_t page, uint32_t n) {
    uint64_t *ad = malloc(n * 8), *ln = malloc(n * 8), *dv = calloc(n, 8), dl, pp;
    for (uint32_t i = 0; i < n; i++) {
        ad[i] = base + (uint64_t)i * page;
        ln[i] = page;
    }
    OK(kvp_dlist_create(type, ad, ln, dv, n, &dl));
    OK(kvp_prep_dlist(a, remote, dl, &pp));
    OK(kvp_dlist_release(dl));
    free(ad);
    free(ln);
    free(dv);
    return pp;
}

static void post_wait(uint64_t a, uint64_t req) {
    int32_t st = kvp_xfer_post(a, req);
    CHECK_MSG(st == KVP_SUCCESS || st == KVP_IN_PROG, "%s: %s", kvp_status_name(st), t_lasterr());
    OK(kvp_xfer_wait(a, req, 20000));
}

TEST_T(cuda_loopback_dram_vram, 60) {
    if (!have_gpu()) return;
    const uint64_t page = 1 << 20, size = 32 * page;
    uint64_t a = t_agent("G", NULL, NULL), d, v1, v2, reg, len = size;
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &d));
    OK(kvp_mem_alloc(KVP_VRAM, 0, size, &v1));
    OK(kvp_mem_alloc(KVP_VRAM, 0, size, &v2));
    OK(kvp_register(a, KVP_DRAM, &d, &len, NULL, 1, NULL, &reg));
    uint64_t vs[2] = {v1, v2}, ls[2] = {size, size}, ds[2] = {0, 0};
    OK(kvp_register(a, KVP_VRAM, vs, ls, ds, 2, NULL, &reg));
    uint64_t lp = t_prep_pages(a, "", d, page, 32);
    uint64_t vp1 = prep_type(a, "G", KVP_VRAM, v1, page, 32);
    uint64_t vl1 = prep_type(a, "", KVP_VRAM, v1, page, 32);
    uint64_t vp2 = prep_type(a, "G", KVP_VRAM, v2, page, 32);
    uint32_t idx[32];
    for (uint32_t i = 0; i < 32; i++) idx[i] = i;
    t_fill((void *)(uintptr_t)d, size, 5);
    uint64_t w, vv, r;
    OK(kvp_xfer_create(a, KVP_WRITE, lp, idx, vp1, idx, 32, NULL, 0, &w));   /* DRAM -> v1 */
    OK(kvp_xfer_create(a, KVP_WRITE, vl1, idx, vp2, idx, 32, NULL, 0, &vv)); /* v1 -> v2 */
    OK(kvp_xfer_create(a, KVP_READ, lp, idx, vp2, idx, 32, NULL, 0, &r));    /* v2 -> DRAM */
    post_wait(a, w);
    uint64_t s1, s2;
    OK(kvp_mem_checksum(KVP_DRAM, 0, d, size, &s1));
    OK(kvp_mem_checksum(KVP_VRAM, 0, v1, size, &s2));
    CHECK(s1 == s2);
    post_wait(a, vv);
    memset((void *)(uintptr_t)d, 0, size);
    post_wait(a, r);
    CHECK(t_verify((void *)(uintptr_t)d, size, 5));
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(v1));
    OK(kvp_mem_free(v2));
    OK(kvp_mem_free(d));
}

TEST_T(cuda_ipc_two_processes, 60) {
    /* Fork the peer (it checks for a GPU itself) before touching CUDA here. */
    int32_t n = 0;
    t_peer p;
    const uint64_t page = 1 << 20, size = 16 * page;
    {
        /* Probe in a throw-away child so this process stays CUDA-free until the fork. */
        fflush(stdout);
        int pid = fork();
        if (pid == 0) _exit(kvp_cuda_device_count(&n) == KVP_SUCCESS && n > 0 ? 0 : 3);
        if (t_wait_child(pid) != 0) {
            fprintf(stderr, "    skipped: no CUDA device\n");
            return;
        }
    }
    t_peer_start(&p, "T", NULL, NULL, size, 2);
    uint64_t a = t_agent("I", NULL, NULL), d, reg, len = size;
    t_load(a, p.md, p.mdlen);
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &d));
    OK(kvp_register(a, KVP_DRAM, &d, &len, NULL, 1, NULL, &reg));
    uint64_t lp = t_prep_pages(a, "", d, page, 16);
    uint64_t rp = prep_type(a, "T", KVP_VRAM, p.base, page, 16);
    uint32_t idx[16];
    for (uint32_t i = 0; i < 16; i++) idx[i] = i;
    t_fill((void *)(uintptr_t)d, size, 8);
    uint64_t w, r;
    OK(kvp_xfer_create(a, KVP_WRITE, lp, idx, rp, idx, 16, (const uint8_t *)"vram", 4, &w));
    post_wait(a, w);
    int verified = 0;
    char msg[64];
    CHECK(t_peer_notif(&p, 10000, 0, size, 8, &verified, NULL, msg) == 1 && verified);
    t_peer_fill(&p, 0, size, 9);
    OK(kvp_xfer_create(a, KVP_READ, lp, idx, rp, idx, 16, NULL, 0, &r));
    post_wait(a, r);
    CHECK(t_verify((void *)(uintptr_t)d, size, 9));
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(d));
    t_peer_stop(&p);
}

TEST(cuda_vram_over_tcp_is_not_supported_yet) {
    if (!have_gpu()) return;
    uint64_t t = t_agent("T", NULL, NULL), a = t_agent("I", "TCP", NULL);
    uint64_t v, len = 1 << 20, dev = 0, reg, d;
    OK(kvp_mem_alloc(KVP_VRAM, 0, len, &v));
    OK(kvp_register(t, KVP_VRAM, &v, &len, &dev, 1, NULL, &reg));
    OK(kvp_mem_alloc(KVP_DRAM, 0, len, &d));
    OK(kvp_register(a, KVP_DRAM, &d, &len, NULL, 1, NULL, &reg));
    uint64_t bl;
    uint8_t *md = t_md(t, &bl);
    t_load(a, md, bl);
    free(md);
    uint64_t lp = t_prep_pages(a, "", d, len, 1), rp = prep_type(a, "T", KVP_VRAM, v, len, 1);
    uint32_t z = 0;
    uint64_t req;
    CHECK_ST(kvp_xfer_create(a, KVP_WRITE, lp, &z, rp, &z, 1, NULL, 0, &req),
             KVP_ERR_NOT_SUPPORTED);
    CHECK_ERR_HAS("over TCP");
    OK(kvp_agent_destroy(a));
    OK(kvp_agent_destroy(t));
    OK(kvp_mem_free(v));
    OK(kvp_mem_free(d));
}
