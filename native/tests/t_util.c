/* t_util.c - helpers shared by the tests. */
#include <errno.h>
#include <libgen.h>
#include <unistd.h>

#include "t.h"

uint64_t t_agent(const char *name, const char *backends, const char *extra) {
    char params[1024];
    snprintf(params, sizeof params, "listen_host=127.0.0.1\n%s", extra ? extra : "");
    uint64_t a = 0;
    OK(kvp_agent_create(name, "builtin", backends ? backends : "UCX,POSIX", params, &a));
    return a;
}

uint8_t *t_md(uint64_t agent, uint64_t *len) {
    uint64_t n = 0;
    OK(kvp_local_metadata(agent, NULL, 0, &n));
    uint8_t *b = malloc(n);
    CHECK(b);
    uint64_t n2 = 0;
    OK(kvp_local_metadata(agent, b, n, &n2));
    CHECK(n2 == n);
    *len = n;
    return b;
}

void t_load(uint64_t agent, const uint8_t *blob, uint64_t len) {
    char name[300];
    uint64_t nl = 0;
    OK(kvp_load_remote_metadata(agent, blob, len, (uint8_t *)name, sizeof name, &nl));
}

static void io_all(int fd, void *p, size_t n, int wr) {
    size_t d = 0;
    while (d < n) {
        ssize_t k = wr ? write(fd, (char *)p + d, n - d) : read(fd, (char *)p + d, n - d);
        if (k < 0 && errno == EINTR) continue;
        CHECK_MSG(k > 0, "pipe %s failed (peer process died?)", wr ? "write" : "read");
        d += (size_t)k;
    }
}

void t_send(int fd, const void *p, uint64_t len) {
    io_all(fd, &len, sizeof len, 1);
    if (len) io_all(fd, (void *)p, (size_t)len, 1);
}

uint8_t *t_recv(int fd, uint64_t *len) {
    io_all(fd, len, sizeof *len, 0);
    uint8_t *b = malloc(*len ? *len : 1);
    CHECK(b);
    if (*len) io_all(fd, b, (size_t)*len, 0);
    return b;
}

void t_send_u64(int fd, uint64_t v) { io_all(fd, &v, sizeof v, 1); }
uint64_t t_recv_u64(int fd) {
    uint64_t v;
    io_all(fd, &v, sizeof v, 0);
    return v;
}

uint64_t t_prep_pages(uint64_t agent, const char *remote, uint64_t base, uint64_t page,
                      uint32_t n) {
    uint64_t *addrs = malloc(n * sizeof *addrs), *lens = malloc(n * sizeof *lens);
    CHECK(addrs && lens);
    for (uint32_t i = 0; i < n; i++) {
        addrs[i] = base + (uint64_t)i * page;
        lens[i] = page;
    }
    uint64_t dl = 0, pp = 0;
    OK(kvp_dlist_create(KVP_DRAM, addrs, lens, NULL, n, &dl));
    OK(kvp_prep_dlist(agent, remote, dl, &pp));
    OK(kvp_dlist_release(dl));
    free(addrs);
    free(lens);
    return pp;
}

static uint32_t xs(uint32_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

void t_fill(void *p, uint64_t len, uint32_t seed) {
    uint32_t s = seed * 2654435761u + 1;
    uint8_t *b = p;
    uint64_t i = 0;
    for (; i + 4 <= len; i += 4) {
        uint32_t v = xs(&s);
        memcpy(b + i, &v, 4);
    }
    for (; i < len; i++) b[i] = (uint8_t)xs(&s);
}

int t_verify(const void *p, uint64_t len, uint32_t seed) {
    uint32_t s = seed * 2654435761u + 1;
    const uint8_t *b = p;
    uint64_t i = 0;
    for (; i + 4 <= len; i += 4) {
        uint32_t v = xs(&s);
        if (memcmp(b + i, &v, 4) != 0) return 0;
    }
    for (; i < len; i++)
        if (b[i] != (uint8_t)xs(&s)) return 0;
    return 1;
}

/* ------------------------------------------------------------ peer process ---- */
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>

enum { P_FILL = 1, P_VERIFY, P_NOTIF, P_QUIT, P_DEREG, P_GRANT, P_REVOKE };

static void peer_main(int fd, const char *name, const char *backends, const char *params,
                      uint64_t size, int anon) {
    uint64_t a = t_agent(name, backends, params);
    uint64_t base = 0;
    int vram = anon == 2;
    uint8_t *host = NULL; /* VRAM: staging for fill/verify */
    if (vram) {
        OK(kvp_mem_alloc(KVP_VRAM, 0, size, &base));
        host = calloc(1, size);
        CHECK(host);
        OK(kvp_mem_copy(KVP_VRAM, 0, base, KVP_DRAM, 0, (uint64_t)(uintptr_t)host, size));
    } else if (anon == 1) {
        void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHECK(m != MAP_FAILED);
        base = (uint64_t)(uintptr_t)m;
    } else {
        OK(kvp_mem_alloc(KVP_DRAM,
                         anon == 3 ? KVP_DRAM_PRIVATE : anon == 4 ? KVP_DRAM_SPARSE : 0, size,
                         &base));
    }
    if (!vram && anon != 4) memset((void *)(uintptr_t)base, 0, size);
    uint64_t reg, dev0 = 0;
    OK(kvp_register(a, vram ? KVP_VRAM : KVP_DRAM, &base, &size, &dev0, 1, NULL, &reg));
    uint64_t mdlen;
    uint8_t *md = t_md(a, &mdlen);
    t_send(fd, md, mdlen);
    free(md);
    t_send_u64(fd, base);
    for (;;) {
        uint64_t cmd;
        ssize_t k = read(fd, &cmd, sizeof cmd);
        if (k != (ssize_t)sizeof cmd) break;
        if (cmd == P_QUIT) break;
        uint64_t off = t_recv_u64(fd), len = t_recv_u64(fd), seed = t_recv_u64(fd);
        if (cmd == P_FILL && vram) {
            t_fill(host, len, (uint32_t)seed);
            OK(kvp_mem_copy(KVP_VRAM, 0, base + off, KVP_DRAM, 0, (uint64_t)(uintptr_t)host, len));
            t_send_u64(fd, 1);
        } else if (cmd == P_VERIFY && vram) {
            OK(kvp_mem_copy(KVP_DRAM, 0, (uint64_t)(uintptr_t)host, KVP_VRAM, 0, base + off, len));
            t_send_u64(fd, (uint64_t)t_verify(host, len, (uint32_t)seed));
        } else if (cmd == P_FILL) {
            t_fill((void *)(uintptr_t)(base + off), len, (uint32_t)seed);
            t_send_u64(fd, 1);
        } else if (cmd == P_VERIFY) {
            t_send_u64(fd, (uint64_t)t_verify((void *)(uintptr_t)(base + off), len, (uint32_t)seed));
        } else if (cmd == P_DEREG && !vram) {
            /* Deregister and free the buffer, then put other memory at the same address
             * (what a reused heap looks like), filled with seed. */
            OK(kvp_deregister(a, reg));
            reg = 0;
            if (anon == 1) munmap((void *)(uintptr_t)base, size);
            else OK(kvp_mem_free(base));
            void *m = mmap((void *)(uintptr_t)base, size, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
            CHECK(m == (void *)(uintptr_t)base);
            anon = 1; /* munmap at the end */
            t_fill(m, size, (uint32_t)seed);
            t_send_u64(fd, 1);
        } else if (cmd == P_GRANT) {
            /* seed: access; then the grantee's metadata (loaded if needed). */
            uint64_t bl;
            uint8_t *blob = t_recv(fd, &bl);
            char nm[300];
            uint64_t nl = 0;
            int32_t ls = kvp_load_remote_metadata(a, blob, bl, (uint8_t *)nm, sizeof nm, &nl);
            CHECK(ls == KVP_SUCCESS);
            nm[nl] = '\0';
            free(blob);
            uint64_t addr = base + off, g = 0, dev = 0;
            int32_t gs = kvp_grant(a, nm, vram ? KVP_VRAM : KVP_DRAM, &addr, &len, &dev, 1,
                                   (uint32_t)seed, 0, &g);
            t_send_u64(fd, (uint64_t)(uint32_t)gs);
            t_send_u64(fd, g);
        } else if (cmd == P_REVOKE) {
            t_send_u64(fd, (uint64_t)(uint32_t)kvp_revoke(a, off));
        } else if (cmd == P_NOTIF) {
            uint64_t timeout = t_recv_u64(fd);
            int32_t st = kvp_notif_wait(a, (int64_t)timeout, NULL, 0, NULL);
            uint64_t verified = 0;
            if (st == KVP_SUCCESS && len && vram) {
                OK(kvp_mem_copy(KVP_DRAM, 0, (uint64_t)(uintptr_t)host, KVP_VRAM, 0, base + off, len));
                verified = (uint64_t)t_verify(host, len, (uint32_t)seed);
            } else if (st == KVP_SUCCESS && len) {
                verified = (uint64_t)t_verify((void *)(uintptr_t)(base + off), len, (uint32_t)seed);
            }
            uint8_t buf[4096];
            uint64_t bl = 0, cnt = 0;
            if (st == KVP_SUCCESS) OK(kvp_notif_take(a, buf, sizeof buf, &bl, &cnt));
            t_send_u64(fd, cnt);
            t_send_u64(fd, verified);
            t_send(fd, buf, bl);
        }
    }
    if (reg) OK(kvp_deregister(a, reg));
    OK(kvp_agent_destroy(a));
    if (anon == 1) munmap((void *)(uintptr_t)base, size);
    else OK(kvp_mem_free(base));
    free(host);
    close(fd);
    exit(0);
}

static void peer_fork(t_peer *p, const char *name, const char *backends, const char *params,
                      uint64_t size, int anon, int gated) {
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    fflush(stdout);
    fflush(stderr);
    int pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(sv[0]);
        if (gated) {
            char go;
            if (read(sv[1], &go, 1) != 1) exit(0); /* never started */
        }
        peer_main(sv[1], name, backends, params, size, anon);
    }
    close(sv[1]);
    p->pid = pid;
    p->fd = sv[0];
    p->size = size;
    p->md = NULL;
    if (!gated) {
        p->md = t_recv(p->fd, &p->mdlen);
        p->base = t_recv_u64(p->fd);
    }
}

void t_peer_start(t_peer *p, const char *name, const char *backends, const char *params,
                  uint64_t size, int anon) {
    peer_fork(p, name, backends, params, size, anon, 0);
}

void t_peer_fork_gated(t_peer *p, const char *name, const char *backends, const char *params,
                       uint64_t size, int anon) {
    peer_fork(p, name, backends, params, size, anon, 1);
}

void t_peer_go(t_peer *p) {
    char go = 1;
    CHECK(write(p->fd, &go, 1) == 1);
    p->md = t_recv(p->fd, &p->mdlen);
    p->base = t_recv_u64(p->fd);
}

static void cmd4(t_peer *p, uint64_t c, uint64_t off, uint64_t len, uint64_t seed) {
    t_send_u64(p->fd, c);
    t_send_u64(p->fd, off);
    t_send_u64(p->fd, len);
    t_send_u64(p->fd, seed);
}

void t_peer_fill(t_peer *p, uint64_t off, uint64_t len, uint32_t seed) {
    cmd4(p, P_FILL, off, len, seed);
    CHECK(t_recv_u64(p->fd) == 1);
}

int t_peer_verify(t_peer *p, uint64_t off, uint64_t len, uint32_t seed) {
    cmd4(p, P_VERIFY, off, len, seed);
    return (int)t_recv_u64(p->fd);
}

int t_peer_notif(t_peer *p, int timeout_ms, uint64_t off, uint64_t len, uint32_t seed,
                 int *verified, char *from, char *msg) {
    cmd4(p, P_NOTIF, off, len, seed);
    t_send_u64(p->fd, (uint64_t)timeout_ms);
    uint64_t cnt = t_recv_u64(p->fd);
    *verified = (int)t_recv_u64(p->fd);
    uint64_t bl;
    uint8_t *b = t_recv(p->fd, &bl);
    if (cnt > 0 && bl >= 8) {
        uint32_t nl, ml;
        memcpy(&nl, b, 4);
        memcpy(&ml, b + 4 + nl, 4);
        if (from) {
            memcpy(from, b + 4, nl);
            from[nl] = '\0';
        }
        if (msg) {
            memcpy(msg, b + 8 + nl, ml);
            msg[ml] = '\0';
        }
    }
    free(b);
    return (int)cnt;
}

void t_peer_dereg(t_peer *p, uint32_t seed) {
    cmd4(p, P_DEREG, 0, 0, seed);
    CHECK(t_recv_u64(p->fd) == 1);
}

void t_peer_xfer(uint64_t a, int op, const char *remote, uint64_t m, uint64_t loff, t_peer *p,
                 uint64_t roff, uint64_t page, uint32_t n) {
    uint64_t lp = t_prep_pages(a, "", m + loff, page, n);
    uint64_t rp = t_prep_pages(a, remote, p->base + roff, page, n);
    uint32_t *idx = malloc(n * sizeof *idx);
    CHECK(idx);
    for (uint32_t i = 0; i < n; i++) idx[i] = i;
    uint64_t req;
    OK(kvp_xfer_create(a, op, lp, idx, rp, idx, n, NULL, 0, &req));
    free(idx);
    int32_t st = kvp_xfer_post(a, req);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(a, req, 20000, NULL, 0, NULL);
    OK(st);
    OK(kvp_xfer_release(a, req));
    OK(kvp_prepped_release(a, lp));
    OK(kvp_prepped_release(a, rp));
}

uint64_t t_peer_grant(t_peer *p, const uint8_t *md, uint64_t mdlen, uint64_t off, uint64_t len,
                      uint32_t access) {
    cmd4(p, P_GRANT, off, len, access);
    t_send(p->fd, md, mdlen);
    int32_t st = (int32_t)(uint32_t)t_recv_u64(p->fd);
    uint64_t g = t_recv_u64(p->fd);
    CHECK_MSG(st == KVP_SUCCESS, "the peer's kvp_grant returned %s", kvp_status_name(st));
    return g;
}

void t_peer_revoke(t_peer *p, uint64_t grant) {
    cmd4(p, P_REVOKE, grant, 0, 0);
    CHECK((int32_t)(uint32_t)t_recv_u64(p->fd) == KVP_SUCCESS);
}

void t_peer_stop(t_peer *p) {
    t_send_u64(p->fd, P_QUIT);
    int rc = t_wait_child(p->pid);
    close(p->fd);
    free(p->md);
    p->md = NULL;
    CHECK_MSG(rc == 0, "peer process exited with %d", rc);
}

uint64_t t_info_num(uint64_t agent, const char *key) {
    char buf[8192];
    uint64_t len = 0;
    OK(kvp_agent_info(agent, (uint8_t *)buf + 1, sizeof buf - 2, &len));
    buf[0] = '\n'; /* so that the first line matches like the others */
    buf[1 + (len < sizeof buf - 2 ? len : sizeof buf - 2)] = '\0';
    char k[80];
    snprintf(k, sizeof k, "\n%s=", key);
    const char *p = strstr(buf, k);
    CHECK_MSG(p, "no %s in agent info", key);
    return strtoull(p + strlen(k), NULL, 10);
}

void t_use_fake_cudart(char *lib, size_t cap) {
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    CHECK(n > 0);
    exe[n] = '\0';
    snprintf(lib, cap, "%s/fake/libcudart.so", dirname(exe));
    CHECK_MSG(access(lib, R_OK) == 0, "%s is missing (make test builds it)", lib);
    setenv("KVPORT_CUDART", lib, 1);
}
