// engine_nixl.cpp - the nixl engine: kvport.h's agent model over NIXL's nixlAgent.
//
// Built into libkvport_nixl.so only when NIXL is found; libkvport.so loads it with
// dlopen (engine_nixl.h). This file: errors, handles, agent lifecycle, registration,
// metadata, prepared lists and the module table. Transfers and notifications are in
// engine_nixl_xfer.cpp, the probe in engine_nixl_probe.cpp, NIXL's log capture in
// engine_nixl_log.cpp.
//
// Rules of NIXL kept here:
//  - the agent runs with a progress thread and NIXL's RW thread-sync mode, because
//    kvp_xfer_wait runs on other threads than the rest of the calls;
//  - every request, prepared list and registration is released before the agent is
//    destroyed, and destroy waits until every call in flight has left; the agent's
//    watcher (engine_nixl_watch.cpp) is joined at wake/destroy, before any of it goes;
//  - a restarted peer must be invalidated before its new metadata loads (NIXL answers
//    NOT_ALLOWED, passed through with the fix in the message);
//  - no C++ exception crosses the C ABI.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <sstream>

#include <utils/serdes/serdes.h>

#include "engine_nixl_internal.hpp"

#ifndef KVPN_NIXL_VERSION
#define KVPN_NIXL_VERSION "unknown"
#endif
#ifndef KVPN_NIXL_PREFIX
#define KVPN_NIXL_PREFIX "unknown"
#endif

namespace kvpn {

// ------------------------------------------------------------------ errors ----

namespace {
thread_local std::string t_last_error;
}

void fail(int32_t status, std::string message) { throw Fail{status, std::move(message)}; }

void set_last_error(std::string message) noexcept {
    try {
        t_last_error = std::move(message);
    } catch (...) {
    }
}
void clear_last_error() noexcept { t_last_error.clear(); }
const char *last_error_cstr() { return t_last_error.c_str(); }

const char *status_name(int32_t s) {
    switch (s) {
    case KVP_IN_PROG: return "NIXL_IN_PROG";
    case KVP_SUCCESS: return "NIXL_SUCCESS";
    case KVP_ERR_NOT_POSTED: return "NIXL_ERR_NOT_POSTED";
    case KVP_ERR_INVALID_PARAM: return "NIXL_ERR_INVALID_PARAM";
    case KVP_ERR_BACKEND: return "NIXL_ERR_BACKEND";
    case KVP_ERR_NOT_FOUND: return "NIXL_ERR_NOT_FOUND";
    case KVP_ERR_MISMATCH: return "NIXL_ERR_MISMATCH";
    case KVP_ERR_NOT_ALLOWED: return "NIXL_ERR_NOT_ALLOWED";
    case KVP_ERR_REPOST_ACTIVE: return "NIXL_ERR_REPOST_ACTIVE";
    case KVP_ERR_UNKNOWN: return "NIXL_ERR_UNKNOWN";
    case KVP_ERR_NOT_SUPPORTED: return "NIXL_ERR_NOT_SUPPORTED";
    case KVP_ERR_REMOTE_DISCONNECT: return "NIXL_ERR_REMOTE_DISCONNECT";
    case KVP_ERR_CANCELED: return "NIXL_ERR_CANCELED";
    case KVP_ERR_NO_TELEMETRY: return "NIXL_ERR_NO_TELEMETRY";
    default: return "NIXL_ERR_UNKNOWN_STATUS";
    }
}

std::string nixl_failure(const std::string &what, int32_t status) {
    std::string m = what + ": " + status_name(status);
    std::string cap = log_capture_take();
    if (!cap.empty()) m += " (NIXL: " + cap + ")";
    return m;
}

// --------------------------------------------------------------- helpers ----

int32_t sized_out(const void *src, uint64_t n, uint8_t *buf, uint64_t cap, uint64_t *len) {
    if (!len) fail(KVP_ERR_INVALID_PARAM, "len (uint64_t *) is NULL: expected an out-pointer");
    *len = n;
    if (cap >= n && n > 0) {
        if (!buf) fail(KVP_ERR_INVALID_PARAM, "buf is NULL while cap > 0");
        std::memcpy(buf, src, n);
    }
    return KVP_SUCCESS;
}

std::string trim(const std::string &s) {
    size_t b = 0, e = s.size();
    while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) b++;
    while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) e--;
    return s.substr(b, e - b);
}

std::vector<std::string> split(const std::string &s, char sep) {
    std::vector<std::string> out;
    std::string cur;
    std::istringstream in(s);
    while (std::getline(in, cur, sep)) out.push_back(cur);
    return out;
}

std::string upper(std::string s) {
    for (auto &c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return s;
}

const char *mem_name(int32_t m) {
    switch (m) {
    case KVP_DRAM: return "DRAM";
    case KVP_VRAM: return "VRAM";
    case KVP_BLK: return "BLK";
    case KVP_OBJ: return "OBJ";
    case KVP_FILE: return "FILE";
    default: return "?";
    }
}

namespace {
std::atomic<uint64_t> g_counter{1};
constexpr uint64_t kTag = 0x4EULL << 56; // 'N'
} // namespace

uint64_t new_handle(Kind kind) {
    return kTag | (static_cast<uint64_t>(kind) << 48) |
           (g_counter.fetch_add(1) & 0xFFFFFFFFFFFFULL);
}

const char *kind_name(Kind k) {
    switch (k) {
    case Kind::Agent: return "agent";
    case Kind::Reg: return "registration";
    case Kind::Prepped: return "prepared list";
    case Kind::Req: return "request";
    }
    return "?";
}

static std::string hex(uint64_t v) {
    char b[24];
    std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
    return b;
}

// ---------------------------------------------------------------- agents ----

namespace {
// Never destroyed: agents the program did not destroy must not be torn down by static
// destructors at exit, after NIXL's own statics (its plugin manager) are gone.
std::mutex &g_agents_mu = *new std::mutex;
std::unordered_map<uint64_t, std::shared_ptr<Agent>> &g_agents =
    *new std::unordered_map<uint64_t, std::shared_ptr<Agent>>;
} // namespace

uint64_t Agent::peer_gen(const std::string &peer) {
    auto it = peers.find(peer);
    return it == peers.end() ? 0 : it->second;
}

bool Agent::forget_peer_locked(const std::string &peer) {
    bool erased = peers.erase(peer) > 0;
    if (erased) peers_epoch.fetch_add(1, std::memory_order_release);
    return erased;
}

AgentRef::AgentRef(uint64_t handle) {
    {
        std::lock_guard<std::mutex> g(g_agents_mu);
        auto it = g_agents.find(handle);
        if (it != g_agents.end() && !it->second->closing.load()) {
            a_ = it->second;
            a_->calls.fetch_add(1);
        }
    }
    if (!a_)
        fail(KVP_ERR_NOT_FOUND, "nixl engine: no agent with handle " + hex(handle) +
                                    " (destroyed, or not a nixl-engine agent)");
}

AgentRef::~AgentRef() {
    if (a_->calls.fetch_sub(1) == 1 && a_->closing.load()) {
        std::lock_guard<std::mutex> g(a_->calls_mu);
        a_->calls_cv.notify_all();
    }
}

void *agent_object(uint64_t handle) {
    std::lock_guard<std::mutex> g(g_agents_mu);
    auto it = g_agents.find(handle);
    return it == g_agents.end() ? nullptr : it->second.get();
}

void agent_nap(Agent &a, std::chrono::microseconds d) {
    std::unique_lock<std::mutex> lk(a.wait_mu);
    if (a.closing.load()) return;
    a.wait_cv.wait_for(lk, d);
}

namespace {

struct Params {
    std::map<std::string, std::string> agent;                 // plain keys
    std::map<std::string, nixl_b_params_t> backend;           // BACKEND -> key -> value
};

// Keys the builtin engine understands: accepted (so "auto" can take the same params)
// and reported as ignored in kvp_agent_info.
const char *const kBuiltinKeys[] = {"listen_host",      "listen_port",      "advertise_host",
                                    "io_threads",       "dereg_timeout_ms", "max_remotes",
                                    "max_grants",       "max_read_queue",   "max_inbound_conns",
                                    "hello_timeout_ms", "max_notifs",       "max_notif_bytes"};
const char *const kNixlKeys[] = {"progress_thread", "sync_mode", "pthr_delay_us"};

Params parse_params(const char *params) {
    Params p;
    if (!params) return p;
    int lineno = 0;
    for (const auto &raw : split(params, '\n')) {
        lineno++;
        std::string line = trim(raw);
        if (line.empty() || line[0] == '#') continue;
        auto eq = line.find('=');
        if (eq == std::string::npos || eq == 0)
            fail(KVP_ERR_INVALID_PARAM, "params line " + std::to_string(lineno) + " '" + line +
                                            "': expected key=value");
        std::string key = trim(line.substr(0, eq));
        std::string val = trim(line.substr(eq + 1));
        auto dot = key.find('.');
        if (dot != std::string::npos) {
            std::string be = upper(key.substr(0, dot));
            std::string bk = key.substr(dot + 1);
            if (be.empty() || bk.empty())
                fail(KVP_ERR_INVALID_PARAM,
                     "params key '" + key + "': expected BACKEND.key (e.g. UCX.num_workers)");
            p.backend[be][bk] = val;
        } else {
            p.agent[key] = val;
        }
    }
    return p;
}

bool parse_bool(const std::string &key, const std::string &v) {
    std::string l = upper(v);
    if (l == "1" || l == "TRUE" || l == "YES" || l == "ON") return true;
    if (l == "0" || l == "FALSE" || l == "NO" || l == "OFF") return false;
    fail(KVP_ERR_INVALID_PARAM, "params " + key + "=" + v + ": expected 0 or 1");
}

std::shared_ptr<Agent> take_agent(uint64_t handle) {
    std::lock_guard<std::mutex> g(g_agents_mu);
    auto it = g_agents.find(handle);
    if (it == g_agents.end()) return nullptr;
    auto a = it->second;
    g_agents.erase(it);
    return a;
}

// Releases everything NIXL holds for the agent, then the agent itself. Called with no
// call in flight. Returns a summary of what could not be released ("" when all went).
std::string teardown(Agent &a) {
    std::string problems;
    if (!a.nixl) return problems;
    // Requests first (they reference prepared lists), then lists, then memory.
    for (auto &[h, r] : a.reqs) {
        std::lock_guard<std::mutex> g(r->mu);
        r->released = true;
        std::string why;
        if (r->h && release_req_locked(a, *r, why) != KVP_SUCCESS)
            problems += "request " + hex(h) + ": " + why + "; ";
    }
    a.reqs.clear();
    for (auto &[h, p] : a.prepped) {
        if (p->h) a.nixl->releasedDlistH(p->h);
        p->h = nullptr;
    }
    a.prepped.clear();
    for (auto &[h, r] : a.regs) {
        nixl_status_t s = a.nixl->deregisterMem(r->list);
        if (s != NIXL_SUCCESS) problems += nixl_failure("deregisterMem " + hex(h), s) + "; ";
    }
    a.regs.clear();
    for (auto &[peer, gen] : a.peers) a.nixl->invalidateRemoteMD(peer);
    a.peers.clear();
    a.peers_epoch.fetch_add(1, std::memory_order_release);
    if (problems.find("request") != std::string::npos) {
        // A request NIXL could not cancel may still touch memory or call back into the
        // agent: leaking the agent is the only safe choice.
        (void)a.nixl.release();
        problems += "the NIXL agent was leaked to keep the process safe";
    } else {
        a.nixl.reset();
    }
    return problems;
}

int32_t agent_create(const char *name, const char *backends, const char *params,
                     uint64_t *out_agent) {
    return guarded([&]() -> int32_t {
        if (!out_agent) fail(KVP_ERR_INVALID_PARAM, "out_agent is NULL");
        *out_agent = 0;
        if (!name) fail(KVP_ERR_INVALID_PARAM, "name is NULL: expected 1..255 bytes");
        size_t nlen = std::strlen(name);
        if (nlen == 0 || nlen > 255)
            fail(KVP_ERR_INVALID_PARAM,
                 "agent name has " + std::to_string(nlen) + " bytes: expected 1..255");
        log_capture_install();

        auto a = std::make_shared<Agent>();
        a->name = name;
        Params p = parse_params(params);
        for (auto &[k, v] : p.agent) {
            if (k == "progress_thread") {
                a->progress_thread = parse_bool(k, v);
            } else if (k == "sync_mode") {
                std::string m = upper(v);
                if (m == "RW") a->sync_mode = "rw";
                else if (m == "STRICT") a->sync_mode = "strict";
                else
                    fail(KVP_ERR_INVALID_PARAM,
                         "params sync_mode=" + v +
                             ": expected rw or strict (none is unsafe: waits run on other "
                             "threads)");
            } else if (k == "pthr_delay_us") {
                char *end = nullptr;
                unsigned long long d = std::strtoull(v.c_str(), &end, 10);
                if (v.empty() || *end || d == 0 || d > 1000000)
                    fail(KVP_ERR_INVALID_PARAM, "params pthr_delay_us=" + v +
                                                    ": expected 1..1000000 (0 makes NIXL's "
                                                    "progress thread spin)");
                a->pthr_delay_us = d;
            } else if (k == "page_grants") {
                // Honest: NIXL's memory keys cover whole registrations, nothing here can
                // enforce grants (engine auto then takes the builtin engine).
                if (upper(v) != "OFF")
                    fail(KVP_ERR_NOT_SUPPORTED,
                         "params page_grants=" + v +
                             ": the nixl engine enforces no page grants (a peer reaches whole "
                             "registrations); use the builtin engine");
            } else if (std::find_if(std::begin(kBuiltinKeys), std::end(kBuiltinKeys),
                                    [&](const char *b) { return k == b; }) !=
                       std::end(kBuiltinKeys)) {
                a->ignored_keys.push_back(k);
            } else {
                std::string known;
                for (auto *x : kNixlKeys) known += std::string(x) + ", ";
                for (auto *x : kBuiltinKeys) known += std::string(x) + " (ignored), ";
                fail(KVP_ERR_INVALID_PARAM,
                     "params key '" + k + "' is unknown to the nixl engine: expected one of " +
                         known + "or BACKEND.key for a backend's own parameter");
            }
        }

        // Backends: names as NIXL knows them; "TCP" is NIXL's UCX restricted to TCP.
        // No backends: UCX and POSIX, as the builtin engine.
        std::string blist = backends && *backends ? backends : "UCX,POSIX";
        a->requested_backends = blist;
        std::vector<std::pair<std::string, std::string>> wanted; // (requested, nixl type)
        for (auto &b : split(blist, ',')) {
            std::string n = upper(trim(b));
            if (n.empty()) continue;
            std::string type = n == "TCP" ? "UCX" : n;
            for (auto &w : wanted)
                if (w.second == type)
                    fail(KVP_ERR_INVALID_PARAM,
                         "backends '" + blist + "': " + w.first + " and " + n +
                             " are both NIXL's UCX backend; a NIXL agent has one of each type");
            wanted.emplace_back(n, type);
        }
        if (wanted.empty())
            fail(KVP_ERR_INVALID_PARAM, "backends '" + blist + "': expected e.g. UCX,POSIX");
        // Params of a backend not asked for are ignored (as the builtin engine does, so
        // that "auto" takes the same params either way) and reported by kvp_agent_info.
        for (auto &[be, kv] : p.backend) {
            bool found = false;
            for (auto &w : wanted) found = found || w.first == be || w.second == be;
            if (!found)
                for (auto &[k, v] : kv) a->ignored_keys.push_back(be + "." + k);
        }

        nixl_thread_sync_t sync = a->sync_mode == "strict"
                                      ? nixl_thread_sync_t::NIXL_THREAD_SYNC_STRICT
                                      : nixl_thread_sync_t::NIXL_THREAD_SYNC_RW;
        nixlAgentConfig cfg(a->progress_thread, /*use_listen_thread=*/false,
                            /*port=*/0, sync, /*num_workers=*/1, a->pthr_delay_us);
        a->nixl = std::make_unique<nixlAgent>(a->name, cfg);

        for (auto &[req_name, type] : wanted) {
            nixl_b_params_t bp;
            if (auto it = p.backend.find(type); it != p.backend.end()) bp = it->second;
            if (req_name != type)
                if (auto it = p.backend.find(req_name); it != p.backend.end())
                    for (auto &[k, v] : it->second) bp[k] = v;
            if (req_name == "TCP") {
                std::string ec = "TLS=tcp";
                if (auto it = bp.find("engine_config"); it != bp.end() && !it->second.empty())
                    ec += "," + it->second;
                bp["engine_config"] = ec;
            }
            nixlBackendH *bh = nullptr;
            nixl_status_t s = a->nixl->createBackend(type, bp, bh);
            if (s != NIXL_SUCCESS) {
                std::string m = nixl_failure("nixl engine: createBackend(" + type + ")", s);
                if (s == NIXL_ERR_NOT_FOUND)
                    m += "; plugins found in " + plugin_dir() + ": " +
                         avail_plugins_hint(*a->nixl) + " (set NIXL_PLUGIN_DIR to change)";
                a->nixl.reset();
                fail(s, m);
            }
            a->bh[type] = bh;
            a->bparams[type] = bp;
            a->backends.push_back(req_name);
        }

        uint64_t h = new_handle(Kind::Agent);
        {
            std::lock_guard<std::mutex> g(g_agents_mu);
            g_agents.emplace(h, a);
        }
        *out_agent = h;
        return KVP_SUCCESS;
    });
}

int32_t agent_wake(uint64_t handle) {
    return guarded([&]() -> int32_t {
        std::shared_ptr<Agent> a;
        {
            std::lock_guard<std::mutex> g(g_agents_mu);
            auto it = g_agents.find(handle);
            if (it == g_agents.end())
                fail(KVP_ERR_NOT_FOUND, "nixl engine: no agent with handle " + hex(handle));
            a = it->second;
        }
        a->closing.store(true);
        {
            std::lock_guard<std::mutex> g(a->wait_mu);
            a->wait_cv.notify_all();
        }
        // The watcher is joined here, before the host stops its notifier: no signal after.
        watch_stop(*a, false);
        return KVP_SUCCESS;
    });
}

int32_t agent_destroy(uint64_t handle) {
    return guarded([&]() -> int32_t {
        auto a = take_agent(handle);
        if (!a)
            fail(KVP_ERR_NOT_FOUND, "nixl engine: no agent with handle " + hex(handle) +
                                        " (already destroyed?)");
        a->closing.store(true);
        {
            std::lock_guard<std::mutex> g(a->wait_mu);
            a->wait_cv.notify_all();
        }
        {
            std::unique_lock<std::mutex> lk(a->calls_mu);
            // Waiters re-check closing at least every millisecond (their backoff cap),
            // and are woken at once by the notify above.
            while (a->calls.load() != 0) {
                {
                    std::lock_guard<std::mutex> g(a->wait_mu);
                    a->wait_cv.notify_all();
                }
                a->calls_cv.wait_for(lk, std::chrono::milliseconds(5));
            }
        }
        watch_stop(*a, true); // before anything it polls is released
        std::string problems;
        {
            std::lock_guard<std::mutex> g(a->mu);
            problems = teardown(*a);
        }
        if (!problems.empty())
            fail(KVP_ERR_BACKEND, "agent '" + a->name + "' destroyed with problems: " + problems);
        return KVP_SUCCESS;
    });
}

int32_t agent_info(uint64_t handle, uint8_t *buf, uint64_t cap, uint64_t *len) {
    return guarded([&]() -> int32_t {
        AgentRef a(handle);
        std::string s;
        s += "name=" + a->name + "\n";
        s += "engine=nixl\n";
        std::string b;
        for (auto &x : a->backends) b += (b.empty() ? "" : ",") + x;
        s += "backends=" + b + "\n";
        s += "listen=\n";
        std::string rv = runtime_nixl_version();
        s += "nixl_version=" + (rv.empty() ? std::string(KVPN_NIXL_VERSION) : rv) + "\n";
        std::string ucx = ucx_version();
        if (!ucx.empty()) s += "ucx_version=" + ucx + "\n";
        s += "nixl_lib=" + nixl_lib_path() + "\n";
        s += "plugin_dir=" + plugin_dir() + "\n";
        s += std::string("progress_thread=") + (a->progress_thread ? "1" : "0") + "\n";
        s += "pthr_delay_us=" + std::to_string(a->pthr_delay_us) + "\n";
        s += "sync_mode=" + a->sync_mode + "\n";
        {
            std::lock_guard<std::mutex> g(a->watch_mu);
            Watcher *w = a->watch_owner.get();
            bool on = w && w->th.joinable() && !a->watch_closed;
            s += std::string("watcher=") + (on ? "1" : "0") + "\n";
            if (w) {
                s += "watcher_polls=" + std::to_string(w->polls.load()) + "\n";
                s += "watcher_signals=" + std::to_string(w->signals.load()) + "\n";
            }
        }
        for (auto &[type, bh] : a->bh) {
            nixl_mem_list_t mems;
            nixl_b_params_t params;
            if (a->nixl->getBackendParams(bh, mems, params) == NIXL_SUCCESS) {
                std::string ms, ps;
                for (auto m : mems) ms += (ms.empty() ? "" : "+") + std::string(mem_name(m));
                std::map<std::string, std::string> sorted(params.begin(), params.end());
                for (auto &[k, v] : sorted) ps += (ps.empty() ? "" : ";") + k + "=" + v;
                s += "backend." + type + "=mems:" + ms + " params:" + ps + "\n";
            }
        }
        if (!a->ignored_keys.empty()) {
            std::string ig;
            for (auto &k : a->ignored_keys) ig += (ig.empty() ? "" : ",") + k;
            s += "ignored_params=" + ig + "\n";
        }
        {
            std::lock_guard<std::mutex> g(a->mu);
            std::string peers;
            for (auto &[p, gen] : a->peers) peers += (peers.empty() ? "" : ",") + p;
            s += "peers=" + peers + "\n";
            s += "registrations=" + std::to_string(a->regs.size()) + "\n";
            s += "requests=" + std::to_string(a->reqs.size()) + "\n";
        }
        return sized_out(s.data(), s.size(), buf, cap, len);
    });
}

// ----------------------------------------------------------- registration ----

void check_arrays(const uint64_t *addrs, const uint64_t *lens, const uint64_t *devs,
                  uint64_t count, const char *what) {
    if (count == 0) fail(KVP_ERR_INVALID_PARAM, std::string(what) + ": count is 0");
    if (count > 0x7fffffffULL)
        fail(KVP_ERR_INVALID_PARAM, std::string(what) + ": count " + std::to_string(count) +
                                        " exceeds NIXL's int index range");
    if (!addrs || !lens || !devs)
        fail(KVP_ERR_INVALID_PARAM,
             std::string(what) + ": addrs, lens and devs must all be non-NULL arrays of count");
}

void check_mem_type(int32_t mt) {
    if (mt < KVP_DRAM || mt > KVP_FILE)
        fail(KVP_ERR_INVALID_PARAM,
             "mem_type " + std::to_string(mt) + ": expected 0..4 (DRAM, VRAM, BLK, OBJ, FILE)");
}

int32_t reg(uint64_t handle, int32_t mem_type, const uint64_t *addrs, const uint64_t *lens,
            const uint64_t *devs, uint64_t count, const char *meta, uint64_t *out_reg) {
    return guarded([&]() -> int32_t {
        if (!out_reg) fail(KVP_ERR_INVALID_PARAM, "out_reg is NULL");
        *out_reg = 0;
        AgentRef a(handle);
        check_mem_type(mem_type);
        check_arrays(addrs, lens, devs, count, "kvp_register");
        std::vector<std::string> keys;
        if (mem_type == KVP_OBJ) {
            if (!meta) fail(KVP_ERR_INVALID_PARAM, "OBJ registration needs meta: one key per region");
            keys = split(meta, '\n');
            if (keys.size() != count)
                fail(KVP_ERR_INVALID_PARAM, "OBJ registration: meta has " +
                                                std::to_string(keys.size()) + " keys, expected " +
                                                std::to_string(count));
        }
        auto r = std::make_shared<Reg>(mem_type);
        r->list.reserve(count);
        for (uint64_t i = 0; i < count; i++) {
            uint64_t len = lens[i];
            if (mem_type == KVP_FILE && len == 0) {
                struct stat st;
                if (fstat(static_cast<int>(devs[i]), &st) != 0)
                    fail(KVP_ERR_INVALID_PARAM, "FILE region " + std::to_string(i) + ": fd " +
                                                    std::to_string(devs[i]) + " is not open (" +
                                                    std::strerror(errno) + ")");
                if (static_cast<uint64_t>(st.st_size) <= addrs[i])
                    fail(KVP_ERR_INVALID_PARAM,
                         "FILE region " + std::to_string(i) + ": len 0 means 'to the end of the "
                         "file' but offset " + std::to_string(addrs[i]) + " is at or past its size " +
                         std::to_string(st.st_size));
                len = static_cast<uint64_t>(st.st_size) - addrs[i];
            }
            if (len == 0)
                fail(KVP_ERR_INVALID_PARAM, "region " + std::to_string(i) + " has length 0");
            r->list.addDesc(nixlBlobDesc(static_cast<uintptr_t>(addrs[i]), len, devs[i],
                                         mem_type == KVP_OBJ ? keys[i] : std::string()));
        }
        // "TCP" is UCX with TLS=tcp; UCX then has no cuda_copy to stage VRAM, and NIXL's
        // engine_config splits on ',' so that "TLS=tcp,cuda_copy" cannot be said. Say so
        // here rather than pass on NIXL's "UCX is likely not configured with CUDA".
        if (mem_type == KVP_VRAM && a->backends.size() == 1 && a->backends[0] == "TCP")
            fail(KVP_ERR_NOT_SUPPORTED,
                 "kvp_register: VRAM on the nixl engine's backend TCP (NIXL's UCX restricted to "
                 "TLS=tcp) is not supported: UCX needs cuda_copy beside tcp to move VRAM, which "
                 "NIXL's engine_config cannot name. Use backends UCX (UCX then picks CUDA IPC "
                 "or TCP with staging itself), or the builtin engine, whose TCP stages VRAM "
                 "through pinned memory");
        nixl_status_t s = a->nixl->registerMem(r->list);
        if (s != NIXL_SUCCESS) {
            std::string be;
            for (auto &x : a->backends) be += (be.empty() ? "" : ",") + x;
            fail(s, nixl_failure("registerMem of " + std::to_string(count) + " " +
                                     mem_name(mem_type) + " region(s) on backends " + be,
                                 s));
        }
        uint64_t h = new_handle(Kind::Reg);
        std::lock_guard<std::mutex> g(a->mu);
        a->regs.emplace(h, r);
        *out_reg = h;
        return KVP_SUCCESS;
    });
}

int32_t dereg(uint64_t handle, uint64_t reg_h) {
    return guarded([&]() -> int32_t {
        AgentRef a(handle);
        std::shared_ptr<Reg> r;
        {
            std::lock_guard<std::mutex> g(a->mu);
            auto it = a->regs.find(reg_h);
            if (it == a->regs.end())
                fail(KVP_ERR_NOT_FOUND, "no registration " + hex(reg_h) + " on agent '" +
                                            a->name + "' (already deregistered?)");
            r = it->second;
            a->regs.erase(it);
        }
        nixl_status_t s = a->nixl->deregisterMem(r->list);
        if (s != NIXL_SUCCESS) fail(s, nixl_failure("deregisterMem " + hex(reg_h), s));
        return KVP_SUCCESS;
    });
}

// --------------------------------------------------------------- metadata ----

int32_t local_metadata(uint64_t handle, uint8_t *buf, uint64_t cap, uint64_t *len) {
    return guarded([&]() -> int32_t {
        AgentRef a(handle);
        nixl_blob_t md;
        nixl_status_t s = a->nixl->getLocalMD(md);
        if (s != NIXL_SUCCESS) fail(s, nixl_failure("getLocalMD", s));
        return sized_out(md.data(), md.size(), buf, cap, len);
    });
}

// Checks the layout of a NIXL metadata blob (as nixlAgent::loadRemoteMD reads it) before
// NIXL sees it. NIXL connects the backends first and reads the memory sections after;
// when the sections are bad it forgets the peer but its UCX backend keeps the
// connection, and every later load of that name then fails (NIXL 1.4). So a truncated
// or garbled blob must be refused before it reaches NIXL. Returns the peer's name.
std::string check_md_layout(const nixl_blob_t &md) {
    nixlSerDes sd;
    auto bad = [](const std::string &what) {
        log_capture_take(); // serdes logs each failed tag; our message says it better
        fail(KVP_ERR_MISMATCH, "metadata blob does not parse as NIXL metadata: " + what +
                                   " (truncated or corrupted, or not from a nixl-engine "
                                   "agent)");
    };
    if (sd.importStr(md) != NIXL_SUCCESS) bad("no nixlSerDes header");
    std::string name = sd.getStr("Agent");
    if (name.empty()) bad("no agent name");
    size_t conns = 0;
    if (sd.getBuf("Conns", &conns, sizeof conns) != NIXL_SUCCESS || conns > 4096)
        bad("no connection count");
    for (size_t i = 0; i < conns; i++)
        if (sd.getStr("t").empty() || sd.getStr("c").empty())
            bad("connection " + std::to_string(i) + " of " + std::to_string(conns) + " is cut");
    if (sd.getStr("") != "MemSection") bad("no memory section");
    size_t segs = 0;
    if (sd.getBuf("nixlSecElms", &segs, sizeof segs) != NIXL_SUCCESS || segs > (1u << 20))
        bad("no section count");
    for (size_t i = 0; i < segs; i++) {
        if (sd.getStr("bknd").empty()) bad("section " + std::to_string(i) + " names no backend");
        nixl_reg_dlist_t list(&sd);
        if (list.isEmpty()) bad("section " + std::to_string(i) + " has no descriptors");
    }
    return name;
}

int32_t load_remote_metadata(uint64_t handle, const uint8_t *blob, uint64_t blen,
                             uint8_t *name_buf, uint64_t cap, uint64_t *name_len) {
    return guarded([&]() -> int32_t {
        AgentRef a(handle);
        if (!blob || blen == 0)
            fail(KVP_ERR_MISMATCH, "metadata blob is empty: expected a peer's kvp_local_metadata");
        if (!name_len) fail(KVP_ERR_INVALID_PARAM, "name_len is NULL");
        nixl_blob_t md(reinterpret_cast<const char *>(blob), blen);
        std::string named = check_md_layout(md);
        std::string remote;
        nixl_status_t s = a->nixl->loadRemoteMD(md, remote);
        if (s == NIXL_ERR_NOT_ALLOWED) {
            fail(s, nixl_failure("loadRemoteMD", s) +
                        ": a peer of that name is already loaded with other connection info "
                        "(a restarted peer); call kvp_invalidate_remote(name) first, then load "
                        "the new metadata");
        }
        if (s != NIXL_SUCCESS) {
            std::string m = nixl_failure("loadRemoteMD of peer '" + named + "' (" +
                                             std::to_string(blen) + " bytes)",
                                         s);
            std::lock_guard<std::mutex> g(a->mu);
            if (a->peers.count(named) == 0 && !a->half_loaded.insert(named).second)
                m += "; an earlier load of '" + named +
                     "' failed half-way and NIXL kept its connection (NIXL 1.4 does not drop "
                     "it): this agent cannot load that name again, recreate the agent";
            fail(s, m);
        }
        {
            std::lock_guard<std::mutex> g(a->mu);
            if (a->peers.find(remote) == a->peers.end()) a->peers[remote] = ++a->gen_counter;
            a->half_loaded.erase(remote);
        }
        return sized_out(remote.data(), remote.size(), name_buf, cap, name_len);
    });
}

int32_t invalidate_remote(uint64_t handle, const char *remote) {
    return guarded([&]() -> int32_t {
        AgentRef a(handle);
        if (!remote || !*remote) fail(KVP_ERR_INVALID_PARAM, "remote_name is empty");
        bool known;
        {
            std::lock_guard<std::mutex> g(a->mu);
            known = a->forget_peer_locked(remote);
        }
        nixl_status_t s = a->nixl->invalidateRemoteMD(remote);
        if (s == NIXL_ERR_NOT_FOUND && known) return KVP_SUCCESS; // NIXL dropped it already
        if (s != NIXL_SUCCESS)
            fail(s, nixl_failure(std::string("invalidateRemoteMD('") + remote + "')", s));
        return KVP_SUCCESS;
    });
}

// ------------------------------------------------------- prepared lists ----

// Names the first local descriptor not inside a registration of this agent.
void check_local_covered(Agent &a, int32_t mt, const uint64_t *addrs, const uint64_t *lens,
                         const uint64_t *devs, uint64_t count) {
    std::vector<nixlBasicDesc> regd;
    {
        std::lock_guard<std::mutex> g(a.mu);
        for (auto &[h, r] : a.regs)
            if (r->mem_type == mt)
                for (const auto &d : r->list) regd.push_back(d);
    }
    for (uint64_t i = 0; i < count; i++) {
        nixlBasicDesc q(static_cast<uintptr_t>(addrs[i]), lens[i], devs[i]);
        bool ok = false;
        for (auto &d : regd)
            if (d.covers(q)) {
                ok = true;
                break;
            }
        if (!ok)
            fail(KVP_ERR_INVALID_PARAM,
                 "descriptor " + std::to_string(i) + " (" + mem_name(mt) + " addr " +
                     hex(addrs[i]) + ", len " + std::to_string(lens[i]) + ", dev " +
                     std::to_string(devs[i]) + ") is not inside memory registered by agent '" +
                     a.name + "': register it first");
    }
}

int32_t prep_dlist(uint64_t handle, const char *remote, int32_t mem_type, const uint64_t *addrs,
                   const uint64_t *lens, const uint64_t *devs, uint64_t count,
                   uint64_t *out_prepped) {
    return guarded([&]() -> int32_t {
        if (!out_prepped) fail(KVP_ERR_INVALID_PARAM, "out_prepped is NULL");
        *out_prepped = 0;
        AgentRef a(handle);
        check_mem_type(mem_type);
        check_arrays(addrs, lens, devs, count, "kvp_prep_dlist");
        std::string who = remote ? remote : "";
        bool local = who.empty();
        bool self = who == a->name;
        uint64_t gen = 0;
        if (!local && !self) {
            std::lock_guard<std::mutex> g(a->mu);
            gen = a->peer_gen(who);
            if (gen == 0)
                fail(KVP_ERR_NOT_FOUND, "peer '" + who + "' is not loaded on agent '" + a->name +
                                            "': call kvp_load_remote_metadata with its metadata");
        }
        if (local || self) check_local_covered(*a, mem_type, addrs, lens, devs, count);

        nixl_xfer_dlist_t list(static_cast<nixl_mem_t>(mem_type));
        list.reserve(count);
        for (uint64_t i = 0; i < count; i++)
            list.addDesc(nixlBasicDesc(static_cast<uintptr_t>(addrs[i]), lens[i], devs[i]));
        nixlDlistH *dh = nullptr;
        nixl_status_t s = a->nixl->prepXferDlist(local ? NIXL_INIT_AGENT : who, list, dh);
        if (s != NIXL_SUCCESS) {
            std::string first = nixl_failure("prepXferDlist for '" + who + "'", s);
            if (s == NIXL_ERR_NOT_FOUND && !local && !self && count > 1) {
                // Name the first descriptor the peer did not register (error path only).
                for (uint64_t i = 0; i < count && i < 65536; i++) {
                    nixl_xfer_dlist_t one(static_cast<nixl_mem_t>(mem_type));
                    one.addDesc(list[i]);
                    nixlDlistH *t = nullptr;
                    if (a->nixl->prepXferDlist(who, one, t) == NIXL_SUCCESS) {
                        a->nixl->releasedDlistH(t);
                        continue;
                    }
                    log_capture_take();
                    fail(KVP_ERR_INVALID_PARAM,
                         "descriptor " + std::to_string(i) + " (" + mem_name(mem_type) +
                             " addr " + hex(addrs[i]) + ", len " + std::to_string(lens[i]) +
                             ", dev " + std::to_string(devs[i]) +
                             ") is not inside memory registered by peer '" + who +
                             "' (as of the metadata loaded); " + first);
                }
            }
            if (s == NIXL_ERR_NOT_FOUND && !local && !self)
                fail(KVP_ERR_INVALID_PARAM, "descriptors are not inside memory registered by peer '" +
                                                who + "' (as of the metadata loaded); " + first);
            fail(s, first);
        }
        auto p = std::make_shared<Prepped>();
        p->h = dh;
        p->remote = who;
        p->remote_gen = gen;
        p->mem_type = mem_type;
        p->lens.assign(lens, lens + count);
        uint64_t h = new_handle(Kind::Prepped);
        std::lock_guard<std::mutex> g(a->mu);
        a->prepped.emplace(h, p);
        *out_prepped = h;
        return KVP_SUCCESS;
    });
}

int32_t prepped_release(uint64_t handle, uint64_t ph) {
    return guarded([&]() -> int32_t {
        AgentRef a(handle);
        std::shared_ptr<Prepped> p;
        {
            std::lock_guard<std::mutex> g(a->mu);
            auto it = a->prepped.find(ph);
            if (it == a->prepped.end())
                fail(KVP_ERR_NOT_FOUND, "no prepared list " + hex(ph) + " on agent '" + a->name +
                                            "' (already released?)");
            p = it->second;
            a->prepped.erase(it);
        }
        // NIXL's requests keep their own copies of the descriptors, so a list can go
        // while requests made from it live on.
        nixl_status_t s = a->nixl->releasedDlistH(p->h);
        p->h = nullptr;
        if (s != NIXL_SUCCESS) fail(s, nixl_failure("releasedDlistH", s));
        return KVP_SUCCESS;
    });
}

const char *module_last_error() { return last_error_cstr(); }

const kvpn_module g_module = {
    KVPN_MODULE_ABI,
    KVPN_NIXL_VERSION,
    "nixl_prefix=" KVPN_NIXL_PREFIX "\n"
    "compiler=" __VERSION__ "\n",
    module_last_error,
    probe,
    agent_create,
    agent_wake,
    agent_destroy,
    agent_info,
    reg,
    dereg,
    local_metadata,
    load_remote_metadata,
    invalidate_remote,
    prep_dlist,
    prepped_release,
    xfer_create,
    xfer_post,
    xfer_status,
    xfer_wait,
    xfer_message,
    xfer_release,
    notif_send,
    notif_take,
    notif_wait,
    agent_object,
    xfer_post_on,
    xfer_status_on,
    agent_watch,
};

} // namespace
} // namespace kvpn

extern "C" __attribute__((visibility("default"))) const kvpn_module *
kvpn_module_get(uint32_t abi) {
    return abi == KVPN_MODULE_ABI ? &kvpn::g_module : nullptr;
}
