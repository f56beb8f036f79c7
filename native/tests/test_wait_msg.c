/* test_wait_msg.c - the waits hand their message back with the call (issue 12): a
 * wait run on another thread (as Deno runs it on its pool) reports why it failed
 * without anyone reading a thread-local last error that belongs to another thread. */
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
