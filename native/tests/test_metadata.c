/* test_metadata.c - metadata round trip, reload rules, and fuzzed blobs. */
#include <stdint.h>

#include "metadata.h"
#include "t.h"

static char g_prep_err[1024];

static uint64_t prep1(uint64_t agent, const char *remote, uint64_t addr, uint64_t len,
                      int32_t *st) {
    uint64_t dl, pp = 0;
    OK(kvp_dlist_create(KVP_DRAM, &addr, &len, NULL, 1, &dl));
    *st = kvp_prep_dlist(agent, remote, dl, &pp);
    snprintf(g_prep_err, sizeof g_prep_err, "%s", t_lasterr());
    OK(kvp_dlist_release(dl));
    return pp;
}

TEST(metadata_roundtrip_reload_and_restart) {
    uint64_t t = t_agent("T", NULL, NULL), i = t_agent("I", NULL, NULL);
    uint64_t m1, m2, len = 1 << 16, r1, r2;
    OK(kvp_mem_alloc(KVP_DRAM, 0, len, &m1));
    OK(kvp_mem_alloc(KVP_DRAM, 0, len, &m2));
    OK(kvp_register(t, KVP_DRAM, &m1, &len, NULL, 1, NULL, &r1));
    uint64_t bl;
    uint8_t *blob = t_md(t, &bl);
    char name[8];
    uint64_t nl;
    OK(kvp_load_remote_metadata(i, blob, bl, (uint8_t *)name, sizeof name, &nl));
    CHECK(nl == 1 && name[0] == 'T');
    /* Identical blob: no-op. Too small a name buffer: size reported. */
    OK(kvp_load_remote_metadata(i, blob, bl, (uint8_t *)name, 0, &nl));
    CHECK(nl == 1);
    int32_t st;
    uint64_t pp = prep1(i, "T", m1 + 100, 200, &st);
    OK(st);
    /* Out of range on the remote side: refused, naming the descriptor. */
    prep1(i, "T", m2, 16, &st);
    CHECK_ST(st, KVP_ERR_INVALID_PARAM);
    CHECK_MSG(strstr(g_prep_err, "descriptor 0 of 1"), "message: %s", g_prep_err);
    prep1(i, "T", m1 + len - 8, 16, &st);
    CHECK_ST(st, KVP_ERR_INVALID_PARAM);
    prep1(i, "nobody", m1, 16, &st);
    CHECK_ST(st, KVP_ERR_NOT_FOUND);
    /* New regions of the same incarnation: the re-sent blob updates the list. */
    OK(kvp_register(t, KVP_DRAM, &m2, &len, NULL, 1, NULL, &r2));
    free(blob);
    blob = t_md(t, &bl);
    t_load(i, blob, bl);
    uint64_t pp2 = prep1(i, "T", m2, 16, &st);
    OK(st);
    /* Own metadata into itself: loopback needs nothing, accepted. */
    t_load(t, blob, bl);
    /* A restarted peer (same name, new token) is refused until invalidated. */
    OK(kvp_agent_destroy(t));
    t = t_agent("T", NULL, NULL);
    OK(kvp_register(t, KVP_DRAM, &m1, &len, NULL, 1, NULL, &r1));
    uint64_t bl2;
    uint8_t *blob2 = t_md(t, &bl2);
    CHECK_ST(kvp_load_remote_metadata(i, blob2, bl2, (uint8_t *)name, sizeof name, &nl),
             KVP_ERR_NOT_ALLOWED);
    CHECK_ERR_HAS("kvp_invalidate_remote");
    /* Lists of the invalidated peer fail with NOT_FOUND from then on. */
    uint64_t lp, lr;
    OK(kvp_register(i, KVP_DRAM, &m2, &len, NULL, 1, NULL, &lr));
    lp = prep1(i, "", m2, 200, &st);
    OK(st);
    uint32_t z = 0;
    uint64_t req;
    OK(kvp_xfer_create(i, KVP_WRITE, lp, &z, pp, &z, 1, NULL, 0, &req));
    OK(kvp_invalidate_remote(i, "T"));
    CHECK_ST(kvp_invalidate_remote(i, "T"), KVP_ERR_NOT_FOUND);
    CHECK_ST(kvp_xfer_post(i, req), KVP_ERR_NOT_FOUND);
    uint64_t req2;
    CHECK_ST(kvp_xfer_create(i, KVP_WRITE, lp, &z, pp2, &z, 1, NULL, 0, &req2), KVP_ERR_NOT_FOUND);
    t_load(i, blob2, bl2);
    free(blob);
    free(blob2);
    OK(kvp_agent_destroy(i));
    OK(kvp_agent_destroy(t));
    OK(kvp_mem_free(m1));
    OK(kvp_mem_free(m2));
}

static uint32_t rnd(uint64_t *s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(*s >> 33);
}

static void fix_checksum(uint8_t *b, uint64_t n) {
    if (n < 8) return;
    uint64_t h = kvp_fnv1a(KVP_FNV_OFFSET, b, n - 8);
    for (int k = 0; k < 8; k++) b[n - 8 + k] = (uint8_t)(h >> (8 * k));
}

/* Loads a blob that may be anything: must never crash; a success that loaded another
 * name is undone so the agent stays small. */
static void load_any(uint64_t a, const uint8_t *b, uint64_t n, int *ok) {
    char name[300];
    uint64_t nl = 0;
    int32_t st = kvp_load_remote_metadata(a, b, n, (uint8_t *)name, sizeof name - 1, &nl);
    CHECK_MSG(st == KVP_SUCCESS || st == KVP_ERR_MISMATCH || st == KVP_ERR_NOT_ALLOWED,
              "unexpected %s: %s", kvp_status_name(st), t_lasterr());
    if (st == KVP_SUCCESS) {
        (*ok)++;
        name[nl < sizeof name ? nl : sizeof name - 1] = 0;
        if (strcmp(name, "FZ") != 0) (void)kvp_invalidate_remote(a, name);
    }
}

TEST_T(metadata_fuzz_garbage_truncated_mutated, 40) {
    uint64_t src = t_agent("T", NULL, NULL), a = t_agent("FZ", NULL, NULL);
    /* A blob with a memfd region and a plain one. */
    uint64_t m, len = 8192, r;
    OK(kvp_mem_alloc(KVP_DRAM, 0, len, &m));
    static uint8_t plain[4096];
    uint64_t addrs[2] = {m, (uint64_t)(uintptr_t)plain}, lens[2] = {len, sizeof plain};
    OK(kvp_register(src, KVP_DRAM, addrs, lens, NULL, 2, NULL, &r));
    uint64_t bl;
    uint8_t *blob = t_md(src, &bl);
    uint64_t seed = 42;
    int ok = 0;
    uint8_t *buf = malloc(bl + 4096);
    /* 1. Random garbage, with and without the right magic and a valid checksum. */
    for (int it = 0; it < 3000; it++) {
        uint64_t n = rnd(&seed) % (bl + 200);
        for (uint64_t k = 0; k < n; k++) buf[k] = (uint8_t)rnd(&seed);
        if (it % 2 && n >= 8) memcpy(buf, blob, 8);
        if (it % 3 == 0) fix_checksum(buf, n);
        char name[64];
        uint64_t nl;
        int32_t st = kvp_load_remote_metadata(a, buf, n, (uint8_t *)name, sizeof name, &nl);
        CHECK_MSG(st == KVP_ERR_MISMATCH, "garbage blob %d gave %s", it, kvp_status_name(st));
    }
    /* 2. Every truncation, with the checksum recomputed so the parser itself sees it. */
    for (uint64_t cut = 0; cut < bl; cut++) {
        memcpy(buf, blob, cut);
        fix_checksum(buf, cut);
        char name[64];
        uint64_t nl;
        CHECK_ST(kvp_load_remote_metadata(a, buf, cut, (uint8_t *)name, sizeof name, &nl),
                 KVP_ERR_MISMATCH);
    }
    /* 3. Single and multiple byte mutations everywhere, checksum fixed. */
    for (int it = 0; it < 6000; it++) {
        memcpy(buf, blob, bl);
        int nm = 1 + (int)(rnd(&seed) % 3);
        for (int k = 0; k < nm; k++) {
            uint64_t pos = rnd(&seed) % (bl - 8);
            uint32_t kind = rnd(&seed) % 4;
            buf[pos] = kind == 0 ? (uint8_t)rnd(&seed)
                     : kind == 1 ? 0xff
                     : kind == 2 ? 0
                                 : (uint8_t)(buf[pos] ^ (1u << (rnd(&seed) % 8)));
        }
        fix_checksum(buf, bl);
        load_any(a, buf, bl, &ok);
    }
    /* 4. Trailing bytes and overlong region counts. */
    memcpy(buf, blob, bl);
    memcpy(buf + bl, "xxxxxxxx", 8);
    fix_checksum(buf, bl + 8);
    char name[64];
    uint64_t nl;
    CHECK_ST(kvp_load_remote_metadata(a, buf, bl + 8, (uint8_t *)name, sizeof name, &nl),
             KVP_ERR_MISMATCH);
    CHECK_ERR_HAS("rejected");
    /* The untouched blob still loads. */
    t_load(a, blob, bl);
    CHECK(ok > 0); /* some mutations (token, pid bytes...) are valid blobs */
    free(buf);
    free(blob);
    OK(kvp_agent_destroy(a));
    OK(kvp_agent_destroy(src));
    OK(kvp_mem_free(m));
}

TEST(metadata_decoder_direct) {
    kvp_md md;
    memset(&md, 0, sizeof md);
    snprintf(md.name, sizeof md.name, "x");
    snprintf(md.host, sizeof md.host, "127.0.0.1");
    md.port = 5;
    md.page_fd = 9;
    md.page_ino = 1234;
    md.page_size = 8192;
    kvp_md_region regs[2];
    memset(regs, 0, sizeof regs);
    regs[0] = (kvp_md_region){KVP_DRAM, KVP_MDR_MEMFD, 0x1000, 0x100, 0, 7, 99, 0, 0x100, {0}, 0, NULL};
    regs[1] = (kvp_md_region){KVP_VRAM, KVP_MDR_IPC, 0x9000, 0x100, 1, -1, 0, 0, 0, {1, 2, 3}, 8, NULL};
    md.regions = regs;
    md.nregions = 2;
    kvp_buf b = {0};
    kvp_md_encode(&md, &b);
    CHECK(!b.oom);
    kvp_md out;
    OK(kvp_md_decode(b.p, b.len, &out));
    CHECK(out.nregions == 2 && out.regions[0].memfd == 7 && out.regions[1].ipc[2] == 3);
    CHECK(out.regions[1].ipc_off == 8 && out.port == 5 && strcmp(out.host, "127.0.0.1") == 0);
    CHECK(kvp_md_regions_equal(&md, &out));
    CHECK(out.page_fd == 9 && out.page_ino == 1234 && out.page_size == 8192);
    /* Encoded here: the process tag verifies here, and not once a byte changed. */
    CHECK(kvp_md_from_this_process(b.p, b.len));
    kvp_md_free(&out);
    /* memfd window larger than the memfd: refused. */
    regs[0].memfd_off = 0x80;
    kvp_buf b2 = {0};
    kvp_md_encode(&md, &b2);
    CHECK_ST(kvp_md_decode(b2.p, b2.len, &out), KVP_ERR_MISMATCH);
    kvp_buf_free(&b);
    kvp_buf_free(&b2);
}
