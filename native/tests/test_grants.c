/* test_grants.c - pages, not buffers (issue 13.1): with page_grants=on a remote agent
 * reaches only the ranges granted to it, checked when each piece is served on every
 * path: a hand-written TCP client with a stolen token (WRITE outside its grants, READ of
 * ungranted memory), same-host initiators (memfd and cross-memory attach), a peer in
 * the same process; expiry, revocation, registration lifetime, limits. Every refusal
 * is NIXL_ERR_NOT_ALLOWED with the agent, address and length, and leaves the bytes
 * untouched. */
#include <arpa/inet.h>
#include <netinet/in.h>
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
        CHECK(k > 0);
        d += (size_t)k;
    }
}

static void recv_all(int fd, void *p, size_t n) {
    size_t d = 0;
    while (d < n) {
        ssize_t k = recv(fd, (char *)p + d, n - d, 0);
        CHECK_MSG(k > 0, "recv: %s", k == 0 ? "closed" : strerror(errno));
        d += (size_t)k;
    }
}

static void frame(int fd, uint8_t op, uint16_t flags, uint64_t req, const void *body,
                  uint32_t blen, uint64_t plen) {
    uint8_t h[W_HDR];
    w_hdr wh = {op, flags, blen, 0, req, plen};
    w_hdr_put(h, &wh);
    send_all(fd, h, W_HDR);
    if (blen) send_all(fd, body, blen);
}

static void read_frame(int fd, w_hdr *h, char *body, size_t cap) {
    uint8_t b[W_HDR];
    recv_all(fd, b, W_HDR);
    const char *why;
    CHECK(w_hdr_get(b, h, &why));
    CHECK(h->body_len < cap);
    if (h->body_len) recv_all(fd, body, h->body_len);
    body[h->body_len] = 0;
}

/* Connects to the agent's listener and says HELLO with its token (stolen from its
 * metadata) and `who` as our token. */
static int client(const kvp_md *victim, const uint8_t who[16]) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(victim->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    uint8_t hb[33 + 4];
    memcpy(hb, victim->token, 16);
    memcpy(hb + 16, who, 16);
    hb[32] = 4;
    memcpy(hb + 33, "evil", 4);
    frame(fd, W_HELLO, 0, 0, hb, sizeof hb, 0);
    w_hdr h;
    char m[2048];
    read_frame(fd, &h, m, sizeof m);
    CHECK(h.op == W_HELLO_OK);
    return fd;
}

/* A blob for a made-up agent on another host with a chosen token. */
static uint8_t *blob_of(const char *name, const uint8_t token[16], uint64_t *len) {
    kvp_md md;
    memset(&md, 0, sizeof md);
    snprintf(md.name, sizeof md.name, "%s", name);
    memcpy(md.token, token, 16);
    snprintf(md.host, sizeof md.host, "127.0.0.1");
    md.port = 9;
    md.caps = KVP_CAP_TCP;
    md.page_fd = -1;
    kvp_buf b = {0};
    kvp_md_encode(&md, &b);
    CHECK(!b.oom);
    *len = b.len;
    return b.p;
}

static int all_zero(const uint8_t *p, uint64_t n) {
    for (uint64_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

TEST(tcp_writes_and_reads_only_where_granted) {
    uint64_t v = t_agent("V", NULL, "page_grants=on\n"), m, size = 64 << 10, reg;
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    uint8_t *mem = (uint8_t *)(uintptr_t)m;
    memset(mem, 0, size);
    OK(kvp_register(v, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    uint8_t stok[16], etok[16];
    kvp_random_bytes(stok, 16);
    kvp_random_bytes(etok, 16);
    uint64_t sl;
    uint8_t *sblob = blob_of("S", stok, &sl);
    t_load(v, sblob, sl);
    /* S may write page 0 and read page 1; nothing else. */
    uint64_t a0 = m, a1 = m + 4096, l = 4096, g0, g1;
    OK(kvp_grant(v, "S", KVP_DRAM, &a0, &l, NULL, 1, KVP_GRANT_WRITE, 0, &g0));
    OK(kvp_grant(v, "S", KVP_DRAM, &a1, &l, NULL, 1, KVP_GRANT_READ, 0, &g1));
    memset(mem + 4096, 0x77, 4096);
    uint64_t bl;
    uint8_t *blob = t_md(v, &bl);
    kvp_md md;
    OK(kvp_md_decode(blob, bl, &md));
    static uint8_t data[8192];
    memset(data, 0xAB, sizeof data);
    w_hdr h;
    char msg[2048];
    uint8_t addr[8];
    /* A stranger holding the stolen token: HELLO passes, every WRITE is refused. */
    int fd = client(&md, etok);
    kvp_put_u64(addr, m);
    frame(fd, W_WRITE, W_FLAG_ACK, 1, addr, 8, 4096);
    send_all(fd, data, 4096);
    read_frame(fd, &h, msg, sizeof msg);
    CHECK_MSG(h.op == W_WRITE_ACK && h.status == KVP_ERR_NOT_ALLOWED, "status %s",
              kvp_status_name(h.status));
    char want[128];
    snprintf(want, sizeof want, "4096 bytes at 0x%llx", (unsigned long long)m);
    CHECK_MSG(strstr(msg, "agent V refused") && strstr(msg, want) && strstr(msg, "evil") &&
                  strstr(msg, "not granted"),
              "message: %s", msg);
    CHECK(all_zero(mem, 4096));
    /* ... and its READ of granted-to-someone-else memory too, with no data. */
    uint8_t rq[8 + 16];
    kvp_put_u32(rq, 0);
    kvp_put_u32(rq + 4, 1);
    kvp_put_u64(rq + 8, m + 4096);
    kvp_put_u64(rq + 16, 4096);
    frame(fd, W_READ_REQ, W_FLAG_ACK, 2, rq, sizeof rq, 0);
    read_frame(fd, &h, msg, sizeof msg);
    CHECK_MSG(h.op == W_READ_ERR && h.status == KVP_ERR_NOT_ALLOWED && strstr(msg, "not granted"),
              "op %u status %s: %s", h.op, kvp_status_name(h.status), msg);
    close(fd);
    /* S (its token): its page 0 only, and straddling into page 1 is refused. */
    fd = client(&md, stok);
    frame(fd, W_WRITE, W_FLAG_ACK, 3, addr, 8, 4096);
    send_all(fd, data, 4096);
    read_frame(fd, &h, msg, sizeof msg);
    CHECK(h.op == W_WRITE_ACK && h.status == KVP_SUCCESS);
    CHECK(mem[0] == 0xAB && mem[4095] == 0xAB);
    kvp_put_u64(addr, m + 2048);
    frame(fd, W_WRITE, W_FLAG_ACK, 4, addr, 8, 4096);
    send_all(fd, data, 4096);
    read_frame(fd, &h, msg, sizeof msg);
    CHECK(h.op == W_WRITE_ACK && h.status == KVP_ERR_NOT_ALLOWED);
    CHECK(mem[4096] == 0x77 && mem[4096 + 2047] == 0x77);
    /* Read page 1 (granted READ): data, then READ_END. Write into it: refused. */
    frame(fd, W_READ_REQ, W_FLAG_ACK, 5, rq, sizeof rq, 0);
    read_frame(fd, &h, msg, sizeof msg);
    CHECK(h.op == W_READ_DATA && h.payload_len == 4096);
    static uint8_t got[4096];
    recv_all(fd, got, 4096);
    CHECK(got[0] == 0x77 && got[4095] == 0x77);
    read_frame(fd, &h, msg, sizeof msg);
    CHECK(h.op == W_READ_END && h.status == KVP_SUCCESS);
    kvp_put_u64(addr, m + 4096);
    frame(fd, W_WRITE, W_FLAG_ACK, 6, addr, 8, 4096);
    send_all(fd, data, 4096);
    read_frame(fd, &h, msg, sizeof msg);
    CHECK(h.op == W_WRITE_ACK && h.status == KVP_ERR_NOT_ALLOWED);
    CHECK(mem[4096] == 0x77);
    /* Revoked: page 0 is refused from now on; the connection goes on. */
    OK(kvp_revoke(v, g0));
    CHECK_ST(kvp_revoke(v, g0), KVP_ERR_NOT_FOUND);
    memset(mem, 0, 4096);
    kvp_put_u64(addr, m);
    frame(fd, W_WRITE, W_FLAG_ACK, 7, addr, 8, 4096);
    send_all(fd, data, 4096);
    read_frame(fd, &h, msg, sizeof msg);
    CHECK(h.op == W_WRITE_ACK && h.status == KVP_ERR_NOT_ALLOWED);
    CHECK(all_zero(mem, 4096));
    close(fd);
    char info[8192];
    uint64_t il;
    OK(kvp_agent_info(v, (uint8_t *)info, sizeof info - 1, &il));
    info[il] = '\0';
    CHECK(strstr(info, "page_grants=on\n") && strstr(info, "grants=1\n"));
    OK(kvp_revoke(v, g1));
    OK(kvp_agent_destroy(v));
    OK(kvp_mem_free(m));
    free(sblob);
    free(blob);
    kvp_md_free(&md);
}

/* Same host: the initiator's engine checks the grants the target publishes. */
static void same_host_case(int anon) {
    t_peer p;
    const uint64_t size = 1 << 20, pg = 64 << 10;
    t_peer_start(&p, "T", NULL, "page_grants=on\n", size, anon);
    t_peer_fill(&p, 0, pg, 40);
    t_peer_fill(&p, 5 * pg, pg, 45);
    uint64_t a = t_agent("I", NULL, NULL), m, reg;
    t_load(a, p.md, p.mdlen);
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    uint8_t *mem = (uint8_t *)(uintptr_t)m;
    t_fill(mem, pg, 90);
    t_fill(mem + pg, pg, 91);
    OK(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    uint64_t ml;
    uint8_t *mine = t_md(a, &ml);
    uint64_t g = t_peer_grant(&p, mine, ml, 0, pg, KVP_GRANT_WRITE); /* page 0, WRITE */
    uint64_t lp = t_prep_pages(a, "", m, pg, 16), rp = t_prep_pages(a, "T", p.base, pg, 16);
    uint32_t i0 = 0, i1 = 1, i5 = 5;
    uint64_t ok, bad, rd;
    OK(kvp_xfer_create(a, KVP_WRITE, lp, &i0, rp, &i0, 1, NULL, 0, &ok));
    OK(kvp_xfer_create(a, KVP_WRITE, lp, &i1, rp, &i5, 1, NULL, 0, &bad));
    OK(kvp_xfer_create(a, KVP_READ, lp, &i1, rp, &i0, 1, NULL, 0, &rd));
    int32_t st = kvp_xfer_post(a, ok);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(a, ok, 5000, NULL, 0, NULL);
    OK(st);
    CHECK(t_peer_verify(&p, 0, pg, 90));
    st = kvp_xfer_post(a, bad);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(a, bad, 5000, NULL, 0, NULL);
    CHECK_ST(st, KVP_ERR_NOT_ALLOWED);
    char want[128];
    snprintf(want, sizeof want, "65536 bytes at 0x%llx", (unsigned long long)(p.base + 5 * pg));
    CHECK_ERR_HAS(want);
    CHECK_ERR_HAS("does not grant agent I");
    CHECK_MSG(t_peer_verify(&p, 5 * pg, pg, 45), "an ungranted page was written");
    /* Granted for WRITE only: a READ of it is refused as well, nothing lands here. */
    st = kvp_xfer_post(a, rd);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(a, rd, 5000, NULL, 0, NULL);
    CHECK_ST(st, KVP_ERR_NOT_ALLOWED);
    CHECK(t_verify(mem + pg, pg, 91));
    char info[8192];
    uint64_t il;
    OK(kvp_agent_info(a, (uint8_t *)info, sizeof info - 1, &il));
    info[il] = '\0';
    CHECK_MSG(strstr(info, anon ? "posts_cma=" : "posts_mem="), "path:\n%s", info);
    CHECK_MSG(strstr(info, "posts_tcp=0\n"), "not on the same-host path:\n%s", info);
    /* After the revoke, the granted page is refused too. */
    t_peer_revoke(&p, g);
    t_fill(mem, pg, 92);
    st = kvp_xfer_post(a, ok);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(a, ok, 5000, NULL, 0, NULL);
    CHECK_ST(st, KVP_ERR_NOT_ALLOWED);
    CHECK(t_peer_verify(&p, 0, pg, 90));
    OK(kvp_xfer_release(a, ok));
    OK(kvp_xfer_release(a, bad));
    OK(kvp_xfer_release(a, rd));
    OK(kvp_prepped_release(a, lp));
    OK(kvp_prepped_release(a, rp));
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(m));
    free(mine);
    t_peer_stop(&p);
}

TEST(same_host_memfd_writes_only_where_granted) { same_host_case(0); }
TEST(same_host_cma_writes_only_where_granted) { same_host_case(1); }

/* A peer in this process: checked under its grant lock at copy time. */
TEST(same_process_peer_writes_only_where_granted) {
    uint64_t h = t_agent("H", NULL, NULL), b = t_agent("B", NULL, "page_grants=on\n");
    const uint64_t size = 64 << 10;
    uint64_t bm, breg, hm, hreg;
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &bm));
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &hm));
    memset((void *)(uintptr_t)bm, 0, size);
    t_fill((void *)(uintptr_t)hm, size, 3);
    OK(kvp_register(b, KVP_DRAM, &bm, &size, NULL, 1, NULL, &breg));
    OK(kvp_register(h, KVP_DRAM, &hm, &size, NULL, 1, NULL, &hreg));
    uint64_t hl, bl;
    uint8_t *hb = t_md(h, &hl), *bb = t_md(b, &bl);
    t_load(b, hb, hl);
    t_load(h, bb, bl);
    uint64_t a0 = bm, l = 4096, g;
    OK(kvp_grant(b, "H", KVP_DRAM, &a0, &l, NULL, 1, KVP_GRANT_WRITE, 0, &g));
    uint64_t lp = t_prep_pages(h, "", hm, 4096, 16), rp = t_prep_pages(h, "B", bm, 4096, 16);
    uint32_t i0 = 0, i3 = 3;
    uint64_t ok, bad;
    OK(kvp_xfer_create(h, KVP_WRITE, lp, &i0, rp, &i0, 1, NULL, 0, &ok));
    OK(kvp_xfer_create(h, KVP_WRITE, lp, &i3, rp, &i3, 1, NULL, 0, &bad));
    int32_t st = kvp_xfer_post(h, ok);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(h, ok, 5000, NULL, 0, NULL);
    OK(st);
    CHECK(memcmp((void *)(uintptr_t)bm, (void *)(uintptr_t)hm, 4096) == 0);
    st = kvp_xfer_post(h, bad);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(h, bad, 5000, NULL, 0, NULL);
    CHECK_ST(st, KVP_ERR_NOT_ALLOWED);
    CHECK_ERR_HAS("does not grant agent H");
    CHECK(all_zero((uint8_t *)(uintptr_t)bm + 3 * 4096, 4096));
    OK(kvp_xfer_release(h, ok));
    OK(kvp_xfer_release(h, bad));
    OK(kvp_prepped_release(h, lp));
    OK(kvp_prepped_release(h, rp));
    OK(kvp_agent_destroy(h));
    OK(kvp_agent_destroy(b));
    OK(kvp_mem_free(bm));
    OK(kvp_mem_free(hm));
    free(hb);
    free(bb);
}

/* The API: enforcement must be asked for; grants are bound to a loaded peer and lie in
 * registered memory; they expire, die with their registration, and are bounded. */
TEST(grant_lifetimes_and_refusals) {
    uint64_t off = t_agent("O", NULL, NULL), v = t_agent("V", NULL, "page_grants=on\nmax_grants=4\n");
    uint64_t m, size = 64 << 10, reg, g, a0, l = 4096;
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    OK(kvp_register(v, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    uint8_t tok[16];
    kvp_random_bytes(tok, 16);
    uint64_t sl;
    uint8_t *sblob = blob_of("S", tok, &sl);
    a0 = m;
    CHECK_ST(kvp_grant(off, "S", KVP_DRAM, &a0, &l, NULL, 1, KVP_GRANT_WRITE, 0, &g),
             KVP_ERR_INVALID_PARAM);
    CHECK_ERR_HAS("page_grants=on");
    CHECK_ST(kvp_grant(v, "S", KVP_DRAM, &a0, &l, NULL, 1, KVP_GRANT_WRITE, 0, &g),
             KVP_ERR_NOT_FOUND); /* not loaded */
    t_load(v, sblob, sl);
    uint64_t outside = m + size;
    CHECK_ST(kvp_grant(v, "S", KVP_DRAM, &outside, &l, NULL, 1, KVP_GRANT_WRITE, 0, &g),
             KVP_ERR_INVALID_PARAM);
    CHECK_ERR_HAS("does not lie inside memory registered");
    CHECK_ST(kvp_grant(v, "S", KVP_DRAM, &a0, &l, NULL, 1, 4, 0, &g), KVP_ERR_INVALID_PARAM);
    /* Expiry: 100 ms. */
    uint64_t bl;
    uint8_t *blob = t_md(v, &bl);
    kvp_md md;
    OK(kvp_md_decode(blob, bl, &md));
    OK(kvp_grant(v, "S", KVP_DRAM, &a0, &l, NULL, 1, KVP_GRANT_WRITE, 100, &g));
    int fd = client(&md, tok);
    static uint8_t data[4096];
    uint8_t addr[8];
    kvp_put_u64(addr, m);
    w_hdr h;
    char msg[2048];
    frame(fd, W_WRITE, W_FLAG_ACK, 1, addr, 8, 4096);
    send_all(fd, data, 4096);
    read_frame(fd, &h, msg, sizeof msg);
    CHECK(h.op == W_WRITE_ACK && h.status == KVP_SUCCESS);
    usleep(200000);
    frame(fd, W_WRITE, W_FLAG_ACK, 2, addr, 8, 4096);
    send_all(fd, data, 4096);
    read_frame(fd, &h, msg, sizeof msg);
    CHECK_MSG(h.op == W_WRITE_ACK && h.status == KVP_ERR_NOT_ALLOWED, "an expired grant let it in");
    OK(kvp_revoke(v, g));
    /* The limit: 4 ranges at most. */
    uint64_t ad[5], ln[5];
    for (int i = 0; i < 5; i++) {
        ad[i] = m + (uint64_t)i * 4096;
        ln[i] = 4096;
    }
    CHECK_ST(kvp_grant(v, "S", KVP_DRAM, ad, ln, NULL, 5, KVP_GRANT_WRITE, 0, &g),
             KVP_ERR_NOT_ALLOWED);
    CHECK_ERR_HAS("max_grants=4");
    OK(kvp_grant(v, "S", KVP_DRAM, ad, ln, NULL, 4, KVP_GRANT_WRITE, 0, &g));
    /* Deregistered: the grant's ranges go with it (a new registration there is not
     * reachable through the old grant). */
    OK(kvp_deregister(v, reg));
    OK(kvp_register(v, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    frame(fd, W_WRITE, W_FLAG_ACK, 3, addr, 8, 4096);
    send_all(fd, data, 4096);
    read_frame(fd, &h, msg, sizeof msg);
    CHECK_MSG(h.op == W_WRITE_ACK && h.status == KVP_ERR_NOT_ALLOWED,
              "a grant outlived its registration");
    OK(kvp_revoke(v, g));
    close(fd);
    OK(kvp_agent_destroy(v));
    OK(kvp_agent_destroy(off));
    OK(kvp_mem_free(m));
    free(sblob);
    free(blob);
    kvp_md_free(&md);
}
