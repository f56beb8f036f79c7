/* test_wait_msg.c - the waits hand their message back with the call (issue 12): a
 * wait run on another thread (as Deno runs it on its pool) reports why it failed
 * without anyone reading a thread-local last error that belongs to another thread.
 * Also where memory copies run (issue 15): inside the post up to mem_inline_max, else
 * by the workers and by the waiters. */
#include <pthread.h>
#include <unistd.h>

#include "t.h"

typedef struct waiter {
    uint64_t agent, req;
    int notif;
    int32_t st;
    char msg[1024];
    uint64_t len;
} waiter;

static void *wait_main(void *arg) {
    waiter *w = arg;
    w->st = w->notif ? kvp_notif_wait(w->agent, 10000, (uint8_t *)w->msg, sizeof w->msg, &w->len)
                     : kvp_xfer_wait(w->agent, w->req, 10000, (uint8_t *)w->msg, sizeof w->msg,
                                     &w->len);
    return NULL;
}

TEST(waits_on_another_thread_return_their_own_message) {
    t_peer p;
    t_peer_start(&p, "T", NULL, NULL, 1 << 20, 0);
    uint64_t a = t_agent("I", "TCP", NULL), m, size = 1 << 20, reg;
    t_load(a, p.md, p.mdlen);
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    OK(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    /* A READ past the end of the peer's registration: the peer refuses it. */
    uint64_t lp = t_prep_pages(a, "", m, 4096, 1);
    uint64_t addr = p.base + size - 4096, len = 4096, dl, rp;
    OK(kvp_dlist_create(KVP_DRAM, &addr, &len, NULL, 1, &dl));
    OK(kvp_prep_dlist(a, "T", dl, &rp));
    OK(kvp_dlist_release(dl));
    uint32_t z = 0;
    uint64_t req;
    OK(kvp_xfer_create(a, KVP_READ, lp, &z, rp, &z, 1, NULL, 0, &req));
    waiter w = {a, req, 0, 0, "", 0};
    t_peer_dereg(&p, 4); /* the peer's memory is gone: the READ is refused there */
    int32_t st = kvp_xfer_post(a, req);
    CHECK(st == KVP_IN_PROG || st == KVP_ERR_INVALID_PARAM);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, wait_main, &w) == 0);
    pthread_join(th, NULL);
    /* This thread's last error is about something else. */
    CHECK_ST(kvp_xfer_status(a, 0), KVP_ERR_NOT_FOUND);
    CHECK(!strstr(t_lasterr(), "refused a read"));
    CHECK_ST(w.st, KVP_ERR_INVALID_PARAM);
    CHECK_MSG(strstr(w.msg, "refused a read") && w.len == strlen(w.msg), "wait message: %s", w.msg);
    /* A notification wait woken by the agent's destruction says so, with the call. */
    waiter n = {a, 0, 1, 0, "", 0};
    CHECK(pthread_create(&th, NULL, wait_main, &n) == 0);
    usleep(100000);
    OK(kvp_xfer_release(a, req));
    OK(kvp_prepped_release(a, lp));
    OK(kvp_prepped_release(a, rp));
    OK(kvp_agent_destroy(a));
    pthread_join(th, NULL);
    CHECK_ST(n.st, KVP_ERR_CANCELED);
    CHECK_MSG(strstr(n.msg, "destroyed"), "notif wait message: %s", n.msg);
    /* Success carries no message; NULL buffers are allowed. */
    uint64_t b = t_agent("B", NULL, NULL);
    uint8_t one[1] = {'x'};
    OK(kvp_notif_send(b, "B", one, 1));
    uint64_t l2 = 99;
    OK(kvp_notif_wait(b, 100, NULL, 0, &l2));
    CHECK(l2 == 0);
    OK(kvp_agent_destroy(b));
    OK(kvp_mem_free(m));
    t_peer_stop(&p);
}

static void *release_main(void *arg) {
    waiter *w = arg;
    usleep(50);
    w->st = kvp_xfer_release(w->agent, w->req);
    return NULL;
}

/* A wait of a memory copy runs the jobs no worker has started (issue 15: one thread hop
 * less for Deno's pool-thread waits): several waiters of one request, a release racing
 * the waits, and the bytes checked every time. */
TEST(waiters_of_a_memory_copy_help_and_see_the_bytes) {
    uint64_t a = t_agent("H", "UCX,POSIX", "io_threads=1\n");
    uint64_t page = 4 << 20, n = 8, total = page * n, m, size = 2 * total, reg;
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    OK(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    uint64_t lp = t_prep_pages(a, "", m, page, (uint32_t)n);
    uint64_t rp = t_prep_pages(a, "H", m + total, page, (uint32_t)n);
    uint32_t idx[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    for (uint32_t round = 0; round < 20; round++) {
        t_fill((void *)(uintptr_t)m, total, 100 + round);
        memset((void *)(uintptr_t)(m + total), 0, total);
        uint64_t req;
        OK(kvp_xfer_create(a, KVP_WRITE, lp, idx, rp, idx, (uint32_t)n, NULL, 0, &req));
        int32_t s = kvp_xfer_post(a, req);
        CHECK(s == KVP_SUCCESS || s == KVP_IN_PROG);
        waiter w[2] = {{.agent = a, .req = req}, {.agent = a, .req = req}};
        pthread_t th[2];
        for (int i = 0; i < 2; i++) CHECK(pthread_create(&th[i], NULL, wait_main, &w[i]) == 0);
        OK(kvp_xfer_wait(a, req, 10000, NULL, 0, NULL));
        for (int i = 0; i < 2; i++) {
            CHECK(pthread_join(th[i], NULL) == 0);
            CHECK_ST(w[i].st, KVP_SUCCESS);
        }
        CHECK(t_verify((void *)(uintptr_t)(m + total), total, 100 + round));
        /* Again, released while the waits run: each wait ends (done or cancelled), and
         * nothing touches the pages after the release returned. */
        s = kvp_xfer_post(a, req);
        CHECK(s == KVP_SUCCESS || s == KVP_IN_PROG);
        waiter rel = {.agent = a, .req = req};
        pthread_t rt;
        CHECK(pthread_create(&rt, NULL, release_main, &rel) == 0);
        int32_t ws = kvp_xfer_wait(a, req, 10000, NULL, 0, NULL);
        CHECK(ws == KVP_SUCCESS || ws == KVP_ERR_CANCELED || ws == KVP_ERR_NOT_FOUND);
        CHECK(pthread_join(rt, NULL) == 0);
        OK(rel.st);
    }
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(m));
}

/* A loopback copy of `pages` pages of 1 MiB: done inside the post (SUCCESS, counted
 * inline) when want_inline, else by the workers; the bytes checked either way. */
static void mem_copy(const char *params, uint32_t pages, int want_inline) {
    uint64_t a = t_agent("M", "UCX,POSIX", params);
    uint64_t page = 1 << 20, total = page * pages, m, size = 2 * total, reg;
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    OK(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    uint64_t lp = t_prep_pages(a, "", m, page, pages);
    uint64_t rp = t_prep_pages(a, "M", m + total, page, pages);
    uint32_t idx[16];
    for (uint32_t i = 0; i < pages; i++) idx[i] = i;
    t_fill((void *)(uintptr_t)m, total, 7);
    memset((void *)(uintptr_t)(m + total), 0, total);
    uint64_t req;
    OK(kvp_xfer_create(a, KVP_WRITE, lp, idx, rp, idx, pages, NULL, 0, &req));
    uint64_t before = t_info_num(a, "posts_inline");
    int32_t s = kvp_xfer_post(a, req);
    if (want_inline) {
        CHECK_ST(s, KVP_SUCCESS);
        CHECK(t_info_num(a, "posts_inline") == before + 1);
    } else {
        CHECK(s == KVP_SUCCESS || s == KVP_IN_PROG); /* workers may finish first */
        CHECK(t_info_num(a, "posts_inline") == before);
        OK(kvp_xfer_wait(a, req, 10000, NULL, 0, NULL));
    }
    CHECK(t_verify((void *)(uintptr_t)(m + total), total, 7));
    OK(kvp_xfer_release(a, req));
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(m));
}

TEST(memory_copies_up_to_mem_inline_max_complete_inside_post) {
    mem_copy(NULL, 1, 1);                      /* 1 MiB: the default */
    mem_copy(NULL, 2, 0);                      /* 2 MiB: the workers */
    mem_copy(NULL, 4, 0);                      /* a P2P chunk of 4 MiB: the workers too */
    mem_copy("mem_inline_max=0\n", 4, 0);      /* off */
    mem_copy("mem_inline_max=8388608\n", 8, 1); /* raised */
    uint64_t a = 0;
    CHECK_ST(kvp_agent_create("M2", "builtin", "UCX,POSIX", "mem_inline_max=99999999999", &a),
             KVP_ERR_INVALID_PARAM);
    CHECK_ERR_HAS("mem_inline_max");
}
