/* test_smoke.c - one-process basics: two agents in the same process. */
#include "t.h"

TEST(smoke_same_process_write_read_notif) {
    uint64_t a = t_agent("A", NULL, NULL), b = t_agent("B", NULL, NULL);
    const uint64_t page = 4096, n = 16;
    uint64_t ma = 0, mb = 0;
    OK(kvp_mem_alloc(KVP_DRAM, 0, page * n, &ma));
    OK(kvp_mem_alloc(KVP_DRAM, 0, page * n, &mb));
    uint64_t ra, rb, len = page * n;
    OK(kvp_register(a, KVP_DRAM, &ma, &len, NULL, 1, NULL, &ra));
    OK(kvp_register(b, KVP_DRAM, &mb, &len, NULL, 1, NULL, &rb));
    uint64_t bl;
    uint8_t *bmd = t_md(b, &bl);
    t_load(a, bmd, bl);
    free(bmd);
    uint64_t lp = t_prep_pages(a, "", ma, page, (uint32_t)n);
    uint64_t rp = t_prep_pages(a, "B", mb, page, (uint32_t)n);
    uint32_t idx[16];
    for (uint32_t i = 0; i < n; i++) idx[i] = i;
    t_fill((void *)(uintptr_t)ma, len, 7);
    uint64_t req;
    OK(kvp_xfer_create(a, KVP_WRITE, lp, idx, rp, idx, n, (const uint8_t *)"done", 4, &req));
    int32_t st = kvp_xfer_post(a, req);
    CHECK(st == KVP_SUCCESS || st == KVP_IN_PROG);
    OK(kvp_xfer_wait(a, req, 5000));
    CHECK(t_verify((void *)(uintptr_t)mb, len, 7));
    OK(kvp_notif_wait(b, 5000));
    uint8_t buf[256];
    uint64_t bl2, cnt;
    OK(kvp_notif_take(b, buf, sizeof buf, &bl2, &cnt));
    CHECK(cnt == 1);
    CHECK(memcmp(buf + 4, "A", 1) == 0 && memcmp(buf + 9, "done", 4) == 0);
    OK(kvp_xfer_release(a, req));
    OK(kvp_prepped_release(a, lp));
    OK(kvp_prepped_release(a, rp));
    OK(kvp_agent_destroy(a));
    OK(kvp_agent_destroy(b));
    OK(kvp_mem_free(ma));
    OK(kvp_mem_free(mb));
}
