/* test_nixl.c - the nixl engine against a real NIXL: probe and selection, two processes
 * writing and reading through NIXL's UCX backend (and UCX over TCP), notifications,
 * POSIX files through NIXL, a restarted peer, waits ended by release and destroy,
 * several threads on one agent, and NIXL's errors. Where NIXL is not available (no
 * libkvport_nixl.so, or it cannot load) each test prints why and passes without
 * checking anything. */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "t.h"
#include "t_nixl.h"

/* ------------------------------------------------------------- helpers ---- */

static int32_t run_xfer(uint64_t a, int32_t op, uint64_t lp, const uint32_t *li, uint64_t rp,
                        const uint32_t *ri, uint32_t n, const char *notif) {
    uint64_t req;
    OK(kvp_xfer_create(a, op, lp, li, rp, ri, n, (const uint8_t *)notif,
                       notif ? strlen(notif) : 0, &req));
    int32_t st = kvp_xfer_post(a, req);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(a, req, 20000, NULL, 0, NULL);
    OK(kvp_xfer_release(a, req));
    return st;
}

/* ------------------------------------------------------------- probe ---- */

TEST(nixl_probe_engines_and_auto) {
    NEED_NIXL();
    uint8_t buf[8192];
    uint64_t len;
    OK(kvp_engines(buf, sizeof buf, &len));
    CHECK(len == 12 && memcmp(buf, "builtin,nixl", 12) == 0);
    OK(kvp_engine_probe("nixl", buf, sizeof buf - 1, &len));
    buf[len] = 0;
    CHECK(strstr((char *)buf, "engine=nixl\n"));
    CHECK(strstr((char *)buf, "plugins=") && strstr((char *)buf, "UCX"));
    CHECK(strstr((char *)buf, "version=") && strstr((char *)buf, "nixl_lib="));
    CHECK(strstr((char *)buf, "libkvport_nixl.so(loaded)"));
    OK(kvp_engine_probe("auto", buf, sizeof buf - 1, &len));
    buf[len] = 0;
    CHECK(strstr((char *)buf, "resolved=nixl"));
    uint64_t a;
    OK(kvp_agent_create("auto-agent", "auto", "UCX", NULL, &a));
    char v[256];
    info_value(a, "engine", v, sizeof v);
    CHECK_MSG(strcmp(v, "nixl") == 0, "engine=%s", v);
    info_value(a, "requested_engine", v, sizeof v);
    CHECK(strcmp(v, "auto") == 0);
    info_value(a, "ucx_version", v, sizeof v);
    CHECK_MSG(v[0] >= '1' && v[0] <= '9', "ucx_version=%s", v);
    OK(kvp_agent_destroy(a));
    /* KVPORT_ENGINE=builtin makes auto the builtin engine. */
    setenv("KVPORT_ENGINE", "builtin", 1);
    OK(kvp_agent_create("auto-builtin", "auto", "UCX", "listen_host=127.0.0.1", &a));
    info_value(a, "engine", v, sizeof v);
    CHECK_MSG(strcmp(v, "builtin") == 0, "engine=%s", v);
    OK(kvp_agent_destroy(a));
    unsetenv("KVPORT_ENGINE");
}

TEST(nixl_params_backends_and_errors) {
    NEED_NIXL();
    uint64_t a;
    /* BACKEND.key reaches createBackend; builtin-only keys are accepted and ignored. */
    OK(kvp_agent_create("p1", "nixl", "UCX,POSIX", "UCX.num_workers=2\nlisten_port=0", &a));
    char v[512];
    info_value(a, "backend.UCX", v, sizeof v);
    CHECK_MSG(strstr(v, "num_workers=2"), "backend.UCX=%s", v);
    info_value(a, "ignored_params", v, sizeof v);
    CHECK(strcmp(v, "listen_port") == 0);
    info_value(a, "backends", v, sizeof v);
    CHECK(strcmp(v, "UCX,POSIX") == 0);
    OK(kvp_agent_destroy(a));
    CHECK_ST(kvp_agent_destroy(a), KVP_ERR_NOT_FOUND);
    CHECK_ST(kvp_agent_create("p2", "nixl", "UCX", "bogus=1", &a), KVP_ERR_INVALID_PARAM);
    CHECK_ERR_HAS("bogus");
    CHECK_ST(kvp_agent_create("p3", "nixl", "NOSUCHPLUGIN", NULL, &a), KVP_ERR_NOT_FOUND);
    CHECK_ERR_HAS("createBackend(NOSUCHPLUGIN)");
    CHECK_ERR_HAS("UCX");
    CHECK_ST(kvp_agent_create("p4", "nixl", "UCX,TCP", NULL, &a), KVP_ERR_INVALID_PARAM);
    CHECK_ST(kvp_agent_create("p5", "nixl", "UCX", "sync_mode=none", &a), KVP_ERR_INVALID_PARAM);
    /* Garbage metadata is NIXL's MISMATCH; its words reach the last error. */
    a = nixl_agent("p6", "UCX", NULL);
    uint8_t name[256];
    uint64_t nl;
    CHECK_ST(kvp_load_remote_metadata(a, (const uint8_t *)"garbage", 7, name, sizeof name, &nl),
             KVP_ERR_MISMATCH);
    CHECK_ERR_HAS("does not parse as NIXL metadata");
    /* A local descriptor outside registered memory is named. */
    uint64_t reg, addr = alloc_reg(a, 1 << 16, &reg);
    uint64_t addrs[2] = {addr, addr + (1 << 16)}, lens[2] = {4096, 4096}, devs[2] = {0, 0};
    uint64_t dl, p;
    OK(kvp_dlist_create(KVP_DRAM, addrs, lens, devs, 2, &dl));
    CHECK_ST(kvp_prep_dlist(a, "", dl, &p), KVP_ERR_INVALID_PARAM);
    CHECK_ERR_HAS("descriptor 1 ");
    CHECK_ST(kvp_prep_dlist(a, "nobody", dl, &p), KVP_ERR_NOT_FOUND);
    OK(kvp_dlist_release(dl));
    /* Stale and foreign handles. */
    CHECK_ST(kvp_xfer_post(a, 12345), KVP_ERR_NOT_FOUND);
    CHECK_ST(kvp_prepped_release(a, 12345), KVP_ERR_NOT_FOUND);
    OK(kvp_deregister(a, reg));
    CHECK_ST(kvp_deregister(a, reg), KVP_ERR_NOT_FOUND);
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(addr));
}

/* ------------------------------------------------------- two processes ---- */

#define PAIR_SIZE (32u << 20)

/* The peer: agent `name`, one registered buffer; sends metadata and address, loads
 * the main agent's metadata, then for each round waits for a notification and sends
 * back a checksum of its buffer; exits on an empty notification. */
static void peer_main(int in, int out, const char *name, const char *backends) {
    uint64_t a = nixl_agent(name, backends, NULL);
    uint64_t reg, addr = alloc_reg(a, PAIR_SIZE, &reg);
    memset((void *)(uintptr_t)addr, 0x5a, PAIR_SIZE);
    uint64_t ml;
    uint8_t *md = t_md(a, &ml);
    t_send(out, md, ml);
    free(md);
    t_send_u64(out, addr);
    uint64_t n;
    uint8_t *theirs = t_recv(in, &n);
    t_load(a, theirs, n);
    free(theirs);
    t_send_u64(out, 1); /* loaded */
    for (;;) {
        OK(kvp_notif_wait(a, 20000, NULL, 0, NULL));
        uint8_t rec[512];
        uint64_t len, count;
        OK(kvp_notif_take(a, rec, sizeof rec, &len, &count));
        CHECK(count >= 1);
        uint32_t nlen = (uint32_t)rec[0] | (uint32_t)rec[1] << 8;
        uint32_t mlen = (uint32_t)rec[4 + nlen] | (uint32_t)rec[5 + nlen] << 8;
        if (mlen == 4 && memcmp(rec + 8 + nlen, "quit", 4) == 0) break;
        uint64_t sum;
        OK(kvp_mem_checksum(KVP_DRAM, 0, addr, PAIR_SIZE, &sum));
        t_send_u64(out, sum);
    }
    OK(kvp_deregister(a, reg));
    OK(kvp_agent_destroy(a));
    _exit(0);
}

static void pair_test(const char *backends) {
    int p2c[2], c2p[2];
    CHECK(pipe(p2c) == 0 && pipe(c2p) == 0);
    char peer_name[64];
    snprintf(peer_name, sizeof peer_name, "peer-%d", (int)getpid());
    int pid = fork(); /* before any UCX state exists in this process */
    CHECK(pid >= 0);
    if (pid == 0) {
        close(p2c[1]);
        close(c2p[0]);
        peer_main(p2c[0], c2p[1], peer_name, backends);
    }
    close(p2c[0]);
    close(c2p[1]);
    uint64_t a = nixl_agent("main", backends, NULL);
    uint64_t reg, addr = alloc_reg(a, PAIR_SIZE, &reg);
    uint64_t n;
    uint8_t *md = t_recv(c2p[0], &n);
    uint64_t raddr = t_recv_u64(c2p[0]);
    uint8_t name[256];
    uint64_t nl;
    OK(kvp_load_remote_metadata(a, md, n, name, sizeof name - 1, &nl));
    name[nl] = 0;
    CHECK(strcmp((char *)name, peer_name) == 0);
    free(md);
    md = t_md(a, &n);
    t_send(p2c[1], md, n);
    free(md);
    CHECK(t_recv_u64(c2p[0]) == 1);

    const uint64_t page = 64 * 1024;
    const uint32_t count = PAIR_SIZE / page;
    uint64_t lp = prep_pages(a, "", KVP_DRAM, addr, 0, page, count);
    uint64_t rp = prep_pages(a, peer_name, KVP_DRAM, raddr, 0, page, count);
    uint32_t *li = malloc(count * sizeof *li), *ri = malloc(count * sizeof *ri);
    for (uint32_t i = 0; i < count; i++) {
        li[i] = i;
        ri[i] = count - 1 - i; /* reversed: page i lands in slot count-1-i */
    }
    /* WRITE with a notification: the peer checksums on arrival. */
    for (uint32_t i = 0; i < count; i++)
        t_fill((void *)(uintptr_t)(addr + (uint64_t)(count - 1 - i) * page), page, 100 + i);
    /* ...so that after reversal the peer holds, in order, what addr holds reversed. */
    OK(run_xfer(a, KVP_WRITE, lp, li, rp, ri, count, "written"));
    uint64_t rsum = t_recv_u64(c2p[0]);
    /* Expected remote content: page j of remote = page (count-1-j) of local. */
    uint8_t *want = malloc(PAIR_SIZE);
    CHECK(want);
    for (uint32_t j = 0; j < count; j++)
        memcpy(want + (uint64_t)j * page, (void *)(uintptr_t)(addr + (uint64_t)(count - 1 - j) * page),
               page);
    uint64_t wsum;
    OK(kvp_mem_checksum(KVP_DRAM, 0, (uint64_t)(uintptr_t)want, PAIR_SIZE, &wsum));
    CHECK_MSG(rsum == wsum, "remote checksum %" PRIx64 " != expected %" PRIx64, rsum, wsum);
    /* READ back the same pages into a zeroed buffer: equal to what was written. */
    uint64_t lsum_before;
    OK(kvp_mem_checksum(KVP_DRAM, 0, addr, PAIR_SIZE, &lsum_before));
    memset((void *)(uintptr_t)addr, 0, PAIR_SIZE);
    OK(run_xfer(a, KVP_READ, lp, li, rp, ri, count, NULL));
    uint64_t lsum;
    OK(kvp_mem_checksum(KVP_DRAM, 0, addr, PAIR_SIZE, &lsum));
    CHECK(lsum == lsum_before);
    /* Standalone notification ends the peer. */
    OK(kvp_notif_send(a, peer_name, (const uint8_t *)"quit", 4));
    CHECK(t_wait_child(pid) == 0);
    free(want);
    free(li);
    free(ri);
    OK(kvp_prepped_release(a, lp));
    OK(kvp_prepped_release(a, rp));
    OK(kvp_deregister(a, reg));
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(addr));
}

TEST_T(nixl_two_processes_ucx_write_read_notif, 60) {
    NEED_NIXL();
    pair_test("UCX");
}

TEST_T(nixl_two_processes_tcp_write_read_notif, 60) {
    NEED_NIXL();
    pair_test("TCP");
}

/* --------------------------------------------------------------- files ---- */

TEST_T(nixl_posix_file_write_read, 60) {
    NEED_NIXL();
    uint64_t a = nixl_agent("files", "POSIX", NULL);
    const uint64_t page = 64 * 1024;
    const uint32_t count = 64;
    uint64_t size = page * count;
    uint64_t reg, addr = alloc_reg(a, size, &reg);
    char path[] = "/tmp/kvport-nixl-test-XXXXXX";
    int tmp = mkstemp(path);
    CHECK(tmp >= 0);
    close(tmp);
    int32_t fd, direct;
    uint64_t fh;
    OK(kvp_file_open(path, KVP_FILE_CREATE | KVP_FILE_TRUNCATE, size, &fh, &fd, &direct));
    uint64_t off = 0, zero = 0, dev = (uint64_t)fd, freg;
    OK(kvp_register(a, KVP_FILE, &off, &zero, &dev, 1, NULL, &freg)); /* len 0: to EOF */
    uint64_t lp = prep_pages(a, "", KVP_DRAM, addr, 0, page, count);
    uint64_t fp = prep_pages(a, "files", KVP_FILE, 0, (uint64_t)fd, page, count); /* loopback */
    uint32_t li[64], ri[64];
    for (uint32_t i = 0; i < count; i++) {
        li[i] = i;
        ri[i] = (i * 5) % count;
    }
    t_fill((void *)(uintptr_t)addr, size, 42);
    OK(run_xfer(a, KVP_WRITE, lp, li, fp, ri, count, NULL));
    OK(kvp_file_sync(fh));
    /* Another reader sees page i in slot ri[i]. */
    int rfd = open(path, O_RDONLY);
    CHECK(rfd >= 0);
    uint8_t *chk = malloc(page);
    for (uint32_t i = 0; i < count; i += 7) {
        CHECK(pread(rfd, chk, page, (off_t)(ri[i] * page)) == (ssize_t)page);
        CHECK(memcmp(chk, (void *)(uintptr_t)(addr + i * page), page) == 0);
    }
    close(rfd);
    free(chk);
    memset((void *)(uintptr_t)addr, 0, size);
    OK(run_xfer(a, KVP_READ, lp, li, fp, ri, count, NULL));
    CHECK(t_verify((void *)(uintptr_t)addr, size, 42));
    /* POSIX alone has no notifications: NIXL's own status. */
    uint8_t rec[64];
    uint64_t len, cnt;
    CHECK_ST(kvp_notif_take(a, rec, sizeof rec, &len, &cnt), KVP_ERR_BACKEND);
    OK(kvp_prepped_release(a, lp));
    OK(kvp_prepped_release(a, fp));
    OK(kvp_deregister(a, freg));
    OK(kvp_deregister(a, reg));
    OK(kvp_file_close(fh));
    unlink(path);
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(addr));
}

/* ------------------------------------------------------------- restart ---- */

/* Peers are forked by a spawner process that itself never touches UCX: a process must
 * not fork after UCX started its threads (the child would inherit half a UCX). */
typedef struct spawner {
    int pid, to, from;
} spawner;

/* A peer that publishes metadata + address, then sleeps until killed. */
static void sleeper_main(int out, const char *name) {
    uint64_t a = nixl_agent(name, "UCX", NULL);
    uint64_t reg, base = alloc_reg(a, 1 << 20, &reg);
    uint64_t n;
    uint8_t *m = t_md(a, &n);
    t_send(out, m, n);
    t_send_u64(out, base);
    for (;;) pause();
}

static spawner start_spawner(const char *name) {
    int p2s[2], s2p[2];
    CHECK(pipe(p2s) == 0 && pipe(s2p) == 0);
    int pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(p2s[1]);
        close(s2p[0]);
        for (;;) {
            uint64_t cmd = t_recv_u64(p2s[0]);
            if (cmd == 0) _exit(0);
            if (cmd == 1) { /* start a sleeper, relay its metadata, address, pid */
                int c2s[2];
                CHECK(pipe(c2s) == 0);
                int child = fork();
                CHECK(child >= 0);
                if (child == 0) {
                    close(c2s[0]);
                    sleeper_main(c2s[1], name);
                }
                close(c2s[1]);
                uint64_t n;
                uint8_t *md = t_recv(c2s[0], &n);
                uint64_t addr = t_recv_u64(c2s[0]);
                close(c2s[0]);
                t_send(s2p[1], md, n);
                t_send_u64(s2p[1], addr);
                t_send_u64(s2p[1], (uint64_t)child);
                free(md);
            } else { /* kill a sleeper */
                int child = (int)t_recv_u64(p2s[0]);
                kill(child, SIGKILL);
                t_wait_child(child);
                t_send_u64(s2p[1], 1);
            }
        }
    }
    close(p2s[0]);
    close(s2p[1]);
    return (spawner){pid, p2s[1], s2p[0]};
}

static int start_sleeper(spawner *sp, uint8_t **md, uint64_t *mdlen, uint64_t *addr) {
    t_send_u64(sp->to, 1);
    *md = t_recv(sp->from, mdlen);
    *addr = t_recv_u64(sp->from);
    return (int)t_recv_u64(sp->from);
}

static void kill_sleeper(spawner *sp, int pid) {
    t_send_u64(sp->to, 2);
    t_send_u64(sp->to, (uint64_t)pid);
    CHECK(t_recv_u64(sp->from) == 1);
}

TEST_T(nixl_restarted_peer_not_allowed_until_invalidated, 60) {
    NEED_NIXL();
    spawner sp = start_spawner("restarting"); /* before this process starts UCX */
    uint64_t a = nixl_agent("main", "UCX", NULL);
    uint64_t reg, addr = alloc_reg(a, 1 << 20, &reg);
    uint8_t *md1, *md2, name[256];
    uint64_t l1, l2, r1, r2, nl;
    int pid1 = start_sleeper(&sp, &md1, &l1, &r1);
    OK(kvp_load_remote_metadata(a, md1, l1, name, sizeof name, &nl));
    OK(kvp_load_remote_metadata(a, md1, l1, name, sizeof name, &nl)); /* same: no-op */
    uint64_t lp = prep_pages(a, "", KVP_DRAM, addr, 0, 4096, 16);
    uint64_t rp1 = prep_pages(a, "restarting", KVP_DRAM, r1, 0, 4096, 16);
    uint32_t idx[4] = {0, 1, 2, 3};
    OK(run_xfer(a, KVP_WRITE, lp, idx, rp1, idx, 4, NULL));
    kill_sleeper(&sp, pid1);
    int pid2 = start_sleeper(&sp, &md2, &l2, &r2);
    CHECK_ST(kvp_load_remote_metadata(a, md2, l2, name, sizeof name, &nl), KVP_ERR_NOT_ALLOWED);
    CHECK_ERR_HAS("kvp_invalidate_remote");
    OK(kvp_invalidate_remote(a, "restarting"));
    uint64_t req;
    CHECK_ST(kvp_xfer_create(a, KVP_WRITE, lp, idx, rp1, idx, 4, NULL, 0, &req),
             KVP_ERR_NOT_FOUND); /* prepared for the old process */
    OK(kvp_load_remote_metadata(a, md2, l2, name, sizeof name, &nl));
    /* The old list stays dead even though the name is loaded again. */
    CHECK_ST(kvp_xfer_create(a, KVP_WRITE, lp, idx, rp1, idx, 4, NULL, 0, &req),
             KVP_ERR_NOT_FOUND);
    uint64_t rp2 = prep_pages(a, "restarting", KVP_DRAM, r2, 0, 4096, 16);
    OK(run_xfer(a, KVP_WRITE, lp, idx, rp2, idx, 4, NULL));
    kill_sleeper(&sp, pid2);
    t_send_u64(sp.to, 0);
    CHECK(t_wait_child(sp.pid) == 0);
    OK(kvp_prepped_release(a, rp1));
    OK(kvp_prepped_release(a, rp2));
    OK(kvp_prepped_release(a, lp));
    OK(kvp_deregister(a, reg));
    OK(kvp_agent_destroy(a));
    free(md1);
    free(md2);
    OK(kvp_mem_free(addr));
}

/* -------------------------------------------------------- waits, threads ---- */

typedef struct waiter {
    uint64_t agent, req;
    int64_t timeout;
    int32_t st;
    double took;
} waiter;

static void *notif_waiter(void *p) {
    waiter *w = p;
    double t0 = t_now();
    w->st = kvp_notif_wait(w->agent, w->timeout, NULL, 0, NULL);
    w->took = t_now() - t0;
    return NULL;
}

TEST(nixl_destroy_ends_a_blocked_wait) {
    NEED_NIXL();
    uint64_t a = nixl_agent("waiting", "UCX", NULL);
    waiter w = {a, 0, 10000, 0, 0};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, notif_waiter, &w) == 0);
    usleep(100 * 1000);
    OK(kvp_agent_destroy(a));
    pthread_join(th, NULL);
    CHECK_MSG(w.st == KVP_ERR_CANCELED || w.st == KVP_ERR_NOT_FOUND, "wait returned %s",
              kvp_status_name(w.st));
    CHECK_MSG(w.took < 2.0, "the wait took %.2f s", w.took);
    /* A wait with nothing to wait for times out as asked, without spinning. */
    a = nixl_agent("waiting2", "UCX", NULL);
    double t0 = t_now();
    clock_t c0 = clock();
    CHECK_ST(kvp_notif_wait(a, 300, NULL, 0, NULL), KVP_IN_PROG);
    double wall = t_now() - t0, cpu = (double)(clock() - c0) / CLOCKS_PER_SEC;
    CHECK_MSG(wall >= 0.29 && wall < 1.0, "waited %.3f s", wall);
    CHECK_MSG(cpu < 0.5 * wall, "the wait used %.3f s of CPU in %.3f s", cpu, wall);
    OK(kvp_agent_destroy(a));
}

typedef struct worker {
    uint64_t agent, lp, rp;
    uint32_t first;
    int rounds;
    int failures;
} worker;

static void *xfer_worker(void *p) {
    worker *w = p;
    uint32_t idx[4];
    for (int i = 0; i < 4; i++) idx[i] = w->first + (uint32_t)i;
    uint64_t req;
    if (kvp_xfer_create(w->agent, KVP_WRITE, w->lp, idx, w->rp, idx, 4, NULL, 0, &req)) {
        w->failures = -1;
        return NULL;
    }
    for (int r = 0; r < w->rounds; r++) {
        int32_t st = kvp_xfer_post(w->agent, req);
        if (st == KVP_IN_PROG) st = kvp_xfer_wait(w->agent, req, 10000, NULL, 0, NULL);
        if (st != KVP_SUCCESS) w->failures++;
    }
    if (kvp_xfer_release(w->agent, req)) w->failures++;
    return NULL;
}

TEST_T(nixl_threads_share_an_agent, 60) {
    NEED_NIXL();
    uint64_t a = nixl_agent("threads-a", "UCX", NULL), b = nixl_agent("threads-b", "UCX", NULL);
    uint64_t ra, rb, ma = alloc_reg(a, 1 << 20, &ra), mb = alloc_reg(b, 1 << 20, &rb);
    uint64_t ml;
    uint8_t *md = t_md(b, &ml);
    t_load(a, md, ml);
    free(md);
    uint64_t lp = prep_pages(a, "", KVP_DRAM, ma, 0, 4096, 256);
    uint64_t rp = prep_pages(a, "threads-b", KVP_DRAM, mb, 0, 4096, 256);
    t_fill((void *)(uintptr_t)ma, 1 << 20, 9);
    enum { N = 4 };
    pthread_t th[N];
    worker w[N];
    for (int i = 0; i < N; i++) {
        w[i] = (worker){a, lp, rp, (uint32_t)(i * 64), 200, 0};
        CHECK(pthread_create(&th[i], NULL, xfer_worker, &w[i]) == 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        CHECK_MSG(w[i].failures == 0, "worker %d: %d failures", i, w[i].failures);
    }
    for (int i = 0; i < N; i++)
        CHECK(memcmp((void *)(uintptr_t)(ma + (uint64_t)i * 64 * 4096),
                     (void *)(uintptr_t)(mb + (uint64_t)i * 64 * 4096), 4 * 4096) == 0);
    OK(kvp_prepped_release(a, lp));
    OK(kvp_prepped_release(a, rp));
    /* Destroy releases what is left (registrations, peers) by itself. */
    OK(kvp_agent_destroy(a));
    OK(kvp_agent_destroy(b));
    OK(kvp_mem_free(ma));
    OK(kvp_mem_free(mb));
}

typedef struct status_probe {
    uint64_t agent, req;
    int32_t st;
} status_probe;

static void *status_once(void *p) {
    status_probe *s = p;
    s->st = kvp_xfer_status(s->agent, s->req);
    return NULL;
}

/* The hot calls (post, status) find the request without the agent's table lock, through
 * a per-thread cache (engine_nixl_xfer.cpp): the cache must never answer for a request
 * that is released, another agent's, or a destroyed agent's, on this thread or another. */
TEST_T(nixl_hot_calls_refuse_released_and_foreign_requests, 60) {
    NEED_NIXL();
    uint64_t a = nixl_agent("hot-a", "UCX", NULL), b = nixl_agent("hot-b", "UCX", NULL);
    uint64_t ra, rb, ma = alloc_reg(a, 1 << 20, &ra), mb = alloc_reg(b, 1 << 20, &rb);
    uint64_t ml;
    uint8_t *md = t_md(b, &ml);
    t_load(a, md, ml);
    free(md);
    uint64_t lp = prep_pages(a, "", KVP_DRAM, ma, 0, 4096, 16);
    uint64_t rp = prep_pages(a, "hot-b", KVP_DRAM, mb, 0, 4096, 16);
    uint32_t li[2] = {0, 1}, ri[2] = {5, 9};
    uint64_t req;
    OK(kvp_xfer_create(a, KVP_WRITE, lp, li, rp, ri, 2, NULL, 0, &req));
    for (int round = 0; round < 20; round++) {
        t_fill((void *)(uintptr_t)ma, 2 * 4096, (uint32_t)round + 1);
        int32_t st = kvp_xfer_post(a, req);
        while (st == KVP_IN_PROG) st = kvp_xfer_status(a, req);
        OK(st);
        CHECK_MSG(memcmp((void *)(uintptr_t)ma, (void *)(uintptr_t)(mb + 5 * 4096), 4096) == 0 &&
                      memcmp((void *)(uintptr_t)(ma + 4096), (void *)(uintptr_t)(mb + 9 * 4096),
                             4096) == 0,
                  "round %d: the peer's pages differ", round);
    }
    OK(kvp_xfer_status(a, req)); /* done stays done */
    /* Through the other agent: not its request, cache or not. */
    CHECK_ST(kvp_xfer_status(b, req), KVP_ERR_NOT_FOUND);
    CHECK_ST(kvp_xfer_post(b, req), KVP_ERR_NOT_FOUND);
    /* Released: refused on this thread (whose cache holds it) and on another. */
    OK(kvp_xfer_release(a, req));
    CHECK_ST(kvp_xfer_status(a, req), KVP_ERR_NOT_FOUND);
    CHECK_ST(kvp_xfer_post(a, req), KVP_ERR_NOT_FOUND);
    CHECK_ERR_HAS("released");
    status_probe sp = {a, req, 0};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, status_once, &sp) == 0);
    pthread_join(th, NULL);
    CHECK_ST(sp.st, KVP_ERR_NOT_FOUND);
    /* A request never posted fails with its own message, not the one the failure before
     * it left on this thread (the hot calls do not clear the module's last error). */
    uint64_t fresh;
    OK(kvp_xfer_create(a, KVP_WRITE, lp, li, rp, ri, 2, NULL, 0, &fresh));
    CHECK_ST(kvp_xfer_post(a, req), KVP_ERR_NOT_FOUND);
    CHECK_ERR_HAS("released");
    CHECK_ST(kvp_xfer_status(a, fresh), KVP_ERR_NOT_POSTED);
    CHECK_ERR_HAS("never posted");
    OK(kvp_xfer_release(a, fresh));
    /* A live request, then its agent destroyed: the handle is gone, and a new agent
     * (whose object may take the old one's memory) does not see the cached request. */
    OK(kvp_xfer_create(a, KVP_WRITE, lp, li, rp, ri, 2, NULL, 0, &req));
    int32_t st = kvp_xfer_post(a, req);
    while (st == KVP_IN_PROG) st = kvp_xfer_status(a, req);
    OK(st);
    OK(kvp_agent_destroy(a));
    CHECK_ST(kvp_xfer_status(a, req), KVP_ERR_NOT_FOUND);
    uint64_t c = nixl_agent("hot-c", "UCX", NULL);
    CHECK_ST(kvp_xfer_status(c, req), KVP_ERR_NOT_FOUND);
    CHECK_ST(kvp_xfer_post(c, req), KVP_ERR_NOT_FOUND);
    OK(kvp_agent_destroy(c));
    OK(kvp_agent_destroy(b));
    OK(kvp_mem_free(ma));
    OK(kvp_mem_free(mb));
}
