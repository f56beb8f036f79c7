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
    OK(kvp_xfer_wait(a, req, 20000, NULL, 0, NULL));
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
    CHECK(t_info_num(a, "cuda_launched") == 1);
    t_peer_fill(&p, 0, size, 9);
    OK(kvp_xfer_create(a, KVP_READ, lp, idx, rp, idx, 16, NULL, 0, &r));
    post_wait(a, r);
    CHECK(t_verify((void *)(uintptr_t)d, size, 9));
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(d));
    t_peer_stop(&p);
}

/* Whether a CUDA device is there, asked in a throw-away child so that this process stays
 * CUDA-free until its peers are forked (a CUDA context does not survive fork). */
static int gpu_in_child(void) {
    fflush(stdout);
    int pid = fork();
    if (pid == 0) {
        int32_t n = 0;
        _exit(kvp_cuda_device_count(&n) == KVP_SUCCESS && n > 0 ? 0 : 3);
    }
    if (t_wait_child(pid) != 0) {
        fprintf(stderr, "    skipped: no CUDA device\n");
        return 0;
    }
    return 1;
}

/* Fills page k of a VRAM buffer with seed base + k (through host memory). */
static void fill_vram_pages(uint64_t v, uint64_t page, uint32_t n, uint32_t base) {
    uint8_t *h = malloc(page);
    for (uint32_t k = 0; k < n; k++) {
        t_fill(h, page, base + k);
        OK(kvp_mem_copy(KVP_VRAM, 0, v + k * page, KVP_DRAM, 0, (uint64_t)(uintptr_t)h, page));
    }
    free(h);
}

static int vram_page_is(uint64_t v, uint64_t page, uint32_t k, uint32_t seed) {
    uint8_t *h = malloc(page);
    OK(kvp_mem_copy(KVP_DRAM, 0, (uint64_t)(uintptr_t)h, KVP_VRAM, 0, v + k * page, page));
    int ok = t_verify(h, page, seed);
    free(h);
    return ok;
}

/* VRAM over TCP between two processes (forced TCP, as between hosts): every combination
 * of local DRAM/VRAM with the peer's VRAM, WRITE and READ, consecutive pages (merged
 * into one frame, staged slot by slot) and scattered ones (a frame per page); pages
 * larger than a staging slot and not a multiple of it. */
TEST_T(cuda_vram_over_tcp_staged, 120) {
    if (!gpu_in_child()) return;
    enum { N = 6 };
    const uint64_t page = (5u << 20) + 1234, size = N * page;
    t_peer p;
    t_peer_start(&p, "T", "TCP", NULL, size, 2);
    uint64_t a = t_agent("I", "TCP", NULL), d, v, reg, len = size, dev0 = 0;
    t_load(a, p.md, p.mdlen);
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &d));
    OK(kvp_mem_alloc(KVP_VRAM, 0, size, &v));
    OK(kvp_register(a, KVP_DRAM, &d, &len, NULL, 1, NULL, &reg));
    OK(kvp_register(a, KVP_VRAM, &v, &len, &dev0, 1, NULL, &reg));
    uint64_t lp = t_prep_pages(a, "", d, page, N);
    uint64_t lv = prep_type(a, "", KVP_VRAM, v, page, N);
    uint64_t rp = prep_type(a, "T", KVP_VRAM, p.base, page, N);
    uint32_t idx[N], rev[N];
    for (uint32_t i = 0; i < N; i++) {
        idx[i] = i;
        rev[i] = N - 1 - i;
    }
    uint64_t req;
    int verified = 0;
    char msg[64];
    /* DRAM -> peer VRAM, consecutive pages: one 31 MiB frame, landing slot by slot. */
    t_fill((void *)(uintptr_t)d, size, 21);
    OK(kvp_xfer_create(a, KVP_WRITE, lp, idx, rp, idx, N, (const uint8_t *)"w1", 2, &req));
    post_wait(a, req);
    CHECK(t_peer_notif(&p, 10000, 0, size, 21, &verified, NULL, msg) == 1 && verified);
    OK(kvp_xfer_release(a, req));
    /* VRAM -> peer VRAM, scattered: staged out of our GPU and into the peer's. */
    fill_vram_pages(v, page, N, 300);
    OK(kvp_xfer_create(a, KVP_WRITE, lv, idx, rp, rev, N, NULL, 0, &req));
    post_wait(a, req);
    for (uint32_t k = 0; k < N; k++)
        CHECK_MSG(t_peer_verify(&p, rev[k] * page, page, 300 + k), "peer page %u", rev[k]);
    /* Posted again: the same frames, the same staging rings. */
    fill_vram_pages(v, page, N, 400);
    post_wait(a, req);
    for (uint32_t k = 0; k < N; k++) CHECK(t_peer_verify(&p, rev[k] * page, page, 400 + k));
    OK(kvp_xfer_release(a, req));
    /* peer VRAM -> our VRAM (scattered) and -> our DRAM (consecutive). */
    t_peer_fill(&p, 0, size, 33);
    OK(kvp_mem_copy(KVP_VRAM, 0, v, KVP_DRAM, 0, d, size)); /* stale bytes first */
    OK(kvp_xfer_create(a, KVP_READ, lv, rev, rp, idx, N, NULL, 0, &req));
    post_wait(a, req);
    uint8_t *h = malloc(size), *want = malloc(size);
    t_fill(want, size, 33);
    OK(kvp_mem_copy(KVP_DRAM, 0, (uint64_t)(uintptr_t)h, KVP_VRAM, 0, v, size));
    for (uint32_t k = 0; k < N; k++)
        CHECK_MSG(memcmp(h + rev[k] * page, want + k * page, page) == 0, "page %u", k);
    OK(kvp_xfer_release(a, req));
    memset((void *)(uintptr_t)d, 0, size);
    OK(kvp_xfer_create(a, KVP_READ, lp, idx, rp, idx, N, NULL, 0, &req));
    post_wait(a, req);
    CHECK(t_verify((void *)(uintptr_t)d, size, 33));
    OK(kvp_xfer_release(a, req));
    /* Every one of those took the TCP path, staged. */
    CHECK_MSG(t_info_num(a, "posts_staged") == 5, "posts_staged = %llu",
              (unsigned long long)t_info_num(a, "posts_staged"));
    CHECK(t_info_num(a, "posts_tcp") == 5);
    free(h);
    free(want);
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(v));
    OK(kvp_mem_free(d));
    t_peer_stop(&p);
}

/* FILE <-> VRAM within one agent, staged through pinned memory. */
TEST_T(cuda_file_vram_staged, 60) {
    if (!have_gpu()) return;
    enum { N = 5 };
    const uint64_t page = (3u << 20) + 4096, size = N * page;
    char path[] = "/tmp/kvport-vram-XXXXXX";
    int tmp = mkstemp(path);
    CHECK(tmp >= 0);
    close(tmp);
    int32_t fd, direct;
    uint64_t fh;
    OK(kvp_file_open(path, KVP_FILE_CREATE | KVP_FILE_DIRECT, size, &fh, &fd, &direct));
    unlink(path);
    uint64_t a = t_agent("F", "POSIX", NULL), v1, v2, reg, len = size;
    OK(kvp_mem_alloc(KVP_VRAM, 0, size, &v1));
    OK(kvp_mem_alloc(KVP_VRAM, 0, size, &v2));
    uint64_t vs[2] = {v1, v2}, ls[2] = {size, size}, ds[2] = {0, 0};
    OK(kvp_register(a, KVP_VRAM, vs, ls, ds, 2, NULL, &reg));
    uint64_t off0 = 0, fdv = (uint64_t)fd;
    OK(kvp_register(a, KVP_FILE, &off0, &len, &fdv, 1, NULL, &reg));
    uint64_t l1 = prep_type(a, "", KVP_VRAM, v1, page, N), l2 = prep_type(a, "", KVP_VRAM, v2, page, N);
    uint64_t *fa = malloc(N * 8), *fl = malloc(N * 8), *fdd = malloc(N * 8), fdl, fp;
    for (uint32_t i = 0; i < N; i++) {
        fa[i] = i * page;
        fl[i] = page;
        fdd[i] = (uint64_t)fd;
    }
    OK(kvp_dlist_create(KVP_FILE, fa, fl, fdd, N, &fdl));
    OK(kvp_prep_dlist(a, "F", fdl, &fp));
    OK(kvp_dlist_release(fdl));
    uint32_t idx[N], rev[N];
    for (uint32_t i = 0; i < N; i++) {
        idx[i] = i;
        rev[i] = N - 1 - i;
    }
    fill_vram_pages(v1, page, N, 700);
    uint64_t w, r;
    OK(kvp_xfer_create(a, KVP_WRITE, l1, idx, fp, rev, N, NULL, 0, &w)); /* VRAM -> file */
    post_wait(a, w);
    OK(kvp_xfer_create(a, KVP_READ, l2, idx, fp, idx, N, NULL, 0, &r)); /* file -> VRAM */
    post_wait(a, r);
    for (uint32_t k = 0; k < N; k++)
        CHECK_MSG(vram_page_is(v2, page, rev[k], 700 + k), "page %u", k);
    CHECK(t_info_num(a, "posts_staged") == 2 && t_info_num(a, "posts_file") == 2);
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(v1));
    OK(kvp_mem_free(v2));
    OK(kvp_file_close(fh));
    free(fa);
    free(fl);
    free(fdd);
}

/* Many scattered pages to a same-host peer's VRAM through CUDA IPC: every page its own
 * copy, all queued before one wait. */
/* Agent "I" with n VRAM pages registered and prepared (lv), and a forked peer "T" whose
 * n VRAM pages are prepared as the remote side (rp). */
typedef struct {
    t_peer p;
    uint64_t a, v, lv, rp;
} vram_pair;

static void vram_pair_start(vram_pair *x, uint64_t page, uint32_t n, const char *params) {
    uint64_t size = page * n, reg, len = size, dev0 = 0;
    t_peer_start(&x->p, "T", NULL, NULL, size, 2);
    x->a = t_agent("I", NULL, params);
    t_load(x->a, x->p.md, x->p.mdlen);
    OK(kvp_mem_alloc(KVP_VRAM, 0, size, &x->v));
    OK(kvp_register(x->a, KVP_VRAM, &x->v, &len, &dev0, 1, NULL, &reg));
    x->lv = prep_type(x->a, "", KVP_VRAM, x->v, page, n);
    x->rp = prep_type(x->a, "T", KVP_VRAM, x->p.base, page, n);
}

static void vram_pair_stop(vram_pair *x) {
    OK(kvp_agent_destroy(x->a));
    OK(kvp_mem_free(x->v));
    t_peer_stop(&x->p);
}

TEST_T(cuda_ipc_scattered_pages, 60) {
    if (!gpu_in_child()) return;
    enum { N = 64 };
    const uint64_t page = 64 << 10;
    vram_pair x;
    vram_pair_start(&x, page, N, NULL);
    uint64_t a = x.a, v = x.v, lv = x.lv, rp = x.rp;
    t_peer *pp = &x.p;
    uint32_t idx[N], perm[N];
    for (uint32_t i = 0; i < N; i++) {
        idx[i] = i;
        perm[i] = (i * 37 + 11) % N; /* 37 is coprime with 64: a permutation */
    }
    fill_vram_pages(v, page, N, 900);
    uint64_t req;
    OK(kvp_xfer_create(a, KVP_WRITE, lv, idx, rp, perm, N, NULL, 0, &req));
    post_wait(a, req);
    for (uint32_t k = 0; k < N; k++) CHECK(t_peer_verify(pp, perm[k] * page, page, 900 + k));
    CHECK(t_info_num(a, "posts_cuda") == 1 && t_info_num(a, "posts_staged") == 0);
    vram_pair_stop(&x);
}

/* Rounds of a VRAM -> peer VRAM WRITE of n pages with a notification, new bytes each
 * round: the peer sees the notification only after every byte (checked there). Then a
 * post released and one destroyed right away (copies possibly running): both return
 * once the copies are done, no fault. Returns the agent's counter `counter` before the
 * release. */
static uint64_t notified_vram_rounds(const char *params, uint32_t n, uint32_t rounds,
                                     const char *counter) {
    const uint64_t page = 1 << 20, size = n * page;
    vram_pair x;
    vram_pair_start(&x, page, n, params);
    uint32_t *idx = malloc(n * sizeof *idx);
    for (uint32_t i = 0; i < n; i++) idx[i] = i;
    uint8_t *h = malloc(size);
    uint64_t req;
    OK(kvp_xfer_create(x.a, KVP_WRITE, x.lv, idx, x.rp, idx, n, (const uint8_t *)"landed", 6, &req));
    for (uint32_t round = 0; round < rounds; round++) {
        t_fill(h, size, 70 + round);
        OK(kvp_mem_copy(KVP_VRAM, 0, x.v, KVP_DRAM, 0, (uint64_t)(uintptr_t)h, size));
        post_wait(x.a, req);
        int verified = 0;
        char msg[64] = "";
        CHECK_MSG(t_peer_notif(&x.p, 10000, 0, size, 70 + round, &verified, NULL, msg) == 1,
                  "round %u: no notification", round);
        CHECK_MSG(verified, "round %u: the notification came before the bytes", round);
        CHECK_MSG(memcmp(msg, "landed", 6) == 0, "round %u: notification %.6s", round, msg);
    }
    CHECK(t_info_num(x.a, "posts_cuda") == rounds && t_info_num(x.a, "posts_staged") == 0);
    CHECK_MSG(t_info_num(x.a, "notif_sends") == rounds, "notif_sends = %llu, expected %u",
              (unsigned long long)t_info_num(x.a, "notif_sends"), rounds);
    /* Each post's copies were waited for once: by a worker on the post's event
     * (cuda_launched), or by the thread that queued them (cuda_direct: inside the post). */
    uint64_t direct = t_info_num(x.a, "cuda_direct"), launched = t_info_num(x.a, "cuda_launched");
    CHECK_MSG(direct + launched == rounds, "cuda_direct %llu + cuda_launched %llu, expected %u",
              (unsigned long long)direct, (unsigned long long)launched, rounds);
    uint64_t got = t_info_num(x.a, counter);
    CHECK(kvp_xfer_post(x.a, req) >= 0);
    OK(kvp_xfer_release(x.a, req));
    OK(kvp_xfer_create(x.a, KVP_WRITE, x.lv, idx, x.rp, idx, n, (const uint8_t *)"x", 1, &req));
    CHECK(kvp_xfer_post(x.a, req) >= 0);
    vram_pair_stop(&x);
    free(h);
    free(idx);
    return got;
}

/* Past vram_inline_max, the post queues the copies and a worker waits for their event,
 * then sends the notification. */
TEST_T(cuda_post_with_notification_queues_the_copies_and_a_worker_waits, 60) {
    if (!gpu_in_child()) return;
    uint64_t launched = notified_vram_rounds("vram_inline_max=0", 16, 4, "cuda_launched");
    CHECK_MSG(launched == 4, "cuda_launched = %llu, expected 4", (unsigned long long)launched);
}

/* Up to vram_inline_max (32 MiB by default) device-to-device copies complete inside the
 * post: no worker at all, the notification sent from the posting thread. */
TEST_T(cuda_small_device_copies_complete_inside_the_post, 60) {
    if (!gpu_in_child()) return;
    uint64_t inlined = notified_vram_rounds(NULL, 16, 4, "posts_inline");
    CHECK_MSG(inlined == 4, "posts_inline = %llu, expected 4", (unsigned long long)inlined);
}

/* GPU copies posted without a worker: completed by polling (kvp_xfer_status, as Bun
 * does) or by waiting; released or destroyed while in flight without a fault. */
TEST_T(cuda_async_post_poll_release_destroy, 60) {
    if (!have_gpu()) return;
    enum { N = 64 };
    const uint64_t page = 1 << 20, size = N * page;
    uint64_t a = t_agent("A", NULL, NULL), v1, v2, reg;
    OK(kvp_mem_alloc(KVP_VRAM, 0, size, &v1));
    OK(kvp_mem_alloc(KVP_VRAM, 0, size, &v2));
    uint64_t vs[2] = {v1, v2}, ls[2] = {size, size}, ds[2] = {0, 0};
    OK(kvp_register(a, KVP_VRAM, vs, ls, ds, 2, NULL, &reg));
    uint64_t l1 = prep_type(a, "", KVP_VRAM, v1, page, N), r2 = prep_type(a, "A", KVP_VRAM, v2, page, N);
    uint32_t idx[N], perm[N];
    for (uint32_t i = 0; i < N; i++) {
        idx[i] = i;
        perm[i] = (i * 37 + 11) % N;
    }
    fill_vram_pages(v1, page, N, 50);
    uint64_t req;
    OK(kvp_xfer_create(a, KVP_WRITE, l1, idx, r2, perm, N, NULL, 0, &req));
    int32_t st = kvp_xfer_post(a, req);
    CHECK(st == KVP_IN_PROG || st == KVP_SUCCESS);
    for (int spins = 0; st == KVP_IN_PROG && spins < 200000; spins++) {
        st = kvp_xfer_status(a, req);
        if (st == KVP_IN_PROG) usleep(50);
    }
    CHECK_ST(st, KVP_SUCCESS);
    for (uint32_t k = 0; k < N; k++) CHECK_MSG(vram_page_is(v2, page, perm[k], 50 + k), "page %u", k);
    /* Waiting with a zero timeout only asks. */
    st = kvp_xfer_post(a, req);
    CHECK(st == KVP_IN_PROG || st == KVP_SUCCESS);
    st = kvp_xfer_wait(a, req, 0, NULL, 0, NULL);
    CHECK(st == KVP_IN_PROG || st == KVP_SUCCESS);
    OK(kvp_xfer_wait(a, req, 20000, NULL, 0, NULL));
    /* Released in flight: returns once the copies are done. */
    CHECK(kvp_xfer_post(a, req) >= 0);
    OK(kvp_xfer_release(a, req));
    /* Destroyed in flight. */
    OK(kvp_xfer_create(a, KVP_WRITE, l1, idx, r2, idx, N, NULL, 0, &req));
    CHECK(kvp_xfer_post(a, req) >= 0);
    uint64_t info_posts = t_info_num(a, "posts_cuda");
    CHECK(info_posts == 4);
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(v1));
    OK(kvp_mem_free(v2));
}

/* Scattered VRAM pages whose sizes are not multiples of 16 bytes (the copy kernel's
 * byte loop) and one of 16-byte multiples (its vector loop), loopback. */
TEST_T(cuda_scattered_unaligned_pages, 60) {
    if (!have_gpu()) return;
    enum { N = 16 };
    const uint64_t sizes[2] = {(64u << 10) + 5, 3u << 20};
    for (int k = 0; k < 2; k++) {
        const uint64_t page = sizes[k], size = N * page;
        uint64_t a = t_agent("U", NULL, NULL), v1, v2, reg;
        OK(kvp_mem_alloc(KVP_VRAM, 0, size, &v1));
        OK(kvp_mem_alloc(KVP_VRAM, 0, size, &v2));
        uint64_t vs[2] = {v1, v2}, ls[2] = {size, size}, ds[2] = {0, 0};
        OK(kvp_register(a, KVP_VRAM, vs, ls, ds, 2, NULL, &reg));
        uint64_t l1 = prep_type(a, "", KVP_VRAM, v1, page, N);
        uint64_t r2 = prep_type(a, "U", KVP_VRAM, v2, page, N);
        uint32_t idx[N], perm[N];
        for (uint32_t i = 0; i < N; i++) {
            idx[i] = i;
            perm[i] = (i * 5 + 3) % N;
        }
        fill_vram_pages(v1, page, N, 77);
        fill_vram_pages(v2, page, N, 99); /* stale content everywhere first */
        uint64_t req;
        OK(kvp_xfer_create(a, KVP_WRITE, l1, idx, r2, perm, N, NULL, 0, &req));
        post_wait(a, req);
        for (uint32_t i = 0; i < N; i++)
            CHECK_MSG(vram_page_is(v2, page, perm[i], 77 + i), "page size %llu, page %u",
                      (unsigned long long)page, i);
        OK(kvp_agent_destroy(a));
        OK(kvp_mem_free(v1));
        OK(kvp_mem_free(v2));
    }
}

/* The copy kernel loads when VRAM is registered, as machine code on the GPUs the fat
 * binary serves (sm_80, 90, 100, 120): a JIT compile of its PTX would cost the first
 * transfer of scattered pages 50-150 ms (seen as a 126 ms "warm" PD request on an H200). */
TEST_T(cuda_copy_kernel_loads_at_registration_as_machine_code, 60) {
    if (!have_gpu()) return;
    const uint64_t size = 1 << 20;
    uint64_t a = t_agent("K", NULL, NULL), v, reg, len = size, dv = 0;
    OK(kvp_mem_alloc(KVP_VRAM, 0, size, &v));
    OK(kvp_register(a, KVP_VRAM, &v, &len, &dv, 1, NULL, &reg));
    uint8_t buf[2048];
    uint64_t n = 0;
    OK(kvp_agent_info(a, buf, sizeof buf - 1, &n));
    buf[n] = '\0';
    const char *at = strstr((const char *)buf, "vram_copy_kernel_dev0=");
    if (!at && strstr((const char *)buf, "vram_copy_note=no libcuda")) {
        /* A runtime without the driver API (tools/fake_cudart.c): no kernel to load. */
        fprintf(stderr, "    skipped: no libcuda.so.1 (a stand-in CUDA runtime)\n");
        OK(kvp_deregister(a, reg));
        OK(kvp_agent_destroy(a));
        OK(kvp_mem_free(v));
        return;
    }
    CHECK_MSG(at != NULL, "no copy kernel loaded at registration; agent info:\n%s", buf);
    char image[16] = "";
    int sm = 0;
    CHECK_MSG(sscanf(at, "vram_copy_kernel_dev0=%15s sm_%d", image, &sm) == 2,
              "unreadable line in agent info:\n%s", buf);
    int major = sm / 10;
    int served = major == 8 || major == 9 || major == 10 || major == 12;
    const char *want = served ? "sass" : "ptx";
    CHECK_MSG(strcmp(image, want) == 0, "sm_%d: expected the %s kernel, agent info:\n%s", sm,
              want, buf);
    OK(kvp_deregister(a, reg));
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(v));
}

/* Preparing a same-host peer's VRAM pages opens its CUDA IPC handle then (the demo's
 * first request waited ~20 ms for it on an H200); the first WRITE uses that mapping. */
TEST_T(cuda_prep_of_peer_vram_opens_its_ipc_handle_before_the_first_request, 60) {
    if (!gpu_in_child()) return;
    t_peer p;
    const uint64_t page = 1 << 20, size = 8 * page;
    t_peer_start(&p, "T", NULL, NULL, size, 2);
    uint64_t a = t_agent("I", NULL, NULL), v, reg, len = size, dv = 0;
    t_load(a, p.md, p.mdlen);
    OK(kvp_mem_alloc(KVP_VRAM, 0, size, &v));
    OK(kvp_register(a, KVP_VRAM, &v, &len, &dv, 1, NULL, &reg));
    uint8_t *h = malloc(size);
    t_fill(h, size, 40);
    OK(kvp_mem_copy(KVP_VRAM, 0, v, KVP_DRAM, 0, (uint64_t)(uintptr_t)h, size));
    free(h);
    uint64_t lp = prep_type(a, "", KVP_VRAM, v, page, 8);
    CHECK(t_info_num(a, "ipc_handles_open") == 0);
    uint64_t rp = prep_type(a, "T", KVP_VRAM, p.base, page, 8);
    CHECK_MSG(t_info_num(a, "ipc_handles_open") == 1, "the peer's IPC handle is not open yet");
    uint32_t idx[8];
    for (uint32_t i = 0; i < 8; i++) idx[i] = i;
    uint64_t w;
    OK(kvp_xfer_create(a, KVP_WRITE, lp, idx, rp, idx, 8, (const uint8_t *)"v", 1, &w));
    post_wait(a, w);
    int verified = 0;
    CHECK(t_peer_notif(&p, 10000, 0, size, 40, &verified, NULL, NULL) == 1 && verified);
    CHECK(t_info_num(a, "ipc_handles_open") == 1);
    CHECK(t_info_num(a, "posts_cuda") == 1);
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(v));
    t_peer_stop(&p);
}
