// engine_nixl_internal.hpp - shared by the C++ files of libkvport_nixl.so (the nixl
// engine module). Nothing here is visible outside the module: the only exported symbol
// is kvpn_module_get (engine_nixl.cpp).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nixl.h>

#include "../include/kvport.h"
#include "engine_nixl.h"

namespace kvpn {

static_assert(KVP_SUCCESS == NIXL_SUCCESS && KVP_IN_PROG == NIXL_IN_PROG &&
                  KVP_ERR_NOT_POSTED == NIXL_ERR_NOT_POSTED &&
                  KVP_ERR_INVALID_PARAM == NIXL_ERR_INVALID_PARAM &&
                  KVP_ERR_BACKEND == NIXL_ERR_BACKEND && KVP_ERR_NOT_FOUND == NIXL_ERR_NOT_FOUND &&
                  KVP_ERR_MISMATCH == NIXL_ERR_MISMATCH &&
                  KVP_ERR_NOT_ALLOWED == NIXL_ERR_NOT_ALLOWED &&
                  KVP_ERR_REPOST_ACTIVE == NIXL_ERR_REPOST_ACTIVE &&
                  KVP_ERR_UNKNOWN == NIXL_ERR_UNKNOWN &&
                  KVP_ERR_NOT_SUPPORTED == NIXL_ERR_NOT_SUPPORTED &&
                  KVP_ERR_REMOTE_DISCONNECT == NIXL_ERR_REMOTE_DISCONNECT &&
                  KVP_ERR_CANCELED == NIXL_ERR_CANCELED &&
                  KVP_ERR_NO_TELEMETRY == NIXL_ERR_NO_TELEMETRY,
              "kvport.h status codes must equal NIXL's nixl_status_t");
static_assert(KVP_DRAM == DRAM_SEG && KVP_VRAM == VRAM_SEG && KVP_BLK == BLK_SEG &&
                  KVP_OBJ == OBJ_SEG && KVP_FILE == FILE_SEG,
              "kvport.h memory types must equal NIXL's nixl_mem_t");
static_assert(KVP_READ == NIXL_READ && KVP_WRITE == NIXL_WRITE,
              "kvport.h operations must equal NIXL's nixl_xfer_op_t");

using Clock = std::chrono::steady_clock;

// Largest notification, as kvport.h says.
constexpr uint64_t KVP_NOTIF_MAX_BYTES = 64 * 1024;

// ------------------------------------------------------------------ errors ----

// Thrown inside the module to leave an entry point with a status and a message; the
// entry point's wrapper turns it into the return value and the last error.
struct Fail {
    int32_t status;
    std::string message;
};

[[noreturn]] void fail(int32_t status, std::string message);
// The calling thread's last error (set by the entry-point wrapper).
void set_last_error(std::string message) noexcept;
void clear_last_error() noexcept;
const char *last_error_cstr();

// NIXL logs its own reason for most failures (through Abseil logging) and returns only a
// status. When the module is built with Abseil (KVPN_HAVE_ABSL_SINK), a log sink keeps
// the calling thread's NIXL warnings and errors since the last reset, so messages can
// carry NIXL's own words. Without it these are no-ops and return "".
void log_capture_install();
void log_capture_reset();
std::string log_capture_take();
bool log_capture_available();

// "NIXL_ERR_NOT_FOUND" etc. (KVP status names, which are NIXL's enum names).
const char *status_name(int32_t status);

// Builds "<what>: <STATUS> (NIXL: <captured log>)" after a failing NIXL call.
std::string nixl_failure(const std::string &what, int32_t status);

// Runs body, mapping Fail and C++ exceptions to a status and the last error.
template <class F> int32_t guarded(F &&body) noexcept;
// guarded without clearing this thread's last error first: for the hot pair (post,
// status), whose every failure sets its own message (the glue reads it only after a
// failure). The clear is an out-of-line call into another file, measurable on a 2.6 us
// 4 KiB post (bench/nixl_bench.ts); the NIXL log capture is still reset.
template <class F> int32_t guarded_hot(F &&body) noexcept;

// --------------------------------------------------------------- helpers ----

int32_t sized_out(const void *src, uint64_t n, uint8_t *buf, uint64_t cap, uint64_t *len);
std::string trim(const std::string &s);
std::vector<std::string> split(const std::string &s, char sep);
std::string upper(std::string s);
const char *mem_name(int32_t mem_type);

// Module handles: 'N' in the top byte, the kind below it, a counter that never repeats.
enum class Kind : uint64_t { Agent = 1, Reg = 2, Prepped = 3, Req = 4 };
uint64_t new_handle(Kind kind);
const char *kind_name(Kind kind);

// Backoff for polling NIXL (which has no blocking wait): 2 us doubling to 1 ms.
struct Backoff {
    std::chrono::microseconds next{2};
    std::chrono::microseconds step() {
        auto d = next;
        next = std::min(next * 2, std::chrono::microseconds(1000));
        return d;
    }
};

// ---------------------------------------------------------------- objects ----

struct Reg {
    int32_t mem_type;
    nixl_reg_dlist_t list;
    explicit Reg(int32_t mt) : mem_type(mt), list(static_cast<nixl_mem_t>(mt)) {}
};

struct Prepped {
    nixlDlistH *h = nullptr;
    std::string remote;      // "" = local side
    uint64_t remote_gen = 0; // generation of the peer when prepared (0 for local/self)
    int32_t mem_type = 0;
    std::vector<uint64_t> lens;
};

struct Req {
    std::mutex mu;          // one thread at a time on the NIXL request (nixl#2049)
    nixlXferReqH *h = nullptr;
    std::string remote;     // the peer's name ("" never: loopback uses our own name)
    uint64_t remote_gen = 0;
    bool loopback = false;  // remote is the agent's own name
    uint64_t epoch_ok = ~0ULL; // Agent::peers_epoch when the peer was last seen current
    bool released = false;  // set by release/destroy; waiters leave with CANCELED
    bool posted = false;
    bool watched = false;   // in the agent's watcher (post hands it over, the watcher drops it)
    uint64_t posts = 0;     // posts so far: the watcher times each post of a request it holds
    Clock::time_point posted_at{}; // the last post, when the agent has a watcher (its pace)
    uint64_t status_calls = 0;     // kvp_xfer_status calls: the watcher leaves a polled one be
    int32_t last = KVP_ERR_NOT_POSTED;
    std::string message;    // message of the last failure (kvp_xfer_message)
};

// The agent's watcher (agent_watch, engine_nixl_watch.cpp): NIXL has no completion
// callback, so one thread per watched agent polls its posted requests and NIXL's
// notifications and calls signal(ctx) when a request left IN_PROG or notifications were
// queued. Posts hand their requests over through `queue`.
struct Watcher {
    void (*signal)(void *ctx) = nullptr;
    void *ctx = nullptr;
    std::thread th;
    std::mutex mu; // queue, wake_at, stop
    std::condition_variable cv;
    std::vector<std::shared_ptr<Req>> queue; // posted, not yet taken by the thread
    std::atomic<bool> has_new{false};        // queue is not empty (read without mu)
    // When the thread's sleep ends (min(): awake). A post notifies cv only when that is
    // later than the request's first poll (short sleeps end by themselves).
    std::chrono::steady_clock::time_point wake_at = std::chrono::steady_clock::time_point::min();
    bool stop = false;
    std::atomic<uint64_t> signals{0}; // calls of signal (kvp_agent_info)
    std::atomic<uint64_t> polls{0};   // rounds of the thread (kvp_agent_info)
};

struct Agent {
    std::string name;
    std::unique_ptr<nixlAgent> nixl;
    std::vector<std::string> backends;             // as created ("UCX", "POSIX", ...)
    std::map<std::string, nixlBackendH *> bh;      // backend handles
    std::map<std::string, nixl_b_params_t> bparams; // params passed to createBackend
    std::string requested_backends;
    bool progress_thread = true;
    std::string sync_mode = "rw";
    uint64_t pthr_delay_us = 1000;
    std::vector<std::string> ignored_keys;

    // Tables (guarded by mu).
    std::mutex mu;
    std::unordered_map<uint64_t, std::shared_ptr<Reg>> regs;
    std::unordered_map<uint64_t, std::shared_ptr<Prepped>> prepped;
    std::unordered_map<uint64_t, std::shared_ptr<Req>> reqs;
    std::map<std::string, uint64_t> peers; // loaded peer -> generation (bumped on invalidate)
    // Bumped (under mu) whenever a peer leaves `peers`: a request whose peer was current
    // at epoch E is still current while the epoch is E, so the post path can skip the
    // lock and the name lookup (forget_peer_locked is the one way to remove a peer).
    std::atomic<uint64_t> peers_epoch{0};
    std::set<std::string> half_loaded; // names whose load failed after NIXL may have connected
    uint64_t gen_counter = 0;

    // Notifications taken from NIXL and not yet handed out (guarded by notif_mu).
    std::mutex notif_mu;
    std::deque<std::pair<std::string, std::string>> notifs;

    // Waits and destruction: waiters sleep on wait_cv; destroy sets closing, wakes them
    // and waits until every call in flight (calls) has left.
    std::mutex wait_mu;
    std::condition_variable wait_cv;
    std::atomic<bool> closing{false};
    std::atomic<uint64_t> calls{0};
    std::mutex calls_mu;
    std::condition_variable calls_cv;

    // The watcher: started by agent_watch, stopped and joined by agent_wake / agent_destroy
    // (watch_stop). `watcher` is what post_on reads; the object lives until destroy.
    std::mutex watch_mu; // watch_owner, watch_closed
    std::unique_ptr<Watcher> watch_owner;
    std::atomic<Watcher *> watcher{nullptr};
    bool watch_closed = false; // stopped: agent_watch refuses to start one

    uint64_t peer_gen(const std::string &peer); // 0 when not loaded (caller holds mu)
    bool forget_peer_locked(const std::string &peer); // erases it, bumps peers_epoch (mu held)
};

// A call in flight on an agent: keeps it alive and counted until the call leaves.
class AgentRef {
  public:
    explicit AgentRef(uint64_t handle); // throws Fail(NOT_FOUND) for unknown handles
    ~AgentRef();
    AgentRef(const AgentRef &) = delete;
    AgentRef &operator=(const AgentRef &) = delete;
    Agent *operator->() const { return a_.get(); }
    Agent &operator*() const { return *a_; }

  private:
    std::shared_ptr<Agent> a_;
};

// The agent's object for kvpn_module.agent_object (nullptr for an unknown handle).
void *agent_object(uint64_t handle);

// Sleeps up to d on the agent's wait condvar (woken early by release/destroy).
void agent_nap(Agent &a, std::chrono::microseconds d);

// Entry points implemented in engine_nixl_xfer.cpp.
int32_t xfer_create(uint64_t agent, int32_t op, uint64_t local_prepped,
                    const uint32_t *local_idx, uint64_t remote_prepped,
                    const uint32_t *remote_idx, uint64_t count, const uint8_t *notif,
                    uint64_t notif_len, uint64_t *out_req);
int32_t xfer_post(uint64_t agent, uint64_t req);
int32_t xfer_status(uint64_t agent, uint64_t req);
// The same on the agent's object (kvpn_module.agent_object): no agent lookup.
int32_t xfer_post_on(void *agent, uint64_t req);
int32_t xfer_status_on(void *agent, uint64_t req);
int32_t xfer_wait(uint64_t agent, uint64_t req, int64_t timeout_ms);
int32_t xfer_message(uint64_t agent, uint64_t req, uint8_t *buf, uint64_t cap, uint64_t *len);
int32_t xfer_release(uint64_t agent, uint64_t req);
int32_t notif_send(uint64_t agent, const char *remote, const uint8_t *msg, uint64_t len);
int32_t notif_take(uint64_t agent, uint8_t *buf, uint64_t cap, uint64_t *len, uint64_t *count);
int32_t notif_wait(uint64_t agent, int64_t timeout_ms);
// After a NIXL call on r returned s (r.mu held): records it as the request's last
// status, a failure with its message (and a dropped peer). Returns s.
int32_t record_status(Agent &a, Req &r, int32_t s, const char *what);

// Implemented in engine_nixl_watch.cpp.
int32_t agent_watch(uint64_t agent, void (*signal)(void *ctx), void *ctx);
// Hands a request that a post left IN_PROG to the agent's watcher (r.mu held).
void watch_posted(Watcher &w, Req &r, const std::shared_ptr<Req> &ref);
// Stops and joins the watcher (idempotent; none starts afterwards). With drop, frees it
// too (agent_destroy, no call in flight).
void watch_stop(Agent &a, bool drop);

// Releases one request on the NIXL side (cancelling it); used by release and destroy.
int32_t release_req_locked(Agent &a, Req &r, std::string &why);
// Marks a peer's generation dead after NIXL dropped it (REMOTE_DISCONNECT).
void peer_lost(Agent &a, const std::string &peer, uint64_t gen);

// Implemented in engine_nixl_probe.cpp.
int32_t probe(uint8_t *buf, uint64_t cap, uint64_t *len);
std::string nixl_lib_path();   // path of the libnixl.so in use (dladdr)
std::string plugin_dir();      // NIXL_PLUGIN_DIR or <libnixl dir>/plugins
std::string ucx_version();     // "" until UCX is loaded into the process
std::string runtime_nixl_version(); // read from libnixl_common.so; "" when not found
std::string avail_plugins_hint(nixlAgent &agent);

// -------------------------------------------------------- guarded (inline) ----

template <class F> int32_t guarded(F &&body) noexcept {
    clear_last_error();
    return guarded_hot(std::forward<F>(body));
}

template <class F> int32_t guarded_hot(F &&body) noexcept {
    try {
        log_capture_reset();
        return body();
    } catch (const Fail &f) {
        try {
            set_last_error(f.message);
        } catch (...) {
        }
        return f.status;
    } catch (const std::bad_alloc &) {
        set_last_error("out of memory in the nixl engine");
        return KVP_ERR_UNKNOWN;
    } catch (const std::invalid_argument &e) {
        try {
            set_last_error(std::string("NIXL refused an argument: ") + e.what());
        } catch (...) {
        }
        return KVP_ERR_INVALID_PARAM;
    } catch (const std::exception &e) {
        // Exceptions out of NIXL, its plugins or UCX (e.g. "Failed to create UCX context").
        try {
            std::string m = std::string("NIXL threw: ") + e.what();
            std::string cap = log_capture_take();
            if (!cap.empty()) m += " (NIXL log: " + cap + ")";
            set_last_error(m);
        } catch (...) {
        }
        return KVP_ERR_BACKEND;
    } catch (...) {
        set_last_error("the nixl engine caught an unknown C++ exception");
        return KVP_ERR_UNKNOWN;
    }
}

} // namespace kvpn
