// engine_nixl_xfer.cpp - transfers and notifications of the nixl engine.
//
// NIXL has no blocking wait: getXferStatus and getNotifs are polls. kvp_xfer_wait and
// kvp_notif_wait poll them with sleeps that start at 2 us and double up to 1 ms, never
// past the caller's deadline, on a condition variable that release and destroy signal,
// so a wait never spins and never outlives its request or agent. Each request has its
// own mutex: NIXL requires that one request handle is never used by two threads at once
// (nixl#2049); the mutex is held only around NIXL calls, never across a sleep.

#include <cstring>
#include <thread>

#include "engine_nixl_internal.hpp"

namespace kvpn {

namespace {

std::string hex(uint64_t v) {
    char b[24];
    std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
    return b;
}

std::shared_ptr<Req> find_req(Agent &a, uint64_t h) {
    std::lock_guard<std::mutex> g(a.mu);
    auto it = a.reqs.find(h);
    if (it == a.reqs.end())
        fail(KVP_ERR_NOT_FOUND, "no request " + hex(h) + " on agent '" + a.name +
                                    "' (released, or made by another agent)");
    return it->second;
}

// find_req for the hot calls: a small per-thread cache of the requests this thread used
// last, so that a post or a status poll takes no agent lock and copies no shared_ptr.
// An entry keeps its request's memory alive (never its NIXL handle: release and destroy
// mark it released under its mutex, and post/status check that first); handles are never
// reused, so an entry can only ever stand for its own request. The cached reference stays
// put for the whole call (a call looks up one request).
struct ReqCacheEntry {
    const Agent *agent = nullptr;
    uint64_t handle = 0;
    std::shared_ptr<Req> req;
};
constexpr size_t REQ_CACHE = 4;
thread_local ReqCacheEntry t_reqs[REQ_CACHE];

const std::shared_ptr<Req> &req_on(Agent &a, uint64_t h) {
    ReqCacheEntry &e = t_reqs[h % REQ_CACHE];
    if (e.handle == h && e.agent == &a && e.req) return e.req;
    auto r = find_req(a, h);
    e.agent = &a;
    e.handle = h;
    e.req = std::move(r);
    return e.req;
}

// The request's peer is still the one it was made for (not invalidated or restarted).
// r.mu held. Hot path of every post: no lock and no name lookup while no peer has left
// since the last check (Agent::peers_epoch).
bool peer_current(Agent &a, Req &r) {
    if (r.loopback) return true;
    uint64_t epoch = a.peers_epoch.load(std::memory_order_acquire);
    if (r.epoch_ok == epoch) return true;
    std::lock_guard<std::mutex> g(a.mu);
    bool ok = a.peer_gen(r.remote) == r.remote_gen;
    if (ok) r.epoch_ok = epoch;
    return ok;
}

} // namespace

int32_t record_status(Agent &a, Req &r, int32_t s, const char *what) {
    r.last = s;
    if (s < 0) {
        r.message = nixl_failure(std::string(what) + " towards '" + r.remote + "'", s);
        if (s == KVP_ERR_REMOTE_DISCONNECT) {
            r.message += "; NIXL dropped the peer: load its metadata again (after it restarts)";
            peer_lost(a, r.remote, r.remote_gen);
        }
        set_last_error(r.message);
    }
    return s;
}

void peer_lost(Agent &a, const std::string &peer, uint64_t gen) {
    std::lock_guard<std::mutex> g(a.mu);
    auto it = a.peers.find(peer);
    if (it != a.peers.end() && it->second == gen) a.forget_peer_locked(peer);
}

int32_t release_req_locked(Agent &a, Req &r, std::string &why) {
    if (!r.h) return KVP_SUCCESS;
    nixl_status_t s = a.nixl->releaseXferReq(r.h);
    if (s == NIXL_SUCCESS) {
        r.h = nullptr;
        return KVP_SUCCESS;
    }
    // The backend could not abort it: let it finish (bounded), then release it.
    auto deadline = Clock::now() + std::chrono::seconds(2);
    Backoff b;
    while (Clock::now() < deadline && a.nixl->getXferStatus(r.h) == NIXL_IN_PROG)
        std::this_thread::sleep_for(b.step());
    s = a.nixl->releaseXferReq(r.h);
    if (s == NIXL_SUCCESS) {
        r.h = nullptr;
        return KVP_SUCCESS;
    }
    why = nixl_failure("releaseXferReq (the backend could neither cancel nor finish it in 2 s)",
                       s);
    return s;
}

int32_t xfer_create(uint64_t handle, int32_t op, uint64_t local_prepped,
                    const uint32_t *local_idx, uint64_t remote_prepped,
                    const uint32_t *remote_idx, uint64_t count, const uint8_t *notif,
                    uint64_t notif_len, uint64_t *out_req) {
    return guarded([&]() -> int32_t {
        if (!out_req) fail(KVP_ERR_INVALID_PARAM, "out_req is NULL");
        *out_req = 0;
        AgentRef a(handle);
        if (op != KVP_READ && op != KVP_WRITE)
            fail(KVP_ERR_INVALID_PARAM, "op " + std::to_string(op) + ": expected 0 (READ) or 1 (WRITE)");
        if (count == 0) fail(KVP_ERR_INVALID_PARAM, "count is 0: a request moves at least one descriptor");
        if (count > 0x7fffffffULL) fail(KVP_ERR_INVALID_PARAM, "count exceeds NIXL's int index range");
        if (!local_idx || !remote_idx)
            fail(KVP_ERR_INVALID_PARAM, "local_idx and remote_idx must be arrays of count");
        if (notif_len > KVP_NOTIF_MAX_BYTES)
            fail(KVP_ERR_INVALID_PARAM, "notification of " + std::to_string(notif_len) +
                                            " bytes: at most 65536");
        if (notif_len > 0 && !notif) fail(KVP_ERR_INVALID_PARAM, "notif is NULL while notif_len > 0");

        std::vector<int> li(count), ri(count);
        auto r = std::make_shared<Req>();
        std::lock_guard<std::mutex> g(a->mu); // keeps both lists alive through makeXferReq
        auto lit = a->prepped.find(local_prepped);
        auto rit = a->prepped.find(remote_prepped);
        if (lit == a->prepped.end())
            fail(KVP_ERR_NOT_FOUND, "local_prepped " + hex(local_prepped) +
                                        " is not a prepared list of agent '" + a->name + "'");
        if (rit == a->prepped.end())
            fail(KVP_ERR_NOT_FOUND, "remote_prepped " + hex(remote_prepped) +
                                        " is not a prepared list of agent '" + a->name + "'");
        Prepped &lp = *lit->second, &rp = *rit->second;
        if (!lp.remote.empty())
            fail(KVP_ERR_INVALID_PARAM, "local_prepped was prepared for '" + lp.remote +
                                            "': expected one prepared with remote \"\"");
        if (rp.remote.empty())
            fail(KVP_ERR_INVALID_PARAM, "remote_prepped was prepared for the local side: expected "
                                        "one prepared for a peer (or for this agent's own name)");
        if (rp.remote != a->name && a->peer_gen(rp.remote) != rp.remote_gen)
            fail(KVP_ERR_NOT_FOUND, "peer '" + rp.remote +
                                        "' was invalidated (or restarted) after remote_prepped was "
                                        "prepared: load its metadata and prepare the list again");
        for (uint64_t i = 0; i < count; i++) {
            if (local_idx[i] >= lp.lens.size())
                fail(KVP_ERR_INVALID_PARAM, "local_idx[" + std::to_string(i) + "] = " +
                                                std::to_string(local_idx[i]) + ": the list has " +
                                                std::to_string(lp.lens.size()) + " descriptors");
            if (remote_idx[i] >= rp.lens.size())
                fail(KVP_ERR_INVALID_PARAM, "remote_idx[" + std::to_string(i) + "] = " +
                                                std::to_string(remote_idx[i]) + ": the list has " +
                                                std::to_string(rp.lens.size()) + " descriptors");
            if (lp.lens[local_idx[i]] != rp.lens[remote_idx[i]])
                fail(KVP_ERR_MISMATCH, "pair " + std::to_string(i) + ": local descriptor " +
                                           std::to_string(local_idx[i]) + " has " +
                                           std::to_string(lp.lens[local_idx[i]]) +
                                           " bytes, remote descriptor " +
                                           std::to_string(remote_idx[i]) + " has " +
                                           std::to_string(rp.lens[remote_idx[i]]));
            li[i] = static_cast<int>(local_idx[i]);
            ri[i] = static_cast<int>(remote_idx[i]);
        }
        nixl_opt_args_t args;
        if (notif_len > 0) args.notif = nixl_blob_t(reinterpret_cast<const char *>(notif), notif_len);
        nixlXferReqH *h = nullptr;
        nixl_status_t s = a->nixl->makeXferReq(static_cast<nixl_xfer_op_t>(op), lp.h, li, rp.h, ri,
                                               h, notif_len > 0 ? &args : nullptr);
        if (s != NIXL_SUCCESS)
            fail(s, nixl_failure(std::string("makeXferReq (") + (op == KVP_READ ? "READ" : "WRITE") +
                                     ", " + std::to_string(count) + " descriptors, towards '" +
                                     rp.remote + "')",
                                 s));
        r->h = h;
        r->remote = rp.remote;
        r->remote_gen = rp.remote_gen;
        r->loopback = rp.remote == a->name;
        uint64_t rh = new_handle(Kind::Req);
        a->reqs.emplace(rh, r);
        *out_req = rh;
        return KVP_SUCCESS;
    });
}

namespace {

// Posts r (the hot path: no lock but the request's own, no lookup while the peer set
// has not changed). A request left IN_PROG goes to the agent's watcher, if it has one.
int32_t post_on(Agent &a, uint64_t req) {
    const std::shared_ptr<Req> &ref = req_on(a, req);
    Req &r = *ref;
    std::lock_guard<std::mutex> g(r.mu);
    if (r.released || !r.h) fail(KVP_ERR_NOT_FOUND, "request " + hex(req) + " was released");
    if (!peer_current(a, r))
        fail(KVP_ERR_NOT_FOUND, "peer '" + r.remote +
                                    "' was invalidated (or restarted) after this request was "
                                    "made: load its metadata and make the request again");
    nixl_status_t s = a.nixl->postXferReq(r.h);
    r.posted = true;
    r.posts++;
    if (s == NIXL_ERR_REPOST_ACTIVE) {
        set_last_error("request " + hex(req) + " is still in progress: wait for it before "
                       "posting it again");
        return s; // the request itself has not failed (and is watched if it was posted so)
    }
    record_status(a, r, s, "postXferReq");
    if (s == NIXL_IN_PROG)
        if (Watcher *w = a.watcher.load(std::memory_order_acquire)) {
            r.posted_at = Clock::now(); // the watcher's first poll is timed from here
            watch_posted(*w, r, ref);
        }
    return s;
}

int32_t status_on(Agent &a, uint64_t req) {
    Req &r = *req_on(a, req);
    std::lock_guard<std::mutex> g(r.mu);
    if (r.released) fail(KVP_ERR_NOT_FOUND, "request " + hex(req) + " was released");
    if (!r.posted) {
        // Said here, not left to a cleared message: the hot path does not clear it.
        set_last_error("request " + hex(req) + " was never posted");
        return KVP_ERR_NOT_POSTED;
    }
    if (r.last < 0) {
        set_last_error(r.message);
        return r.last;
    }
    // Done stays done until the next post (which records its own status): NIXL itself
    // answers SUCCESS again, but the watcher may have seen it first, so say it from here.
    if (r.last == KVP_SUCCESS) return KVP_SUCCESS;
    r.status_calls++; // a caller polls it: the watcher stays off it meanwhile
    return record_status(a, r, a.nixl->getXferStatus(r.h), "getXferStatus");
}

// The agent behind kvpn_module.agent_object, refused once it is closing (as AgentRef).
Agent &agent_on(void *p) {
    auto *a = static_cast<Agent *>(p);
    if (!a || a->closing.load(std::memory_order_acquire))
        fail(KVP_ERR_NOT_FOUND, "nixl engine: no such agent (destroyed, or being destroyed)");
    return *a;
}

} // namespace

int32_t xfer_post(uint64_t handle, uint64_t req) {
    return guarded([&]() -> int32_t {
        AgentRef a(handle);
        return post_on(*a, req);
    });
}

int32_t xfer_post_on(void *agent, uint64_t req) {
    return guarded_hot([&]() -> int32_t { return post_on(agent_on(agent), req); });
}

int32_t xfer_status(uint64_t handle, uint64_t req) {
    return guarded([&]() -> int32_t {
        AgentRef a(handle);
        return status_on(*a, req);
    });
}

int32_t xfer_status_on(void *agent, uint64_t req) {
    return guarded_hot([&]() -> int32_t { return status_on(agent_on(agent), req); });
}

int32_t xfer_wait(uint64_t handle, uint64_t req, int64_t timeout_ms) {
    return guarded([&]() -> int32_t {
        AgentRef a(handle);
        if (timeout_ms < 0)
            fail(KVP_ERR_INVALID_PARAM, "timeout_ms " + std::to_string(timeout_ms) + ": expected >= 0");
        auto r = find_req(*a, req);
        const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
        Backoff b;
        for (;;) {
            {
                std::lock_guard<std::mutex> g(r->mu);
                if (r->released || a->closing.load())
                    fail(KVP_ERR_CANCELED, std::string("request ") + hex(req) + " was cancelled: " +
                                               (r->released ? "it was released" : "its agent was destroyed") +
                                               " during the wait");
                if (!r->posted) fail(KVP_ERR_NOT_POSTED, "request " + hex(req) + " was never posted");
                if (r->last < 0) {
                    set_last_error(r->message);
                    return r->last;
                }
                int32_t s = record_status(*a, *r, a->nixl->getXferStatus(r->h), "getXferStatus");
                if (s != KVP_IN_PROG) return s;
            }
            auto now = Clock::now();
            if (now >= deadline) return KVP_IN_PROG;
            auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline - now);
            agent_nap(*a, std::min(b.step(), left + std::chrono::microseconds(1)));
        }
    });
}

int32_t xfer_message(uint64_t handle, uint64_t req, uint8_t *buf, uint64_t cap, uint64_t *len) {
    return guarded([&]() -> int32_t {
        AgentRef a(handle);
        auto r = find_req(*a, req);
        std::lock_guard<std::mutex> g(r->mu);
        return sized_out(r->message.data(), r->message.size(), buf, cap, len);
    });
}

int32_t xfer_release(uint64_t handle, uint64_t req) {
    return guarded([&]() -> int32_t {
        AgentRef a(handle);
        std::shared_ptr<Req> r;
        {
            std::lock_guard<std::mutex> g(a->mu);
            auto it = a->reqs.find(req);
            if (it == a->reqs.end())
                fail(KVP_ERR_NOT_FOUND, "no request " + hex(req) + " on agent '" + a->name +
                                            "' (already released?)");
            r = it->second;
            a->reqs.erase(it);
        }
        {
            std::lock_guard<std::mutex> g(a->wait_mu);
            a->wait_cv.notify_all();
        }
        std::lock_guard<std::mutex> g(r->mu);
        r->released = true;
        {
            std::lock_guard<std::mutex> w(a->wait_mu);
            a->wait_cv.notify_all();
        }
        std::string why;
        int32_t s = release_req_locked(*a, *r, why);
        if (s != KVP_SUCCESS) {
            // Keep it so that a later release or the agent's destroy tries again.
            r->released = false;
            std::lock_guard<std::mutex> t(a->mu);
            a->reqs.emplace(req, r);
            fail(s, why);
        }
        return KVP_SUCCESS;
    });
}

// ---------------------------------------------------------- notifications ----

namespace {

// Moves NIXL's queued notifications into ours (notif_mu held). A failure of getNotifs
// is returned only when nothing is queued, so one bad backend does not hide the rest.
int32_t pull_notifs(Agent &a) {
    nixl_notifs_t m;
    nixl_status_t s = a.nixl->getNotifs(m);
    for (auto &[peer, msgs] : m)
        for (auto &msg : msgs) a.notifs.emplace_back(peer, std::move(msg));
    if (s != NIXL_SUCCESS && a.notifs.empty()) {
        std::string hint = s == NIXL_ERR_BACKEND
                               ? " (needs a backend with notifications, e.g. UCX)"
                               : "";
        fail(s, nixl_failure("getNotifs", s) + hint);
    }
    return KVP_SUCCESS;
}

} // namespace

int32_t notif_send(uint64_t handle, const char *remote, const uint8_t *msg, uint64_t len) {
    return guarded([&]() -> int32_t {
        AgentRef a(handle);
        if (!remote || !*remote) fail(KVP_ERR_INVALID_PARAM, "remote is empty: expected a loaded peer's name");
        if (len > KVP_NOTIF_MAX_BYTES)
            fail(KVP_ERR_INVALID_PARAM, "notification of " + std::to_string(len) + " bytes: at most 65536");
        if (len > 0 && !msg) fail(KVP_ERR_INVALID_PARAM, "msg is NULL while len > 0");
        nixl_blob_t blob(reinterpret_cast<const char *>(msg), len);
        nixl_status_t s = a->nixl->genNotif(remote, blob);
        if (s != NIXL_SUCCESS) {
            if (s == NIXL_ERR_REMOTE_DISCONNECT) {
                std::lock_guard<std::mutex> g(a->mu);
                a->forget_peer_locked(remote);
            }
            fail(s, nixl_failure(std::string("genNotif to '") + remote + "'", s));
        }
        return KVP_SUCCESS;
    });
}

int32_t notif_take(uint64_t handle, uint8_t *buf, uint64_t cap, uint64_t *len, uint64_t *count) {
    return guarded([&]() -> int32_t {
        AgentRef a(handle);
        if (!len || !count) fail(KVP_ERR_INVALID_PARAM, "len and count must be out-pointers");
        *len = 0;
        *count = 0;
        if (cap > 0 && !buf) fail(KVP_ERR_INVALID_PARAM, "buf is NULL while cap > 0");
        std::lock_guard<std::mutex> g(a->notif_mu);
        pull_notifs(*a);
        uint64_t off = 0, n = 0;
        while (!a->notifs.empty()) {
            auto &[peer, msg] = a->notifs.front();
            uint64_t rec = 8 + peer.size() + msg.size();
            if (off + rec > cap) {
                if (n == 0) *len = rec; // even the first does not fit: say how much it needs
                break;
            }
            auto put32 = [&](uint32_t v) {
                for (int i = 0; i < 4; i++) buf[off++] = static_cast<uint8_t>(v >> (8 * i));
            };
            put32(static_cast<uint32_t>(peer.size()));
            std::memcpy(buf + off, peer.data(), peer.size());
            off += peer.size();
            put32(static_cast<uint32_t>(msg.size()));
            std::memcpy(buf + off, msg.data(), msg.size());
            off += msg.size();
            n++;
            a->notifs.pop_front();
        }
        if (n > 0) *len = off;
        *count = n;
        return KVP_SUCCESS;
    });
}

int32_t notif_wait(uint64_t handle, int64_t timeout_ms) {
    return guarded([&]() -> int32_t {
        AgentRef a(handle);
        if (timeout_ms < 0)
            fail(KVP_ERR_INVALID_PARAM, "timeout_ms " + std::to_string(timeout_ms) + ": expected >= 0");
        const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
        Backoff b;
        for (;;) {
            if (a->closing.load())
                fail(KVP_ERR_CANCELED, "agent '" + a->name + "' was destroyed during the wait");
            {
                std::lock_guard<std::mutex> g(a->notif_mu);
                if (a->notifs.empty()) pull_notifs(*a);
                if (!a->notifs.empty()) return KVP_SUCCESS;
            }
            auto now = Clock::now();
            if (now >= deadline) return KVP_IN_PROG;
            auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline - now);
            agent_nap(*a, std::min(b.step(), left + std::chrono::microseconds(1)));
        }
    });
}

} // namespace kvpn
