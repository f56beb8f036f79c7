/* test_frames.c - a hand-written TCP client speaking the wire protocol to a target:
 * out-of-range writes and reads are refused without touching memory, malformed frames
 * close the connection, and the target keeps working afterwards. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "metadata.h"
#include "t.h"
#include "wire.h"

static int dial(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static void send_all(int fd, const void *p, size_t n) {
    size_t d = 0;
    while (d < n) {
        ssize_t k = send(fd, (const char *)p + d, n - d, MSG_NOSIGNAL);
        CHECK(k > 0);
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

/* Reads one frame header (+ body into out); false on EOF. */
static int read_frame(int fd, w_hdr *h, char *body, size_t cap) {
    uint8_t b[W_HDR];
    size_t d = 0;
    while (d < W_HDR) {
        ssize_t k = recv(fd, b + d, W_HDR - d, 0);
        if (k <= 0) return 0;
        d += (size_t)k;
    }
    const char *why;
    CHECK(w_hdr_get(b, h, &why));
    CHECK(h->body_len < cap);
    d = 0;
    while (d < h->body_len) {
        ssize_t k = recv(fd, body + d, h->body_len - d, 0);
        CHECK(k > 0);
        d += (size_t)k;
    }
    body[h->body_len] = 0;
    return 1;
}

static void hello(int fd, const uint8_t token[16], int expect_ok) {
    uint8_t body[33 + 4];
    memcpy(body, token, 16);
    memset(body + 16, 7, 16);
    body[32] = 4;
    memcpy(body + 33, "evil", 4);
    frame(fd, W_HELLO, 0, 0, body, sizeof body, 0);
    w_hdr h;
    char msg[2048];
    CHECK(read_frame(fd, &h, msg, sizeof msg));
    CHECK_MSG(h.op == (expect_ok ? W_HELLO_OK : W_HELLO_ERR), "hello answered with op %u", h.op);
}

static int closed_by_peer(int fd) {
    char c;
    ssize_t k = recv(fd, &c, 1, 0);
    return k == 0 || (k < 0 && errno == ECONNRESET);
}

TEST(frames_out_of_range_and_malformed) {
    uint64_t t = t_agent("T", NULL, NULL);
    const uint64_t half = 64 << 10;
    uint64_t m, len = half, reg;
    OK(kvp_mem_alloc(KVP_DRAM, 0, 2 * half, &m));
    memset((void *)(uintptr_t)m, 0, 2 * half);
    OK(kvp_register(t, KVP_DRAM, &m, &len, NULL, 1, NULL, &reg)); /* first half only */
    uint64_t bl;
    uint8_t *blob = t_md(t, &bl);
    kvp_md md;
    OK(kvp_md_decode(blob, bl, &md));
    int fd = dial(md.port);
    hello(fd, md.token, 1);
    static uint8_t data[8192];
    memset(data, 0xAB, sizeof data);
    w_hdr h;
    char msg[2048];
    /* Entirely outside, then straddling the end: refused, memory untouched. */
    uint8_t addr[8];
    kvp_put_u64(addr, m + half);
    frame(fd, W_WRITE, W_FLAG_ACK, 1, addr, 8, 4096);
    send_all(fd, data, 4096);
    CHECK(read_frame(fd, &h, msg, sizeof msg));
    CHECK(h.op == W_WRITE_ACK && h.req_id == 1 && h.status == KVP_ERR_INVALID_PARAM);
    CHECK(strstr(msg, "not inside its registered memory"));
    kvp_put_u64(addr, m + half - 4096);
    frame(fd, W_WRITE, W_FLAG_ACK, 2, addr, 8, 8192);
    send_all(fd, data, 8192);
    CHECK(read_frame(fd, &h, msg, sizeof msg));
    CHECK(h.op == W_WRITE_ACK && h.req_id == 2 && h.status == KVP_ERR_INVALID_PARAM);
    for (uint64_t k = 0; k < 2 * half; k++)
        CHECK_MSG(((uint8_t *)(uintptr_t)m)[k] == 0, "byte %llu was written", (unsigned long long)k);
    /* A valid write lands and is acknowledged. */
    kvp_put_u64(addr, m + 100);
    frame(fd, W_WRITE, W_FLAG_ACK, 3, addr, 8, 1000);
    send_all(fd, data, 1000);
    CHECK(read_frame(fd, &h, msg, sizeof msg));
    CHECK(h.op == W_WRITE_ACK && h.req_id == 3 && h.status == KVP_SUCCESS);
    CHECK(((uint8_t *)(uintptr_t)m)[100] == 0xAB && ((uint8_t *)(uintptr_t)m)[1099] == 0xAB);
    CHECK(((uint8_t *)(uintptr_t)m)[1100] == 0);
    /* Out-of-range read: READ_ERR, no data. */
    uint8_t rq[8 + 16];
    kvp_put_u32(rq, 0);
    kvp_put_u32(rq + 4, 1);
    kvp_put_u64(rq + 8, m + half);
    kvp_put_u64(rq + 16, 16);
    frame(fd, W_READ_REQ, W_FLAG_ACK, 4, rq, sizeof rq, 0);
    CHECK(read_frame(fd, &h, msg, sizeof msg));
    CHECK(h.op == W_READ_ERR && h.req_id == 4 && h.status == KVP_ERR_INVALID_PARAM);
    /* In-range read: data. */
    kvp_put_u64(rq + 8, m + 100);
    frame(fd, W_READ_REQ, W_FLAG_ACK, 5, rq, sizeof rq, 0);
    CHECK(read_frame(fd, &h, msg, sizeof msg));
    CHECK(h.op == W_READ_DATA && h.req_id == 5 && h.payload_len == 16);
    uint8_t got[16];
    size_t d = 0;
    while (d < 16) {
        ssize_t k = recv(fd, got + d, 16 - d, 0);
        CHECK(k > 0);
        d += (size_t)k;
    }
    CHECK(got[0] == 0xAB && got[15] == 0xAB);
    /* Then the request's READ_END: all served. */
    CHECK(read_frame(fd, &h, msg, sizeof msg));
    CHECK(h.op == W_READ_END && h.req_id == 5 && h.status == KVP_SUCCESS && h.body_len == 0);
    /* Bad magic: the connection is closed. */
    send_all(fd, "garbage-garbage-garbage-garbage!", 32);
    CHECK(closed_by_peer(fd));
    close(fd);

    /* Frame before HELLO, wrong token, oversized body, unknown op, payload on a NOTIF,
     * truncated frame: each closes its connection. */
    fd = dial(md.port);
    frame(fd, W_NOTIF, 0, 0, "x", 1, 0);
    CHECK(closed_by_peer(fd));
    close(fd);
    fd = dial(md.port);
    uint8_t wrong[16] = {1};
    hello(fd, wrong, 0);
    CHECK(closed_by_peer(fd));
    close(fd);
    fd = dial(md.port);
    hello(fd, md.token, 1);
    frame(fd, W_NOTIF, 0, 0, NULL, 0, 0); /* fine: empty notification */
    uint8_t hb[W_HDR];
    w_hdr big = {W_READ_REQ, 0, 100u << 20, 0, 9, 0};
    w_hdr_put(hb, &big);
    send_all(fd, hb, W_HDR);
    CHECK(closed_by_peer(fd));
    close(fd);
    fd = dial(md.port);
    hello(fd, md.token, 1);
    w_hdr unk = {42, 0, 0, 0, 0, 0};
    w_hdr_put(hb, &unk);
    send_all(fd, hb, W_HDR);
    CHECK(closed_by_peer(fd));
    close(fd);
    fd = dial(md.port);
    hello(fd, md.token, 1);
    w_hdr pn = {W_NOTIF, 0, 1, 0, 0, 5};
    w_hdr_put(hb, &pn);
    send_all(fd, hb, W_HDR);
    CHECK(closed_by_peer(fd));
    close(fd);
    fd = dial(md.port);
    hello(fd, md.token, 1);
    kvp_put_u64(addr, m);
    frame(fd, W_WRITE, W_FLAG_ACK, 10, addr, 8, 4096);
    send_all(fd, data, 100); /* then hang up mid-payload */
    close(fd);

    /* The notification from the good connection arrived, named after its HELLO. */
    OK(kvp_notif_wait(t, 2000, NULL, 0, NULL));
    uint8_t nb[64];
    uint64_t nl, cnt;
    OK(kvp_notif_take(t, nb, sizeof nb, &nl, &cnt));
    CHECK(cnt == 1 && nl == 4 + 4 + 4 && memcmp(nb + 4, "evil", 4) == 0);

    /* The target still serves a real initiator over TCP. */
    uint64_t i = t_agent("I", "TCP", NULL);
    t_load(i, blob, bl);
    uint64_t lm, lreg, llen = 4096;
    OK(kvp_mem_alloc(KVP_DRAM, 0, llen, &lm));
    t_fill((void *)(uintptr_t)lm, llen, 5);
    OK(kvp_register(i, KVP_DRAM, &lm, &llen, NULL, 1, NULL, &lreg));
    uint64_t lp = t_prep_pages(i, "", lm, 4096, 1), rp = t_prep_pages(i, "T", m, 4096, 1);
    uint32_t z = 0;
    uint64_t req;
    OK(kvp_xfer_create(i, KVP_WRITE, lp, &z, rp, &z, 1, NULL, 0, &req));
    int32_t st = kvp_xfer_post(i, req); /* TCP: may already be acked when post returns */
    CHECK(st == KVP_IN_PROG || st == KVP_SUCCESS);
    OK(kvp_xfer_wait(i, req, 5000, NULL, 0, NULL));
    CHECK(t_verify((void *)(uintptr_t)m, 4096, 5));
    kvp_md_free(&md);
    free(blob);
    OK(kvp_agent_destroy(i));
    OK(kvp_agent_destroy(t));
    OK(kvp_mem_free(m));
    OK(kvp_mem_free(lm));
}

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/time.h>

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* Out of file descriptors, a pending connection must be refused, not leave the
 * progress thread spinning on a readable listener; afterwards it accepts again. */
TEST(listener_out_of_fds_does_not_spin) {
    uint64_t t = t_agent("T", NULL, NULL);
    uint64_t bl;
    uint8_t *blob = t_md(t, &bl);
    kvp_md md;
    OK(kvp_md_decode(blob, bl, &md));
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    struct rlimit low = {64, rl.rlim_max};
    CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0);
    int fds[128], nf = 0;
    while (nf < 128) {
        int f = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (f < 0) break;
        fds[nf++] = f;
    }
    CHECK(nf < 128); /* the limit was reached */
    /* Connect from a child (its own descriptor table has room after closing ours). */
    fflush(stdout);
    int pid = fork();
    if (pid == 0) {
        for (int i = 0; i < nf; i++) close(fds[i]);
        int fd = dial(md.port);
        char c;
        ssize_t k = recv(fd, &c, 1, 0); /* refused: EOF or reset */
        _exit(k <= 0 ? 0 : 1);
    }
    CHECK(t_wait_child(pid) == 0);
    double c0 = cpu_seconds();
    usleep(300 * 1000);
    double used = cpu_seconds() - c0;
    CHECK_MSG(used < 0.1, "the progress thread spun: %.3f s of CPU in 0.3 s", used);
    for (int i = 0; i < nf; i++) close(fds[i]);
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
    int fd = dial(md.port);
    hello(fd, md.token, 1);
    close(fd);
    kvp_md_free(&md);
    free(blob);
    OK(kvp_agent_destroy(t));
}
