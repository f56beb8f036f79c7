/* test_grant_each.c - batched page grants (ABI 5): kvp_grant_each makes one grant per
 * range and kvp_revoke_each ends many, each with ONE rebuild of the grant table (the
 * agent's info line grant_tables counts rebuilds). Checked on bytes: a peer in this
 * process (checked under the target's grant lock) and one over TCP (checked by the
 * target per frame) WRITE every page; granted pages receive its bytes, the others keep
 * theirs. All or nothing on a bad range, max_grants counted before any grant is made,
 * and a revoke batch with bad handles still revokes every valid one. */
#include <pthread.h>

#include "t.h"

#define PG 4096u
#define NPG 16u

typedef struct {
    uint64_t h, b;      /* initiator H, target B (page_grants=on) */
    uint64_t hm, bm;    /* their buffers, NPG pages each */
    uint64_t hreg, breg;
    uint64_t lp, rp;    /* H's prepared pages: its own, B's */
    uint8_t *hb, *bb;   /* metadata blobs */
} pair;

static void pair_start(pair *p, const char *h_params, const char *b_params) {
    memset(p, 0, sizeof *p);
    p->h = t_agent("H", NULL, h_params);
    p->b = t_agent("B", NULL, b_params);
    uint64_t size = PG * NPG, hl, bl;
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &p->bm));
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &p->hm));
    memset((void *)(uintptr_t)p->bm, 0, size);
    OK(kvp_register(p->b, KVP_DRAM, &p->bm, &size, NULL, 1, NULL, &p->breg));
    OK(kvp_register(p->h, KVP_DRAM, &p->hm, &size, NULL, 1, NULL, &p->hreg));
    p->hb = t_md(p->h, &hl);
    p->bb = t_md(p->b, &bl);
    t_load(p->b, p->hb, hl);
    t_load(p->h, p->bb, bl);
    p->lp = t_prep_pages(p->h, "", p->hm, PG, NPG);
    p->rp = t_prep_pages(p->h, "B", p->bm, PG, NPG);
}

static void pair_stop(pair *p) {
    OK(kvp_prepped_release(p->h, p->lp));
    OK(kvp_prepped_release(p->h, p->rp));
    OK(kvp_agent_destroy(p->h));
    OK(kvp_agent_destroy(p->b));
    OK(kvp_mem_free(p->bm));
    OK(kvp_mem_free(p->hm));
    free(p->hb);
    free(p->bb);
}

static uint8_t *bpage(pair *p, uint32_t i) { return (uint8_t *)(uintptr_t)(p->bm + i * PG); }

/* H WRITEs its page i (filled with seed) into B's page i: the request's status. */
static int32_t write_page(pair *p, uint32_t i, uint32_t seed) {
    t_fill((uint8_t *)(uintptr_t)(p->hm + i * PG), PG, seed);
    uint64_t x;
    OK(kvp_xfer_create(p->h, KVP_WRITE, p->lp, &i, p->rp, &i, 1, NULL, 0, &x));
    int32_t st = kvp_xfer_post(p->h, x);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(p->h, x, 5000, NULL, 0, NULL);
    OK(kvp_xfer_release(p->h, x));
    return st;
}

/* Every page: granted (bit i of mask) ones receive the WRITE, the others refuse it and
 * keep their bytes (seed_before: their last content, 0 = zeros). */
static void check_pages(pair *p, uint32_t mask, uint32_t seed, const uint32_t *before) {
    for (uint32_t i = 0; i < NPG; i++) {
        int32_t st = write_page(p, i, seed + i);
        if (mask & (1u << i)) {
            CHECK_MSG(st == KVP_SUCCESS, "page %u is granted, its WRITE returned %s: %s", i,
                      kvp_status_name(st), t_lasterr());
            CHECK_MSG(t_verify(bpage(p, i), PG, seed + i), "page %u: the bytes did not land", i);
        } else {
            CHECK_MSG(st == KVP_ERR_NOT_ALLOWED, "page %u is not granted, its WRITE returned %s",
                      i, kvp_status_name(st));
            int kept = before[i] ? t_verify(bpage(p, i), PG, before[i]) : 1;
            for (uint32_t k = 0; !before[i] && k < PG; k++)
                if (bpage(p, i)[k]) kept = 0;
            CHECK_MSG(kept, "page %u is not granted, yet its bytes changed", i);
        }
    }
}

/* What each page holds after check_pages (for the next round's "kept" check). */
static void note_pages(uint32_t mask, uint32_t seed, uint32_t *before) {
    for (uint32_t i = 0; i < NPG; i++)
        if (mask & (1u << i)) before[i] = seed + i;
}

static void grant_each_case(const char *h_params) {
    pair p;
    pair_start(&p, h_params, "page_grants=on\n");
    uint32_t before[NPG] = {0};
    /* Pages 1, 4, 5, 9 granted one grant each, in one call: one table rebuild. */
    const uint32_t pages[4] = {1, 4, 5, 9};
    uint64_t ad[4], ln[4], g[4];
    for (int i = 0; i < 4; i++) {
        ad[i] = p.bm + pages[i] * PG;
        ln[i] = PG;
    }
    uint64_t t0 = t_info_num(p.b, "grant_tables");
    OK(kvp_grant_each(p.b, "H", KVP_DRAM, ad, ln, NULL, 4, KVP_GRANT_WRITE, 0, g));
    CHECK_MSG(t_info_num(p.b, "grant_tables") == t0 + 1, "4 grants made %llu table rebuilds",
              (unsigned long long)(t_info_num(p.b, "grant_tables") - t0));
    CHECK(t_info_num(p.b, "grants") == 4);
    for (int i = 0; i < 4; i++) {
        CHECK(g[i] != 0);
        for (int j = 0; j < i; j++) CHECK(g[i] != g[j]);
    }
    uint32_t mask = 1u << 1 | 1u << 4 | 1u << 5 | 1u << 9;
    check_pages(&p, mask, 100, before);
    note_pages(mask, 100, before);
    /* Pages 1 and 5 end in one call (one rebuild); 4 and 9 stay writable. */
    uint64_t end[2] = {g[0], g[2]};
    uint64_t t1 = t_info_num(p.b, "grant_tables");
    OK(kvp_revoke_each(p.b, end, 2));
    CHECK(t_info_num(p.b, "grant_tables") == t1 + 1);
    CHECK(t_info_num(p.b, "grants") == 2);
    mask = 1u << 4 | 1u << 9;
    check_pages(&p, mask, 200, before);
    note_pages(mask, 200, before);
    /* A handle of kvp_grant_each is an ordinary grant: kvp_revoke ends it alone. */
    OK(kvp_revoke(p.b, g[1]));
    CHECK_ST(kvp_revoke(p.b, g[1]), KVP_ERR_NOT_FOUND);
    check_pages(&p, 1u << 9, 300, before);
    note_pages(1u << 9, 300, before);
    OK(kvp_revoke_each(p.b, &g[3], 1));
    check_pages(&p, 0, 400, before);
    CHECK(t_info_num(p.b, "grants") == 0);
    /* The path these WRITEs took: TCP (the target checks frames) or in-process. */
    uint64_t tcp = t_info_num(p.h, "posts_tcp");
    CHECK_MSG(h_params ? tcp == 4 * NPG : tcp == 0, "posts_tcp=%llu", (unsigned long long)tcp);
    pair_stop(&p);
}

TEST(grant_each_same_process_writes_land_only_in_granted_pages) { grant_each_case(NULL); }
TEST(grant_each_tcp_writes_land_only_in_granted_pages) {
    grant_each_case("transport=tcp\n");
}

/* A bad range, or a peer not loaded: no grant of the call exists, no handle is written,
 * the table is not rebuilt, and the message names the range. */
TEST(grant_each_is_all_or_nothing) {
    pair p;
    pair_start(&p, NULL, "page_grants=on\n");
    uint32_t before[NPG] = {0};
    uint64_t ad[4], ln[4] = {PG, PG, PG, PG}, g[4];
    for (int i = 0; i < 4; i++) ad[i] = p.bm + (uint64_t)i * PG;
    ad[2] = p.bm + NPG * PG; /* past the registration */
    uint64_t t0 = t_info_num(p.b, "grant_tables");
    memset(g, 0xEE, sizeof g);
    CHECK_ST(kvp_grant_each(p.b, "H", KVP_DRAM, ad, ln, NULL, 4, KVP_GRANT_WRITE, 0, g),
             KVP_ERR_INVALID_PARAM);
    CHECK_ERR_HAS("kvp_grant_each: range 2 (0x");
    CHECK_ERR_HAS("does not lie inside memory registered by agent B");
    for (int i = 0; i < 4; i++) CHECK_MSG(g[i] == 0, "out_grants[%d] was written", i);
    CHECK(t_info_num(p.b, "grant_tables") == t0);
    CHECK(t_info_num(p.b, "grants") == 0);
    check_pages(&p, 0, 10, before); /* ranges 0, 1 and 3 were good: none is granted */
    /* A zero length is a bad range too (index 3). */
    ad[2] = p.bm + 2 * PG;
    ln[3] = 0;
    CHECK_ST(kvp_grant_each(p.b, "H", KVP_DRAM, ad, ln, NULL, 4, KVP_GRANT_WRITE, 0, g),
             KVP_ERR_INVALID_PARAM);
    CHECK_ERR_HAS("range 3 (");
    ln[3] = PG;
    CHECK_ST(kvp_grant_each(p.b, "Z", KVP_DRAM, ad, ln, NULL, 4, KVP_GRANT_WRITE, 0, g),
             KVP_ERR_NOT_FOUND);
    CHECK_ERR_HAS("agent Z is not loaded in B");
    CHECK(t_info_num(p.b, "grants") == 0);
    /* The same ranges, good now: all four. */
    OK(kvp_grant_each(p.b, "H", KVP_DRAM, ad, ln, NULL, 4, KVP_GRANT_WRITE, 0, g));
    check_pages(&p, 0xFu, 20, before);
    note_pages(0xFu, 20, before);
    OK(kvp_revoke_each(p.b, g, 4));
    check_pages(&p, 0, 30, before);
    /* Arguments: as kvp_grant's. */
    CHECK_ST(kvp_grant_each(p.b, "H", KVP_DRAM, ad, ln, NULL, 0, KVP_GRANT_WRITE, 0, g),
             KVP_ERR_INVALID_PARAM);
    CHECK_ST(kvp_grant_each(p.b, "H", KVP_DRAM, ad, ln, NULL, 4, 4, 0, g), KVP_ERR_INVALID_PARAM);
    CHECK_ST(kvp_grant_each(p.b, "H", KVP_DRAM, ad, ln, NULL, 4, KVP_GRANT_WRITE, -1, g),
             KVP_ERR_INVALID_PARAM);
    CHECK_ST(kvp_grant_each(p.b, "H", KVP_DRAM, ad, ln, NULL, 4, KVP_GRANT_WRITE, 0, NULL),
             KVP_ERR_INVALID_PARAM);
    CHECK_ST(kvp_grant_each(p.b, "H", KVP_FILE, ad, ln, NULL, 4, KVP_GRANT_WRITE, 0, g),
             KVP_ERR_INVALID_PARAM);
    CHECK_ST(kvp_grant_each(p.h, "B", KVP_DRAM, ad, ln, NULL, 1, KVP_GRANT_WRITE, 0, g),
             KVP_ERR_INVALID_PARAM); /* H enforces no grants */
    CHECK_ERR_HAS("page_grants=on");
    CHECK_ST(kvp_revoke_each(p.b, g, 0), KVP_ERR_INVALID_PARAM);
    CHECK_ST(kvp_revoke_each(p.b, NULL, 2), KVP_ERR_INVALID_PARAM);
    pair_stop(&p);
}

/* max_grants counts the ranges of the call before any grant is made. */
TEST(grant_each_respects_max_grants) {
    pair p;
    pair_start(&p, NULL, "page_grants=on\nmax_grants=4\n");
    uint32_t before[NPG] = {0};
    uint64_t ad[5], ln[5], g[5];
    for (int i = 0; i < 5; i++) {
        ad[i] = p.bm + (uint64_t)i * PG;
        ln[i] = PG;
    }
    CHECK_ST(kvp_grant_each(p.b, "H", KVP_DRAM, ad, ln, NULL, 5, KVP_GRANT_WRITE, 0, g),
             KVP_ERR_NOT_ALLOWED);
    CHECK_ERR_HAS("max_grants=4");
    CHECK(t_info_num(p.b, "grants") == 0);
    OK(kvp_grant_each(p.b, "H", KVP_DRAM, ad, ln, NULL, 3, KVP_GRANT_WRITE, 0, g));
    uint64_t t0 = t_info_num(p.b, "grant_tables");
    /* 3 held + 2 more > 4: neither of the two is made. */
    CHECK_ST(kvp_grant_each(p.b, "H", KVP_DRAM, ad + 3, ln + 3, NULL, 2, KVP_GRANT_WRITE, 0, g + 3),
             KVP_ERR_NOT_ALLOWED);
    CHECK_ERR_HAS("holds 3 granted ranges; 2 more exceed max_grants=4");
    CHECK(g[3] == 0 && g[4] == 0);
    CHECK(t_info_num(p.b, "grant_tables") == t0);
    check_pages(&p, 0x7u, 50, before);
    note_pages(0x7u, 50, before);
    OK(kvp_grant_each(p.b, "H", KVP_DRAM, ad + 3, ln + 3, NULL, 1, KVP_GRANT_WRITE, 0, g + 3));
    CHECK(t_info_num(p.b, "grants") == 4);
    check_pages(&p, 0xFu, 60, before);
    note_pages(0xFu, 60, before);
    /* Revoked ones make room again. */
    OK(kvp_revoke_each(p.b, g, 2));
    OK(kvp_grant_each(p.b, "H", KVP_DRAM, ad + 4, ln + 4, NULL, 1, KVP_GRANT_WRITE, 0, g + 4));
    check_pages(&p, 1u << 2 | 1u << 3 | 1u << 4, 70, before);
    pair_stop(&p);
}

/* Bad handles among good ones: every good one is revoked (one rebuild), the status and
 * message name the first bad one, and another agent's grant is left alone. */
TEST(revoke_each_revokes_every_valid_handle) {
    pair p;
    pair_start(&p, NULL, "page_grants=on\n");
    /* A third agent with grants of its own, over H too. */
    uint64_t c = t_agent("C", NULL, "page_grants=on\n"), cm, creg, size = PG, cg;
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &cm));
    OK(kvp_register(c, KVP_DRAM, &cm, &size, NULL, 1, NULL, &creg));
    uint64_t hl;
    uint8_t *hb = t_md(p.h, &hl);
    t_load(c, hb, hl);
    OK(kvp_grant(c, "H", KVP_DRAM, &cm, &size, NULL, 1, KVP_GRANT_WRITE, 0, &cg));
    uint32_t before[NPG] = {0};
    uint64_t ad[6], ln[6], g[6];
    for (int i = 0; i < 6; i++) {
        ad[i] = p.bm + (uint64_t)i * PG;
        ln[i] = PG;
    }
    OK(kvp_grant_each(p.b, "H", KVP_DRAM, ad, ln, NULL, 6, KVP_GRANT_WRITE, 0, g));
    OK(kvp_revoke(p.b, g[5])); /* already revoked below */
    check_pages(&p, 0x1Fu, 80, before);
    note_pages(0x1Fu, 80, before);
    /* [g0, garbage, g1, g5 (revoked), C's grant, g2, g0 again]: g0, g1, g2 go. */
    uint64_t list[7] = {g[0], 0x0700000000000777ull, g[1], g[5], cg, g[2], g[0]};
    uint64_t t0 = t_info_num(p.b, "grant_tables");
    CHECK_ST(kvp_revoke_each(p.b, list, 7), KVP_ERR_NOT_FOUND);
    CHECK_ERR_HAS("kvp_revoke_each: handles[1] (0x700000000000777)");
    CHECK_ERR_HAS("the other 3 valid grant(s) of the 7 given were revoked");
    CHECK_MSG(t_info_num(p.b, "grant_tables") == t0 + 1, "one batch, %llu rebuilds",
              (unsigned long long)(t_info_num(p.b, "grant_tables") - t0));
    CHECK(t_info_num(p.b, "grants") == 2);
    check_pages(&p, 1u << 3 | 1u << 4, 90, before);
    note_pages(1u << 3 | 1u << 4, 90, before);
    CHECK(t_info_num(c, "grants") == 1); /* C's grant is C's to revoke */
    /* First bad one is another agent's: INVALID_PARAM; g3 still goes. */
    uint64_t list2[2] = {cg, g[3]};
    CHECK_ST(kvp_revoke_each(p.b, list2, 2), KVP_ERR_INVALID_PARAM);
    CHECK_ERR_HAS("handles[0]");
    CHECK_ERR_HAS("belongs to another agent, not B");
    check_pages(&p, 1u << 4, 95, before);
    note_pages(1u << 4, 95, before);
    /* Only bad ones: nothing changes, not even the table. */
    uint64_t t1 = t_info_num(p.b, "grant_tables");
    uint64_t list3[2] = {g[0], g[5]};
    CHECK_ST(kvp_revoke_each(p.b, list3, 2), KVP_ERR_NOT_FOUND);
    CHECK_ERR_HAS("handles[0]");
    CHECK(t_info_num(p.b, "grant_tables") == t1);
    check_pages(&p, 1u << 4, 97, before);
    OK(kvp_revoke_each(p.b, &g[4], 1));
    OK(kvp_revoke(c, cg));
    OK(kvp_agent_destroy(c));
    OK(kvp_mem_free(cm));
    free(hb);
    pair_stop(&p);
}

/* Grants of kvp_grant_each die with their registration and at destroy like any other
 * (ASan: nothing leaks, nothing is freed twice). */
TEST(grant_each_lifetimes) {
    pair p;
    pair_start(&p, NULL, "page_grants=on\n");
    uint64_t ad[8], ln[8], g[8];
    for (int i = 0; i < 8; i++) {
        ad[i] = p.bm + (uint64_t)i * PG;
        ln[i] = PG;
    }
    OK(kvp_grant_each(p.b, "H", KVP_DRAM, ad, ln, NULL, 8, KVP_GRANT_WRITE, 0, g));
    OK(kvp_deregister(p.b, p.breg));
    CHECK(t_info_num(p.b, "grants") == 0);
    uint64_t size = PG * NPG;
    OK(kvp_register(p.b, KVP_DRAM, &p.bm, &size, NULL, 1, NULL, &p.breg));
    uint32_t before[NPG] = {0};
    check_pages(&p, 0, 5, before); /* the old grants do not reach the new registration */
    OK(kvp_revoke_each(p.b, g, 4)); /* still revocable handles, ranges gone */
    OK(kvp_grant_each(p.b, "H", KVP_DRAM, ad, ln, NULL, 8, KVP_GRANT_WRITE, 100000, g));
    CHECK(t_info_num(p.b, "grants") == 8);
    pair_stop(&p); /* destroy ends them */
}

/* Two threads revoke the same grants at once: each grant is revoked exactly once (the
 * other thread is told it already was), nothing is freed twice (ASan). */
typedef struct {
    uint64_t agent;
    const uint64_t *g;
    uint64_t n;
    int32_t st;
    char msg[1024];
} race_arg;

static void *race_revoke(void *p) {
    race_arg *r = p;
    r->st = kvp_revoke_each(r->agent, r->g, r->n);
    kvp_last_error(r->msg, sizeof r->msg);
    return NULL;
}

/* N of "... the other N valid grant(s) ..." in a kvp_revoke_each message. */
static unsigned revoked_of(const char *msg) {
    const char *at = strstr(msg, "the other ");
    unsigned n = 0;
    CHECK_MSG(at && sscanf(at, "the other %u", &n) == 1, "message: %s", msg);
    return n;
}

TEST(revoke_each_races_revoke_each) {
    pair p;
    pair_start(&p, NULL, "page_grants=on\n");
    uint64_t ad[NPG], ln[NPG], g[NPG];
    for (uint32_t i = 0; i < NPG; i++) {
        ad[i] = p.bm + i * PG;
        ln[i] = PG;
    }
    for (int round = 0; round < 200; round++) {
        OK(kvp_grant_each(p.b, "H", KVP_DRAM, ad, ln, NULL, NPG, KVP_GRANT_WRITE, 0, g));
        race_arg a = {p.b, g, NPG, 0, ""}, b = {p.b, g, NPG, 0, ""};
        pthread_t ta, tb;
        CHECK(pthread_create(&ta, NULL, race_revoke, &a) == 0);
        CHECK(pthread_create(&tb, NULL, race_revoke, &b) == 0);
        CHECK(pthread_join(ta, NULL) == 0);
        CHECK(pthread_join(tb, NULL) == 0);
        /* Every grant went once: one side may win all, or they split them; a side that
         * lost any is NOT_FOUND, and the counts of the messages add up to NPG. */
        CHECK(t_info_num(p.b, "grants") == 0);
        CHECK(a.st == KVP_SUCCESS || a.st == KVP_ERR_NOT_FOUND);
        CHECK(b.st == KVP_SUCCESS || b.st == KVP_ERR_NOT_FOUND);
        CHECK_MSG(a.st != KVP_SUCCESS || b.st != KVP_SUCCESS, "both revoked all %u grants", NPG);
        unsigned na = NPG, nb = NPG;
        if (a.st != KVP_SUCCESS) na = revoked_of(a.msg);
        if (b.st != KVP_SUCCESS) nb = revoked_of(b.msg);
        CHECK_MSG(na + nb == NPG, "revoked %u + %u of %u", na, nb, NPG);
    }
    pair_stop(&p);
}
