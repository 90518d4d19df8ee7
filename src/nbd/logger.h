#pragma once
// A small logger interface, injected (LevelDB's Env::NewLogger), never a global
// (STYLE.md "Logging"). Messages are fmt-style. A client hanging up is debug, not error.
//
// Thread-safety: log() may be called from any thread; implementations serialise.

#include <fmt/format.h>

#include <mutex>
#include <string>
#include <string_view>
#include <utility>

namespace tp::nbd {

enum class LogLevel { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

class Logger {
 public:
  virtual ~Logger() = default;
  virtual void log(LogLevel level, std::string_view message) = 0;
  // Messages above this level are not formatted at all.
  virtual LogLevel level() const { return LogLevel::kInfo; }

  template <typename... A>
  void error(fmt::format_string<A...> f, A&&... a) {
    if (LogLevel::kError <= level()) log(LogLevel::kError, fmt::format(f, std::forward<A>(a)...));
  }
  template <typename... A>
  void warn(fmt::format_string<A...> f, A&&... a) {
    if (LogLevel::kWarn <= level()) log(LogLevel::kWarn, fmt::format(f, std::forward<A>(a)...));
  }
  template <typename... A>
  void info(fmt::format_string<A...> f, A&&... a) {
    if (LogLevel::kInfo <= level()) log(LogLevel::kInfo, fmt::format(f, std::forward<A>(a)...));
  }
  template <typename... A>
  void debug(fmt::format_string<A...> f, A&&... a) {
    if (LogLevel::kDebug <= level()) log(LogLevel::kDebug, fmt::format(f, std::forward<A>(a)...));
  }
};

// Discards everything (tests).
class NullLogger : public Logger {
 public:
  void log(LogLevel, std::string_view) override {}
  LogLevel level() const override { return LogLevel::kError; }
};

// One line per message on stderr: "thinpool: warn: ...".
class StderrLogger : public Logger {
 public:
  explicit StderrLogger(LogLevel max = LogLevel::kInfo) : max_(max) {}
  void log(LogLevel level, std::string_view message) override;
  LogLevel level() const override { return max_; }

 private:
  LogLevel max_;
  std::mutex mu_;
};

}  // namespace tp::nbd
