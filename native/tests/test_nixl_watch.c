/* test_nixl_watch.c - kvp_event_notify on the nixl engine: the module's watcher thread
 * polls the agent's posted requests and NIXL's notifications and signals the notifier,
 * so a waiter is called after a transfer ends or a notification arrives without polling
 * anything itself; KVP_EVENT_DIRECT calls come from the watcher thread and wait for
 * kvp_event_ack; destroy stops it (no call afterwards); an idle agent gets no call and
 * its watcher sleeps. And a module of the old ABI (2, without the watcher) is refused
 * with the reason. Without NIXL each test prints why and passes (as test_nixl.c). */
#include <libgen.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "t.h"
#include "t_nixl.h"

#define NCTX 8
static atomic_uint_fast64_t g_calls[NCTX];
static atomic_int g_bad;            /* a call with a bad ctx, or after it was forbidden */
static atomic_int g_forbid[NCTX];   /* set: a call for ctx now is a failure */
static pthread_t g_main;
static atomic_int g_on_main;        /* a DIRECT call ran on the test's own thread */

static void fn(uint64_t ctx) {
    if (ctx >= NCTX) {
        atomic_store(&g_bad, 1);
        return;
    }
    if (atomic_load(&g_forbid[ctx])) atomic_store(&g_bad, 2);
    if (pthread_equal(pthread_self(), g_main)) atomic_store(&g_on_main, 1);
    atomic_fetch_add(&g_calls[ctx], 1);
}

static uint64_t calls(uint64_t ctx) { return atomic_load(&g_calls[ctx]); }

/* Waits up to ms for calls(ctx) to exceed `than`. */
static int call_after(uint64_t ctx, uint64_t than, int ms) {
    double end = t_now() + ms / 1000.0;
    while (calls(ctx) <= than) {
        if (t_now() > end) return 0;
        usleep(100);
    }
    return 1;
}

/* Two agents of one process, each with the other's metadata, sharing 4 MiB each. */
typedef struct pair {
    uint64_t a, b, ra, rb, ma, mb, lp, rp;
} pair;

#define PAIR_BYTES (4u << 20)
#define PAGE 4096u
#define PAGES (PAIR_BYTES / PAGE)

static pair pair_open(const char *na, const char *nb, const char *backends) {
    pair p;
    p.a = nixl_agent(na, backends, NULL);
    p.b = nixl_agent(nb, backends, NULL);
    p.ma = alloc_reg(p.a, PAIR_BYTES, &p.ra);
    p.mb = alloc_reg(p.b, PAIR_BYTES, &p.rb);
    uint64_t n;
    uint8_t *md = t_md(p.b, &n);
    t_load(p.a, md, n);
    free(md);
    md = t_md(p.a, &n);
    t_load(p.b, md, n);
    free(md);
    p.lp = prep_pages(p.a, "", KVP_DRAM, p.ma, 0, PAGE, PAGES);
    p.rp = prep_pages(p.a, nb, KVP_DRAM, p.mb, 0, PAGE, PAGES);
    return p;
}

static void pair_close(pair *p) {
    OK(kvp_prepped_release(p->a, p->lp));
    OK(kvp_prepped_release(p->a, p->rp));
    OK(kvp_agent_destroy(p->a));
    OK(kvp_agent_destroy(p->b));
    OK(kvp_mem_free(p->ma));
    OK(kvp_mem_free(p->mb));
}

/* A WRITE of every page of a into b's pages in reverse order, with notification note. */
static uint64_t write_req(pair *p, const char *note) {
    static uint32_t li[PAGES], ri[PAGES];
    for (uint32_t i = 0; i < PAGES; i++) {
        li[i] = i;
        ri[i] = PAGES - 1 - i; /* scattered: NIXL cannot merge them into one message */
    }
    uint64_t req;
    OK(kvp_xfer_create(p->a, KVP_WRITE, p->lp, li, p->rp, ri, PAGES, (const uint8_t *)note,
                       note ? strlen(note) : 0, &req));
    return req;
}

/* b's page PAGES-1-i holds a's page i. */
static int reversed_equal(pair *p) {
    for (uint32_t i = 0; i < PAGES; i++)
        if (memcmp((void *)(uintptr_t)(p->ma + (uint64_t)i * PAGE),
                   (void *)(uintptr_t)(p->mb + (uint64_t)(PAGES - 1 - i) * PAGE), PAGE) != 0)
            return 0;
    return 1;
}

/* Takes one notification of b: its sender and message, NUL-terminated. */
static int take_one(uint64_t b, char *from, char *msg, size_t cap) {
    uint8_t rec[512];
    uint64_t len = 0, count = 0;
    OK(kvp_notif_take(b, rec, sizeof rec, &len, &count));
    if (count == 0) return 0;
    uint32_t nl = (uint32_t)rec[0] | (uint32_t)rec[1] << 8;
    uint32_t ml = (uint32_t)rec[4 + nl] | (uint32_t)rec[5 + nl] << 8;
    CHECK(nl < cap && ml < cap && count == 1);
    memcpy(from, rec + 4, nl);
    from[nl] = 0;
    memcpy(msg, rec + 8 + nl, ml);
    msg[ml] = 0;
    return 1;
}

TEST_T(nixl_watch_calls_after_transfers_and_notifications, 60) {
    NEED_NIXL();
    g_main = pthread_self();
    /* TCP: a WRITE of 1024 scattered pages outlasts its post there (over UCX in one
     * process it often ends inside it). */
    pair p = pair_open("watch-a", "watch-b", "TCP");
    CHECK_ST(kvp_event_notify(p.a, NULL, 1, 0), KVP_ERR_INVALID_PARAM);
    OK(kvp_event_notify(p.a, fn, 1, 0));
    CHECK_ST(kvp_event_notify(p.a, fn, 1, 0), KVP_ERR_NOT_ALLOWED);
    CHECK_ERR_HAS("already");
    OK(kvp_event_notify(p.b, fn, 2, 0));
    char v[64];
    info_value(p.a, "watcher", v, sizeof v);
    CHECK_MSG(strcmp(v, "1") == 0, "watcher=%s", v);
    /* Idle: no call, and the watcher sleeps (a spinning one polls 10^4+ times in 50 ms). */
    uint64_t polls0 = t_info_num(p.a, "watcher_polls");
    usleep(50 * 1000);
    uint64_t polls = t_info_num(p.a, "watcher_polls") - polls0;
    CHECK_MSG(calls(1) == 0 && calls(2) == 0, "idle agents called %llu and %llu times",
              (unsigned long long)calls(1), (unsigned long long)calls(2));
    CHECK_MSG(polls < 1000, "an idle watcher polled %llu times in 50 ms",
              (unsigned long long)polls);
    uint64_t req = write_req(&p, "written");
    int in_prog = 0;
    for (uint32_t round = 1; round <= 10; round++) {
        t_fill((void *)(uintptr_t)p.ma, PAIR_BYTES, round);
        uint64_t c1 = calls(1), c2 = calls(2);
        int32_t st = kvp_xfer_post(p.a, req);
        if (st == KVP_IN_PROG) {
            /* Nobody polls the request: the call says it ended. */
            in_prog++;
            CHECK_MSG(call_after(1, c1, 10000), "round %u: no call after the WRITE", round);
            /* What the watcher saw is what the status says, again and again. */
            OK(kvp_xfer_status(p.a, req));
            OK(kvp_xfer_status(p.a, req));
        } else {
            OK(st); /* done inside the post: nothing to wait for */
        }
        CHECK_MSG(reversed_equal(&p), "round %u: b's pages differ", round);
        /* The notification of the WRITE: a call on b, then it is there to take. */
        CHECK_MSG(call_after(2, c2, 10000), "round %u: no call on b for the notification", round);
        char from[64], msg[64];
        CHECK_MSG(take_one(p.b, from, msg, sizeof from), "round %u: called, nothing queued", round);
        CHECK_MSG(strcmp(from, "watch-a") == 0 && strcmp(msg, "written") == 0,
                  "round %u: notification '%s' from '%s'", round, msg, from);
    }
    CHECK_MSG(in_prog > 0, "every WRITE of 1024 scattered pages ended inside its post: no wait was tested");
    OK(kvp_xfer_release(p.a, req));
    /* A standalone notification, each way. */
    uint64_t c1 = calls(1), c2 = calls(2);
    OK(kvp_notif_send(p.b, "watch-a", (const uint8_t *)"to-a", 4));
    CHECK(call_after(1, c1, 10000));
    OK(kvp_notif_send(p.a, "watch-b", (const uint8_t *)"to-b", 4));
    CHECK(call_after(2, c2, 10000));
    char from[64], msg[64];
    CHECK(take_one(p.a, from, msg, sizeof from) && strcmp(from, "watch-b") == 0 &&
          strcmp(msg, "to-a") == 0);
    CHECK(take_one(p.b, from, msg, sizeof from) && strcmp(from, "watch-a") == 0 &&
          strcmp(msg, "to-b") == 0);
    CHECK(t_info_num(p.a, "watcher_signals") >= 2);
    pair_close(&p);
    OK(kvp_event_quiesce(fn, 5000));
    CHECK(atomic_load(&g_bad) == 0);
    CHECK(atomic_load(&g_on_main) == 0);
}

TEST_T(nixl_watch_direct_calls_wait_for_ack, 60) {
    NEED_NIXL();
    g_main = pthread_self();
    pair p = pair_open("direct-a", "direct-b", "UCX");
    OK(kvp_event_notify(p.b, fn, 3, KVP_EVENT_DIRECT));
    OK(kvp_event_ack(p.b)); /* nothing to acknowledge: fine */
    OK(kvp_notif_send(p.a, "direct-b", (const uint8_t *)"1", 1));
    CHECK_MSG(call_after(3, 0, 10000), "no direct call for a notification");
    /* Not acknowledged: more notifications make no call. */
    OK(kvp_notif_send(p.a, "direct-b", (const uint8_t *)"2", 1));
    OK(kvp_notif_send(p.a, "direct-b", (const uint8_t *)"3", 1));
    /* Both arrived (taken by a wait, which pulls from NIXL itself if the watcher has not). */
    uint8_t rec[512];
    uint64_t len, count = 0, total = 0;
    double end = t_now() + 10;
    while (total < 3 && t_now() < end) {
        OK(kvp_notif_wait(p.b, 1000, NULL, 0, NULL));
        OK(kvp_notif_take(p.b, rec, sizeof rec, &len, &count));
        total += count;
    }
    CHECK_MSG(total == 3, "%llu of 3 notifications", (unsigned long long)total);
    usleep(20 * 1000); /* the watcher has seen them by now (it polls at least every 1 ms) */
    CHECK_MSG(calls(3) == 1, "%llu direct calls before the ack", (unsigned long long)calls(3));
    OK(kvp_event_ack(p.b));
    OK(kvp_notif_send(p.a, "direct-b", (const uint8_t *)"4", 1));
    CHECK_MSG(call_after(3, 1, 10000), "no direct call after the ack");
    OK(kvp_notif_take(p.b, rec, sizeof rec, &len, &count));
    CHECK(count == 1 && rec[8 + 8] == '4'); /* name "direct-a" (8 bytes), then u32 len */
    pair_close(&p);
    OK(kvp_event_quiesce(fn, 5000));
    CHECK(atomic_load(&g_bad) == 0);
    CHECK_MSG(atomic_load(&g_on_main) == 0, "a direct call ran on the test's thread");
}

/* Destroy while the watcher polls a request in flight and notifications come: no call
 * once destroy returned (ASan: nothing of the agent touched after), for both kinds. */
TEST_T(nixl_watch_destroy_while_it_runs, 60) {
    NEED_NIXL();
    g_main = pthread_self();
    for (int direct = 0; direct <= 1; direct++) {
        uint64_t ca = 4 + 2 * (uint64_t)direct, cb = ca + 1;
        pair p = pair_open(direct ? "gone-da" : "gone-a", direct ? "gone-db" : "gone-b", "TCP");
        uint32_t flags = direct ? KVP_EVENT_DIRECT : 0;
        OK(kvp_event_notify(p.a, fn, ca, flags));
        OK(kvp_event_notify(p.b, fn, cb, flags));
        uint64_t req = write_req(&p, "late");
        t_fill((void *)(uintptr_t)p.ma, PAIR_BYTES, 77);
        int32_t st = kvp_xfer_post(p.a, req);
        CHECK_MSG(st == KVP_IN_PROG || st == KVP_SUCCESS, "post: %s", kvp_status_name(st));
        OK(kvp_notif_send(p.a, direct ? "gone-db" : "gone-b", (const uint8_t *)"x", 1));
        /* a first (its request in flight, released by destroy), then b. */
        OK(kvp_agent_destroy(p.a));
        atomic_store(&g_forbid[ca], 1);
        OK(kvp_agent_destroy(p.b));
        atomic_store(&g_forbid[cb], 1);
        usleep(30 * 1000);
        OK(kvp_mem_free(p.ma));
        OK(kvp_mem_free(p.mb));
    }
    OK(kvp_event_quiesce(fn, 5000));
    CHECK_MSG(atomic_load(&g_bad) == 0, "a call after its agent was destroyed (%d)",
              atomic_load(&g_bad));
}

/* Engine nixl's kvp_event_fd stays unsupported (kvp_event_notify serves both runtimes). */
TEST(nixl_watch_event_fd_not_supported) {
    NEED_NIXL();
    uint64_t a = nixl_agent("no-fd", "UCX", NULL);
    int32_t fd = -1;
    CHECK_ST(kvp_event_fd(a, &fd), KVP_ERR_NOT_SUPPORTED);
    OK(kvp_agent_destroy(a));
}

/* A module of ABI 2 (tools/fake_nixl_abi2.c: kvpn_module_get answers only abi 2, as a
 * module built before the watcher did) is refused, saying so: when it is the only module,
 * the reason names the ABI; when the real module sits next to the library (a build with
 * NIXL), the loader goes on to that one, and the list of what was tried says why the old
 * one was passed over. Runs with or without NIXL. */
TEST(nixl_module_of_old_abi_refused) {
    char exe[1024], mod[1200];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    CHECK(n > 0);
    exe[n] = 0;
    snprintf(mod, sizeof mod, "%s/fake/libkvport_nixl_abi2.so", dirname(exe));
    CHECK_MSG(access(mod, R_OK) == 0, "%s is missing (the Makefile builds it)", mod);
    setenv("KVPORT_NIXL_MODULE", mod, 1);
    uint8_t buf[8192];
    uint64_t len = 0;
    OK(kvp_engine_probe("nixl", buf, sizeof buf - 1, &len));
    buf[len] = 0;
    const char *text = (const char *)buf;
    CHECK_MSG(strstr(text, "libkvport_nixl_abi2.so(wrong module ABI)"), "probe: %s", text);
    CHECK_MSG(!strstr(text, "fake module of ABI 2"), "the old module answered: %s", text);
    if (strstr(text, "available=0")) {
        CHECK_MSG(strstr(text, "not a nixl engine module of ABI 3"), "probe: %s", text);
        uint64_t a;
        CHECK_ST(kvp_agent_create("old-abi", "nixl", "UCX", NULL, &a), KVP_ERR_NOT_SUPPORTED);
    } else {
        CHECK_MSG(strstr(text, "libkvport_nixl.so(loaded)"), "probe: %s", text);
    }
    unsetenv("KVPORT_NIXL_MODULE");
}
