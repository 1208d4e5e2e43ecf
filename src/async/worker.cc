#include "async/worker.h"

#include <sys/resource.h>
#include <unistd.h>

namespace ckpt::async {

Worker::Worker() : thread_([this] { Run(); }) {}

Worker::~Worker() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    cv_.notify_all();
  }
  thread_.join();
}

uint64_t Worker::Submit(std::function<Status()> task) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t ticket = ++submitted_;
  queue_.emplace_back(ticket, std::move(task));
  cv_.notify_all();
  return ticket;
}

Status Worker::Wait(uint64_t ticket) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return done_ >= ticket; });
  auto f = failures_.find(ticket);
  if (f == failures_.end() || returned_[ticket]) return Status();
  returned_[ticket] = true;
  return f->second;
}

Status Worker::Drain() {
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t last = submitted_;
  cv_.wait(lock, [&] { return done_ >= last; });
  Status first;
  for (const auto& [ticket, s] : failures_) {
    if (!returned_[ticket] && first.ok()) first = s;
    returned_[ticket] = true;
  }
  return first;
}

bool Worker::Failed(uint64_t ticket) {
  std::lock_guard<std::mutex> lock(mu_);
  return failures_.count(ticket) != 0;
}

bool Worker::Done(uint64_t ticket) {
  std::lock_guard<std::mutex> lock(mu_);
  return done_ >= ticket;
}

void Worker::Run() {
  // Background saves yield the cores to training (and to the copy training
  // waits for): on a busy machine they take longer, not the loop.
  ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 10);
  for (;;) {
    std::pair<uint64_t, std::function<Status()>> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and nothing left
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    Status s = job.second();
    std::lock_guard<std::mutex> lock(mu_);
    if (!s.ok()) failures_[job.first] = s;
    done_ = job.first;
    cv_.notify_all();
  }
}

}  // namespace ckpt::async
