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
    OK(kvp_xfer_wait(a, req, 5000, NULL, 0, NULL));
    CHECK(t_verify((void *)(uintptr_t)mb, len, 7));
    OK(kvp_notif_wait(b, 5000, NULL, 0, NULL));
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

/* N1: a same-process peer that deregistered its memory or was destroyed (and freed the
 * memory) must give an error, never a write into unmapped memory. */
TEST(same_process_peer_deregistered_or_destroyed) {
    uint64_t a = t_agent("A", NULL, NULL), b = t_agent("B", NULL, NULL);
    uint64_t ma, mb, len = 1 << 20, ra, rb;
    OK(kvp_mem_alloc(KVP_DRAM, 0, len, &ma));
    OK(kvp_mem_alloc(KVP_DRAM, 0, len, &mb));
    OK(kvp_register(a, KVP_DRAM, &ma, &len, NULL, 1, NULL, &ra));
    OK(kvp_register(b, KVP_DRAM, &mb, &len, NULL, 1, NULL, &rb));
    uint64_t bl;
    uint8_t *md = t_md(b, &bl);
    t_load(a, md, bl);
    free(md);
    uint64_t lp = t_prep_pages(a, "", ma, 4096, 256), rp = t_prep_pages(a, "B", mb, 4096, 256);
    uint32_t idx[256];
    for (uint32_t i = 0; i < 256; i++) idx[i] = i;
    uint64_t small, big;
    OK(kvp_xfer_create(a, KVP_WRITE, lp, idx, rp, idx, 1, NULL, 0, &small));
    OK(kvp_xfer_create(a, KVP_WRITE, lp, idx, rp, idx, 256, NULL, 0, &big));
    OK(kvp_xfer_post(a, small));
    /* Deregistered and freed: NOT_FOUND, no crash. */
    OK(kvp_deregister(b, rb));
    OK(kvp_mem_free(mb));
    CHECK_ST(kvp_xfer_post(a, small), KVP_ERR_NOT_FOUND);
    CHECK_ERR_HAS("no longer has");
    int32_t st = kvp_xfer_post(a, big);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(a, big, 5000, NULL, 0, NULL);
    CHECK_ST(st, KVP_ERR_NOT_FOUND);
    /* Destroyed: REMOTE_DISCONNECT. */
    OK(kvp_agent_destroy(b));
    CHECK_ST(kvp_xfer_post(a, small), KVP_ERR_REMOTE_DISCONNECT);
    CHECK_ERR_HAS("was destroyed");
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(ma));
}
