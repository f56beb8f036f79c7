// engine_nixl_probe.cpp - what the nixl engine can see: NIXL's version and library,
// its plugin directory, the plugins it finds there (with their memory types and
// parameters), and UCX's version once UCX is loaded.

#include <dlfcn.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>

#include "engine_nixl_internal.hpp"

#ifndef KVPN_NIXL_VERSION
#define KVPN_NIXL_VERSION "unknown"
#endif
#ifndef KVPN_NIXL_PREFIX
#define KVPN_NIXL_PREFIX "unknown"
#endif

namespace kvpn {

std::string nixl_lib_path() {
    Dl_info info{};
    // Any function defined in libnixl.so will do.
    auto fn = &nixlEnumStrings::statusStr;
    void *addr = nullptr;
    std::memcpy(&addr, &fn, sizeof(addr) < sizeof(fn) ? sizeof(addr) : sizeof(fn));
    if (addr && dladdr(addr, &info) && info.dli_fname) return info.dli_fname;
    return "";
}

std::string plugin_dir() {
    if (const char *d = std::getenv("NIXL_PLUGIN_DIR"); d && *d)
        return std::string(d) + " (NIXL_PLUGIN_DIR)";
    std::string lib = nixl_lib_path();
    if (lib.empty()) return "";
    return (std::filesystem::path(lib).parent_path() / "plugins").string();
}

std::string ucx_version() {
    // Only asks a UCX that is already in the process (loaded by NIXL's UCX plugin).
    void *h = dlopen("libucp.so.0", RTLD_LAZY | RTLD_NOLOAD);
    if (!h) return "";
    std::string v;
    using fn_t = const char *(*)();
    if (auto f = reinterpret_cast<fn_t>(dlsym(h, "ucp_get_version_string"))) v = f();
    Dl_info info{};
    void *sym = dlsym(h, "ucp_get_version_string");
    if (sym && dladdr(sym, &info) && info.dli_fname) v += std::string(" (") + info.dli_fname + ")";
    dlclose(h);
    return v;
}

// NIXL exports no version call. libnixl_common.so (next to libnixl.so) holds the string
// NIXL logs at start-up, "NIXL version: " followed by the version: read it from the file,
// so the report names the NIXL actually loaded, not only the one built against.
std::string runtime_nixl_version() {
    std::string lib = nixl_lib_path();
    if (lib.empty()) return "";
    auto path = std::filesystem::path(lib).parent_path() / "libnixl_common.so";
    FILE *f = std::fopen(path.c_str(), "rb");
    if (!f) return "";
    std::string data;
    char chunk[65536];
    size_t n;
    while ((n = std::fread(chunk, 1, sizeof chunk, f)) > 0 && data.size() < (64u << 20))
        data.append(chunk, n);
    std::fclose(f);
    static const char marker[] = "NIXL version: ";
    size_t at = data.find(std::string(marker, sizeof marker)); // with its NUL
    if (at == std::string::npos) return "";
    size_t p = at + sizeof marker;
    while (p < data.size() && data[p] == '\0') p++;
    std::string v;
    while (p < data.size() && data[p] != '\0' && v.size() < 32) v += data[p++];
    for (char c : v)
        if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == '-' ||
              std::isalpha(static_cast<unsigned char>(c))))
            return "";
    return v;
}

std::string avail_plugins_hint(nixlAgent &agent) {
    std::vector<nixl_backend_t> plugins;
    if (agent.getAvailPlugins(plugins) != NIXL_SUCCESS) return "(none listed)";
    std::string s;
    for (auto &p : plugins) s += (s.empty() ? "" : ",") + p;
    return s.empty() ? "(none)" : s;
}

int32_t probe(uint8_t *buf, uint64_t cap, uint64_t *len) {
    return guarded([&]() -> int32_t {
        log_capture_install();
        std::string rv = runtime_nixl_version();
        std::string s;
        s += "version=" + (rv.empty() ? std::string(KVPN_NIXL_VERSION) : rv) + "\n";
        s += std::string("version_at_build=") + KVPN_NIXL_VERSION + "\n";
        s += std::string("nixl_prefix_at_build=") + KVPN_NIXL_PREFIX + "\n";
        s += "nixl_lib=" + nixl_lib_path() + "\n";
        s += "plugin_dir=" + plugin_dir() + "\n";
        s += std::string("log_capture=") + (log_capture_available() ? "1" : "0") + "\n";
        // getAvailPlugins needs an agent: a short-lived one without threads or backends.
        static std::atomic<uint64_t> n{0};
        nixlAgent agent("kvport-probe-" + std::to_string(::getpid()) + "-" +
                            std::to_string(n.fetch_add(1)),
                        nixlAgentConfig(false));
        std::vector<nixl_backend_t> plugins;
        nixl_status_t st = agent.getAvailPlugins(plugins);
        std::string list;
        for (auto &p : plugins) list += (list.empty() ? "" : ",") + p;
        s += "plugins=" + list + "\n";
        if (st != NIXL_SUCCESS) s += std::string("plugins_status=") + status_name(st) + "\n";
        if (plugins.empty())
            s += "available=0\nreason=NIXL loaded but found no plugins in " + plugin_dir() +
                 " (set NIXL_PLUGIN_DIR)\n";
        else
            s += "available=1\nreason=\n";
        for (auto &p : plugins) {
            nixl_mem_list_t mems;
            nixl_b_params_t params;
            if (agent.getPluginParams(p, mems, params) != NIXL_SUCCESS) {
                s += "plugin." + p + "=unloadable " + log_capture_take() + "\n";
                continue;
            }
            std::string ms, ps;
            for (auto m : mems) ms += (ms.empty() ? "" : "+") + std::string(mem_name(m));
            std::map<std::string, std::string> sorted(params.begin(), params.end());
            for (auto &[k, v] : sorted) ps += (ps.empty() ? "" : ";") + k + "=" + v;
            s += "plugin." + p + "=mems:" + ms + " params:" + ps + "\n";
        }
        std::string ucx = ucx_version();
        if (!ucx.empty()) s += "ucx_version=" + ucx + "\n";
        return sized_out(s.data(), s.size(), buf, cap, len);
    });
}

} // namespace kvpn
