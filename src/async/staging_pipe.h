// One asynchronous save's hand-off between the training thread, which copies
// the tensors into staging memory (Produce), and the background writer, which
// reads them as a ChunkSource. Every chunk with bytes is staged, in
// state-dict order, without waiting for the writer to plan; the writer skips
// the ones it does not write. Staging memory is used as a ring: with a budget
// smaller than the state, the producer waits for the writer to release
// pieces, so memory stays bounded and the caller waits longer.
#ifndef CKPT_ASYNC_STAGING_PIPE_H_
#define CKPT_ASYNC_STAGING_PIPE_H_

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <vector>

#include "ckpt/sharded.h"
#include "ckpt/staging.h"

namespace ckpt::async {

class StagingPipe final : public ChunkSource {
 public:
  // `sd` is the caller's state dict (read until Produce returns); `budget`
  // bounds staging memory (0: the whole state).
  StagingPipe(StagingMemory& memory, const StateDict& sd, uint64_t budget);

  // Caller side: copies every chunk the writer will ask for. Returns once the
  // last byte is staged, or the writer's failure.
  Status Produce();

  // Writer side.
  Result<std::span<const std::byte>> Next(ChunkRef chunk) override;
  void Release() override;
  void Finish(const Status& result) override;

  // Largest piece handed over (for tests).
  uint64_t piece_size() const { return piece_; }

 private:
  struct Region {
    uint64_t pos;
    uint64_t len;
    uint64_t chunk;  // ordinal of its chunk in state-dict order
  };
  // Waits for `len` free bytes of the ring; returns their position, or
  // kNothingLeft once the save has succeeded without needing more pieces.
  static constexpr uint64_t kNothingLeft = ~uint64_t{0};
  Result<uint64_t> Allocate(uint64_t len, uint64_t chunk, std::unique_lock<std::mutex>& lock);

  StagingMemory& memory_;
  const StateDict& sd_;
  const uint64_t budget_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<uint64_t> first_chunk_;  // per tensor: ordinal of its first chunk
  std::optional<Status> finished_;
  Status producer_error_;
  std::span<std::byte> ring_;
  uint64_t piece_ = 0;
  std::deque<Region> in_flight_;  // staged or being written, oldest first
  size_t ready_ = 0;              // in_flight_ entries staged and not yet handed out
  size_t handed_ = 0;             // handed to the writer, not yet released
  bool whole_ = false;            // the ring holds the whole state
  bool produced_ = false;         // every piece is staged
};

}  // namespace ckpt::async

#endif  // CKPT_ASYNC_STAGING_PIPE_H_
