/* test_pair.c - two processes: WRITE and READ over each path, with byte checks and
 * notifications that must arrive once, after their data. */
#include <sys/mman.h>
#include <unistd.h>

#include "t.h"

typedef struct pair_cfg {
    const char *init_backends, *init_params, *tgt_backends;
    int anon;
    const char *path_key; /* expected posts_* counter */
    uint64_t page;
    uint32_t npages;
} pair_cfg;

static void run_pair(const pair_cfg *cfg) {
    t_peer p;
    uint64_t size = cfg->page * cfg->npages;
    t_peer_start(&p, "T", cfg->tgt_backends, NULL, size, cfg->anon);
    uint64_t a = t_agent("I", cfg->init_backends, cfg->init_params);
    t_load(a, p.md, p.mdlen);
    uint64_t m, reg;
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    OK(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    uint64_t lp = t_prep_pages(a, "", m, cfg->page, cfg->npages);
    uint64_t rp = t_prep_pages(a, "T", p.base, cfg->page, cfg->npages);
    uint32_t *li = malloc(cfg->npages * sizeof *li), *ri = malloc(cfg->npages * sizeof *ri);
    for (uint32_t i = 0; i < cfg->npages; i++) li[i] = ri[i] = i;

    /* 1. WRITE everything (merged into one piece), notification after the data. */
    t_fill((void *)(uintptr_t)m, size, 11);
    uint64_t req;
    OK(kvp_xfer_create(a, KVP_WRITE, lp, li, rp, ri, cfg->npages, (const uint8_t *)"w1", 2, &req));
    int32_t st = kvp_xfer_post(a, req);
    CHECK_MSG(st == KVP_SUCCESS || st == KVP_IN_PROG, "post: %s %s", kvp_status_name(st),
              t_lasterr());
    int verified = 0;
    char from[300], msg[300];
    /* The peer checks the bytes the moment the notification shows up. */
    CHECK(t_peer_notif(&p, 10000, 0, size, 11, &verified, from, msg) == 1);
    CHECK_MSG(verified, "notification arrived before the data");
    CHECK(strcmp(from, "I") == 0 && strcmp(msg, "w1") == 0);
    OK(kvp_xfer_wait(a, req, 10000, NULL, 0, NULL));
    /* Exactly once: no second record. */
    CHECK(t_peer_notif(&p, 50, 0, 0, 0, &verified, NULL, NULL) == 0);

    /* 2. Repost the same request (done requests may be posted again). */
    t_fill((void *)(uintptr_t)m, size, 12);
    st = kvp_xfer_post(a, req);
    CHECK(st == KVP_SUCCESS || st == KVP_IN_PROG);
    OK(kvp_xfer_wait(a, req, 10000, NULL, 0, NULL));
    CHECK(t_peer_notif(&p, 10000, 0, size, 12, &verified, NULL, msg) == 1 && verified);
    OK(kvp_xfer_release(a, req));

    /* 3. READ with scattered, reversed indices (no merging). */
    t_peer_fill(&p, 0, size, 21);
    memset((void *)(uintptr_t)m, 0, size);
    for (uint32_t i = 0; i < cfg->npages; i++) ri[i] = cfg->npages - 1 - i;
    OK(kvp_xfer_create(a, KVP_READ, lp, li, rp, ri, cfg->npages, NULL, 0, &req));
    st = kvp_xfer_post(a, req);
    CHECK(st == KVP_SUCCESS || st == KVP_IN_PROG);
    OK(kvp_xfer_wait(a, req, 10000, NULL, 0, NULL));
    /* local page i holds remote page n-1-i */
    uint8_t *tmp = malloc(size);
    t_fill(tmp, size, 21);
    for (uint32_t i = 0; i < cfg->npages; i++)
        CHECK_MSG(memcmp((uint8_t *)(uintptr_t)m + (uint64_t)i * cfg->page,
                         tmp + (uint64_t)(cfg->npages - 1 - i) * cfg->page, cfg->page) == 0,
                  "READ page %u differs", i);
    free(tmp);
    OK(kvp_xfer_release(a, req));

    /* 4. A small WRITE (one page, completes inline on same-host paths). */
    li[0] = 0;
    ri[0] = 1;
    t_fill((void *)(uintptr_t)m, cfg->page, 31);
    OK(kvp_xfer_create(a, KVP_WRITE, lp, li, rp, ri, 1, NULL, 0, &req));
    st = kvp_xfer_post(a, req);
    CHECK(st == KVP_SUCCESS || st == KVP_IN_PROG);
    OK(kvp_xfer_wait(a, req, 10000, NULL, 0, NULL));
    CHECK(t_peer_verify(&p, cfg->page, cfg->page, 31));
    OK(kvp_xfer_release(a, req));

    /* 5. A standalone notification. */
    OK(kvp_notif_send(a, "T", (const uint8_t *)"hello", 5));
    CHECK(t_peer_notif(&p, 10000, 0, 0, 0, &verified, from, msg) == 1);
    CHECK(strcmp(msg, "hello") == 0);

    CHECK_MSG(t_info_num(a, cfg->path_key) >= 4, "expected the %s path", cfg->path_key);
    free(li);
    free(ri);
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(m));
    t_peer_stop(&p);
}

TEST(pair_shm_memfd) {
    pair_cfg c = {NULL, NULL, NULL, 0, "posts_mem", 64 << 10, 64};
    run_pair(&c);
}

TEST(pair_cma_anonymous_memory) {
    pair_cfg c = {NULL, NULL, NULL, 1, "posts_cma", 64 << 10, 64};
    run_pair(&c);
}

TEST(pair_tcp_forced_by_backend) {
    pair_cfg c = {"TCP", NULL, NULL, 0, "posts_tcp", 64 << 10, 64};
    run_pair(&c);
}

TEST(pair_tcp_forced_by_param_large) {
    pair_cfg c = {NULL, "transport=tcp", NULL, 1, "posts_tcp", 1 << 20, 48};
    run_pair(&c);
}

TEST(pair_tcp_many_small_descriptors) {
    pair_cfg c = {"TCP", NULL, NULL, 0, "posts_tcp", 512, 3000};
    run_pair(&c);
}

TEST(pair_shm_many_small_descriptors) {
    pair_cfg c = {NULL, NULL, NULL, 0, "posts_mem", 512, 3000};
    run_pair(&c);
}

TEST(pair_cma_many_small_descriptors) {
    pair_cfg c = {NULL, NULL, NULL, 1, "posts_cma", 256, 3000};
    run_pair(&c);
}

TEST(pair_private_dram_uses_cma) {
    pair_cfg c = {NULL, NULL, NULL, 3, "posts_cma", 1 << 20, 16};
    run_pair(&c);
}

/* Preparing a same-host peer's pages proves locality then (a connection and a challenge),
 * so the first request does not wait for it: the peer counts the connection and this
 * agent the peer as same host before any transfer; the first WRITE then takes the shared
 * memory path and connects no second time. */
TEST(prep_of_a_same_host_peer_proves_locality_before_the_first_request) {
    t_peer p;
    const uint64_t page = 64 << 10, size = 8 * page;
    t_peer_start(&p, "T", NULL, NULL, size, 0);
    uint64_t a = t_agent("I", NULL, NULL);
    t_load(a, p.md, p.mdlen);
    CHECK(t_info_num(a, "remotes_same_host") == 0);
    uint64_t m, reg, len = size;
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    OK(kvp_register(a, KVP_DRAM, &m, &len, NULL, 1, NULL, &reg));
    uint64_t lp = t_prep_pages(a, "", m, page, 8);
    uint64_t rp = t_prep_pages(a, "T", p.base, page, 8);
    CHECK_MSG(t_info_num(a, "remotes_same_host") == 1, "locality not proven at preparation");
    CHECK(t_info_num(a, "posts_mem") == 0);
    uint32_t idx[8];
    for (uint32_t i = 0; i < 8; i++) idx[i] = i;
    t_fill((void *)(uintptr_t)m, size, 21);
    uint64_t req;
    OK(kvp_xfer_create(a, KVP_WRITE, lp, idx, rp, idx, 8, NULL, 0, &req));
    int32_t st = kvp_xfer_post(a, req);
    CHECK_MSG(st == KVP_SUCCESS || st == KVP_IN_PROG, "post: %s", t_lasterr());
    OK(kvp_xfer_wait(a, req, 10000, NULL, 0, NULL));
    CHECK(t_peer_verify(&p, 0, size, 21));
    CHECK(t_info_num(a, "posts_mem") == 1);
    OK(kvp_xfer_release(a, req));
    OK(kvp_prepped_release(a, rp));
    OK(kvp_prepped_release(a, lp));
    OK(kvp_deregister(a, reg));
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(m));
    t_peer_stop(&p);
}
