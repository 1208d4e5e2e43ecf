// A background thread running tasks in submission order. Every rank submits
// the same collective tasks in the same order, so their collectives match.
#ifndef CKPT_ASYNC_WORKER_H_
#define CKPT_ASYNC_WORKER_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "ckpt/status.h"

namespace ckpt::async {

class Worker {
 public:
  Worker();
  ~Worker();  // runs what is queued, then stops
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Queues a task; returns its ticket (1, 2, ...).
  uint64_t Submit(std::function<Status()> task);
  // Waits until task `ticket` has run. Returns its error if it failed and
  // that error was not returned before (then marks it returned).
  Status Wait(uint64_t ticket);
  // Waits for every queued task; returns the first failure not returned
  // before, and marks every failure so far returned.
  Status Drain();
  // True when task `ticket` failed (returned or not).
  bool Failed(uint64_t ticket);
  // True when task `ticket` has run.
  bool Done(uint64_t ticket);

 private:
  void Run();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<uint64_t, std::function<Status()>>> queue_;
  uint64_t submitted_ = 0;
  uint64_t done_ = 0;
  std::map<uint64_t, Status> failures_;  // ticket → error
  std::map<uint64_t, bool> returned_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace ckpt::async

#endif  // CKPT_ASYNC_WORKER_H_
