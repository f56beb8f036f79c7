// bench/nixl_raw.cpp - the nixl engine's transfers done directly on NIXL's nixlAgent,
// with none of our code in between: the yardstick for what the shim itself costs.
//
// Two processes (this one forks its target before NIXL is loaded), one NIXL agent each,
// UCX backend (or UCX restricted to TCP), a progress thread with the same settings the
// nixl engine uses (RW thread sync, pthr_delay_us 1000), metadata exchanged over a pipe.
// For each shape, the initiator prepares the two descriptor lists once, makes one WRITE
// request (no notification) and then posts it and polls getXferStatus until it is done,
// again and again: exactly what bench/nixl_bench.ts times through the library. Then the
// post-to-completion latency of one 4 KiB page, p50 and p99.
//
//   nixl-raw [--backend UCX|TCP] [--buffer shared|private|vram:N] [--min-ms 1500]
//            [--lat 20000] [--wait spin|backoff] [--shape PAGExCOUNT[s]]...
//   nixl-raw --serve --size BYTES [--backend UCX|TCP] [--buffer ...]
//
// --serve keeps both agents up and takes commands on stdin, one JSON line per command
// (see serve()): bench/nixl_bench.ts alternates short rounds of it with rounds of the
// library, so that a load on the shared machine hits both sides alike.
// --buffer: shared = memfd MAP_SHARED (the builtin engine's default), private = anonymous
// memory with MADV_HUGEPAGE (the nixl engine's default), vram:N = cudaMalloc on device N
// (libcudart is dlopened: KVPORT_CUDART, else libcudart.so.13/.12). A shape ending in "s"
// is scattered: the remote pages are taken in reverse order, so NIXL cannot merge
// consecutive descriptors into one message. Prints one line per figure, then one JSON
// line. Built by native/Makefile (build/nixl-raw) only when NIXL is found.

#include <cerrno>
#include <dlfcn.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include <nixl.h>

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void die(const std::string &m) {
    std::fprintf(stderr, "nixl-raw: %s\n", m.c_str());
    std::exit(1);
}

void check(nixl_status_t s, const char *what) {
    if (s != NIXL_SUCCESS) die(std::string(what) + " failed: " + nixlEnumStrings::statusStr(s));
}

struct Shape {
    uint64_t page, count;
    bool scattered;
};

struct Options {
    std::string backend = "UCX";
    std::string buffer = "private";
    int device = 0;
    double min_ms = 1500;
    int lat = 20000;
    bool backoff = false; // --wait backoff: poll as the library waits (see run_once)
    bool serve = false;   // --serve: commands on stdin (see serve)
    uint64_t size = 0;    // --size: bytes of each side's buffer (default: the largest shape)
    std::vector<Shape> shapes;
};

Options parse(int argc, char **argv) {
    Options o;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto val = [&]() -> std::string {
            if (i + 1 >= argc) die(a + " needs a value");
            return argv[++i];
        };
        if (a == "--backend") o.backend = val();
        else if (a == "--buffer") o.buffer = val();
        else if (a == "--min-ms") o.min_ms = std::atof(val().c_str());
        else if (a == "--lat") o.lat = std::atoi(val().c_str());
        else if (a == "--serve") o.serve = true;
        else if (a == "--size") {
            o.size = std::strtoull(val().c_str(), nullptr, 10);
            if (o.size < 4096) die("--size: expected bytes >= 4096");
        }
        else if (a == "--wait") {
            std::string w = val();
            if (w != "spin" && w != "backoff") die("--wait " + w + ": expected spin or backoff");
            o.backoff = w == "backoff";
        }
        else if (a == "--shape") {
            std::string v = val();
            Shape s{};
            char tail = 0;
            unsigned long long p = 0, c = 0;
            int n = std::sscanf(v.c_str(), "%llux%llu%c", &p, &c, &tail);
            if (n < 2 || p == 0 || c == 0 || (n == 3 && tail != 's'))
                die("--shape " + v + ": expected PAGExCOUNT or PAGExCOUNTs");
            s.page = p, s.count = c, s.scattered = n == 3;
            o.shapes.push_back(s);
        } else die("unknown argument " + a + " (see the head of bench/nixl_raw.cpp)");
    }
    if (o.buffer.rfind("vram:", 0) == 0) {
        o.device = std::atoi(o.buffer.c_str() + 5);
        o.buffer = "vram";
    }
    if (o.buffer != "shared" && o.buffer != "private" && o.buffer != "vram")
        die("--buffer " + o.buffer + ": expected shared, private or vram:N");
    if (o.backend != "UCX" && o.backend != "TCP") die("--backend: expected UCX or TCP");
    if (o.shapes.empty()) o.shapes = {{4096, 4096, false}, {1 << 20, 64, false}, {4 << 20, 64, false}};
    return o;
}

// ---- memory -----------------------------------------------------------------------

struct Cuda {
    int (*setDevice)(int) = nullptr;
    int (*malloc_)(void **, size_t) = nullptr;
    int (*memset_)(void *, int, size_t) = nullptr;
    int (*sync)() = nullptr;
    void load() {
        const char *env = std::getenv("KVPORT_CUDART");
        const char *names[] = {env, "libcudart.so.13", "libcudart.so.12", "libcudart.so"};
        void *h = nullptr;
        for (const char *n : names)
            if (n && *n && (h = dlopen(n, RTLD_NOW | RTLD_GLOBAL))) break;
        if (!h) die("no CUDA runtime (set KVPORT_CUDART)");
        setDevice = reinterpret_cast<int (*)(int)>(dlsym(h, "cudaSetDevice"));
        malloc_ = reinterpret_cast<int (*)(void **, size_t)>(dlsym(h, "cudaMalloc"));
        memset_ = reinterpret_cast<int (*)(void *, int, size_t)>(dlsym(h, "cudaMemset"));
        sync = reinterpret_cast<int (*)()>(dlsym(h, "cudaDeviceSynchronize"));
        if (!setDevice || !malloc_ || !memset_ || !sync) die("the CUDA runtime lacks cudaMalloc & co");
    }
};

// The same kinds of memory the library allocates (native/src/memory.c), 2 MiB aligned.
void *alloc(const Options &o, uint64_t size, int fill) {
    if (o.buffer == "vram") {
        Cuda c;
        c.load();
        void *p = nullptr;
        if (c.setDevice(o.device) || c.malloc_(&p, size) || c.memset_(p, fill, size) || c.sync())
            die("cudaMalloc/cudaMemset of " + std::to_string(size) + " bytes failed");
        return p;
    }
    const uint64_t huge = 2 << 20;
    int fd = -1;
    if (o.buffer == "shared") {
        fd = memfd_create("nixl-raw", MFD_CLOEXEC);
        if (fd < 0 || ftruncate(fd, static_cast<off_t>(size)) != 0) die("memfd_create/ftruncate failed");
    }
    void *span = mmap(nullptr, size + huge, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (span == MAP_FAILED) die("mmap of the address range failed");
    auto at = reinterpret_cast<void *>((reinterpret_cast<uintptr_t>(span) + huge - 1) & ~(huge - 1));
    int flags = fd >= 0 ? MAP_SHARED | MAP_FIXED : MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
    if (mmap(at, size, PROT_READ | PROT_WRITE, flags, fd, 0) == MAP_FAILED) die("mmap failed");
    if (fd < 0) (void)madvise(at, size, MADV_HUGEPAGE);
    std::memset(at, fill, size); // faults every page in, as the library's populate does
    return at;
}

// ---- the two processes ------------------------------------------------------------

void write_all(int fd, const void *p, size_t n) {
    auto *c = static_cast<const char *>(p);
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w <= 0) die("pipe write failed");
        c += w, n -= static_cast<size_t>(w);
    }
}

bool read_all(int fd, void *p, size_t n) {
    auto *c = static_cast<char *>(p);
    while (n > 0) {
        ssize_t r = read(fd, c, n);
        if (r <= 0) return false;
        c += r, n -= static_cast<size_t>(r);
    }
    return true;
}

void send_blob(int fd, const nixl_blob_t &b) {
    uint64_t n = b.size();
    write_all(fd, &n, sizeof n);
    write_all(fd, b.data(), b.size());
}

nixl_blob_t recv_blob(int fd) {
    uint64_t n = 0;
    if (!read_all(fd, &n, sizeof n) || n > (64u << 20)) die("no metadata from the other process");
    nixl_blob_t b(n, '\0');
    if (!read_all(fd, b.data(), n)) die("metadata cut short");
    return b;
}

std::unique_ptr<nixlAgent> make_agent(const std::string &name, const Options &o) {
    nixlAgentConfig cfg(true, false, 0, nixl_thread_sync_t::NIXL_THREAD_SYNC_RW, 1, 1000);
    auto a = std::make_unique<nixlAgent>(name, cfg);
    nixl_b_params_t bp;
    if (o.backend == "TCP") bp["engine_config"] = "TLS=tcp";
    nixlBackendH *bh = nullptr;
    check(a->createBackend("UCX", bp, bh), "createBackend(UCX)");
    return a;
}

nixl_mem_t mem_of(const Options &o) { return o.buffer == "vram" ? VRAM_SEG : DRAM_SEG; }

uint64_t buffer_size(const Options &o) {
    uint64_t m = std::max<uint64_t>(4096, o.size);
    for (auto &s : o.shapes) m = std::max(m, s.page * s.count);
    return m;
}

// The target: registers its buffer, hands over its metadata, waits until told to go.
int target(const Options &o, int to_parent, int from_parent, const std::string &name) {
    auto agent = make_agent(name, o);
    uint64_t size = buffer_size(o);
    void *buf = alloc(o, size, 0x11);
    nixl_reg_dlist_t reg(mem_of(o));
    reg.addDesc(nixlBlobDesc(reinterpret_cast<uintptr_t>(buf), size, o.device, ""));
    check(agent->registerMem(reg), "registerMem (target)");
    nixl_blob_t md;
    check(agent->getLocalMD(md), "getLocalMD (target)");
    send_blob(to_parent, md);
    uint64_t addr = reinterpret_cast<uintptr_t>(buf);
    write_all(to_parent, &addr, sizeof addr);
    char c;
    // EOF (or a byte): the initiator is done. Retry on EINTR; any other end is the same.
    ssize_t got;
    do got = read(from_parent, &c, 1);
    while (got < 0 && errno == EINTR);
    agent->deregisterMem(reg);
    return 0;
}

struct Figure {
    std::string json;
};

std::string label(uint64_t page) {
    return page >= (1 << 20) ? std::to_string(page >> 20) + "MiB" : std::to_string(page >> 10) + "KiB";
}

std::string shape_name(const Shape &s) {
    return "write_" + label(s.page) + "_x" + std::to_string(s.count) + (s.scattered ? "_scattered" : "");
}

// The library's spin window (src/agent/transfer.ts: spinWindow, typicalWait): 1.5 x the
// request's typical wait (a moving average, weight 1/8, of its waits capped at 400 us),
// between 50 and 200 us; 50 us when even 200 would not cover it.
struct Typical {
    double us = -1; // none yet
    double window_us() const {
        if (us < 0 || us > 200) return 50;
        return std::min(200.0, std::max(50.0, 1.5 * us));
    }
    void add(double w) {
        double x = std::min(w, 400.0);
        us = us < 0 ? x : us + (x - us) / 8;
    }
};

// Post, then poll until done. spin: getXferStatus back to back. backoff: the way the
// library waits (src/agent/transfer.ts + kvp_xfer_wait): back-to-back polls for the spin
// window above, then polls between sleeps of 2 us doubling to 1 ms - on a machine with
// few cores a spinning poller takes CPU from NIXL's progress threads, so this is the fair
// yardstick.
inline void run_once(nixlAgent &a, nixlXferReqH *req, bool backoff, Typical &t) {
    nixl_status_t s = a.postXferReq(req);
    if (s == NIXL_IN_PROG) {
        auto start = Clock::now();
        auto spin_end = start + std::chrono::duration<double, std::micro>(t.window_us());
        while ((s = a.getXferStatus(req)) == NIXL_IN_PROG && (!backoff || Clock::now() < spin_end)) {
        }
        for (long d = 2; s == NIXL_IN_PROG; d = std::min(d * 2, 1000L)) {
            usleep(static_cast<useconds_t>(d));
            s = a.getXferStatus(req);
        }
        if (s == NIXL_SUCCESS) t.add(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
    } // done inside the post: the library does not wait, nor learn from it
    if (s != NIXL_SUCCESS) die(std::string("transfer failed: ") + nixlEnumStrings::statusStr(s));
}

// The initiator's side: its agent, its registered buffer, the loaded target, and one
// prepared request per shape (made on first use, kept for the next rounds).
class Initiator {
  public:
    Initiator(const Options &o, int from_child, const std::string &name) : o_(o), reg_(mem_of(o)) {
        agent_ = make_agent(name, o);
        uint64_t size = buffer_size(o);
        base_ = reinterpret_cast<uintptr_t>(alloc(o, size, 0x5a));
        reg_.addDesc(nixlBlobDesc(base_, size, o.device, ""));
        check(agent_->registerMem(reg_), "registerMem (initiator)");
        nixl_blob_t peer_md = recv_blob(from_child);
        if (!read_all(from_child, &peer_addr_, sizeof peer_addr_)) die("no address from the target");
        check(agent_->loadRemoteMD(peer_md, peer_), "loadRemoteMD");
    }

    ~Initiator() {
        for (auto &r : reqs_) {
            agent_->releaseXferReq(r.req);
            agent_->releasedDlistH(r.lh);
            agent_->releasedDlistH(r.rh);
        }
        agent_->invalidateRemoteMD(peer_);
        agent_->deregisterMem(reg_);
    }

    // WRITE requests of shape s back to back for at least min_ms (and 3 requests).
    std::string bandwidth(const Shape &s, double min_ms, bool backoff) {
        Prepared &p = request(s);
        nixlXferReqH *req = p.req;
        uint64_t iters = 0;
        auto t0 = Clock::now();
        double ms = 0;
        while (ms < min_ms || iters < 3) {
            run_once(*agent_, req, backoff, p.typical);
            iters++;
            ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        }
        double gbps = static_cast<double>(s.page * s.count * iters) / ms / 1e6;
        std::string nm = shape_name(s);
        if (!serving)
            std::printf("raw %s %s %s %s: %.2f GB/s (%llu requests)\n", o_.backend.c_str(),
                        o_.buffer.c_str(), backoff ? "backoff" : "spin", nm.c_str(), gbps,
                        static_cast<unsigned long long>(iters));
        char j[512];
        std::snprintf(j, sizeof j,
                      "{\"name\":\"%s\",\"page\":%llu,\"count\":%llu,\"scattered\":%s,"
                      "\"gbps\":%.4f,\"requests\":%llu,\"ms\":%.3f}",
                      nm.c_str(), static_cast<unsigned long long>(s.page),
                      static_cast<unsigned long long>(s.count), s.scattered ? "true" : "false", gbps,
                      static_cast<unsigned long long>(iters), ms);
        return j;
    }

    // Post-to-completion latency of one 4 KiB page, n samples (after `warm` unmeasured).
    std::string latency(int n, int warm, bool backoff) {
        Prepared &p = request({4096, 1, false});
        nixlXferReqH *req = p.req;
        for (int i = 0; i < warm; i++) run_once(*agent_, req, backoff, p.typical);
        // What reading the clock twice costs (the median of 20,000 pairs): part of every
        // sample, taken out of each, as bench/nixl_bench.ts does with its own clock.
        std::vector<double> sw(20000);
        for (auto &v : sw) {
            auto a = Clock::now();
            v = std::chrono::duration<double, std::micro>(Clock::now() - a).count();
        }
        std::nth_element(sw.begin(), sw.begin() + sw.size() / 2, sw.end());
        const double stopwatch = sw[sw.size() / 2];
        std::vector<double> us(static_cast<size_t>(n));
        for (auto &v : us) {
            auto t0 = Clock::now();
            run_once(*agent_, req, backoff, p.typical);
            v = std::chrono::duration<double, std::micro>(Clock::now() - t0).count() - stopwatch;
        }
        std::sort(us.begin(), us.end());
        auto pct = [&](double p) {
            size_t i = static_cast<size_t>(std::max(0.0, std::ceil(p / 100 * us.size()) - 1));
            return us[std::min(i, us.size() - 1)];
        };
        if (!serving)
            std::printf("raw %s %s %s write_4KiB latency: p50 %.2f us, p99 %.2f us\n",
                        o_.backend.c_str(), o_.buffer.c_str(), backoff ? "backoff" : "spin", pct(50),
                        pct(99));
        char j[256];
        std::snprintf(j, sizeof j,
                      "{\"name\":\"write_4KiB_latency\",\"p50_us\":%.3f,\"p99_us\":%.3f,"
                      "\"samples\":%d,\"stopwatch_ns\":%.1f}",
                      pct(50), pct(99), n, stopwatch * 1000);
        return j;
    }

    bool serving = false;

  private:
    struct Prepared {
        Shape s;
        nixlDlistH *lh, *rh;
        nixlXferReqH *req;
        Typical typical;
    };

    Prepared &request(const Shape &s) {
        for (auto &r : reqs_)
            if (r.s.page == s.page && r.s.count == s.count && r.s.scattered == s.scattered) return r;
        if (s.page * s.count > buffer_size(o_)) die("shape " + shape_name(s) + " exceeds the buffer");
        nixl_xfer_dlist_t l(mem_of(o_)), r(mem_of(o_));
        for (uint64_t i = 0; i < s.count; i++) {
            l.addDesc(nixlBasicDesc(base_ + i * s.page, s.page, o_.device));
            r.addDesc(nixlBasicDesc(peer_addr_ + i * s.page, s.page, o_.device));
        }
        nixlDlistH *lh = nullptr, *rh = nullptr;
        check(agent_->prepXferDlist(NIXL_INIT_AGENT, l, lh), "prepXferDlist (local)");
        // The peer's connection may still be forming: retry for a while.
        nixl_status_t st = NIXL_ERR_NOT_FOUND;
        for (int t = 0; t < 2000 && st != NIXL_SUCCESS; t++) {
            st = agent_->prepXferDlist(peer_, r, rh);
            if (st != NIXL_SUCCESS) usleep(1000);
        }
        check(st, "prepXferDlist (remote)");
        std::vector<int> li(s.count), ri(s.count);
        for (uint64_t i = 0; i < s.count; i++) {
            li[i] = static_cast<int>(i);
            ri[i] = static_cast<int>(s.scattered ? s.count - 1 - i : i);
        }
        nixlXferReqH *req = nullptr;
        check(agent_->makeXferReq(NIXL_WRITE, lh, li, rh, ri, req, nullptr), "makeXferReq");
        reqs_.push_back({s, lh, rh, req, {}});
        Prepared &p = reqs_.back();
        for (int i = 0; i < 3; i++) run_once(*agent_, req, true, p.typical); // connect, fault in
        return p;
    }

    const Options &o_;
    std::unique_ptr<nixlAgent> agent_;
    nixl_reg_dlist_t reg_;
    uintptr_t base_ = 0;
    uint64_t peer_addr_ = 0;
    std::string peer_;
    std::deque<Prepared> reqs_; // stable references
};

// --serve: one command per stdin line, one JSON line per command on stdout, so that a
// benchmark can alternate short rounds of this program with rounds of the library:
//   bw PAGE COUNT c|s MS spin|backoff   -> {"name":..,"gbps":..,"requests":..,"ms":..}
//   lat N WARM spin|backoff             -> {"name":"write_4KiB_latency","p50_us":..,..}
// A bad line answers {"error":"..."}; end of input ends the program.
void serve(Initiator &in) {
    in.serving = true;
    std::printf("{\"ready\":true}\n");
    std::fflush(stdout);
    char line[256];
    while (std::fgets(line, sizeof line, stdin)) {
        char cmd[8] = {0}, kind[2] = {0}, wait[16] = {0};
        unsigned long long page = 0, count = 0;
        double ms = 0;
        int n = 0, warm = 0;
        std::string out;
        if (std::sscanf(line, "bw %llu %llu %1s %lf %15s", &page, &count, kind, &ms, wait) == 5 &&
            page > 0 && count > 0 && (kind[0] == 'c' || kind[0] == 's') && ms >= 0 &&
            (!std::strcmp(wait, "spin") || !std::strcmp(wait, "backoff")))
            out = in.bandwidth({page, count, kind[0] == 's'}, ms, !std::strcmp(wait, "backoff"));
        else if (std::sscanf(line, "lat %d %d %15s", &n, &warm, wait) == 3 && n > 0 && warm >= 0 &&
                 (!std::strcmp(wait, "spin") || !std::strcmp(wait, "backoff")))
            out = in.latency(n, warm, !std::strcmp(wait, "backoff"));
        else if (std::sscanf(line, "%7s", cmd) == 1)
            out = "{\"error\":\"expected 'bw PAGE COUNT c|s MS spin|backoff' or 'lat N WARM "
                  "spin|backoff'\"}";
        else continue;
        std::printf("%s\n", out.c_str());
        std::fflush(stdout);
    }
}

int initiator(const Options &o, int from_child, const std::string &name, std::vector<Figure> &out) {
    Initiator in(o, from_child, name);
    if (o.serve) {
        serve(in);
        return 0;
    }
    for (const Shape &s : o.shapes) out.push_back({in.bandwidth(s, o.min_ms, o.backoff)});
    if (o.lat > 0) out.push_back({in.latency(o.lat, 1000, o.backoff)});
    return 0;
}

} // namespace

int main(int argc, char **argv) {
    Options o = parse(argc, argv);
    int up[2], down[2]; // target -> initiator, initiator -> target
    if (pipe(up) != 0 || pipe(down) != 0) die("pipe failed");
    std::string stamp = std::to_string(getpid());
    pid_t child = fork();
    if (child < 0) die("fork failed");
    if (child == 0) {
        close(up[0]);
        close(down[1]);
        std::exit(target(o, up[1], down[0], "nixl-raw-target-" + stamp));
    }
    close(up[1]);
    close(down[0]);
    std::vector<Figure> figures;
    initiator(o, up[0], "nixl-raw-init-" + stamp, figures);
    close(down[1]);
    int st = 0;
    waitpid(child, &st, 0);
    if (o.serve) return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
    std::string js = "{\"tool\":\"nixl-raw\",\"backend\":\"" + o.backend + "\",\"buffer\":\"" + o.buffer +
                     "\",\"wait\":\"" + (o.backoff ? "backoff" : "spin") + "\",\"results\":[";
    for (size_t i = 0; i < figures.size(); i++) js += (i ? "," : "") + figures[i].json;
    js += "]}";
    std::printf("%s\n", js.c_str());
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}
