/*
 * kvport-bench - quick figures of the builtin engine against the physical limits
 * measured in the same run. One JSON line per case.
 *
 *   kvport-bench [shm|cma|tcp|lat|file|all] [pages] [page_bytes] [reps]
 *
 * Bandwidth cases move `pages` pages of `page_bytes` (default 64 x 4 MiB) to a peer
 * process with one request, reposted `reps` times; "ratio" is GB/s over the limit
 * (memcpy of the same total for same-host paths, a raw loopback TCP stream for tcp).
 * lat: 4 KiB WRITE post-to-completion percentiles, same host (inline) and TCP.
 * grants: what page grants cost: the shm and tcp figures of the same run with the
 * target enforcing grants (every page granted to the sender, one range each) and
 * without; "ratio" is with / without (median of alternating runs; >= 0.98 is the goal).
 * rss: the sender's RSS growth for one 256 MiB same-host WRITE into a receiver buffer of
 * 1, 4 and 8 GiB (sparse memfds, so the machine needs only what is written); "ratio" is
 * the growth over the bytes the request touches (1.0: the footprint follows the request,
 * not the receiver's buffer).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../include/kvport.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void check(int32_t st, const char *what) {
    if (st == KVP_SUCCESS || st == KVP_IN_PROG) return;
    char e[1024];
    kvp_last_error(e, sizeof e);
    fprintf(stderr, "kvport-bench: %s: %s: %s\n", what, kvp_status_name(st), e);
    exit(1);
}

static void wr(int fd, const void *p, size_t n) {
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) exit(1);
        p = (const char *)p + k;
        n -= (size_t)k;
    }
}
static void rd(int fd, void *p, size_t n) {
    while (n) {
        ssize_t k = read(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) exit(1);
        p = (char *)p + k;
        n -= (size_t)k;
    }
}

static uint64_t agent(const char *name, const char *backends, const char *extra) {
    char params[512];
    snprintf(params, sizeof params, "listen_host=127.0.0.1\n%s", extra ? extra : "");
    uint64_t a;
    check(kvp_agent_create(name, "builtin", backends, params, &a), "agent_create");
    return a;
}

/* Peer process: registers size bytes (memfd or anonymous), sends metadata and base,
 * waits for one byte, exits. grant_page > 0: the agent enforces page grants; it then
 * reads the initiator's metadata and grants it WRITE of every page of that size (one
 * range each, as a receiver grants the pages of a request) before the byte. */
static uint64_t g_grant_page;
static bool g_scatter;
static pid_t peer(uint64_t size, int anon, int *fd_out, uint8_t **md, uint64_t *mdlen,
                  uint64_t *base) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) exit(1);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[0]);
        uint64_t a = agent("T", "UCX,POSIX", g_grant_page ? "page_grants=on\n" : NULL), m;
        if (anon == 2) {
            check(kvp_mem_alloc(KVP_DRAM, KVP_DRAM_SPARSE, size, &m), "alloc");
        } else if (anon) {
            void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) exit(1);
            memset(p, 0, size);
            m = (uint64_t)(uintptr_t)p;
        } else {
            check(kvp_mem_alloc(KVP_DRAM, 0, size, &m), "alloc");
        }
        uint64_t reg, len;
        check(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg), "register");
        check(kvp_local_metadata(a, NULL, 0, &len), "md");
        uint8_t *b = malloc(len);
        check(kvp_local_metadata(a, b, len, &len), "md");
        wr(sv[1], &len, 8);
        wr(sv[1], b, len);
        wr(sv[1], &m, 8);
        if (g_grant_page) {
            uint64_t il;
            rd(sv[1], &il, 8);
            uint8_t *ib = malloc(il);
            rd(sv[1], ib, il);
            char nm[300];
            uint64_t nl;
            check(kvp_load_remote_metadata(a, ib, il, (uint8_t *)nm, sizeof nm - 1, &nl), "load");
            nm[nl] = 0;
            uint64_t n = size / g_grant_page, g;
            uint64_t *ad = malloc(n * 8), *ln = malloc(n * 8);
            for (uint64_t i = 0; i < n; i++) {
                ad[i] = m + i * g_grant_page;
                ln[i] = g_grant_page;
            }
            check(kvp_grant(a, nm, KVP_DRAM, ad, ln, NULL, n, KVP_GRANT_WRITE, 0, &g), "grant");
            char ok = 1;
            wr(sv[1], &ok, 1);
        }
        char c;
        rd(sv[1], &c, 1);
        kvp_agent_destroy(a);
        _exit(0);
    }
    close(sv[1]);
    rd(sv[0], mdlen, 8);
    *md = malloc(*mdlen);
    rd(sv[0], *md, *mdlen);
    rd(sv[0], base, 8);
    *fd_out = sv[0];
    return pid;
}

static void peer_end(pid_t pid, int fd) {
    char c = 'q';
    wr(fd, &c, 1);
    close(fd);
    waitpid(pid, NULL, 0);
}

static uint64_t prep(uint64_t a, const char *remote, uint64_t base, uint64_t page, uint32_t n) {
    uint64_t *ad = malloc(n * 8), *ln = malloc(n * 8), dl, pp;
    for (uint32_t i = 0; i < n; i++) {
        ad[i] = base + (uint64_t)i * page;
        ln[i] = page;
    }
    check(kvp_dlist_create(KVP_DRAM, ad, ln, NULL, n, &dl), "dlist");
    check(kvp_prep_dlist(a, remote, dl, &pp), "prep");
    kvp_dlist_release(dl);
    free(ad);
    free(ln);
    return pp;
}

static double memcpy_gbps(uint64_t bytes, int reps) {
    uint8_t *a = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint8_t *b = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(a, 1, bytes);
    memset(b, 2, bytes);
    memcpy(b, a, bytes);
    double t0 = now();
    for (int i = 0; i < reps; i++) {
        memcpy(i % 2 ? a : b, i % 2 ? b : a, bytes);
        __asm__ __volatile__("" ::: "memory");
    }
    double g = (double)bytes * reps / (now() - t0) / 1e9;
    munmap(a, bytes);
    munmap(b, bytes);
    return g;
}

/* Raw loopback TCP between two processes, through kvport-limits' method (inline). */
static double tcp_gbps(uint64_t total, uint64_t window);

/* Moves pages x page to a peer reps times; GB/s. grants: the peer enforces page grants
 * (every page granted). *posts: the posts counted under path_key. */
static double bw_measure(const char *backends, const char *params, int anon, uint32_t pages,
                         uint64_t page, int reps, const char *path_key, bool grants,
                         unsigned long long *posts) {
    uint64_t size = (uint64_t)pages * page;
    int fd;
    uint8_t *md;
    uint64_t mdlen, rbase;
    g_grant_page = grants ? page : 0;
    pid_t pid = peer(size, anon, &fd, &md, &mdlen, &rbase);
    g_grant_page = 0;
    uint64_t a = agent("I", backends, params), m, reg, nl;
    char nm[300];
    check(kvp_load_remote_metadata(a, md, mdlen, (uint8_t *)nm, sizeof nm, &nl), "load");
    if (grants) {
        uint64_t il;
        check(kvp_local_metadata(a, NULL, 0, &il), "md");
        uint8_t *ib = malloc(il);
        check(kvp_local_metadata(a, ib, il, &il), "md");
        wr(fd, &il, 8);
        wr(fd, ib, il);
        char ok;
        rd(fd, &ok, 1);
        free(ib);
    }
    check(kvp_mem_alloc(KVP_DRAM, 0, size, &m), "alloc");
    memset((void *)(uintptr_t)m, 7, size);
    check(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg), "register");
    uint64_t lp = prep(a, "", m, page, pages), rp = prep(a, "T", rbase, page, pages);
    uint32_t *idx = malloc(pages * 4), *ridx = malloc(pages * 4);
    /* g_scatter: remote pages in reverse order, so no two pieces merge (scattered KV,
     * one check per page); else consecutive pages, merged. */
    for (uint32_t i = 0; i < pages; i++) {
        idx[i] = i;
        ridx[i] = g_scatter ? pages - 1 - i : i;
    }
    uint64_t req;
    check(kvp_xfer_create(a, KVP_WRITE, lp, idx, rp, ridx, pages, NULL, 0, &req), "create");
    check(kvp_xfer_post(a, req), "post");
    check(kvp_xfer_wait(a, req, 60000, NULL, 0, NULL), "wait"); /* warm-up (maps, connects) */
    double t0 = now();
    for (int i = 0; i < reps; i++) {
        check(kvp_xfer_post(a, req), "post");
        int32_t st = kvp_xfer_wait(a, req, 60000, NULL, 0, NULL);
        check(st, "wait");
    }
    double dt = now() - t0;
    double gbps = (double)size * reps / dt / 1e9;
    char info[8192];
    uint64_t il;
    kvp_agent_info(a, (uint8_t *)info, sizeof info - 1, &il);
    info[il] = 0;
    char *pk = strstr(info, path_key);
    *posts = pk ? strtoull(pk + strlen(path_key) + 1, NULL, 10) : 0;
    kvp_agent_destroy(a);
    kvp_mem_free(m);
    peer_end(pid, fd);
    free(md);
    free(idx);
    free(ridx);
    return gbps;
}

static void bw_case(const char *name, const char *backends, const char *params, int anon,
                    uint32_t pages, uint64_t page, int reps, const char *path_key) {
    uint64_t size = (uint64_t)pages * page;
    unsigned long long posts = 0;
    double gbps = bw_measure(backends, params, anon, pages, page, reps, path_key, false, &posts);
    /* tcp: the raw stream cycles through as much memory as the transfer touches (a 4 MiB
     * buffer reused would stay in cache and flatter the raw side). */
    double limit = strcmp(name, "tcp") == 0 ? tcp_gbps(size * (uint64_t)reps, size)
                                            : memcpy_gbps(size, reps);
    printf("{\"case\":\"%s\",\"pages\":%u,\"page_bytes\":%llu,\"reps\":%d,\"gbps\":%.3f,"
           "\"limit\":\"%s\",\"limit_gbps\":%.3f,\"ratio\":%.2f,\"%s\":%llu}\n",
           name, pages, (unsigned long long)page, reps, gbps,
           strcmp(name, "tcp") == 0 ? "raw loopback tcp, same memory footprint" : "memcpy",
           limit, gbps / limit,
           path_key, posts);
    fflush(stdout);
}

static uint64_t rss_now(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long long vs = 0, res = 0;
    if (!f || fscanf(f, "%llu %llu", &vs, &res) != 2) exit(1);
    fclose(f);
    return res * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* Sender RSS against the receiver's buffer size (issue 19.3). */
static void rss_case(uint64_t peer_gib) {
    const uint64_t page = 4u << 20, pages = 64, size = page * pages; /* 256 MiB */
    uint64_t peer_size = peer_gib << 30;
    int fd;
    uint8_t *md;
    uint64_t mdlen, rbase;
    pid_t pid = peer(peer_size, 2, &fd, &md, &mdlen, &rbase);
    uint64_t a = agent("I", "UCX", NULL), m, reg, nl;
    char nm[300];
    check(kvp_load_remote_metadata(a, md, mdlen, (uint8_t *)nm, sizeof nm, &nl), "load");
    check(kvp_mem_alloc(KVP_DRAM, 0, size, &m), "alloc");
    memset((void *)(uintptr_t)m, 7, size);
    check(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg), "register");
    uint64_t before = rss_now();
    /* The last 256 MiB of the receiver's buffer. */
    uint64_t lp = prep(a, "", m, page, (uint32_t)pages);
    uint64_t rp = prep(a, "T", rbase + peer_size - size, page, (uint32_t)pages);
    uint32_t idx[64];
    for (uint32_t i = 0; i < pages; i++) idx[i] = i;
    uint64_t req;
    double t0 = now();
    check(kvp_xfer_create(a, KVP_WRITE, lp, idx, rp, idx, (uint64_t)pages, NULL, 0, &req), "create");
    check(kvp_xfer_post(a, req), "post");
    check(kvp_xfer_wait(a, req, 60000, NULL, 0, NULL), "wait");
    double first = now() - t0;
    t0 = now();
    check(kvp_xfer_post(a, req), "post");
    check(kvp_xfer_wait(a, req, 60000, NULL, 0, NULL), "wait");
    double warm = now() - t0;
    uint64_t growth = rss_now() - before;
    printf("{\"case\":\"rss_sender_vs_receiver_buffer\",\"receiver_gib\":%llu,"
           "\"request_mib\":%llu,\"sender_rss_growth_mib\":%.1f,\"limit\":\"bytes the request "
           "touches\",\"ratio\":%.2f,\"first_request_ms\":%.1f,\"warm_request_ms\":%.1f}\n",
           (unsigned long long)peer_gib, (unsigned long long)(size >> 20), growth / 1048576.0,
           (double)growth / (double)size, first * 1e3, warm * 1e3);
    fflush(stdout);
    kvp_agent_destroy(a);
    kvp_mem_free(m);
    peer_end(pid, fd);
    free(md);
}

static int cmpd(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

static void grants_case(const char *name, const char *backends, int anon, uint32_t pages,
                        uint64_t page, int reps, const char *path_key) {
    enum { RUNS = 9 };
    double off[RUNS], on[RUNS];
    unsigned long long p_off = 0, p_on = 0;
    for (int i = 0; i < RUNS; i++) { /* alternating, so that drift hits both */
        off[i] = bw_measure(backends, NULL, anon, pages, page, reps, path_key, false, &p_off);
        on[i] = bw_measure(backends, NULL, anon, pages, page, reps, path_key, true, &p_on);
    }
    qsort(off, RUNS, sizeof *off, cmpd);
    qsort(on, RUNS, sizeof *on, cmpd);
    double mo = off[RUNS / 2], mn = on[RUNS / 2];
    printf("{\"case\":\"grants_%s%s\",\"pages\":%u,\"page_bytes\":%llu,\"reps\":%d,"
           "\"runs\":%d,\"gbps_without\":%.3f,\"gbps_with\":%.3f,\"limit\":\"the same "
           "transfer without grants\",\"ratio\":%.3f,\"%s\":%llu}\n",
           name, g_scatter ? "_scattered" : "", pages, (unsigned long long)page, reps, RUNS, mo, mn,
           mn / mo, path_key, p_on);
    fflush(stdout);
}

static void lat_case(const char *name, const char *backends, const char *params, int n) {
    int fd;
    uint8_t *md;
    uint64_t mdlen, rbase, size = 1 << 20;
    pid_t pid = peer(size, 0, &fd, &md, &mdlen, &rbase);
    uint64_t a = agent("I", backends, params), m, reg, nl;
    char nm[300];
    check(kvp_load_remote_metadata(a, md, mdlen, (uint8_t *)nm, sizeof nm, &nl), "load");
    check(kvp_mem_alloc(KVP_DRAM, 0, size, &m), "alloc");
    check(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg), "register");
    uint64_t lp = prep(a, "", m, 4096, 1), rp = prep(a, "T", rbase, 4096, 1), req;
    uint32_t z = 0;
    check(kvp_xfer_create(a, KVP_WRITE, lp, &z, rp, &z, 1, NULL, 0, &req), "create");
    double *t = malloc(n * sizeof *t);
    for (int i = -100; i < n; i++) {
        double t0 = now();
        int32_t st = kvp_xfer_post(a, req);
        if (st == KVP_IN_PROG) st = kvp_xfer_wait(a, req, 10000, NULL, 0, NULL);
        check(st, "4k");
        if (i >= 0) t[i] = (now() - t0) * 1e6;
    }
    qsort(t, (size_t)n, sizeof *t, cmpd);
    printf("{\"case\":\"%s\",\"bytes\":4096,\"n\":%d,\"p50_us\":%.2f,\"p90_us\":%.2f,"
           "\"p99_us\":%.2f}\n",
           name, n, t[n / 2], t[n * 9 / 10], t[n * 99 / 100]);
    fflush(stdout);
    free(t);
    kvp_agent_destroy(a);
    kvp_mem_free(m);
    peer_end(pid, fd);
    free(md);
}

static void file_case(uint32_t pages, uint64_t page, int direct) {
    const char *prealloc = getenv("KVB_PREALLOC"); /* experiment knobs */
    const char *threads = getenv("KVB_IO_THREADS");
    char path[] = "/tmp/kvport-bench-XXXXXX";
    int t = mkstemp(path);
    if (t < 0) exit(1);
    close(t);
    uint64_t size = (uint64_t)pages * page;
    int32_t fd, d;
    uint64_t fh;
    check(kvp_file_open(path, KVP_FILE_CREATE | KVP_FILE_TRUNCATE | (direct ? KVP_FILE_DIRECT : 0),
                        prealloc && *prealloc == '0' ? 0 : size, &fh, &fd, &d), "file_open");
    char tp[64];
    snprintf(tp, sizeof tp, "io_threads=%s", threads ? threads : "2");
    uint64_t a = agent("F", "UCX,POSIX", tp), m, reg, freg, zero = 0, dev = (uint64_t)fd;
    check(kvp_mem_alloc(KVP_DRAM, 0, size, &m), "alloc");
    memset((void *)(uintptr_t)m, 3, size);
    check(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg), "reg");
    check(kvp_register(a, KVP_FILE, &zero, &size, &dev, 1, NULL, &freg), "freg");
    uint64_t lp = prep(a, "", m, page, pages);
    uint64_t *ad = malloc(pages * 8), *ln = malloc(pages * 8), *dv = malloc(pages * 8), dl, fp;
    for (uint32_t i = 0; i < pages; i++) {
        ad[i] = (uint64_t)i * page;
        ln[i] = page;
        dv[i] = dev;
    }
    check(kvp_dlist_create(KVP_FILE, ad, ln, dv, pages, &dl), "dlist");
    check(kvp_prep_dlist(a, "F", dl, &fp), "prep");
    uint32_t *idx = malloc(pages * 4);
    for (uint32_t i = 0; i < pages; i++) idx[i] = i;
    uint64_t w, r;
    check(kvp_xfer_create(a, KVP_WRITE, lp, idx, fp, idx, pages, NULL, 0, &w), "create");
    check(kvp_xfer_create(a, KVP_READ, lp, idx, fp, idx, pages, NULL, 0, &r), "create");
    double t0 = now();
    check(kvp_xfer_post(a, w), "post");
    check(kvp_xfer_wait(a, w, 60000, NULL, 0, NULL), "wait");
    check(kvp_file_sync(fh), "sync");
    double wt = now() - t0;
    t0 = now();
    check(kvp_xfer_post(a, r), "post");
    check(kvp_xfer_wait(a, r, 60000, NULL, 0, NULL), "wait");
    double rt = now() - t0;
    printf("{\"case\":\"file%s\",\"pages\":%u,\"page_bytes\":%llu,\"direct\":%d,"
           "\"write_gbps\":%.3f,\"read_gbps\":%.3f,\"note\":\"write includes fdatasync%s\"}\n",
           direct ? "_direct" : "", pages, (unsigned long long)page, d, size / wt / 1e9,
           size / rt / 1e9, d ? "" : "; read from page cache");
    fflush(stdout);
    kvp_agent_destroy(a);
    kvp_file_close(fh);
    kvp_mem_free(m);
    unlink(path);
    free(ad);
    free(ln);
    free(dv);
    free(idx);
}

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

static double tcp_gbps(uint64_t total, uint64_t window) {
    const uint64_t msg = 4 << 20;
    if (window < msg) window = msg;
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    if (bind(l, (struct sockaddr *)&sa, sizeof sa) || listen(l, 1) ||
        getsockname(l, (struct sockaddr *)&sa, &sl))
        exit(1);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) _exit(1);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        uint8_t *b = malloc(window);
        memset(b, 1, window);
        for (uint64_t s = 0, pos = 0; s < total;) {
            if (pos + msg > window) pos = 0;
            ssize_t k = send(fd, b + pos, total - s < msg ? total - s : msg, MSG_NOSIGNAL);
            if (k <= 0) _exit(1);
            s += (uint64_t)k;
            pos += (uint64_t)k;
        }
        _exit(0);
    }
    int fd = accept(l, NULL, NULL);
    uint8_t *b = malloc(window);
    memset(b, 0, window);
    double t0 = 0;
    for (uint64_t g = 0, pos = 0; g < total;) {
        if (pos + msg > window) pos = 0;
        ssize_t k = recv(fd, b + pos, msg, 0);
        if (k <= 0) exit(1);
        if (g == 0) t0 = now();
        g += (uint64_t)k;
        pos += (uint64_t)k;
    }
    double dt = now() - t0;
    waitpid(pid, NULL, 0);
    close(fd);
    close(l);
    free(b);
    return (double)total / dt / 1e9;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    const char *which = argc > 1 ? argv[1] : "all";
    uint32_t pages = argc > 2 ? (uint32_t)atoi(argv[2]) : 64;
    uint64_t page = argc > 3 ? strtoull(argv[3], NULL, 10) : (4u << 20);
    int reps = argc > 4 ? atoi(argv[4]) : 10;
    bool all = strcmp(which, "all") == 0;
    if (all || !strcmp(which, "shm")) bw_case("shm", "UCX", NULL, 0, pages, page, reps, "posts_mem");
    if (all || !strcmp(which, "cma")) bw_case("cma", "UCX", NULL, 1, pages, page, reps, "posts_cma");
    if (all || !strcmp(which, "tcp")) bw_case("tcp", "TCP", NULL, 0, pages, page, reps, "posts_tcp");
    if (all || !strcmp(which, "lat")) {
        lat_case("lat_shm_4k", "UCX", NULL, 20000);
        lat_case("lat_tcp_4k", "TCP", NULL, 5000);
    }
    if (all || !strcmp(which, "grants")) {
        grants_case("shm", "UCX", 0, pages, page, reps, "posts_mem");
        grants_case("tcp", "TCP", 0, pages, page, reps, "posts_tcp");
        /* The same bytes as 64 KiB pages that do not merge: one check per page. */
        g_scatter = true;
        uint64_t small = 64u << 10;
        uint32_t many = (uint32_t)((uint64_t)pages * page / small);
        grants_case("shm", "UCX", 0, many, small, reps, "posts_mem");
        grants_case("tcp", "TCP", 0, many, small, reps, "posts_tcp");
        g_scatter = false;
    }
    if (all || !strcmp(which, "rss")) {
        rss_case(1);
        rss_case(4);
        rss_case(8);
    }
    if (all || !strcmp(which, "file")) {
        file_case(pages, page, 0);
        file_case(pages, page, 1);
    }
    return 0;
}
