/* test_read_end.c - a TCP READ completes on the target's READ_END only (issue 12): a
 * source deregistered while it was being served fails the READ with a status saying
 * so (not zeros and SUCCESS), and a duplicated READ_DATA piece is detected, never
 * counted. Both ends are played by hand-written wire code against a real agent. */
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

static void frame(int fd, uint8_t op, uint16_t flags, int32_t status, uint64_t req,
                  const void *body, uint32_t blen, uint64_t plen) {
    uint8_t h[W_HDR];
    w_hdr wh = {op, flags, blen, status, req, plen};
    w_hdr_put(h, &wh);
    send_all(fd, h, W_HDR);
    if (blen) send_all(fd, body, blen);
}

static void read_hdr(int fd, w_hdr *h, uint8_t *body, size_t cap) {
    uint8_t b[W_HDR];
    recv_all(fd, b, W_HDR);
    const char *why;
    CHECK(w_hdr_get(b, h, &why));
    CHECK(h->body_len <= cap);
    if (h->body_len) recv_all(fd, body, h->body_len);
}

static int dial(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* Target side: a client asks for a large READ and reads nothing while the target
 * deregisters the source; then it reads everything: the READ_END says the data of a
 * piece was lost. */
TEST(target_dereg_mid_serve_reports_it_in_read_end) {
    uint64_t t = t_agent("T", NULL, NULL), m, size = 64ull << 20, reg;
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    memset((void *)(uintptr_t)m, 0x5A, size);
    OK(kvp_register(t, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    uint64_t bl;
    uint8_t *blob = t_md(t, &bl);
    kvp_md md;
    OK(kvp_md_decode(blob, bl, &md));
    int fd = dial(md.port);
    uint8_t hb[33 + 1];
    memcpy(hb, md.token, 16);
    memset(hb + 16, 9, 16);
    hb[32] = 1;
    hb[33] = 'c';
    frame(fd, W_HELLO, 0, 0, 0, hb, sizeof hb, 0);
    w_hdr h;
    uint8_t body[W_MAX_MSG + 1];
    read_hdr(fd, &h, body, sizeof body);
    CHECK(h.op == W_HELLO_OK);
    /* Four pieces of 16 MiB. */
    uint8_t rq[8 + 16 * 4];
    kvp_put_u32(rq, 0);
    kvp_put_u32(rq + 4, 4);
    for (int i = 0; i < 4; i++) {
        kvp_put_u64(rq + 8 + 16 * i, m + (uint64_t)i * (16 << 20));
        kvp_put_u64(rq + 16 + 16 * i, 16 << 20);
    }
    frame(fd, W_READ_REQ, W_FLAG_ACK, 0, 7, rq, sizeof rq, 0);
    usleep(200000); /* the target sends what the socket takes, then waits */
    OK(kvp_deregister(t, reg));
    uint8_t *sink = malloc(16 << 20);
    CHECK(sink);
    uint64_t zeros = 0;
    for (int i = 0; i < 4; i++) {
        read_hdr(fd, &h, body, sizeof body);
        CHECK_MSG(h.op == W_READ_DATA && h.req_id == 7, "op %u", h.op);
        recv_all(fd, sink, (size_t)h.payload_len);
        for (uint64_t k = 0; k < h.payload_len; k += 4096) zeros += sink[k] == 0;
    }
    CHECK_MSG(zeros > 0, "the deregistration came too late to test (all data was sent)");
    read_hdr(fd, &h, body, sizeof body);
    body[h.body_len] = 0;
    CHECK_MSG(h.op == W_READ_END && h.req_id == 7, "expected READ_END, got op %u", h.op);
    CHECK_MSG(h.status == KVP_ERR_NOT_FOUND, "READ_END status %s", kvp_status_name(h.status));
    CHECK_MSG(strstr((char *)body, "deregistered") && strstr((char *)body, "while serving"),
              "READ_END message: %s", body);
    free(sink);
    close(fd);
    OK(kvp_agent_destroy(t));
    OK(kvp_mem_free(m));
    free(blob);
    kvp_md_free(&md);
}

/* ------------------------------------------------- initiator against a fake ---- */

typedef struct fake {
    int lfd;
    uint16_t port;
    uint8_t token[16];
    int script; /* 0: data ok + READ_END ok, 1: duplicate piece 0, 2: READ_END error */
    pthread_t th;
} fake;

static void *fake_main(void *arg) {
    fake *f = arg;
    int fd = accept(f->lfd, NULL, NULL);
    CHECK(fd >= 0);
    w_hdr h;
    static uint8_t body[8 + 16 * 16];
    read_hdr(fd, &h, body, sizeof body);
    CHECK(h.op == W_HELLO && memcmp(body, f->token, 16) == 0);
    frame(fd, W_HELLO_OK, 0, 0, 0, NULL, 0, 0);
    read_hdr(fd, &h, body, sizeof body);
    CHECK(h.op == W_READ_REQ);
    uint32_t cnt = kvp_get_u32(body + 4);
    CHECK(cnt == 2);
    uint64_t req = h.req_id;
    uint8_t data[4096];
    for (uint32_t i = 0; i < 2; i++) {
        uint32_t piece = f->script == 1 ? 0 : i; /* script 1: piece 0 twice */
        memset(data, 0x30 + (int)piece, sizeof data);
        uint8_t pb[8];
        kvp_put_u32(pb, piece);
        kvp_put_u32(pb + 4, 0);
        frame(fd, W_READ_DATA, 0, 0, req, pb, 8, sizeof data);
        send_all(fd, data, sizeof data);
    }
    static const char lost[] = "agent F deregistered 0x1000 while serving a READ of it";
    if (f->script == 2) frame(fd, W_READ_END, 0, KVP_ERR_NOT_FOUND, req, lost, sizeof lost - 1, 0);
    else frame(fd, W_READ_END, 0, 0, req, NULL, 0, 0);
    /* Stay until the initiator closes. */
    char c;
    while (recv(fd, &c, 1, 0) > 0) {
    }
    close(fd);
    return NULL;
}

/* A blob describing the fake: another host (no boot id), TCP, one DRAM region. */
static uint8_t *fake_blob(fake *f, uint64_t *len) {
    kvp_md md;
    memset(&md, 0, sizeof md);
    snprintf(md.name, sizeof md.name, "F");
    kvp_random_bytes(f->token, 16);
    memcpy(md.token, f->token, 16);
    snprintf(md.host, sizeof md.host, "127.0.0.1");
    md.port = f->port;
    md.caps = KVP_CAP_TCP | KVP_CAP_UCX;
    md.page_fd = -1;
    kvp_md_region r;
    memset(&r, 0, sizeof r);
    r.mem_type = KVP_DRAM;
    r.addr = 0x100000;
    r.len = 1 << 20;
    r.memfd = -1;
    md.regions = &r;
    md.nregions = 1;
    kvp_buf b = {0};
    kvp_md_encode(&md, &b);
    CHECK(!b.oom);
    *len = b.len;
    return b.p;
}

static int32_t read_from_fake(int script, uint8_t *local) {
    fake f;
    memset(&f, 0, sizeof f);
    f.script = script;
    f.lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(f.lfd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(f.lfd, 4) == 0);
    socklen_t sl = sizeof sa;
    CHECK(getsockname(f.lfd, (struct sockaddr *)&sa, &sl) == 0);
    f.port = ntohs(sa.sin_port);
    uint64_t bl;
    uint8_t *blob = fake_blob(&f, &bl);
    CHECK(pthread_create(&f.th, NULL, fake_main, &f) == 0);
    uint64_t a = t_agent("I", NULL, NULL);
    t_load(a, blob, bl);
    uint64_t addr = (uint64_t)(uintptr_t)local, size = 8192, reg;
    OK(kvp_register(a, KVP_DRAM, &addr, &size, NULL, 1, NULL, &reg));
    uint64_t lp = t_prep_pages(a, "", addr, 4096, 2), rp = t_prep_pages(a, "F", 0x100000, 4096, 2);
    /* Two separate pieces: remote pages not adjacent to local ones' order. */
    uint32_t li[2] = {0, 1}, ri[2] = {1, 0};
    uint64_t req;
    OK(kvp_xfer_create(a, KVP_READ, lp, li, rp, ri, 2, NULL, 0, &req));
    int32_t st = kvp_xfer_post(a, req);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(a, req, 5000, NULL, 0, NULL);
    static char msg[1024];
    kvp_last_error(msg, sizeof msg);
    OK(kvp_xfer_release(a, req));
    OK(kvp_prepped_release(a, lp));
    OK(kvp_prepped_release(a, rp));
    OK(kvp_agent_destroy(a));
    pthread_join(f.th, NULL);
    close(f.lfd);
    free(blob);
    if (st != KVP_SUCCESS) fprintf(stderr, "    (%s: %s)\n", kvp_status_name(st), msg);
    return st;
}

TEST(initiator_completes_read_on_read_end) {
    uint8_t local[8192];
    memset(local, 0, sizeof local);
    OK(read_from_fake(0, local));
    CHECK(local[0] == 0x30 && local[4095] == 0x30 && local[4096] == 0x31 && local[8191] == 0x31);
}

TEST(initiator_refuses_a_duplicated_read_piece) {
    uint8_t local[8192];
    memset(local, 0, sizeof local);
    CHECK_ST(read_from_fake(1, local), KVP_ERR_MISMATCH);
    /* The duplicate never landed a second time, the missing piece is not faked. */
    CHECK(local[4096] == 0 && local[8191] == 0);
}

TEST(initiator_fails_read_when_read_end_says_so) {
    uint8_t local[8192];
    memset(local, 0, sizeof local);
    CHECK_ST(read_from_fake(2, local), KVP_ERR_NOT_FOUND);
}
