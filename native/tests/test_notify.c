/* test_notify.c - kvp_event_notify / kvp_event_quiesce: a notifier thread per agent
 * calls fn(ctx) after events, coalescing what comes while a call runs; destroy never
 * waits for a call in progress (a Deno callback blocks until the JavaScript thread,
 * the one destroying, is free), and no call runs or starts once kvp_event_quiesce said
 * so. */
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "t.h"

#define MAXCTX 64
static atomic_uint_fast64_t g_calls[MAXCTX];
static atomic_int g_inside;        /* calls running now */
static atomic_int g_block_ms;      /* each call sleeps this long (a busy event loop) */
static atomic_int g_gate_closed;   /* calls wait while set */
static atomic_int g_after_quiesce; /* set by a test: a call now is a failure */
static atomic_int g_bad;

static void fn(uint64_t ctx) {
    atomic_fetch_add(&g_inside, 1);
    if (atomic_load(&g_after_quiesce)) atomic_store(&g_bad, 1);
    if (ctx < MAXCTX) atomic_fetch_add(&g_calls[ctx], 1);
    else atomic_store(&g_bad, 2);
    int ms = atomic_load(&g_block_ms);
    if (ms > 0) usleep((useconds_t)ms * 1000);
    while (atomic_load(&g_gate_closed)) usleep(200);
    atomic_fetch_sub(&g_inside, 1);
}

/* A second function: quiescing one leaves the other's notifiers alone. */
static atomic_uint_fast64_t g_other_calls;
static void other_fn(uint64_t ctx) {
    (void)ctx;
    atomic_fetch_add(&g_other_calls, 1);
}

static uint64_t calls(uint64_t ctx) { return atomic_load(&g_calls[ctx]); }

/* Waits up to ms for calls(ctx) to reach want. */
static int wait_calls(uint64_t ctx, uint64_t want, int ms) {
    double end = t_now() + ms / 1000.0;
    while (calls(ctx) < want) {
        if (t_now() > end) return 0;
        usleep(100);
    }
    return 1;
}

static void notify_self(uint64_t a, const char *name) {
    OK(kvp_notif_send(a, name, (const uint8_t *)"x", 1));
}

TEST_T(notify_calls_after_each_event_and_checks_arguments, 30) {
    uint64_t a = t_agent("N1", NULL, NULL);
    CHECK_ST(kvp_event_notify(a, NULL, 1, 0), KVP_ERR_INVALID_PARAM);
    CHECK_ST(kvp_event_quiesce(NULL, 10), KVP_ERR_INVALID_PARAM);
    OK(kvp_event_notify(a, fn, 1, 0));
    CHECK_ST(kvp_event_notify(a, fn, 1, 0), KVP_ERR_NOT_ALLOWED);
    CHECK_ERR_HAS("already");
    usleep(20000);
    CHECK_MSG(calls(1) == 0, "called %llu times before any event", (unsigned long long)calls(1));
    for (uint64_t i = 1; i <= 50; i++) {
        notify_self(a, "N1");
        CHECK_MSG(wait_calls(1, i, 5000), "no call for event %llu", (unsigned long long)i);
        /* Settled: nothing else pending, so exactly one call per event here. */
        usleep(300);
        CHECK_MSG(calls(1) == i, "%llu calls for %llu events", (unsigned long long)calls(1),
                  (unsigned long long)i);
    }
    uint8_t buf[4096];
    uint64_t len = 0, count = 0;
    OK(kvp_notif_take(a, buf, sizeof buf, &len, &count));
    CHECK(count == 50);
    OK(kvp_agent_destroy(a));
    OK(kvp_event_quiesce(fn, 5000));
    CHECK(atomic_load(&g_bad) == 0);
}

TEST_T(notify_coalesces_events_that_come_during_a_call, 30) {
    uint64_t a = t_agent("N2", NULL, NULL);
    OK(kvp_event_notify(a, fn, 2, 0));
    atomic_store(&g_gate_closed, 1);
    notify_self(a, "N2");
    CHECK(wait_calls(2, 1, 5000));
    /* The call is held: 1000 events meanwhile make one more call, not 1000. */
    for (int i = 0; i < 1000; i++) notify_self(a, "N2");
    usleep(20000);
    CHECK(calls(2) == 1);
    atomic_store(&g_gate_closed, 0);
    CHECK(wait_calls(2, 2, 5000));
    usleep(50000);
    CHECK_MSG(calls(2) == 2, "%llu calls for 1001 events, expected 2 (coalesced)",
              (unsigned long long)calls(2));
    OK(kvp_agent_destroy(a));
    OK(kvp_event_quiesce(fn, 5000));
}

/* An agent with kvp_event_notify(fn, ctx, flags) and a WRITE request of 8 pages of 4 MiB
 * (32 MiB filled with `seed`) into a forked peer's memory. */
typedef struct {
    t_peer p;
    uint64_t a, m, lp, rp, req;
    uint32_t seed;
} notified_write;

static void notified_write_start(notified_write *w, const char *peer, const char *agent,
                                 uint64_t ctx, uint32_t flags, uint32_t seed) {
    uint64_t size = 32 << 20, reg;
    t_peer_start(&w->p, peer, NULL, NULL, size, 4);
    w->a = t_agent(agent, NULL, NULL);
    w->seed = seed;
    t_load(w->a, w->p.md, w->p.mdlen);
    OK(kvp_event_notify(w->a, fn, ctx, flags));
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &w->m));
    t_fill((void *)(uintptr_t)w->m, size, seed);
    OK(kvp_register(w->a, KVP_DRAM, &w->m, &size, NULL, 1, NULL, &reg));
    w->lp = t_prep_pages(w->a, "", w->m, 4 << 20, 8);
    w->rp = t_prep_pages(w->a, peer, w->p.base, 4 << 20, 8);
    uint32_t idx[8];
    for (uint32_t i = 0; i < 8; i++) idx[i] = i;
    OK(kvp_xfer_create(w->a, KVP_WRITE, w->lp, idx, w->rp, idx, 8, NULL, 0, &w->req));
}

/* Checks the peer holds every byte, then releases everything and quiesces fn. */
static void notified_write_stop(notified_write *w) {
    CHECK(t_peer_verify(&w->p, 0, 32 << 20, w->seed));
    OK(kvp_xfer_release(w->a, w->req));
    OK(kvp_prepped_release(w->a, w->lp));
    OK(kvp_prepped_release(w->a, w->rp));
    OK(kvp_agent_destroy(w->a));
    OK(kvp_event_quiesce(fn, 5000));
    OK(kvp_mem_free(w->m));
    t_peer_stop(&w->p);
}

TEST_T(notify_a_finished_transfer_calls_fn, 60) {
    notified_write w;
    notified_write_start(&w, "NT", "NI", 3, 0, 9);
    uint64_t a = w.a, req = w.req;
    int pending_posts = 0;
    for (int round = 0; round < 20; round++) {
        int32_t st = kvp_xfer_post(a, req);
        if (st == KVP_IN_PROG) pending_posts++;
        /* A call may still be on its way for an earlier round's finish (the notifier
         * thread runs behind the post), so one call proves nothing about this request.
         * What must hold: a request seen in progress is followed by a call after it
         * finished. The count is read before the status, so a finish after the status
         * read can only raise it past `seen`. */
        for (int looks = 0; st == KVP_IN_PROG; looks++) {
            uint64_t seen = calls(3);
            st = kvp_xfer_status(a, req);
            if (st != KVP_IN_PROG) break;
            CHECK_MSG(looks < 1000, "1000 calls and the request is still in progress");
            CHECK_MSG(wait_calls(3, seen + 1, 10000), "no call for a request that finished");
        }
        OK(st);
    }
    CHECK_MSG(pending_posts > 0, "every 8 MiB post finished inline: nothing was waited for");
    notified_write_stop(&w);
}

typedef struct {
    uint64_t agent;
    double took;
} destroy_job;

static void *destroy_thread(void *arg) {
    destroy_job *j = arg;
    double t0 = t_now();
    int32_t st = kvp_agent_destroy(j->agent);
    j->took = st == KVP_SUCCESS ? t_now() - t0 : -1;
    return NULL;
}

TEST_T(notify_destroy_while_fn_blocks_neither_waits_nor_calls_after_quiesce, 30) {
    uint64_t a = t_agent("N4", NULL, NULL);
    OK(kvp_event_notify(a, fn, 4, 0));
    atomic_store(&g_block_ms, 100); /* like a Deno callback while JavaScript is busy */
    notify_self(a, "N4");
    CHECK(wait_calls(4, 1, 5000));
    CHECK(atomic_load(&g_inside) == 1);
    notify_self(a, "N4"); /* pending behind the running call: must never be called */
    /* Destroy from another thread, as the JavaScript thread would: it must not wait for
     * the call (in Deno that call waits for the destroying thread). */
    destroy_job j = {.agent = a};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, destroy_thread, &j) == 0);
    CHECK(pthread_join(th, NULL) == 0);
    CHECK_MSG(j.took >= 0 && j.took < 0.08, "destroy took %.3f s while fn was blocked", j.took);
    CHECK(atomic_load(&g_inside) == 1); /* still inside: destroy did not wait */
    /* A quiesce shorter than the call says so; a longer one waits for it. */
    CHECK_ST(kvp_event_quiesce(fn, 5), KVP_IN_PROG);
    CHECK_ERR_HAS("still inside");
    double t0 = t_now();
    OK(kvp_event_quiesce(fn, 5000));
    CHECK_MSG(atomic_load(&g_inside) == 0, "quiesce returned while fn was running");
    CHECK(t_now() - t0 < 2.0);
    atomic_store(&g_block_ms, 0);
    atomic_store(&g_after_quiesce, 1);
    usleep(50000);
    CHECK_MSG(calls(4) == 1, "%llu calls: the event pending at destroy was delivered",
              (unsigned long long)calls(4));
    CHECK(atomic_load(&g_bad) == 0);
}

TEST_T(notify_quiesce_stops_live_agents_of_that_fn_only, 30) {
    uint64_t a = t_agent("N5", NULL, NULL), b = t_agent("N6", NULL, NULL);
    OK(kvp_event_notify(a, fn, 5, 0));
    OK(kvp_event_notify(b, other_fn, 6, 0));
    notify_self(a, "N5");
    CHECK(wait_calls(5, 1, 5000));
    OK(kvp_event_quiesce(fn, 5000));
    atomic_store(&g_after_quiesce, 1);
    /* a is alive but its notifier is stopped: events no longer call fn, nothing breaks. */
    for (int i = 0; i < 10; i++) notify_self(a, "N5");
    uint64_t before = atomic_load(&g_other_calls);
    notify_self(b, "N6");
    double end = t_now() + 5;
    while (atomic_load(&g_other_calls) == before && t_now() < end) usleep(100);
    CHECK_MSG(atomic_load(&g_other_calls) > before, "quiescing fn stopped another function's notifier");
    usleep(20000);
    CHECK(calls(5) == 1);
    CHECK(atomic_load(&g_bad) == 0);
    OK(kvp_agent_destroy(a));
    OK(kvp_agent_destroy(b));
    OK(kvp_event_quiesce(other_fn, 5000));
}

TEST_T(notify_many_agents_each_get_their_own_calls, 60) {
    enum { N = 48 };
    uint64_t ag[N];
    char names[N][32];
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++) {
            snprintf(names[i], sizeof names[i], "M%d_%d", round, i);
            ag[i] = t_agent(names[i], NULL, NULL);
            OK(kvp_event_notify(ag[i], fn, (uint64_t)(8 + i % 8), 0));
        }
        uint64_t before[8];
        for (int c = 0; c < 8; c++) before[c] = calls((uint64_t)(8 + c));
        for (int i = 0; i < N; i++) notify_self(ag[i], names[i]);
        /* Every agent's event reached fn with its own ctx: N/8 agents per ctx. */
        for (int c = 0; c < 8; c++)
            CHECK_MSG(wait_calls((uint64_t)(8 + c), before[c] + N / 8, 10000),
                      "ctx %d: %llu calls, expected %d more", 8 + c,
                      (unsigned long long)calls((uint64_t)(8 + c)), N / 8);
        /* Half destroyed first, then quiesce stops the rest, then they go too. */
        for (int i = 0; i < N / 2; i++) OK(kvp_agent_destroy(ag[i]));
        OK(kvp_event_quiesce(fn, 5000));
        for (int i = N / 2; i < N; i++) OK(kvp_agent_destroy(ag[i]));
    }
    CHECK(atomic_load(&g_bad) == 0);
}

typedef struct {
    uint64_t agent;
    const char *name;
} send_job;

static void *send_thread(void *arg) {
    send_job *j = arg;
    (void)kvp_notif_send(j->agent, j->name, (const uint8_t *)"x", 1);
    return NULL;
}

TEST_T(notify_direct_calls_on_the_signalling_thread_and_quiesce_waits_for_them, 60) {
    uint64_t a = t_agent("D1", NULL, NULL);
    CHECK_ST(kvp_event_notify(a, fn, 20, 2), KVP_ERR_INVALID_PARAM);
    CHECK_ERR_HAS("flags");
    OK(kvp_event_notify(a, fn, 20, KVP_EVENT_DIRECT));
    /* A loopback notification is queued by the sending thread: the call is made there,
     * before kvp_notif_send returns; then none until acknowledged (coalesced). */
    for (uint64_t i = 1; i <= 100; i++) {
        notify_self(a, "D1");
        CHECK_MSG(calls(20) == i, "%llu calls after %llu events", (unsigned long long)calls(20),
                  (unsigned long long)i);
        notify_self(a, "D1"); /* not acknowledged yet: coalesced */
        CHECK(calls(20) == i);
        OK(kvp_event_ack(a));
    }
    /* A call in progress on another thread: quiesce waits for it (bounded). */
    atomic_store(&g_block_ms, 100);
    send_job j = {.agent = a, .name = "D1"};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, send_thread, &j) == 0);
    double end = t_now() + 5;
    while (atomic_load(&g_inside) == 0 && t_now() < end) usleep(100);
    CHECK(atomic_load(&g_inside) == 1);
    CHECK_ST(kvp_event_quiesce(fn, 5), KVP_IN_PROG);
    OK(kvp_event_quiesce(fn, 5000));
    CHECK_MSG(atomic_load(&g_inside) == 0, "quiesce returned while a direct call was running");
    atomic_store(&g_block_ms, 0);
    atomic_store(&g_after_quiesce, 1);
    notify_self(a, "D1"); /* stopped: no call */
    CHECK(pthread_join(th, NULL) == 0);
    CHECK(calls(20) == 101);
    OK(kvp_event_ack(a)); /* after quiesce: harmless, still no call */
    notify_self(a, "D1");
    CHECK(calls(20) == 101);
    OK(kvp_agent_destroy(a));
    CHECK(atomic_load(&g_bad) == 0);
}

TEST_T(notify_direct_a_finished_transfer_calls_fn_after_the_lock, 60) {
    notified_write w;
    notified_write_start(&w, "DT", "DI", 21, KVP_EVENT_DIRECT, 11);
    uint64_t a = w.a, req = w.req;
    int pending_posts = 0;
    for (int round = 0; round < 20; round++) {
        uint64_t before = calls(21);
        OK(kvp_event_ack(a)); /* the last call was "run" */
        int32_t st = kvp_xfer_post(a, req);
        if (st == KVP_IN_PROG) {
            pending_posts++;
            CHECK_MSG(wait_calls(21, before + 1, 10000), "no call for a request that finished");
            OK(kvp_xfer_status(a, req)); /* called after the finish: done */
        } else {
            OK(st);
        }
    }
    CHECK(pending_posts > 0);
    notified_write_stop(&w);
}

/* kvp_agent_info's stamps (clock_ns, last_done_ns, last_notif_in_ns, wake_call_ns) are on
 * one monotonic clock and move with what they stamp: the benchmarks' timelines rest on
 * them. Each stamp must fall between the clock read before its event and after it. */
TEST_T(notify_info_stamps_follow_the_finish_the_notification_and_the_call, 60) {
    notified_write w;
    notified_write_start(&w, "ST", "SI", 23, 0, 13);
    uint64_t a = w.a, req = w.req;
    CHECK(t_info_num(a, "last_done_ns") == 0);
    CHECK(t_info_num(a, "wake_call_ns") == 0);
    uint64_t t0 = t_info_num(a, "clock_ns");
    int32_t st = kvp_xfer_post(a, req);
    while (st == KVP_IN_PROG) {
        usleep(100);
        st = kvp_xfer_status(a, req);
    }
    OK(st);
    uint64_t t1 = t_info_num(a, "clock_ns");
    uint64_t done = t_info_num(a, "last_done_ns");
    CHECK_MSG(done >= t0 && done <= t1, "last_done_ns %llu outside [%llu, %llu]",
              (unsigned long long)done, (unsigned long long)t0, (unsigned long long)t1);
    /* A notification to itself: queued, then the notifier calls fn. The call for the
     * finished request may still be on its way: let the calls settle first, so that the
     * next one is the notification's (else its stamp can precede the notification). */
    uint64_t before = calls(23);
    for (int quiet = 0; quiet < 20;) {
        usleep(1000);
        uint64_t now = calls(23);
        quiet = now == before ? quiet + 1 : 0;
        before = now;
    }
    uint64_t t2 = t_info_num(a, "clock_ns");
    notify_self(a, "SI");
    CHECK_MSG(wait_calls(23, before + 1, 10000), "no call for the notification");
    /* The stamps first, the clock after: a later call can only move them before t3. */
    uint64_t in = t_info_num(a, "last_notif_in_ns"), call = t_info_num(a, "wake_call_ns");
    uint64_t t3 = t_info_num(a, "clock_ns");
    CHECK_MSG(in >= t2 && in <= t3, "last_notif_in_ns %llu outside [%llu, %llu]",
              (unsigned long long)in, (unsigned long long)t2, (unsigned long long)t3);
    CHECK_MSG(call >= in && call <= t3, "wake_call_ns %llu outside [%llu, %llu]",
              (unsigned long long)call, (unsigned long long)in, (unsigned long long)t3);
    notified_write_stop(&w);
}
