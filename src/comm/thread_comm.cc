// Ranks as threads of one process. All collectives are one "exchange": each
// rank deposits its bytes; the last to arrive publishes everyone's bytes and
// starts the next generation. A rank that times out marks the group broken,
// so the others (and later collectives) fail at once instead of waiting.
#include <condition_variable>
#include <map>
#include <mutex>

#include "ckpt/comm.h"

namespace ckpt {
namespace {

struct Group {
  explicit Group(int n) : size(n), slots(static_cast<size_t>(n)), present(static_cast<size_t>(n)) {}
  const int size;
  std::mutex mu;
  std::condition_variable cv;
  uint64_t generation = 0;
  int arrived = 0;
  std::vector<std::string> slots;
  std::vector<bool> present;
  std::vector<std::string> result;
  std::string broken;  // why, once broken
  // Groups made by Duplicate, by sequence number, until every rank took its.
  std::map<uint64_t, std::pair<std::shared_ptr<Group>, int>> dups;
};

class ThreadComm final : public Communicator {
 public:
  ThreadComm(std::shared_ptr<Group> g, int rank) : g_(std::move(g)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return g_->size; }
  std::string_view kind() const override { return "threads"; }

  Status Barrier(Timeout timeout) override { return Exchange("", timeout, "barrier").status(); }
  Result<std::vector<std::string>> AllGather(std::string_view mine, Timeout timeout) override {
    return Exchange(mine, timeout, "all-gather");
  }
  Result<std::unique_ptr<Communicator>> Duplicate(Timeout timeout) override {
    std::shared_ptr<Group> child;
    {
      std::lock_guard<std::mutex> lock(g_->mu);
      auto& [group, taken] = g_->dups[dups_];
      if (!group) group = std::make_shared<Group>(g_->size);
      child = group;
      if (++taken == g_->size) g_->dups.erase(dups_);
    }
    ++dups_;
    CKPT_RETURN_IF_ERROR(Exchange("", timeout, "duplicate").status());
    return std::unique_ptr<Communicator>(std::make_unique<ThreadComm>(std::move(child), rank_));
  }

  Status Broadcast(int root, std::string* data, Timeout timeout) override {
    if (root < 0 || root >= g_->size) {
      return InvalidArgumentError("broadcast root " + std::to_string(root) + " of " +
                                  std::to_string(g_->size) + " ranks");
    }
    CKPT_ASSIGN_OR_RETURN(
        std::vector<std::string> all,
        Exchange(rank_ == root ? *data : std::string_view(), timeout, "broadcast"));
    *data = std::move(all[static_cast<size_t>(root)]);
    return Status();
  }

 private:
  Result<std::vector<std::string>> Exchange(std::string_view mine, Timeout timeout,
                                            const char* what) {
    Group& g = *g_;
    std::unique_lock<std::mutex> lock(g.mu);
    if (!g.broken.empty()) {
      return FailedPreconditionError("rank " + std::to_string(rank_) + ": " + what +
                                     " on a broken thread group (" + g.broken + ")");
    }
    const uint64_t gen = g.generation;
    g.slots[static_cast<size_t>(rank_)] = std::string(mine);
    g.present[static_cast<size_t>(rank_)] = true;
    if (++g.arrived == g.size) {
      g.result = std::move(g.slots);
      g.slots.assign(static_cast<size_t>(g.size), std::string());
      g.present.assign(static_cast<size_t>(g.size), false);
      g.arrived = 0;
      ++g.generation;
      g.cv.notify_all();
      return g.result;
    }
    bool done =
        g.cv.wait_for(lock, timeout, [&] { return g.generation != gen || !g.broken.empty(); });
    if (g.generation != gen) return g.result;
    if (!done) {
      std::string missing;
      for (int r = 0; r < g.size; ++r) {
        if (!g.present[static_cast<size_t>(r)])
          missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      }
      g.broken = std::string(what) + " timed out after " + std::to_string(timeout.count()) +
                 " ms waiting for rank(s) " + missing;
      g.cv.notify_all();
      return UnavailableError("rank " + std::to_string(rank_) + ": " + g.broken);
    }
    return UnavailableError("rank " + std::to_string(rank_) + ": " + what +
                            " abandoned: " + g.broken);
  }

  std::shared_ptr<Group> g_;
  int rank_;
  uint64_t dups_ = 0;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> NewThreadCommunicators(int n) {
  auto g = std::make_shared<Group>(n);
  std::vector<std::unique_ptr<Communicator>> out;
  for (int r = 0; r < n; ++r) out.push_back(std::make_unique<ThreadComm>(g, r));
  return out;
}

}  // namespace ckpt
