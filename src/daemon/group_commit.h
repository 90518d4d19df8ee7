#pragma once
// Group commit (DESIGN.md "Durability contract"): a flush needs a commit that starts after
// it arrived. Flushes that arrive while a commit runs wait for it, then share the next one,
// so N concurrent flushes cost at most two commits. A background thread runs the
// background commit at most once per interval when there were writes but no flush
// (thin::Pool::background_commit: mapping changes to the journal without a data sync),
// bounding what a crash can lose; it keeps calling it while it reports work left.
//
// Thread-safety: every method may be called from any thread.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include "io/result.h"

namespace tp::daemon {

class GroupCommit {
 public:
  // commit makes every write that completed before it was called durable (thin::Pool::flush).
  explicit GroupCommit(std::function<Result<void>()> commit);
  // background: what the background thread runs (default: commit); true = call again
  // after the next interval even without new writes.
  GroupCommit(std::function<Result<void>()> commit, std::function<Result<bool>()> background);
  ~GroupCommit();  // stop_background()
  GroupCommit(const GroupCommit&) = delete;
  GroupCommit& operator=(const GroupCommit&) = delete;

  // Returns once a commit that started after this call has finished, with its result.
  Result<void> flush();
  // A write completed: the background thread will commit it within one interval.
  void note_write();

  // Starts/stops the background committer. on_error is called (from that thread) with the
  // result of a failed background commit.
  void start_background(std::chrono::milliseconds interval,
                        std::function<void(const Error&)> on_error);
  void stop_background();

  uint64_t commits() const;  // commits started so far (tests)

 private:
  std::function<Result<void>()> commit_;
  std::function<Result<bool>()> background_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool running_ = false;             // a commit is in progress
  uint64_t started_ = 0;             // sequence number of the last commit started
  uint64_t completed_ = 0;           // ... and of the last one finished
  std::optional<Error> last_error_;  // result of commit `completed_`
  bool dirty_ = false;               // writes since the last commit started
  bool bg_again_ = false;            // the background commit left work for later

  std::thread bg_;
  bool bg_stop_ = false;
  std::condition_variable bg_cv_;
};

}  // namespace tp::daemon
