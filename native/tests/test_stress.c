/* test_stress.c - concurrency: many threads posting on one agent, and a target that
 * deregisters (then frees) memory while a peer's TCP writes are landing in it. */
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include "t.h"

typedef struct poster {
    uint64_t a, lp, rp;
    uint32_t first, n, rounds;
    int32_t op;
    int failures;
} poster;

static void *post_loop(void *arg) {
    poster *p = arg;
    uint32_t idx[64];
    for (uint32_t i = 0; i < p->n; i++) idx[i] = p->first + i;
    uint64_t req;
    if (kvp_xfer_create(p->a, p->op, p->lp, idx, p->rp, idx, p->n, NULL, 0, &req) != KVP_SUCCESS) {
        p->failures++;
        return NULL;
    }
    for (uint32_t r = 0; r < p->rounds; r++) {
        int32_t st = kvp_xfer_post(p->a, req);
        if (st == KVP_IN_PROG) st = kvp_xfer_wait(p->a, req, 20000, NULL, 0, NULL);
        if (st != KVP_SUCCESS) p->failures++;
    }
    if (kvp_xfer_release(p->a, req) != KVP_SUCCESS) p->failures++;
    return NULL;
}

static void threads_on_one_agent(const char *backends, int anon) {
    const uint64_t page = 64 << 10;
    const uint32_t n = 8 * 32;
    t_peer p;
    t_peer_start(&p, "T", NULL, NULL, page * n, anon);
    uint64_t a = t_agent("I", backends, NULL), m, reg, size = page * n;
    t_load(a, p.md, p.mdlen);
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    OK(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    uint64_t lp = t_prep_pages(a, "", m, page, n), rp = t_prep_pages(a, "T", p.base, page, n);
    /* Eight threads, each its own slice: small (inline) and large requests, both ops. */
    for (uint32_t t = 0; t < 8; t++) t_fill((void *)(uintptr_t)(m + t * 32 * page), 32 * page, 100 + t);
    pthread_t th[8];
    poster ps[8];
    for (uint32_t t = 0; t < 8; t++) {
        ps[t] = (poster){a, lp, rp, t * 32, t % 2 ? 32 : 1, 30, KVP_WRITE, 0};
        CHECK(pthread_create(&th[t], NULL, post_loop, &ps[t]) == 0);
    }
    for (int t = 0; t < 8; t++) pthread_join(th[t], NULL);
    for (int t = 0; t < 8; t++) CHECK_MSG(ps[t].failures == 0, "thread %d: %d failures", t, ps[t].failures);
    for (uint32_t t = 1; t < 8; t += 2) CHECK(t_peer_verify(&p, t * 32 * page, 32 * page, 100 + t));
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(m));
    t_peer_stop(&p);
}

TEST_T(stress_threads_shm, 40) { threads_on_one_agent(NULL, 0); }
TEST_T(stress_threads_cma, 40) { threads_on_one_agent(NULL, 1); }
TEST_T(stress_threads_tcp, 40) { threads_on_one_agent("TCP", 0); }

typedef struct writer {
    uint64_t a, req;
    volatile int stop;
    int ok, refused, other;
} writer;

static void *write_loop(void *arg) {
    writer *w = arg;
    while (!w->stop) {
        int32_t st = kvp_xfer_post(w->a, w->req);
        if (st == KVP_IN_PROG) st = kvp_xfer_wait(w->a, w->req, 10000, NULL, 0, NULL);
        if (st == KVP_SUCCESS) w->ok++;
        else if (st == KVP_ERR_INVALID_PARAM || st == KVP_ERR_NOT_FOUND) w->refused++;
        else w->other++;
    }
    return NULL;
}

/* The target deregisters and unmaps its memory while TCP writes keep landing: the
 * target must never write into it afterwards (it would fault: the memory is unmapped),
 * and the initiator sees refusals, not hangs. */
TEST_T(target_deregisters_during_tcp_writes, 40) {
    uint64_t t = t_agent("T", NULL, NULL), a = t_agent("I", "TCP", NULL);
    const uint64_t size = 16 << 20;
    uint64_t m, lm, reg, lreg, sz = size;
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &lm));
    OK(kvp_register(a, KVP_DRAM, &lm, &sz, NULL, 1, NULL, &lreg));
    for (int round = 0; round < 5; round++) {
        void *tm = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHECK(tm != MAP_FAILED);
        m = (uint64_t)(uintptr_t)tm;
        OK(kvp_register(t, KVP_DRAM, &m, &sz, NULL, 1, NULL, &reg));
        uint64_t bl;
        uint8_t *md = t_md(t, &bl);
        t_load(a, md, bl);
        free(md);
        uint64_t lp = t_prep_pages(a, "", lm, 1 << 20, 16), rp = t_prep_pages(a, "T", m, 1 << 20, 16);
        uint32_t idx[16];
        for (uint32_t i = 0; i < 16; i++) idx[i] = i;
        writer w = {a, 0, 0, 0, 0, 0};
        OK(kvp_xfer_create(a, KVP_WRITE, lp, idx, rp, idx, 16, NULL, 0, &w.req));
        pthread_t th;
        CHECK(pthread_create(&th, NULL, write_loop, &w) == 0);
        usleep(20000 + round * 10000);
        OK(kvp_deregister(t, reg));
        CHECK(munmap(tm, size) == 0); /* any later write by the target would fault */
        usleep(50000);
        w.stop = 1;
        pthread_join(th, NULL);
        CHECK_MSG(w.other == 0, "round %d: %d unexpected statuses", round, w.other);
        CHECK(w.ok + w.refused > 0);
        OK(kvp_xfer_release(a, w.req));
        OK(kvp_prepped_release(a, lp));
        OK(kvp_prepped_release(a, rp));
        OK(kvp_invalidate_remote(a, "T"));
    }
    OK(kvp_agent_destroy(a));
    OK(kvp_agent_destroy(t));
    OK(kvp_mem_free(lm));
}

#include <dirent.h>

static int count_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    CHECK(d);
    int n = 0;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

/* Mappings of memfds (a peer's memory, our own buffers): what kvp_agent_destroy and
 * kvp_mem_free must give back. Anonymous mappings are left out: glibc keeps the stacks of
 * joined threads and its malloc arenas, whose number follows how threads happened to
 * overlap (a loaded machine made 1 or 2 more in about half the runs). */
static int count_maps(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    CHECK(f);
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, "/memfd:")) n++;
    fclose(f);
    return n;
}

/* Everything an agent opens (listener, epoll, eventfd, pidfd, connections, peer memfd
 * mappings) is released by kvp_agent_destroy; kvp_mem_free releases the memfd. */
TEST(no_descriptor_or_mapping_leaks) {
    t_peer p;
    t_peer_start(&p, "T", NULL, NULL, 4 << 20, 0);
    /* Descriptors and memfd mappings must come back exactly, every round. */
    int fd0 = count_fds(), map0 = count_maps();
    for (int round = 0; round < 4; round++) {
        uint64_t a = t_agent("I", NULL, NULL), m, reg, size = 4 << 20;
        t_load(a, p.md, p.mdlen);
        OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
        OK(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
        uint64_t lp = t_prep_pages(a, "", m, 1 << 20, 4), rp = t_prep_pages(a, "T", p.base, 1 << 20, 4);
        uint32_t idx[4] = {0, 1, 2, 3};
        uint64_t req;
        /* shm path (maps the peer memfd) with a notification (opens a TCP connection). */
        OK(kvp_xfer_create(a, KVP_WRITE, lp, idx, rp, idx, 4, (const uint8_t *)"n", 1, &req));
        int32_t st = kvp_xfer_post(a, req);
        if (st == KVP_IN_PROG) st = kvp_xfer_wait(a, req, 5000, NULL, 0, NULL);
        OK(st);
        int verified;
        CHECK(t_peer_notif(&p, 5000, 0, 0, 0, &verified, NULL, NULL) == 1);
        OK(kvp_agent_destroy(a));
        OK(kvp_mem_free(m));
        CHECK_MSG(count_fds() == fd0, "round %d: %d descriptors open, %d before", round,
                  count_fds(), fd0);
        CHECK_MSG(count_maps() == map0, "round %d: %d memfd mappings, %d before", round,
                  count_maps(), map0);
    }
    t_peer_stop(&p);
}
