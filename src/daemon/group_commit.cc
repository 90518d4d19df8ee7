#include "daemon/group_commit.h"

namespace tp::daemon {

GroupCommit::GroupCommit(std::function<Result<void>()> commit) : commit_(std::move(commit)) {}

GroupCommit::GroupCommit(std::function<Result<void>()> commit,
                         std::function<Result<bool>()> background)
    : commit_(std::move(commit)), background_(std::move(background)) {}

GroupCommit::~GroupCommit() {
  stop_background();
}

Result<void> GroupCommit::flush() {
  std::unique_lock lk(mu_);
  // A commit already running may have started before our caller's writes completed: only
  // the one after it is sure to cover them.
  const uint64_t need = started_ + 1;
  while (completed_ < need) {
    if (running_) {
      cv_.wait(lk);
      continue;
    }
    running_ = true;
    const uint64_t seq = ++started_;
    dirty_ = false;
    lk.unlock();
    Result<void> r = commit_();
    lk.lock();
    running_ = false;
    completed_ = seq;
    last_error_.reset();
    if (!r.ok()) last_error_ = r.error();
    cv_.notify_all();
  }
  // completed_ >= need: the latest result speaks for ours (a pool whose commit failed stays
  // failed, so a later success cannot hide an earlier failure).
  if (last_error_) return *last_error_;
  return {};
}

void GroupCommit::note_write() {
  std::lock_guard lk(mu_);
  dirty_ = true;
}

uint64_t GroupCommit::commits() const {
  std::lock_guard lk(mu_);
  return started_;
}

void GroupCommit::start_background(std::chrono::milliseconds interval,
                                   std::function<void(const Error&)> on_error) {
  stop_background();
  {
    std::lock_guard lk(mu_);
    bg_stop_ = false;
  }
  bg_ = std::thread([this, interval, on_error = std::move(on_error)] {
    std::unique_lock lk(mu_);
    for (;;) {
      bg_cv_.wait_for(lk, interval, [&] { return bg_stop_; });
      if (bg_stop_) return;
      if ((!dirty_ && !bg_again_) || running_) continue;  // nothing new, or a flush runs
      if (!background_) {
        lk.unlock();
        Result<void> r = flush();
        if (!r.ok() && on_error) on_error(r.error());
        lk.lock();
        continue;
      }
      dirty_ = false;
      lk.unlock();
      Result<bool> r = background_();
      if (!r.ok() && on_error) on_error(r.error());
      lk.lock();
      bg_again_ = r.ok() && *r;
    }
  });
}

void GroupCommit::stop_background() {
  {
    std::lock_guard lk(mu_);
    bg_stop_ = true;
  }
  bg_cv_.notify_all();
  if (bg_.joinable()) bg_.join();
}

}  // namespace tp::daemon
