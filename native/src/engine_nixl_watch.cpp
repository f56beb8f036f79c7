// engine_nixl_watch.cpp - the agent's watcher (kvpn_module.agent_watch), behind
// kvp_event_notify on the nixl engine.
//
// NIXL has no completion callback and no descriptor to sleep on: getXferStatus and
// getNotifs are polls. So one thread per watched agent polls what can change - the
// requests a post left IN_PROG (handed over by post_on) and NIXL's notifications - and
// calls signal(ctx) (the host's notifier) when a request it polled left IN_PROG or it
// queued notifications. Between rounds it sleeps until the next poll is due (see
// WATCH_FIRST, WATCH_SHARE, Pace below) on its own condition variable, which a post
// notifies only when the sleep ends after the new request's first poll, so a post costs a
// lock, a push and a clock read, no system call, while the watcher is polling. Rules kept:
//  - a request's mutex is only ever tried (try_lock) and never held across a sleep or
//    across signal: a caller polling the same request wins, and records the same status
//    (nixl#2049: one thread at a time on a NIXL request); a request a caller polled since
//    the last round (Req::status_calls moved: a waiter's spin) is left to that caller;
//  - what the watcher reads is recorded on the request (record_status), as a caller's
//    status call would; NIXL keeps a finished request's status until it is posted again,
//    and status_on answers SUCCESS from the record, so a success the watcher saw is the
//    one the waiter's next kvp_xfer_status returns;
//  - signal runs with no lock of the module held (a KVP_EVENT_DIRECT notifier runs the
//    runtime's callback right there);
//  - agent_wake and agent_destroy stop and join the thread before anything is freed, so
//    no signal comes after agent_destroy returned.

#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>

#include "engine_nixl_internal.hpp"

namespace kvpn {

namespace {

using us = std::chrono::microseconds;
// A request is first polled this long after its post: the runtime's waiter
// polls it itself first (src/agent/transfer.ts: 50 us, up to 200 us), and a watcher
// polling beside it on a 2-core machine took CPU and the UCX worker from it (measured:
// 4 KiB p50 1.4x raw NIXL instead of 1.1x, bench/nixl_bench.ts).
constexpr us WATCH_FIRST{50};
// Then the sleep between polls is 1/16 of the time the request has been in flight (at
// least WATCH_MIN, at most WATCH_CAP): its end is seen at most ~6% late (32 us below
// 512 us), ~3% of a 16 MiB request's time (5 ms over TCP), in ~16 polls per doubling of
// its time. A plain doubling backoff (2 us, 4, 8, ...) sees an end up to 100% late:
// measured, it tripled the 4 KiB p99; polls every 4 us took the CPU of a 2-core machine
// from the transfers themselves (more of them outlasted the waiter's spin). Over TCP each
// poll also progresses UCX (NIXL's UCX backend runs its worker in getXferStatus), so
// sleeping long is lost bandwidth too.
constexpr int WATCH_SHARE = 16;
constexpr us WATCH_MIN{32};
// Longest sleep: how late an idle agent sees a notification at most (the library's own
// waits, kvp_xfer_wait / kvp_notif_wait, cap at 1 ms too).
constexpr us WATCH_CAP{1000};

// Backoff of the notification polls: WATCH_NOTIF_MIN doubling to WATCH_CAP, reset when
// notifications came.
constexpr us WATCH_NOTIF_MIN{8};
struct Pace {
    us next{WATCH_NOTIF_MIN};
    void reset() { next = WATCH_NOTIF_MIN; }
    us step() {
        us d = next;
        next = std::min(next * 2, WATCH_CAP);
        return d;
    }
};

// A request in flight: when it was posted (Req::posted_at, read when the watcher takes
// it or sees Req::posts move: posted again), for the pace.
struct Live {
    std::shared_ptr<Req> req;
    Clock::time_point since;
    uint64_t posts;
    uint64_t status_calls; // Req::status_calls at the last round
};

// The requests posted before the watcher started (their posts saw no watcher).
void adopt_posted(Agent &a, std::vector<Live> &live) {
    std::vector<std::shared_ptr<Req>> all;
    {
        std::lock_guard<std::mutex> g(a.mu);
        all.reserve(a.reqs.size());
        for (auto &[h, r] : a.reqs) all.push_back(r);
    }
    // a.mu is not held here: post_on takes r.mu before a.mu (peer_current).
    for (auto &r : all) {
        std::lock_guard<std::mutex> g(r->mu);
        if (r->posted && r->last == KVP_IN_PROG && !r->released && r->h && !r->watched) {
            r->watched = true;
            live.push_back({r, Clock::now(), r->posts, r->status_calls});
        }
    }
}

// One round over the requests in flight: true when one of them left IN_PROG here.
// *due becomes the earliest time one of those still in flight wants its next poll.
bool poll_requests(Agent &a, std::vector<Live> &live, Clock::time_point *due) {
    bool fired = false;
    const auto now = Clock::now();
    for (size_t i = 0; i < live.size();) {
        Live &l = live[i];
        Req &r = *l.req;
        std::unique_lock<std::mutex> lk(r.mu, std::try_to_lock);
        if (!lk.owns_lock()) { // a caller is on it now: next round
            *due = std::min(*due, now + WATCH_MIN);
            i++;
            continue;
        }
        if (r.posts != l.posts) { // new, or posted again since the last round: a new wait
            l.posts = r.posts;
            l.since = r.posted_at;
        }
        auto age = std::chrono::duration_cast<us>(now - l.since);
        bool drop;
        if (r.released || !r.h || r.last != KVP_IN_PROG) {
            // Released, or its end was seen by a caller's own status call (which told that
            // caller): nothing to say.
            drop = true;
        } else if (age < WATCH_FIRST) {
            *due = std::min(*due, l.since + WATCH_FIRST);
            l.status_calls = r.status_calls;
            i++;
            continue;
        } else if (r.status_calls != l.status_calls) {
            // A caller polled it since the last round (a waiter's spin): it sees the end
            // itself; polling beside it only makes it wait for this mutex.
            l.status_calls = r.status_calls;
            *due = std::min(*due, now + WATCH_MIN);
            i++;
            continue;
        } else {
            log_capture_reset();
            int32_t s = record_status(a, r, a.nixl->getXferStatus(r.h), "getXferStatus");
            drop = s != KVP_IN_PROG;
            fired = fired || drop;
        }
        if (!drop) {
            *due = std::min(*due, now + std::clamp(age / WATCH_SHARE, WATCH_MIN, WATCH_CAP));
            i++;
            continue;
        }
        r.watched = false;
        lk.unlock();
        live[i] = std::move(live.back());
        live.pop_back();
    }
    return fired;
}

// Moves NIXL's notifications into the agent's queue (as pull_notifs does): true when some
// came. *usable becomes false when no backend of the agent has notifications (POSIX
// alone): the callers' own kvp_notif_take still says so.
bool poll_notifs(Agent &a, bool *usable) {
    std::lock_guard<std::mutex> g(a.notif_mu);
    nixl_notifs_t m;
    log_capture_reset();
    nixl_status_t s = a.nixl->getNotifs(m);
    size_t before = a.notifs.size();
    for (auto &[peer, msgs] : m)
        for (auto &msg : msgs) a.notifs.emplace_back(peer, std::move(msg));
    if (s == NIXL_ERR_BACKEND && m.empty()) *usable = false;
    log_capture_take(); // the watcher reports nothing: drop what NIXL logged
    return a.notifs.size() > before;
}

void watch_main(Agent *ap, Watcher *w) {
    (void)pthread_setname_np(pthread_self(), "kvp-nixl-watch");
    // Linux lets a normal thread's timed sleeps end up to 50 us late (timer slack), more
    // than the 32 us steps here: 1 us, so a poll comes when it is due.
    (void)prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    Agent &a = *ap;
    std::vector<Live> live;
    try {
        adopt_posted(a, live);
        bool notifs = true;
        Pace npace;
        auto notif_next = Clock::now();
        for (;;) {
            if (w->has_new.load(std::memory_order_acquire)) {
                std::lock_guard<std::mutex> g(w->mu);
                // since/posts: read under the request's mutex in poll_requests.
                for (auto &r : w->queue) live.push_back({std::move(r), Clock::now(), 0, 0});
                w->queue.clear();
                w->has_new.store(false, std::memory_order_relaxed);
            }
            w->polls.fetch_add(1, std::memory_order_relaxed);
            auto due = Clock::time_point::max();
            bool fire = !live.empty() && poll_requests(a, live, &due);
            // Notifications on their own backoff, reset only by notifications: NIXL's
            // getNotifs takes the agent's lock exclusively and runs UCX's progress loop, so
            // polling it at the requests' pace stalled the posts and status polls of the
            // agent's own callers (4 KiB p50 1.5x instead of 1.1x raw NIXL).
            auto now = Clock::now();
            if (notifs && now >= notif_next) {
                if (poll_notifs(a, &notifs)) {
                    fire = true;
                    npace.reset();
                }
                now = Clock::now();
                notif_next = now + npace.step();
            }
            if (fire) {
                w->signals.fetch_add(1, std::memory_order_relaxed);
                w->signal(w->ctx); // no lock held
            }
            if (notifs) due = std::min(due, notif_next);
            due = std::min(due, now + WATCH_CAP);
            std::unique_lock<std::mutex> lk(w->mu);
            if (w->stop) break;
            if (w->has_new.load(std::memory_order_relaxed)) continue;
            w->wake_at = due;
            w->cv.wait_until(lk, due);
            w->wake_at = Clock::time_point::min();
            if (w->stop) break;
        }
    } catch (...) {
        // Out of memory in a push: the watcher ends (posts stop handing requests over);
        // waits still end at their deadlines (the callers poll too), nothing is left locked.
        std::lock_guard<std::mutex> g(w->mu);
        w->stop = true;
    }
    for (auto &l : live) {
        std::lock_guard<std::mutex> g(l.req->mu);
        l.req->watched = false;
    }
}

} // namespace

void watch_posted(Watcher &w, Req &r, const std::shared_ptr<Req> &ref) {
    if (r.watched) return;
    bool wake;
    {
        std::lock_guard<std::mutex> g(w.mu);
        if (w.stop) return;
        w.queue.push_back(ref);
        w.has_new.store(true, std::memory_order_release);
        // Asleep past the request's first poll: wake it now (a lock, a push and a clock
        // read otherwise: no system call while it polls).
        wake = w.wake_at > r.posted_at + WATCH_FIRST;
    }
    r.watched = true;
    if (wake) w.cv.notify_one();
}

void watch_stop(Agent &a, bool drop) {
    std::lock_guard<std::mutex> g(a.watch_mu);
    a.watch_closed = true;
    Watcher *w = a.watch_owner.get();
    if (!w) return;
    {
        std::lock_guard<std::mutex> s(w->mu);
        w->stop = true;
    }
    w->cv.notify_all();
    if (w->th.joinable()) w->th.join();
    if (drop) {
        // No call is in flight (agent_destroy): no post reads `watcher` any more.
        a.watcher.store(nullptr, std::memory_order_release);
        a.watch_owner.reset();
    }
}

int32_t agent_watch(uint64_t handle, void (*signal)(void *ctx), void *ctx) {
    return guarded([&]() -> int32_t {
        if (!signal) fail(KVP_ERR_INVALID_PARAM, "agent_watch: signal is NULL");
        AgentRef a(handle);
        std::lock_guard<std::mutex> g(a->watch_mu);
        if (a->watch_closed || a->closing.load())
            fail(KVP_ERR_CANCELED, "agent '" + a->name + "' is being destroyed");
        if (a->watch_owner && a->watch_owner->th.joinable())
            fail(KVP_ERR_NOT_ALLOWED, "agent '" + a->name + "' has a watcher already");
        // One whose thread could not start is reused: a post may still hold its address
        // (`watcher`), so it lives until agent_destroy.
        if (!a->watch_owner) a->watch_owner = std::make_unique<Watcher>();
        Watcher *w = a->watch_owner.get();
        {
            std::lock_guard<std::mutex> s(w->mu);
            w->signal = signal;
            w->ctx = ctx;
            w->stop = false;
        }
        // Published before the thread starts: a post from now on hands its request over,
        // one before is found by the thread's first look at the table (adopt_posted).
        a->watcher.store(w, std::memory_order_release);
        // The thread takes no signal of the runtime's (they stay with its own threads).
        sigset_t all, old;
        sigfillset(&all);
        int mrc = pthread_sigmask(SIG_SETMASK, &all, &old);
        try {
            w->th = std::thread(watch_main, &*a, w);
        } catch (const std::system_error &e) {
            if (mrc == 0) (void)pthread_sigmask(SIG_SETMASK, &old, nullptr);
            {
                std::lock_guard<std::mutex> s(w->mu);
                w->stop = true; // posts stop handing requests over (a retry takes the queue)
            }
            fail(KVP_ERR_BACKEND, "agent '" + a->name + "': cannot start the watcher thread: " +
                                      e.what());
        }
        if (mrc == 0) (void)pthread_sigmask(SIG_SETMASK, &old, nullptr);
        return KVP_SUCCESS;
    });
}

} // namespace kvpn
