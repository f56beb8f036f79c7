/* test_prefault.c - a same-host sender faults a peer's memfd in ahead of its requests
 * (issue 15): after a request faulted in pages of its own, a thread of the engine maps
 * the peer_prefault_ahead bytes after them that the peer's memfd holds, so that later
 * requests into pages never touched before find them mapped (prefault_create_bytes
 * does not grow) and move every byte; pages the peer never allocated (a sparse buffer)
 * stay unallocated, and nothing beyond the window is mapped. */
#include <dirent.h>
#include <stdbool.h>
#include <time.h>
#include <unistd.h>

#include "t.h"

/* Shared memory mapped into this process (RssShmem of /proc/self/status), bytes. */
static uint64_t rss_shmem(void) {
    FILE *f = fopen("/proc/self/status", "r");
    CHECK(f);
    char line[256];
    unsigned long long kb = 0;
    bool found = false;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "RssShmem: %llu kB", &kb) == 1) found = true;
    fclose(f);
    CHECK_MSG(found, "no RssShmem line in /proc/self/status");
    return (uint64_t)kb << 10;
}

/* Threads of this process. */
static int threads(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/task");
    CHECK(d);
    for (struct dirent *e; (e = readdir(d));) n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Waits (at most 30 s: the thread works at the process's priority on a shared machine)
 * until prefault_ahead_bytes reaches `want`; returns what it reached. */
static uint64_t wait_ahead(uint64_t a, uint64_t want) {
    double until = now_s() + 30;
    uint64_t got = t_info_num(a, "prefault_ahead_bytes");
    while (got < want && now_s() < until) {
        usleep(2000);
        got = t_info_num(a, "prefault_ahead_bytes");
    }
    return got;
}

TEST_T(prefault_ahead_maps_the_peer_pages_before_requests_touch_them, 90) {
    t_peer p;
    const uint64_t peer_size = 96ull << 20, size = 4 << 20, first = 1 << 20;
    t_peer_start(&p, "T", NULL, NULL, peer_size, 0); /* memfd, every page allocated */
    uint64_t a = t_agent("I", NULL, NULL), m, reg;
    t_load(a, p.md, p.mdlen);
    CHECK(t_info_num(a, "peer_prefault_ahead") == 512ull << 20);
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    OK(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    uint64_t shm0 = rss_shmem();
    int threads_before = threads();
    /* The first request maps the peer's memfd and faults in its own 1 MiB. */
    t_fill((void *)(uintptr_t)m, first, 41);
    t_peer_xfer(a, KVP_WRITE, "T", m, 0, &p, 0, first, 1);
    CHECK(t_peer_verify(&p, 0, first, 41));
    /* The rest of the peer's buffer comes in ahead of any request (the thread may also
     * have done some of the first request's pages before it came to them). */
    uint64_t created = t_info_num(a, "prefault_create_bytes");
    CHECK_MSG(created <= first, "the first request faulted in %llu bytes, more than its own",
              (unsigned long long)created);
    uint64_t ahead = wait_ahead(a, peer_size - created);
    created = t_info_num(a, "prefault_create_bytes");
    CHECK_MSG(ahead + created == peer_size,
              "%llu bytes faulted in ahead and %llu by the request, of a %llu byte buffer",
              (unsigned long long)ahead, (unsigned long long)created,
              (unsigned long long)peer_size);
    /* Its work done, the thread is gone (the agent's own threads stay). */
    double until = now_s() + 10;
    while (threads() > threads_before && now_s() < until) usleep(2000);
    CHECK_MSG(threads() == threads_before, "%d threads, %d before the first request",
              threads(), threads_before);
    uint64_t shm1 = rss_shmem();
    CHECK_MSG(shm1 - shm0 >= peer_size - (1 << 20),
              "%llu MiB of the peer's %llu MiB buffer are mapped here",
              (unsigned long long)((shm1 - shm0) >> 20), (unsigned long long)(peer_size >> 20));
    /* Requests into pages never touched before: no fault-in on their path, every byte. */
    for (uint32_t i = 0; i < 8; i++) {
        uint64_t roff = peer_size - (uint64_t)(i + 1) * size - 12345 * i;
        t_fill((void *)(uintptr_t)m, size, 50 + i);
        t_peer_xfer(a, KVP_WRITE, "T", m, 0, &p, roff, size, 1);
        CHECK_MSG(t_peer_verify(&p, roff, size, 50 + i), "write %u at %llu did not land", i,
                  (unsigned long long)roff);
    }
    CHECK_MSG(t_info_num(a, "prefault_create_bytes") == created,
              "later requests faulted in %llu bytes themselves",
              (unsigned long long)(t_info_num(a, "prefault_create_bytes") - created));
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(m));
    t_peer_stop(&p);
}

TEST_T(prefault_ahead_leaves_pages_a_sparse_peer_never_allocated, 90) {
    t_peer p;
    const uint64_t peer_size = 1ull << 30, size = 1 << 20, held = 8 << 20, at = 300ull << 20;
    t_peer_start(&p, "T", NULL, NULL, peer_size, 4); /* sparse */
    t_peer_fill(&p, at, held, 7);                     /* the only pages it has */
    uint64_t a = t_agent("I", NULL, NULL), m, reg;
    t_load(a, p.md, p.mdlen);
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    OK(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    uint64_t shm0 = rss_shmem();
    t_fill((void *)(uintptr_t)m, size, 8);
    t_peer_xfer(a, KVP_WRITE, "T", m, 0, &p, 0, size, 1);
    CHECK(t_peer_verify(&p, 0, size, 8));
    /* The pages the peer holds; of the first request's (allocated by it), at most those
     * the thread found before the request marked them. */
    uint64_t ahead = wait_ahead(a, held);
    CHECK_MSG(ahead >= held && ahead <= held + size,
              "the thread faulted in %llu bytes, the peer holds %llu (+%llu written by us)",
              (unsigned long long)ahead, (unsigned long long)held, (unsigned long long)size);
    /* Give it time to go wrong (it would go on through its 512 MiB window): nothing more. */
    usleep(300 * 1000);
    CHECK(t_info_num(a, "prefault_ahead_bytes") == ahead);
    uint64_t grown = rss_shmem() - shm0;
    CHECK_MSG(grown <= held + size + (1 << 20), "%llu MiB mapped here for %llu MiB held",
              (unsigned long long)(grown >> 20), (unsigned long long)((held + size) >> 20));
    CHECK(t_peer_verify(&p, at, held, 7)); /* the peer's data is untouched */
    t_fill((void *)(uintptr_t)m, size, 9);
    t_peer_xfer(a, KVP_WRITE, "T", m, 0, &p, at + (2 << 20), size, 1);
    CHECK(t_peer_verify(&p, at + (2 << 20), size, 9));
    CHECK(t_info_num(a, "prefault_create_bytes") == size);
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(m));
    t_peer_stop(&p);
}

TEST_T(prefault_ahead_off_and_stopped_midway, 90) {
    /* peer_prefault_ahead=0: requests fault in their own pages, as before. */
    t_peer p;
    const uint64_t peer_size = 256ull << 20, size = 1 << 20;
    t_peer_start(&p, "T", NULL, NULL, peer_size, 0);
    uint64_t a = t_agent("I", NULL, "peer_prefault_ahead=0\n"), m, reg;
    t_load(a, p.md, p.mdlen);
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    OK(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    t_fill((void *)(uintptr_t)m, size, 3);
    t_peer_xfer(a, KVP_WRITE, "T", m, 0, &p, 0, size, 1);
    usleep(100 * 1000);
    CHECK(t_info_num(a, "prefault_ahead_bytes") == 0);
    t_peer_xfer(a, KVP_WRITE, "T", m, 0, &p, peer_size - size, size, 1);
    CHECK(t_peer_verify(&p, peer_size - size, size, 3));
    CHECK(t_info_num(a, "prefault_create_bytes") == 2 * size);
    OK(kvp_agent_destroy(a));
    /* Destroyed and invalidated while the thread works: it stops before the unmap. */
    for (int round = 0; round < 2; round++) {
        uint64_t b = t_agent("J", NULL, NULL), r2;
        t_load(b, p.md, p.mdlen);
        OK(kvp_register(b, KVP_DRAM, &m, &size, NULL, 1, NULL, &r2));
        t_fill((void *)(uintptr_t)m, size, 20 + (uint32_t)round);
        t_peer_xfer(b, KVP_WRITE, "T", m, 0, &p, 0, size, 1);
        CHECK(t_peer_verify(&p, 0, size, 20 + (uint32_t)round));
        if (round == 1) OK(kvp_invalidate_remote(b, "T"));
        OK(kvp_agent_destroy(b));
    }
    OK(kvp_mem_free(m));
    t_peer_stop(&p);
}

TEST_T(prefault_ahead_stays_within_its_window_past_the_requests, 90) {
    t_peer p;
    const uint64_t peer_size = 256ull << 20, size = 1 << 20, w = 32ull << 20;
    t_peer_start(&p, "T", NULL, NULL, peer_size, 0);
    uint64_t a = t_agent("I", NULL, "peer_prefault_ahead=33554432\n"), m, reg;
    t_load(a, p.md, p.mdlen);
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    OK(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    uint64_t shm0 = rss_shmem();
    /* A request at 0: the 32 MiB after it, no more. */
    t_fill((void *)(uintptr_t)m, size, 60);
    t_peer_xfer(a, KVP_WRITE, "T", m, 0, &p, 0, size, 1);
    CHECK(wait_ahead(a, w) == w);
    usleep(200 * 1000);
    CHECK_MSG(t_info_num(a, "prefault_ahead_bytes") == w, "%llu bytes faulted in ahead",
              (unsigned long long)t_info_num(a, "prefault_ahead_bytes"));
    /* Inside the window ([w, w + size) is its last MiB: it runs from size to size + w):
     * nothing to do on the request's path. */
    t_fill((void *)(uintptr_t)m, size, 61);
    t_peer_xfer(a, KVP_WRITE, "T", m, 0, &p, w, size, 1);
    CHECK(t_peer_verify(&p, w, size, 61));
    CHECK(t_info_num(a, "prefault_create_bytes") == size);
    /* Far beyond it: the request does its own, and the window follows it. */
    const uint64_t far = 200ull << 20;
    t_fill((void *)(uintptr_t)m, size, 62);
    t_peer_xfer(a, KVP_WRITE, "T", m, 0, &p, far, size, 1);
    CHECK(t_peer_verify(&p, far, size, 62));
    CHECK(t_info_num(a, "prefault_create_bytes") == 2 * size);
    uint64_t rest = peer_size - far - size < w ? peer_size - far - size : w;
    CHECK(wait_ahead(a, w + rest) == w + rest);
    usleep(200 * 1000);
    CHECK(t_info_num(a, "prefault_ahead_bytes") == w + rest);
    uint64_t grown = rss_shmem() - shm0;
    CHECK_MSG(grown <= 2 * size + w + rest + (1 << 20), "%llu MiB mapped here, %llu expected",
              (unsigned long long)(grown >> 20), (unsigned long long)((2 * size + w + rest) >> 20));
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(m));
    t_peer_stop(&p);
}

TEST_T(prefault_ahead_window_of_any_width_looks_at_whole_extents, 60) {
    /* A window whose end falls inside an extent (100000 bytes past a request that ends
     * at 1 MiB): it ends on that extent's end, and each extent in it is judged on all
     * of its pages. The peer holds only [1 MiB + 64 KiB, 1 MiB + 192 KiB): the one
     * extent of it inside the window is done, the one past it is not. */
    t_peer p;
    const uint64_t peer_size = 64ull << 20, size = 1 << 20, k = 1024;
    t_peer_start(&p, "T", NULL, NULL, peer_size, 4); /* sparse */
    t_peer_fill(&p, size + 64 * k, 128 * k, 5);
    uint64_t a = t_agent("I", NULL, "peer_prefault_ahead=100000\n"), m, reg;
    t_load(a, p.md, p.mdlen);
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    OK(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    t_fill((void *)(uintptr_t)m, size, 6);
    t_peer_xfer(a, KVP_WRITE, "T", m, 0, &p, 0, size, 1);
    CHECK(t_peer_verify(&p, 0, size, 6));
    CHECK(wait_ahead(a, 64 * k) == 64 * k);
    usleep(200 * 1000);
    CHECK_MSG(t_info_num(a, "prefault_ahead_bytes") == 64 * k, "%llu bytes faulted in ahead",
              (unsigned long long)t_info_num(a, "prefault_ahead_bytes"));
    CHECK(t_peer_verify(&p, size + 64 * k, 128 * k, 5));
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(m));
    t_peer_stop(&p);
}
