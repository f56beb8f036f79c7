/* test_epochs.c - registrations checked when a request is posted, not only when its
 * lists were prepared (issue 12): local deregistration before a post and during one,
 * and a same-host peer that deregistered and freed its memory, on every path. */
#include <sys/mman.h>
#include <unistd.h>

#include "../src/agent_page.h"
#include "t.h"

/* A READ or WRITE of n pages of page bytes between local base and the peer's base. */
static uint64_t make_req(uint64_t a, int32_t op, const char *remote, uint64_t lbase,
                         uint64_t rbase, uint64_t page, uint32_t n, uint64_t *lp, uint64_t *rp) {
    *lp = t_prep_pages(a, "", lbase, page, n);
    *rp = t_prep_pages(a, remote, rbase, page, n);
    uint32_t *idx = malloc(n * sizeof *idx);
    CHECK(idx);
    for (uint32_t i = 0; i < n; i++) idx[i] = i;
    uint64_t req;
    OK(kvp_xfer_create(a, op, *lp, idx, *rp, idx, n, NULL, 0, &req));
    free(idx);
    return req;
}

static uint64_t reg_dram(uint64_t a, void *p, uint64_t len) {
    uint64_t addr = (uint64_t)(uintptr_t)p, reg;
    OK(kvp_register(a, KVP_DRAM, &addr, &len, NULL, 1, NULL, &reg));
    return reg;
}

/* Deregister -> free -> post on the old list: refused before a byte moves, so the peer
 * never receives what the heap holds at that address now. */
TEST(post_after_local_dereg_and_free_sends_nothing) {
    t_peer p;
    const uint64_t size = 64 << 10;
    t_peer_start(&p, "T", NULL, NULL, size, 0);
    t_peer_fill(&p, 0, size, 5);
    uint64_t a = t_agent("I", "TCP", NULL);
    t_load(a, p.md, p.mdlen);
    uint8_t *src = malloc(size);
    CHECK(src);
    t_fill(src, size, 6);
    uint64_t reg = reg_dram(a, src, size), lp, rp;
    uint64_t req = make_req(a, KVP_WRITE, "T", (uint64_t)(uintptr_t)src, p.base, 4096, 16, &lp, &rp);
    OK(kvp_deregister(a, reg));
    free(src);
    /* The heap reuses the chunk for someone's secret. */
    uint8_t *secret = malloc(size);
    CHECK(secret);
    t_fill(secret, size, 99);
    CHECK_ST(kvp_xfer_post(a, req), KVP_ERR_NOT_FOUND);
    CHECK_ERR_HAS("deregistered");
    usleep(100000);
    CHECK_MSG(t_peer_verify(&p, 0, size, 5), "the peer's memory changed: heap bytes were sent");
    /* A new request on the old list is refused too. */
    uint32_t idx0 = 0;
    uint64_t req2;
    CHECK_ST(kvp_xfer_create(a, KVP_WRITE, lp, &idx0, rp, &idx0, 1, NULL, 0, &req2),
             KVP_ERR_NOT_FOUND);
    OK(kvp_xfer_release(a, req));
    OK(kvp_prepped_release(a, lp));
    OK(kvp_prepped_release(a, rp));
    OK(kvp_agent_destroy(a));
    free(secret);
    t_peer_stop(&p);
}

/* Loopback memcpy: the same, and the destination keeps its bytes (ASan would flag the
 * read of freed memory without the check). */
TEST(loopback_post_after_dereg_and_free_is_refused) {
    uint64_t a = t_agent("L", NULL, NULL);
    const uint64_t size = 64 << 10;
    uint8_t *src = malloc(size), *dst = malloc(size);
    CHECK(src && dst);
    t_fill(src, size, 1);
    t_fill(dst, size, 2);
    uint64_t rs = reg_dram(a, src, size), rd = reg_dram(a, dst, size), lp, rp;
    uint64_t req = make_req(a, KVP_WRITE, "L", (uint64_t)(uintptr_t)src, (uint64_t)(uintptr_t)dst,
                            4096, 16, &lp, &rp);
    OK(kvp_deregister(a, rs));
    free(src);
    CHECK_ST(kvp_xfer_post(a, req), KVP_ERR_NOT_FOUND);
    CHECK(t_verify(dst, size, 2));
    /* The destination side (remote list of a loopback) is checked as well. */
    uint8_t *src2 = malloc(size);
    CHECK(src2);
    t_fill(src2, size, 3);
    uint64_t rs2 = reg_dram(a, src2, size), lp2, rp2;
    uint64_t req2 = make_req(a, KVP_WRITE, "L", (uint64_t)(uintptr_t)src2,
                             (uint64_t)(uintptr_t)dst, 4096, 16, &lp2, &rp2);
    OK(kvp_deregister(a, rd));
    CHECK_ST(kvp_xfer_post(a, req2), KVP_ERR_NOT_FOUND);
    CHECK(t_verify(dst, size, 2));
    OK(kvp_xfer_release(a, req));
    OK(kvp_xfer_release(a, req2));
    OK(kvp_prepped_release(a, lp));
    OK(kvp_prepped_release(a, rp));
    OK(kvp_prepped_release(a, lp2));
    OK(kvp_prepped_release(a, rp2));
    OK(kvp_deregister(a, rs2));
    OK(kvp_agent_destroy(a));
    free(src2);
    free(dst);
}

/* A deregistration while a READ lands in that memory fails the READ (CANCELED, saying
 * why) and returns only once no byte can land there any more. */
TEST_T(dereg_during_tcp_read_fails_it_and_nothing_lands_after, 60) {
    t_peer p;
    const uint64_t size = 128ull << 20;
    t_peer_start(&p, "T", NULL, NULL, size, 0);
    t_peer_fill(&p, 0, size, 8);
    uint64_t a = t_agent("I", "TCP", NULL), m;
    t_load(a, p.md, p.mdlen);
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    uint64_t reg = reg_dram(a, (void *)(uintptr_t)m, size), lp, rp;
    uint64_t req = make_req(a, KVP_READ, "T", m, p.base, 1 << 20, 128, &lp, &rp);
    CHECK_ST(kvp_xfer_post(a, req), KVP_IN_PROG);
    OK(kvp_deregister(a, reg));
    int32_t st = kvp_xfer_status(a, req);
    CHECK_MSG(st == KVP_ERR_CANCELED, "READ ended with %s, expected NIXL_ERR_CANCELED (%s)",
              kvp_status_name(st), t_lasterr());
    CHECK_ERR_HAS("deregistered while this request was in flight");
    /* Nothing lands after kvp_deregister returned. */
    memset((void *)(uintptr_t)m, 0xAB, size);
    usleep(300000);
    const uint8_t *q = (const uint8_t *)(uintptr_t)m;
    for (uint64_t i = 0; i < size; i += 4096)
        CHECK_MSG(q[i] == 0xAB, "byte %llu changed after the deregistration", (unsigned long long)i);
    /* And the request can be posted again only after registering anew: refused now. */
    CHECK_ST(kvp_xfer_post(a, req), KVP_ERR_NOT_FOUND);
    OK(kvp_xfer_release(a, req));
    OK(kvp_prepped_release(a, lp));
    OK(kvp_prepped_release(a, rp));
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(m));
    t_peer_stop(&p);
}

/* Same host: the peer deregisters and frees its buffer and other memory appears at the
 * same address. A request made before must fail, never write into it. anon: 1 = the
 * peer's memory is reached by cross-memory attach, 0 = its memfd is mapped here. */
static void peer_dereg_case(int anon) {
    t_peer p;
    const uint64_t size = 1 << 20;
    t_peer_start(&p, "T", NULL, NULL, size, anon);
    uint64_t a = t_agent("I", NULL, NULL), m;
    t_load(a, p.md, p.mdlen);
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    t_fill((void *)(uintptr_t)m, size, 3);
    uint64_t reg = reg_dram(a, (void *)(uintptr_t)m, size), lp, rp;
    uint64_t req = make_req(a, KVP_WRITE, "T", m, p.base, 64 << 10, 16, &lp, &rp);
    /* It works while the peer has the memory registered, by the expected path. */
    int32_t st = kvp_xfer_post(a, req);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(a, req, 5000, NULL, 0, NULL);
    OK(st);
    CHECK(t_peer_verify(&p, 0, size, 3));
    char info[4096];
    uint64_t il;
    OK(kvp_agent_info(a, (uint8_t *)info, sizeof info - 1, &il));
    info[il] = '\0';
    CHECK_MSG(strstr(info, anon ? "posts_cma=1" : "posts_mem=1"), "unexpected path:\n%s", info);
    t_peer_dereg(&p, 77);
    st = kvp_xfer_post(a, req);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(a, req, 5000, NULL, 0, NULL);
    CHECK_MSG(st == KVP_ERR_NOT_FOUND, "post after the peer's deregistration: %s (%s)",
              kvp_status_name(st), t_lasterr());
    CHECK_ERR_HAS("deregistered");
    CHECK_MSG(t_peer_verify(&p, 0, size, 77), "the peer's new memory was overwritten");
    OK(kvp_xfer_release(a, req));
    OK(kvp_prepped_release(a, lp));
    OK(kvp_prepped_release(a, rp));
    OK(kvp_deregister(a, reg));
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(m));
    t_peer_stop(&p);
}

TEST(same_host_cma_after_peer_dereg_and_free_is_refused) { peer_dereg_case(1); }
TEST(same_host_memfd_after_peer_dereg_and_free_is_refused) { peer_dereg_case(0); }

/* The pin protocol of the agent page: a pin held makes the deregistration wait; once
 * dying, no pin is granted; a pin never released is given up on after the timeout and
 * that slot is not reused. */
typedef struct retire_arg {
    ap_page *pg;
    int32_t slot;
    uint32_t timeout;
    double took;
    int drained;
} retire_arg;

#include <pthread.h>
static void *retire_main(void *p) {
    retire_arg *r = p;
    double t0 = t_now();
    r->drained = ap_slot_retire(r->pg, r->slot, r->timeout);
    r->took = t_now() - t0;
    return NULL;
}

TEST(agent_page_pins_make_deregistration_wait) {
    ap_page pg;
    uint8_t tok[16] = {1, 2, 3};
    OK(ap_create(&pg, tok, 8, 16));
    kvp_md_region r;
    memset(&r, 0, sizeof r);
    r.mem_type = KVP_DRAM;
    r.addr = 0x10000;
    r.len = 4096;
    r.memfd = -1;
    int32_t s = ap_slot_add(&pg, &r, 41);
    CHECK(s >= 0);
    ap_peer pp;
    OK(ap_peer_open(&pp, (uint32_t)getpid(), pg.fd, pg.ino, pg.size, tok, "self"));
    CHECK(!ap_peer_pin(&pp, s, 40)); /* another generation */
    CHECK(ap_peer_pin(&pp, s, 41));
    retire_arg ra = {&pg, s, 5000, 0, 0};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, retire_main, &ra) == 0);
    usleep(200000);
    CHECK(!ap_peer_pin(&pp, s, 41)); /* dying: refused */
    ap_peer_unpin(&pp, s);
    pthread_join(th, NULL);
    CHECK_MSG(ra.drained && ra.took >= 0.15 && ra.took < 3,
              "retire took %.3fs (drained %d): it must wait for the pin, then return",
              ra.took, ra.drained);
    /* A pin never released: the wait is bounded, the slot quarantined. */
    int32_t s2 = ap_slot_add(&pg, &r, 42);
    CHECK(s2 >= 0);
    CHECK(ap_peer_pin(&pp, s2, 42));
    retire_arg rb = {&pg, s2, 300, 0, 0};
    retire_main(&rb);
    CHECK(!rb.drained && rb.took >= 0.25 && rb.took < 2);
    int32_t s3 = ap_slot_add(&pg, &r, 43);
    CHECK(s3 >= 0 && s3 != s2);
    ap_peer_close(&pp);
    ap_destroy(&pg);
}
