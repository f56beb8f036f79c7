/* test_peer_rss.c - a sender's footprint follows its requests, not the receiver's
 * buffer (issue 19.3): a small same-host write into a large (sparse) peer buffer maps
 * only the pages it touches. */
#include <unistd.h>

#include "t.h"

static uint64_t rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    CHECK(f);
    unsigned long long size = 0, res = 0;
    CHECK(fscanf(f, "%llu %llu", &size, &res) == 2);
    fclose(f);
    return res * (uint64_t)sysconf(_SC_PAGESIZE);
}

TEST_T(small_write_into_a_large_peer_buffer_keeps_the_sender_small, 60) {
    t_peer p;
    const uint64_t peer_size = 2ull << 30, size = 16 << 20;
    t_peer_start(&p, "T", NULL, NULL, peer_size, 4); /* 2 GiB, sparse */
    uint64_t a = t_agent("I", NULL, NULL), m, reg;
    t_load(a, p.md, p.mdlen);
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    t_fill((void *)(uintptr_t)m, size, 31);
    OK(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    uint64_t before = rss_bytes();
    /* 16 MiB into the middle of the peer's buffer. */
    uint64_t off = peer_size / 2;
    uint64_t lp = t_prep_pages(a, "", m, 1 << 20, 16), rp = t_prep_pages(a, "T", p.base + off, 1 << 20, 16);
    uint32_t idx[16];
    for (uint32_t i = 0; i < 16; i++) idx[i] = i;
    uint64_t req;
    OK(kvp_xfer_create(a, KVP_WRITE, lp, idx, rp, idx, 16, NULL, 0, &req));
    int32_t st = kvp_xfer_post(a, req);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(a, req, 20000, NULL, 0, NULL);
    OK(st);
    uint64_t after = rss_bytes();
    char info[4096];
    uint64_t il;
    OK(kvp_agent_info(a, (uint8_t *)info, sizeof info - 1, &il));
    info[il] = '\0';
    CHECK_MSG(strstr(info, "posts_mem=1"), "not the same-host memfd path:\n%s", info);
    CHECK(t_peer_verify(&p, off, size, 31));
    CHECK_MSG(after - before < 3 * size,
              "the sender grew by %llu MiB for a %llu MiB write into a %llu MiB peer buffer",
              (unsigned long long)((after - before) >> 20), (unsigned long long)(size >> 20),
              (unsigned long long)(peer_size >> 20));
    OK(kvp_xfer_release(a, req));
    OK(kvp_prepped_release(a, lp));
    OK(kvp_prepped_release(a, rp));
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(m));
    t_peer_stop(&p);
}
