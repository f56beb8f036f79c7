/* test_locality.c - locality is proven, not claimed (issue 13.3): a blob from the network
 * that copies another agent's token, boot id, pid namespace, pid and start time never
 * makes that agent "same process" or "same host" for us; until the target answers the
 * challenge with the secret of the agent page it claims, it is reached over TCP. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hostid.h"
#include "metadata.h"
#include "t.h"
#include "wire.h"

static void send_all(int fd, const void *p, size_t n) {
    size_t d = 0;
    while (d < n) {
        ssize_t k = send(fd, (const char *)p + d, n - d, MSG_NOSIGNAL);
        if (k <= 0) return;
        d += (size_t)k;
    }
}

static int recv_all(int fd, void *p, size_t n) {
    size_t d = 0;
    while (d < n) {
        ssize_t k = recv(fd, (char *)p + d, n - d, 0);
        if (k <= 0) return 0;
        d += (size_t)k;
    }
    return 1;
}

/* A fake target: says yes to any HELLO, answers PROVE with a tag it cannot know, takes
 * WRITEs (discarding the bytes) and acknowledges them. */
typedef struct fake {
    int lfd;
    uint16_t port;
    int writes, proves;
    pthread_t th;
} fake;

static void *fake_main(void *arg) {
    fake *f = arg;
    int fd = accept(f->lfd, NULL, NULL);
    if (fd < 0) return NULL;
    static uint8_t body[1 << 16], sink[1 << 16];
    for (;;) {
        uint8_t hb[W_HDR];
        if (!recv_all(fd, hb, W_HDR)) break;
        w_hdr h;
        const char *why;
        if (!w_hdr_get(hb, &h, &why) || h.body_len > sizeof body) break;
        if (h.body_len && !recv_all(fd, body, h.body_len)) break;
        uint64_t left = h.payload_len;
        while (left) {
            size_t k = left < sizeof sink ? (size_t)left : sizeof sink;
            if (!recv_all(fd, sink, k)) break;
            left -= k;
        }
        uint8_t out[W_HDR + 16];
        memset(out, 0, sizeof out);
        if (h.op == W_HELLO) {
            w_hdr r = {W_HELLO_OK, 0, 0, 0, 0, 0};
            w_hdr_put(out, &r);
            send_all(fd, out, W_HDR);
        } else if (h.op == W_PROVE) {
            f->proves++;
            w_hdr r = {W_PROVE_ACK, 0, 16, 0, 0, 0};
            w_hdr_put(out, &r);
            send_all(fd, out, W_HDR + 16); /* a guess: zeros */
        } else if (h.op == W_WRITE) {
            f->writes++;
            if (h.flags & W_FLAG_ACK) {
                w_hdr r = {W_WRITE_ACK, 0, 0, 0, h.req_id, 0};
                w_hdr_put(out, &r);
                send_all(fd, out, W_HDR);
            }
        }
    }
    close(fd);
    return NULL;
}

static void fake_start(fake *f) {
    memset(f, 0, sizeof *f);
    f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(f->lfd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(f->lfd, 4) == 0);
    socklen_t sl = sizeof sa;
    CHECK(getsockname(f->lfd, (struct sockaddr *)&sa, &sl) == 0);
    f->port = ntohs(sa.sin_port);
    CHECK(pthread_create(&f->th, NULL, fake_main, f) == 0);
}

static void fake_stop(fake *f) {
    shutdown(f->lfd, SHUT_RDWR);
    pthread_join(f->th, NULL);
    close(f->lfd);
}

/* A copy of a genuine blob under another name, pointing at the fake's port, with a
 * process tag nobody outside the library can compute (random here) and a fixed
 * checksum: what an attacker who saw the victim's metadata can build. */
static uint8_t *forge(const uint8_t *blob, uint64_t len, const char *name, uint16_t port,
                      const uint8_t *token, uint64_t *out_len) {
    kvp_md md;
    OK(kvp_md_decode(blob, len, &md));
    snprintf(md.name, sizeof md.name, "%s", name);
    snprintf(md.host, sizeof md.host, "127.0.0.1");
    md.port = port;
    if (token) memcpy(md.token, token, 16);
    kvp_buf b = {0};
    kvp_md_encode(&md, &b);
    CHECK(!b.oom && b.len > 24);
    kvp_random_bytes(b.p + b.len - 24, 16);
    kvp_put_u64(b.p + b.len - 8, kvp_fnv1a(KVP_FNV_OFFSET, b.p, b.len - 8));
    kvp_md_free(&md);
    *out_len = b.len;
    return b.p;
}

/* Writes 16 pages from a fresh buffer to the forged agent; returns the status. */
static int32_t write_to(uint64_t a, const char *remote, uint64_t rbase, uint64_t *mem) {
    const uint64_t size = 1 << 20;
    uint64_t m, reg;
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    t_fill((void *)(uintptr_t)m, size, 66);
    OK(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    uint64_t lp = t_prep_pages(a, "", m, 64 << 10, 16), rp = t_prep_pages(a, remote, rbase, 64 << 10, 16);
    uint32_t idx[16];
    for (uint32_t i = 0; i < 16; i++) idx[i] = i;
    uint64_t req;
    OK(kvp_xfer_create(a, KVP_WRITE, lp, idx, rp, idx, 16, NULL, 0, &req));
    int32_t st = kvp_xfer_post(a, req);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(a, req, 10000, NULL, 0, NULL);
    OK(kvp_xfer_release(a, req));
    OK(kvp_prepped_release(a, lp));
    OK(kvp_prepped_release(a, rp));
    OK(kvp_deregister(a, reg));
    *mem = m;
    return st;
}

TEST(forged_same_host_blob_is_reached_over_tcp) {
    t_peer v;
    t_peer_start(&v, "V", NULL, NULL, 1 << 20, 0);
    t_peer_fill(&v, 0, 1 << 20, 5);
    fake f;
    fake_start(&f);
    uint64_t a = t_agent("A", NULL, NULL), fl, m;
    uint8_t *fb = forge(v.md, v.mdlen, "forged", f.port, NULL, &fl);
    t_load(a, fb, fl);
    OK(write_to(a, "forged", v.base, &m)); /* the fake acknowledged it */
    CHECK_MSG(t_info_num(a, "posts_tcp") == 1 && t_info_num(a, "posts_mem") == 0 &&
                  t_info_num(a, "posts_cma") == 0,
              "the forged peer was not reached over TCP");
    CHECK(f.proves == 1 && f.writes >= 1); /* the pages went to the fake, merged */
    CHECK_MSG(t_peer_verify(&v, 0, 1 << 20, 5), "the victim's memory was written");
    /* The genuine blob of the victim is proven and takes the same-host path. */
    t_load(a, v.md, v.mdlen);
    uint64_t m2;
    OK(write_to(a, "V", v.base, &m2));
    CHECK(t_info_num(a, "posts_mem") == 1);
    CHECK(t_peer_verify(&v, 0, 1 << 20, 66));
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(m));
    OK(kvp_mem_free(m2));
    fake_stop(&f);
    free(fb);
    t_peer_stop(&v);
}

TEST(forged_same_process_blob_cannot_make_a_peer_local) {
    fake f;
    fake_start(&f);
    uint64_t h = t_agent("H", NULL, NULL), b = t_agent("B", NULL, NULL), bm, breg;
    const uint64_t size = 1 << 20;
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &bm));
    t_fill((void *)(uintptr_t)bm, size, 5);
    OK(kvp_register(b, KVP_DRAM, &bm, &size, NULL, 1, NULL, &breg));
    uint64_t bl, hl, gl, ml, m;
    uint8_t *bblob = t_md(b, &bl), *hblob = t_md(h, &hl);
    /* B's identity (token, pid, start time) under another name, at the fake's port. */
    uint8_t *ghost = forge(bblob, bl, "ghost", f.port, NULL, &gl);
    t_load(h, ghost, gl);
    OK(write_to(h, "ghost", bm, &m));
    CHECK_MSG(t_info_num(h, "posts_tcp") == 1 && t_info_num(h, "posts_mem") == 0,
              "the forged blob was treated as a peer in this process");
    CHECK_MSG(t_verify((void *)(uintptr_t)bm, size, 5), "B's memory was written");
    /* A copy of H's own metadata under another name: refused outright. */
    uint8_t *mirror = forge(hblob, hl, "mirror", f.port, NULL, &ml);
    char nm[300];
    uint64_t nl;
    CHECK_ST(kvp_load_remote_metadata(h, mirror, ml, (uint8_t *)nm, sizeof nm, &nl),
             KVP_ERR_NOT_ALLOWED);
    CHECK_ERR_HAS("token of this agent");
    /* B's genuine blob is same-process (its process tag verifies here). */
    t_load(h, bblob, bl);
    uint64_t m2;
    OK(write_to(h, "B", bm, &m2));
    CHECK(t_info_num(h, "posts_mem") == 1);
    CHECK(t_verify((void *)(uintptr_t)bm, size, 66));
    OK(kvp_agent_destroy(h));
    OK(kvp_agent_destroy(b));
    OK(kvp_mem_free(bm));
    OK(kvp_mem_free(m));
    OK(kvp_mem_free(m2));
    fake_stop(&f);
    free(bblob);
    free(hblob);
    free(ghost);
    free(mirror);
}
