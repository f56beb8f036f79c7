// engine_nixl_log.cpp - keeps NIXL's own words for the last error.
//
// NIXL returns bare statuses (most failures collapse into NIXL_ERR_BACKEND or
// NIXL_ERR_NOT_FOUND) and writes the reason to its log through Abseil logging. When the
// module is built against the same Abseil as libnixl (KVPN_HAVE_ABSL_SINK, set by
// scripts/find-nixl.sh when that Abseil's headers sit next to it), a log sink copies the warnings and
// errors that NIXL logs on the calling thread into a thread-local buffer; every entry
// point resets it, and error messages append what it caught. NIXL's own stderr output is
// unchanged (NIXL_LOG_LEVEL still controls it).

#include "engine_nixl_internal.hpp"

#ifdef KVPN_HAVE_ABSL_SINK
#include <absl/base/log_severity.h>
#include <absl/log/log_entry.h>
#include <absl/log/log_sink.h>
#include <absl/log/log_sink_registry.h>

#include <mutex>

namespace kvpn {
namespace {

thread_local std::string t_captured;
constexpr size_t kCaptureMax = 2048;

class CaptureSink final : public absl::LogSink {
  public:
    void Send(const absl::LogEntry &e) override {
        if (e.log_severity() < absl::LogSeverity::kWarning) return;
        try {
            if (t_captured.size() >= kCaptureMax) return;
            std::string_view m = e.text_message();
            while (!m.empty() && (m.back() == '\n' || m.back() == ' ')) m.remove_suffix(1);
            if (m.empty()) return;
            if (!t_captured.empty()) t_captured += "; ";
            t_captured.append(m.substr(0, kCaptureMax - std::min(kCaptureMax, t_captured.size())));
        } catch (...) {
        }
    }
};

} // namespace

void log_capture_install() {
    static std::once_flag once;
    std::call_once(once, [] {
        // Never removed: NIXL may log until the process exits.
        static CaptureSink *sink = new CaptureSink();
        absl::AddLogSink(sink);
    });
}
void log_capture_reset() { t_captured.clear(); }
std::string log_capture_take() {
    std::string s;
    s.swap(t_captured);
    return s;
}
bool log_capture_available() { return true; }

} // namespace kvpn

#else

namespace kvpn {
void log_capture_install() {}
void log_capture_reset() {}
std::string log_capture_take() { return std::string(); }
bool log_capture_available() { return false; }
} // namespace kvpn

#endif
