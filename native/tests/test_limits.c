/* test_limits.c - bounded (issue 13.4): whatever a peer sends, our queues and tables
 * stay within their limits (documented agent params), with backpressure where data
 * must not be lost and eviction or refusal where it may, and a counter in
 * kvp_agent_info when a limit is hit. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hostid.h"
#include "metadata.h"
#include "t.h"
#include "wire.h"

#define KVP_T_UNUSED(x) ((void)(x))

static uint64_t info_u64(uint64_t a, const char *key) {
    char buf[8192];
    uint64_t len;
    OK(kvp_agent_info(a, (uint8_t *)buf, sizeof buf - 1, &len));
    buf[len] = '\0';
    char k[64];
    snprintf(k, sizeof k, "\n%s=", key);
    char *p = strstr(buf, k);
    CHECK_MSG(p, "no %s in agent info", key);
    return strtoull(p + strlen(k), NULL, 10);
}

static uint64_t rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    CHECK(f);
    unsigned long long size = 0, res = 0;
    CHECK(fscanf(f, "%llu %llu", &size, &res) == 2);
    fclose(f);
    return res * (uint64_t)sysconf(_SC_PAGESIZE);
}

static int dial(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    return fd;
}

/* Sends n bytes within deadline (non-blocking); returns how many went. */
static size_t send_for(int fd, const uint8_t *p, size_t n, double deadline) {
    size_t d = 0;
    while (d < n && t_now() < deadline) {
        ssize_t k = send(fd, p + d, n - d, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0) {
            d += (size_t)k;
            continue;
        }
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) break;
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        (void)poll(&pf, 1, 50);
    }
    return d;
}

static void hello(int fd, const uint8_t token[16]) {
    uint8_t f[W_HDR + 33 + 1];
    w_hdr wh = {W_HELLO, 0, 34, 0, 0, 0};
    w_hdr_put(f, &wh);
    memcpy(f + W_HDR, token, 16);
    memset(f + W_HDR + 16, 3, 16);
    f[W_HDR + 32] = 1;
    f[W_HDR + 33] = 'c';
    CHECK(send_for(fd, f, sizeof f, t_now() + 5) == sizeof f);
    uint8_t r[W_HDR];
    size_t d = 0;
    while (d < W_HDR) {
        ssize_t k = recv(fd, r + d, W_HDR - d, 0);
        CHECK(k > 0);
        d += (size_t)k;
    }
    CHECK(r[5] == W_HELLO_OK);
}

/* One client asks for 200 READs of 65536 pieces each and never reads: the victim stops
 * reading it (backpressure) instead of queueing 13 million frames. */
TEST_T(unread_read_requests_do_not_grow_the_target, 60) {
    uint64_t v = t_agent("V", NULL, NULL), m, size = 64 << 10, reg;
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    OK(kvp_register(v, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    uint64_t bl;
    uint8_t *blob = t_md(v, &bl);
    kvp_md md;
    OK(kvp_md_decode(blob, bl, &md));
    int fd = dial(md.port);
    hello(fd, md.token);
    const uint32_t cnt = W_READ_PIECES_PER_FRAME;
    size_t flen = W_HDR + 8 + 16 * (size_t)cnt;
    uint8_t *f = malloc(flen);
    CHECK(f);
    kvp_put_u32(f + W_HDR, 0);
    kvp_put_u32(f + W_HDR + 4, cnt);
    for (uint32_t i = 0; i < cnt; i++) {
        kvp_put_u64(f + W_HDR + 8 + 16 * i, m);
        kvp_put_u64(f + W_HDR + 16 + 16 * i, 16);
    }
    uint64_t rss0 = rss_bytes();
    double deadline = t_now() + 3;
    int sent = 0;
    for (int k = 0; k < 200; k++) {
        w_hdr wh = {W_READ_REQ, W_FLAG_ACK, (uint32_t)(8 + 16 * cnt), 0, (uint64_t)(k + 1), 0};
        w_hdr_put(f, &wh);
        if (send_for(fd, f, flen, deadline) != flen) break;
        sent++;
    }
    usleep(200000);
    uint64_t grew = rss_bytes() - rss0;
    CHECK_MSG(sent < 200, "all 200 requests were taken: no backpressure");
    CHECK(info_u64(v, "read_queue_full") >= 1);
    CHECK_MSG(grew < (96ull << 20), "the target grew by %llu MiB for %d unread requests",
              (unsigned long long)(grew >> 20), sent);
    close(fd);
    usleep(100000);
    /* It still serves others. */
    CHECK(info_u64(v, "inbound_conns") == 0);
    OK(kvp_agent_destroy(v));
    OK(kvp_mem_free(m));
    free(f);
    free(blob);
    kvp_md_free(&md);
}

/* 10,000 made-up agents loaded (as NixlInitRequests would): the table stays at
 * max_remotes, evicting the least recently used unreferenced ones. */
TEST_T(ten_thousand_made_up_remote_agents_are_bounded, 60) {
    uint64_t a = t_agent("R", NULL, NULL);
    uint64_t rss0 = 0;
    for (int i = 0; i < 10000; i++) {
        kvp_md md;
        memset(&md, 0, sizeof md);
        snprintf(md.name, sizeof md.name, "made-up-%d", i);
        kvp_random_bytes(md.token, 16);
        snprintf(md.host, sizeof md.host, "10.0.0.1");
        md.port = 1;
        md.caps = KVP_CAP_TCP;
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
        t_load(a, b.p, b.len);
        kvp_buf_free(&b);
        if (i == 1999) rss0 = rss_bytes();
    }
    CHECK(info_u64(a, "remotes") == 1024);
    CHECK(info_u64(a, "remotes_evicted") == 10000 - 1024);
    uint64_t grew = rss_bytes() - rss0;
#ifndef __SANITIZE_ADDRESS__ /* ASan keeps freed memory in quarantine: RSS says nothing */
    CHECK_MSG(grew < (8ull << 20), "8,000 more agents grew the table by %llu KiB",
              (unsigned long long)(grew >> 10));
#else
    KVP_T_UNUSED(grew);
#endif
    /* A table full of agents in use refuses a new one instead of growing. */
    OK(kvp_agent_destroy(a));
    a = t_agent("R", NULL, "max_remotes=2\n");
    uint64_t lists[2];
    for (int i = 0; i < 3; i++) {
        kvp_md md;
        memset(&md, 0, sizeof md);
        snprintf(md.name, sizeof md.name, "busy-%d", i);
        kvp_random_bytes(md.token, 16);
        snprintf(md.host, sizeof md.host, "10.0.0.1");
        md.port = 1;
        md.caps = KVP_CAP_TCP;
        md.page_fd = -1;
        kvp_md_region r;
        memset(&r, 0, sizeof r);
        r.mem_type = KVP_DRAM;
        r.addr = 0x100000;
        r.len = 4096;
        r.memfd = -1;
        md.regions = &r;
        md.nregions = 1;
        kvp_buf b = {0};
        kvp_md_encode(&md, &b);
        char nm[300];
        uint64_t nl;
        int32_t st = kvp_load_remote_metadata(a, b.p, b.len, (uint8_t *)nm, sizeof nm, &nl);
        kvp_buf_free(&b);
        if (i < 2) {
            OK(st);
            lists[i] = t_prep_pages(a, md.name, 0x100000, 4096, 1);
        } else {
            CHECK_ST(st, KVP_ERR_NOT_ALLOWED);
            CHECK_ERR_HAS("max_remotes=2");
        }
    }
    CHECK(info_u64(a, "remotes_refused") == 1);
    OK(kvp_prepped_release(a, lists[0]));
    OK(kvp_prepped_release(a, lists[1]));
    OK(kvp_agent_destroy(a));
}

/* Connections beyond max_inbound_conns are closed at once; those that say no HELLO are
 * closed after hello_timeout_ms; real peers still get in. */
TEST_T(inbound_connections_and_hello_deadline_are_bounded, 30) {
    uint64_t v = t_agent("V", NULL, "max_inbound_conns=4\nhello_timeout_ms=300\n");
    uint64_t bl;
    uint8_t *blob = t_md(v, &bl);
    kvp_md md;
    OK(kvp_md_decode(blob, bl, &md));
    int fds[8];
    for (int i = 0; i < 8; i++) {
        fds[i] = dial(md.port);
        usleep(20000);
    }
    usleep(100000);
    CHECK(info_u64(v, "inbound_conns") == 4);
    CHECK(info_u64(v, "conns_refused") >= 4);
    double t0 = t_now();
    for (int i = 0; i < 8; i++) {
        struct pollfd pf = {.fd = fds[i], .events = POLLIN};
        CHECK_MSG(poll(&pf, 1, 2000) == 1, "connection %d is still open", i);
        char c;
        CHECK(recv(fds[i], &c, 1, 0) <= 0);
        close(fds[i]);
    }
    CHECK(t_now() - t0 < 1.5);
    /* The agent's counters may trail the client's end of file by a moment (seen once
     * under ASan on a loaded machine): wait for them, bounded. */
    for (int tries = 0; tries < 200; tries++) {
        if (info_u64(v, "hello_timeouts") == 4 && info_u64(v, "inbound_conns") == 0) break;
        usleep(10000);
    }
    CHECK(info_u64(v, "hello_timeouts") == 4 && info_u64(v, "inbound_conns") == 0);
    /* A real peer. */
    uint64_t a = t_agent("A", "TCP", NULL);
    t_load(a, blob, bl);
    OK(kvp_notif_send(a, "V", (const uint8_t *)"hi", 2));
    OK(kvp_notif_wait(v, 5000, NULL, 0, NULL));
    OK(kvp_agent_destroy(a));
    OK(kvp_agent_destroy(v));
    free(blob);
    kvp_md_free(&md);
}

/* A peer that sends 100 notifications to an agent that takes none: the queue holds at
 * most max_notifs (plus one per connection), the rest waits in the network; once taken,
 * all arrive, in order. */
TEST_T(notification_queue_is_bounded_with_backpressure, 30) {
    uint64_t v = t_agent("V", NULL, "max_notifs=10\n");
    uint64_t bl;
    uint8_t *blob = t_md(v, &bl);
    uint64_t a = t_agent("A", "TCP", NULL);
    t_load(a, blob, bl);
    for (int i = 0; i < 100; i++) {
        char m[16];
        int n = snprintf(m, sizeof m, "n%03d", i);
        OK(kvp_notif_send(a, "V", (const uint8_t *)m, (uint64_t)n));
    }
    usleep(300000);
    uint64_t q = info_u64(v, "notifs_queued");
    CHECK_MSG(q >= 10 && q <= 11, "%llu notifications queued with max_notifs=10",
              (unsigned long long)q);
    /* Loopback ones are refused while full. */
    CHECK_ST(kvp_notif_send(v, "V", (const uint8_t *)"x", 1), KVP_ERR_BACKEND);
    CHECK_ERR_HAS("max_notifs=10");
    int next = 0;
    double deadline = t_now() + 10;
    while (next < 100 && t_now() < deadline) {
        (void)kvp_notif_wait(v, 500, NULL, 0, NULL);
        uint8_t buf[4096];
        uint64_t len, cnt;
        OK(kvp_notif_take(v, buf, sizeof buf, &len, &cnt));
        uint64_t off = 0;
        for (uint64_t k = 0; k < cnt; k++) {
            uint32_t nl = kvp_get_u32(buf + off), ml = kvp_get_u32(buf + off + 4 + nl);
            char want[16];
            snprintf(want, sizeof want, "n%03d", next);
            CHECK_MSG(ml == 4 && memcmp(buf + off + 8 + nl, want, 4) == 0,
                      "notification %d out of order", next);
            next++;
            off += 8 + nl + ml;
        }
    }
    CHECK_MSG(next == 100, "%d of 100 notifications arrived", next);
    OK(kvp_agent_destroy(a));
    OK(kvp_agent_destroy(v));
    free(blob);
}
