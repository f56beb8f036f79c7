/* test_failures.c - dead peers, timeouts, cancellation, destroy under waiters, stale
 * peers, request validation. */
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include "metadata.h"
#include "t.h"

typedef struct setup {
    t_peer p;
    uint64_t a, m, lp, rp, size;
    uint32_t n;
    uint32_t *idx;
} setup;

/* Peer T and initiator I with n pages of page bytes on each side. */
static void setup_pair(setup *s, const char *init_backends, const char *init_params, int anon,
                       uint64_t page, uint32_t n) {
    s->size = page * n;
    s->n = n;
    t_peer_start(&s->p, "T", NULL, NULL, s->size, anon);
    s->a = t_agent("I", init_backends, init_params);
    t_load(s->a, s->p.md, s->p.mdlen);
    uint64_t reg;
    OK(kvp_mem_alloc(KVP_DRAM, 0, s->size, &s->m));
    OK(kvp_register(s->a, KVP_DRAM, &s->m, &s->size, NULL, 1, NULL, &reg));
    s->lp = t_prep_pages(s->a, "", s->m, page, n);
    s->rp = t_prep_pages(s->a, "T", s->p.base, page, n);
    s->idx = malloc(n * sizeof *s->idx);
    for (uint32_t i = 0; i < n; i++) s->idx[i] = i;
}

/* Frees what setup_pair allocated in this process (the peer is stopped separately). */
static void done(setup *s) {
    OK(kvp_agent_destroy(s->a));
    OK(kvp_mem_free(s->m));
    free(s->idx);
    free(s->p.md);
    s->p.md = NULL;
}

static uint64_t mkreq(setup *s, int32_t op, uint32_t n) {
    uint64_t req;
    OK(kvp_xfer_create(s->a, op, s->lp, s->idx, s->rp, s->idx, n, NULL, 0, &req));
    return req;
}

static void post_wait_ok(setup *s, uint64_t req) {
    int32_t st = kvp_xfer_post(s->a, req);
    CHECK_MSG(st == KVP_SUCCESS || st == KVP_IN_PROG, "%s: %s", kvp_status_name(st), t_lasterr());
    OK(kvp_xfer_wait(s->a, req, 10000, NULL, 0, NULL));
}

TEST(tcp_peer_killed_mid_transfer_fails_with_remote_disconnect) {
    setup s;
    setup_pair(&s, "TCP", NULL, 0, 1 << 20, 64);
    uint64_t small = mkreq(&s, KVP_WRITE, 1), big = mkreq(&s, KVP_WRITE, 64);
    post_wait_ok(&s, small); /* connection established */
    CHECK(kill(s.p.pid, SIGSTOP) == 0);
    CHECK_ST(kvp_xfer_post(s.a, big), KVP_IN_PROG);
    /* The stopped peer cannot take 64 MiB: the wait times out with IN_PROG. */
    double t0 = t_now();
    CHECK_ST(kvp_xfer_wait(s.a, big, 100, NULL, 0, NULL), KVP_IN_PROG);
    CHECK(t_now() - t0 >= 0.09);
    CHECK_ST(kvp_xfer_status(s.a, big), KVP_IN_PROG);
    CHECK_ST(kvp_xfer_post(s.a, big), KVP_ERR_REPOST_ACTIVE);
    CHECK(kill(s.p.pid, SIGKILL) == 0);
    t0 = t_now();
    CHECK_ST(kvp_xfer_wait(s.a, big, 5000, NULL, 0, NULL), KVP_ERR_REMOTE_DISCONNECT);
    CHECK(t_now() - t0 < 5.0);
    char msg[512];
    uint64_t ml;
    OK(kvp_xfer_message(s.a, big, (uint8_t *)msg, sizeof msg - 1, &ml));
    msg[ml] = 0;
    CHECK_MSG(strstr(msg, "connection to agent T lost"), "message: %s", msg);
    t_wait_child(s.p.pid);
    /* Later posts fail quickly too (no peer to connect to). */
    int32_t st = kvp_xfer_post(s.a, small);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(s.a, small, 5000, NULL, 0, NULL);
    CHECK_ST(st, KVP_ERR_REMOTE_DISCONNECT);
    done(&s);
    close(s.p.fd);
}

TEST(shm_peer_killed_fails_with_remote_disconnect) {
    setup s;
    setup_pair(&s, NULL, "io_threads=1", 0, 8 << 20, 64); /* 512 MiB */
    uint64_t big = mkreq(&s, KVP_WRITE, 64);
    post_wait_ok(&s, big);
    /* Kill while a second pass runs: it fails unless it finished before the peer died. */
    CHECK_ST(kvp_xfer_post(s.a, big), KVP_IN_PROG);
    CHECK(kill(s.p.pid, SIGKILL) == 0);
    int32_t st = kvp_xfer_wait(s.a, big, 5000, NULL, 0, NULL);
    CHECK_MSG(st == KVP_ERR_REMOTE_DISCONNECT || st == KVP_SUCCESS, "%s", kvp_status_name(st));
    if (st == KVP_SUCCESS) fprintf(stderr, "    (the copy finished before the peer died)\n");
    t_wait_child(s.p.pid);
    /* Once dead, posts fail at once. */
    CHECK_ST(kvp_xfer_post(s.a, big), KVP_ERR_REMOTE_DISCONNECT);
    CHECK_ERR_HAS("exited");
    done(&s);
    close(s.p.fd);
}

TEST(cma_peer_killed_fails_with_remote_disconnect) {
    setup s;
    setup_pair(&s, NULL, NULL, 1, 1 << 20, 16);
    uint64_t req = mkreq(&s, KVP_READ, 16);
    post_wait_ok(&s, req);
    CHECK(kill(s.p.pid, SIGKILL) == 0);
    t_wait_child(s.p.pid);
    int32_t st = kvp_xfer_post(s.a, req);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(s.a, req, 5000, NULL, 0, NULL);
    CHECK_ST(st, KVP_ERR_REMOTE_DISCONNECT);
    done(&s);
    close(s.p.fd);
}

TEST(release_active_request_is_bounded) {
    setup s;
    setup_pair(&s, "TCP", NULL, 0, 1 << 20, 64);
    uint64_t small = mkreq(&s, KVP_WRITE, 1), big = mkreq(&s, KVP_WRITE, 64);
    post_wait_ok(&s, small);
    CHECK(kill(s.p.pid, SIGSTOP) == 0);
    CHECK_ST(kvp_xfer_post(s.a, big), KVP_IN_PROG);
    double t0 = t_now();
    OK(kvp_xfer_release(s.a, big));
    CHECK(t_now() - t0 < 1.0);
    CHECK_ST(kvp_xfer_status(s.a, big), KVP_ERR_NOT_FOUND);
    /* The connection stays usable: the cancelled frame was completed with zeros. */
    CHECK(kill(s.p.pid, SIGCONT) == 0);
    t_fill((void *)(uintptr_t)s.m, 1 << 20, 77);
    post_wait_ok(&s, small);
    CHECK(t_peer_verify(&s.p, 0, 1 << 20, 77));
    done(&s);
    t_peer_stop(&s.p);
}

typedef struct waiter {
    uint64_t a, req;
    int notif;
    int32_t st;
    double took;
} waiter;

static void *wait_thread(void *arg) {
    waiter *w = arg;
    double t0 = t_now();
    w->st = w->notif ? kvp_notif_wait(w->a, 20000, NULL, 0, NULL) : kvp_xfer_wait(w->a, w->req, 20000, NULL, 0, NULL);
    w->took = t_now() - t0;
    return NULL;
}

TEST(destroy_wakes_waiters_with_canceled) {
    setup s;
    setup_pair(&s, "TCP", NULL, 0, 1 << 20, 64);
    uint64_t small = mkreq(&s, KVP_WRITE, 1), big = mkreq(&s, KVP_WRITE, 64);
    post_wait_ok(&s, small);
    CHECK(kill(s.p.pid, SIGSTOP) == 0);
    CHECK_ST(kvp_xfer_post(s.a, big), KVP_IN_PROG);
    waiter w1 = {s.a, big, 0, 0, 0}, w2 = {s.a, 0, 1, 0, 0};
    pthread_t t1, t2;
    CHECK(pthread_create(&t1, NULL, wait_thread, &w1) == 0);
    CHECK(pthread_create(&t2, NULL, wait_thread, &w2) == 0);
    usleep(100 * 1000);
    double t0 = t_now();
    OK(kvp_agent_destroy(s.a));
    CHECK(t_now() - t0 < 2.0);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    CHECK_MSG(w1.st == KVP_ERR_CANCELED, "xfer wait: %s", kvp_status_name(w1.st));
    CHECK_MSG(w2.st == KVP_ERR_CANCELED, "notif wait: %s", kvp_status_name(w2.st));
    CHECK(w1.took < 3.0 && w2.took < 3.0);
    CHECK_ST(kvp_xfer_wait(s.a, big, 0, NULL, 0, NULL), KVP_ERR_NOT_FOUND);
    CHECK(kill(s.p.pid, SIGCONT) == 0);
    OK(kvp_mem_free(s.m));
    free(s.idx);
    t_peer_stop(&s.p);
}

TEST(notif_wait_timeout_and_take_sizes) {
    uint64_t a = t_agent("A", NULL, NULL);
    double t0 = t_now();
    CHECK_ST(kvp_notif_wait(a, 50, NULL, 0, NULL), KVP_IN_PROG);
    CHECK(t_now() - t0 >= 0.045);
    CHECK_ST(kvp_notif_wait(a, -1, NULL, 0, NULL), KVP_ERR_INVALID_PARAM);
    OK(kvp_notif_send(a, "A", (const uint8_t *)"0123456789", 10)); /* loopback */
    OK(kvp_notif_send(a, "A", (const uint8_t *)"ab", 2));
    OK(kvp_notif_wait(a, 0, NULL, 0, NULL));
    uint8_t buf[64];
    uint64_t len, cnt;
    OK(kvp_notif_take(a, buf, 5, &len, &cnt)); /* first does not fit: size reported */
    CHECK(cnt == 0 && len == 4 + 1 + 4 + 10);
    OK(kvp_notif_take(a, buf, 20, &len, &cnt)); /* only the first fits */
    CHECK(cnt == 1 && len == 19);
    OK(kvp_notif_take(a, buf, sizeof buf, &len, &cnt));
    CHECK(cnt == 1 && len == 11 && memcmp(buf + 9, "ab", 2) == 0);
    OK(kvp_notif_take(a, buf, sizeof buf, &len, &cnt));
    CHECK(cnt == 0 && len == 0);
    CHECK_ST(kvp_notif_send(a, "nobody", (const uint8_t *)"x", 1), KVP_ERR_NOT_FOUND);
    static uint8_t huge[70000];
    CHECK_ST(kvp_notif_send(a, "A", huge, sizeof huge), KVP_ERR_INVALID_PARAM);
    OK(kvp_agent_destroy(a));
}

TEST(xfer_create_validation) {
    uint64_t t = t_agent("T", NULL, NULL), a = t_agent("I", NULL, NULL);
    uint64_t m, len = 16384, reg, treg;
    OK(kvp_mem_alloc(KVP_DRAM, 0, len, &m));
    OK(kvp_register(a, KVP_DRAM, &m, &len, NULL, 1, NULL, &reg));
    OK(kvp_register(t, KVP_DRAM, &m, &len, NULL, 1, NULL, &treg));
    uint64_t bl;
    uint8_t *blob = t_md(t, &bl);
    t_load(a, blob, bl);
    free(blob);
    uint64_t lp = t_prep_pages(a, "", m, 4096, 4), rp = t_prep_pages(a, "T", m, 4096, 4);
    uint64_t rp2 = t_prep_pages(a, "T", m, 8192, 2);
    uint32_t li[2] = {0, 9}, ri[2] = {0, 1};
    uint64_t req;
    CHECK_ST(kvp_xfer_create(a, KVP_WRITE, lp, li, rp, ri, 2, NULL, 0, &req),
             KVP_ERR_INVALID_PARAM);
    CHECK_ERR_HAS("local_idx[1] = 9 is out of range: the local list has 4");
    li[1] = 1;
    ri[1] = 4;
    CHECK_ST(kvp_xfer_create(a, KVP_WRITE, lp, li, rp, ri, 2, NULL, 0, &req),
             KVP_ERR_INVALID_PARAM);
    CHECK_ERR_HAS("remote_idx[1] = 4");
    ri[1] = 1;
    CHECK_ST(kvp_xfer_create(a, KVP_WRITE, lp, li, rp2, ri, 2, NULL, 0, &req), KVP_ERR_MISMATCH);
    CHECK_ERR_HAS("4096 bytes but remote descriptor 0 has 8192");
    CHECK_ST(kvp_xfer_create(a, 7, lp, li, rp, ri, 2, NULL, 0, &req), KVP_ERR_INVALID_PARAM);
    CHECK_ST(kvp_xfer_create(a, KVP_WRITE, rp, li, lp, ri, 2, NULL, 0, &req),
             KVP_ERR_INVALID_PARAM);
    CHECK_ST(kvp_xfer_create(a, KVP_WRITE, lp, li, 12345, ri, 2, NULL, 0, &req),
             KVP_ERR_NOT_FOUND);
    /* Local descriptors outside registered memory: refused at prep. */
    uint64_t dl, pp, bad = m + len, bl1 = 1;
    OK(kvp_dlist_create(KVP_DRAM, &bad, &bl1, NULL, 1, &dl));
    CHECK_ST(kvp_prep_dlist(a, "", dl, &pp), KVP_ERR_INVALID_PARAM);
    OK(kvp_dlist_release(dl));
    /* Zero pairs: completes at once. */
    OK(kvp_xfer_create(a, KVP_WRITE, lp, li, rp, ri, 0, NULL, 0, &req));
    CHECK_ST(kvp_xfer_wait(a, req, 0, NULL, 0, NULL), KVP_ERR_NOT_POSTED);
    OK(kvp_xfer_post(a, req));
    OK(kvp_xfer_status(a, req));
    OK(kvp_xfer_release(a, req));
    CHECK_ST(kvp_xfer_release(a, req), KVP_ERR_NOT_FOUND);
    OK(kvp_agent_destroy(a));
    OK(kvp_agent_destroy(t));
    OK(kvp_mem_free(m));
}

TEST(stale_connection_to_restarted_peer_is_refused) {
    uint64_t t = t_agent("T", NULL, NULL), a = t_agent("I", NULL, "transport=tcp");
    uint64_t m, len = 8192, reg;
    OK(kvp_mem_alloc(KVP_DRAM, 0, len, &m));
    OK(kvp_register(t, KVP_DRAM, &m, &len, NULL, 1, NULL, &reg));
    OK(kvp_register(a, KVP_DRAM, &m, &len, NULL, 1, NULL, &reg));
    uint64_t bl;
    uint8_t *blob = t_md(t, &bl);
    kvp_md md;
    OK(kvp_md_decode(blob, bl, &md));
    t_load(a, blob, bl);
    uint64_t lp = t_prep_pages(a, "", m, 4096, 1), rp = t_prep_pages(a, "T", m + 4096, 4096, 1);
    uint32_t z = 0;
    uint64_t req;
    OK(kvp_xfer_create(a, KVP_WRITE, lp, &z, rp, &z, 1, NULL, 0, &req));
    int32_t st0 = kvp_xfer_post(a, req);
    CHECK(st0 == KVP_IN_PROG || st0 == KVP_SUCCESS);
    OK(kvp_xfer_wait(a, req, 5000, NULL, 0, NULL));
    /* T restarts on the same port: same name, new incarnation. */
    OK(kvp_agent_destroy(t));
    char params[64];
    snprintf(params, sizeof params, "listen_port=%u", md.port);
    t = t_agent("T", NULL, params);
    OK(kvp_register(t, KVP_DRAM, &m, &len, NULL, 1, NULL, &reg));
    int32_t st = kvp_xfer_post(a, req);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(a, req, 5000, NULL, 0, NULL);
    CHECK_ST(st, KVP_ERR_REMOTE_DISCONNECT);
    CHECK_MSG(strstr(t_lasterr(), "refused") || strstr(t_lasterr(), "lost"), "%s", t_lasterr());
    /* Once the old connection is gone, every new attempt is refused by the token. */
    st = kvp_xfer_post(a, req);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(a, req, 5000, NULL, 0, NULL);
    CHECK_ST(st, KVP_ERR_REMOTE_DISCONNECT);
    CHECK_ERR_HAS("refused the connection");
    kvp_md_free(&md);
    free(blob);
    OK(kvp_agent_destroy(a));
    OK(kvp_agent_destroy(t));
    OK(kvp_mem_free(m));
}

/* Agent/ffi engineer's report: release an in-flight 32 x 4 MiB WRITE 300 ms into a
 * stalled peer, resume it, and the connection must still carry the next transfer; and a
 * later kill must still fail transfers with REMOTE_DISCONNECT. */
TEST(tcp_release_mid_frame_then_reuse_then_kill) {
    setup s;
    setup_pair(&s, "TCP", NULL, 0, 4 << 20, 32);
    uint64_t one = mkreq(&s, KVP_WRITE, 1), big = mkreq(&s, KVP_WRITE, 32);
    post_wait_ok(&s, big);
    CHECK(kill(s.p.pid, SIGSTOP) == 0);
    CHECK_ST(kvp_xfer_post(s.a, big), KVP_IN_PROG);
    usleep(300 * 1000);
    CHECK_ST(kvp_xfer_status(s.a, big), KVP_IN_PROG);
    OK(kvp_xfer_release(s.a, big));
    CHECK(kill(s.p.pid, SIGCONT) == 0);
    t_fill((void *)(uintptr_t)s.m, 4 << 20, 99);
    int32_t st = kvp_xfer_post(s.a, one);
    CHECK(st == KVP_SUCCESS || st == KVP_IN_PROG);
    OK(kvp_xfer_wait(s.a, one, 10000, NULL, 0, NULL));
    CHECK(t_peer_verify(&s.p, 0, 4 << 20, 99));
    /* And a kill is still detected. */
    CHECK(kill(s.p.pid, SIGSTOP) == 0);
    big = mkreq(&s, KVP_WRITE, 32);
    CHECK_ST(kvp_xfer_post(s.a, big), KVP_IN_PROG);
    usleep(100 * 1000);
    CHECK(kill(s.p.pid, SIGKILL) == 0);
    CHECK_ST(kvp_xfer_wait(s.a, big, 5000, NULL, 0, NULL), KVP_ERR_REMOTE_DISCONNECT);
    t_wait_child(s.p.pid);
    done(&s);
    close(s.p.fd);
}
