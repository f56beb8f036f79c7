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

/* Requests prefault only extents no earlier request faulted in (a bitmap per peer
 * mapping): pieces that start and end inside extents, overlap earlier ones, or were
 * faulted in for reading and are then written must still move every byte. */
TEST_T(prefault_skips_faulted_extents_and_moves_every_byte, 60) {
    t_peer p;
    const uint64_t peer_size = 64ull << 20, size = 8 << 20;
    t_peer_start(&p, "T", NULL, NULL, peer_size, 4);
    uint64_t a = t_agent("I", NULL, NULL), m, reg;
    t_load(a, p.md, p.mdlen);
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    OK(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    uint64_t before = rss_bytes();
    /* 1: three 100 KiB pages at 10 KiB into the buffer (no piece edge on an extent). */
    const uint64_t k = 1024, page = 100 * k;
    t_fill((void *)(uintptr_t)m, 3 * page, 7);
    t_peer_xfer(a, KVP_WRITE, "T", m, 0, &p, 10 * k, page, 3);
    CHECK(t_peer_verify(&p, 10 * k, 3 * page, 7));
    /* 2: the same range again with other bytes (every extent there is known now). */
    t_fill((void *)(uintptr_t)m, 3 * page, 8);
    t_peer_xfer(a, KVP_WRITE, "T", m, 0, &p, 10 * k, page, 3);
    CHECK(t_peer_verify(&p, 10 * k, 3 * page, 8));
    /* 3: a READ of a range never touched (faulted in for reading), then a WRITE over it
     * and a neighbour already written: both land. */
    t_peer_fill(&p, 1 << 20, 4 * page, 9);
    t_peer_xfer(a, KVP_READ, "T", m, 0, &p, 1 << 20, page, 4);
    uint8_t *want = malloc(4 * page);
    CHECK(want);
    t_fill(want, 4 * page, 9);
    CHECK_MSG(memcmp((void *)(uintptr_t)m, want, 4 * page) == 0, "READ returned other bytes");
    free(want);
    t_fill((void *)(uintptr_t)m, 8 * page, 10);
    t_peer_xfer(a, KVP_WRITE, "T", m, 0, &p, (1 << 20) - 2 * page, page, 8);
    CHECK(t_peer_verify(&p, (1 << 20) - 2 * page, 8 * page, 10));
    /* 4: 200 more writes over those pages: still exact, and the sender did not grow
     * beyond the pages touched (well under the peer's buffer). */
    for (uint32_t i = 0; i < 200; i++) {
        t_fill((void *)(uintptr_t)m, 3 * page, 100 + i);
        t_peer_xfer(a, KVP_WRITE, "T", m, 0, &p, 10 * k, page, 3);
    }
    CHECK(t_peer_verify(&p, 10 * k, 3 * page, 299));
    uint64_t after = rss_bytes();
    CHECK_MSG(after - before < (8ull << 20) + size,
              "the sender grew by %llu KiB touching %llu KiB of a %llu MiB peer buffer",
              (unsigned long long)((after - before) >> 10), (unsigned long long)(11 * page >> 10),
              (unsigned long long)(peer_size >> 20));
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(m));
    t_peer_stop(&p);
}
