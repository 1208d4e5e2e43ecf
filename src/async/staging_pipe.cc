#include "async/staging_pipe.h"

#include <algorithm>

namespace ckpt::async {
namespace {

constexpr uint64_t kMaxPiece = 64ull << 20;

// Bytes of every chunk of the state dict.
Result<uint64_t> StateBytes(const StateDict& sd) {
  uint64_t total = 0;
  for (const DistTensor& t : sd.tensors) {
    for (const LocalChunk& c : t.chunks) {
      CKPT_ASSIGN_OR_RETURN(uint64_t n, c.shape.NumBytes(t.dtype));
      total += n;
    }
  }
  return total;
}

}  // namespace

StagingPipe::StagingPipe(StagingMemory& memory, const StateDict& sd, uint64_t budget)
    : memory_(memory), sd_(sd), budget_(budget) {
  uint64_t n = 0;
  for (const DistTensor& t : sd_.tensors) {
    first_chunk_.push_back(n);
    n += t.chunks.size();
  }
}

Status StagingPipe::Produce() {
  // Every chunk with bytes, in state-dict order: its pieces.
  std::vector<StagingMemory::CopyJob> jobs;
  std::vector<uint64_t> lens, ordinals;
  CKPT_ASSIGN_OR_RETURN(const uint64_t total, StateBytes(sd_));
  if (total == 0) return Status();
  const uint64_t capacity = budget_ == 0 ? total : std::min(budget_, total);
  // Without a budget everything fits at once; with one, pieces of at most
  // half the ring keep the writer and the producer both busy.
  uint64_t piece = std::min<uint64_t>(kMaxPiece, capacity == total ? capacity : capacity / 2);
  piece = std::max<uint64_t>(8, piece / 8 * 8);
  for (size_t ti = 0; ti < sd_.tensors.size(); ++ti) {
    const DistTensor& t = sd_.tensors[ti];
    for (size_t ci = 0; ci < t.chunks.size(); ++ci) {
      const uint64_t nbytes = *t.chunks[ci].shape.NumBytes(t.dtype);
      for (uint64_t off = 0; off < nbytes; off += piece) {
        jobs.push_back({&t.chunks[ci], t.dtype, off, {}});
        lens.push_back(std::min(piece, nbytes - off));
        ordinals.push_back(first_chunk_[ti] + ci);
      }
    }
  }
  auto fail = [&](const Status& s) {
    std::lock_guard<std::mutex> lock(mu_);
    producer_error_ = s;
    cv_.notify_all();
    return s;
  };
  Result<std::span<std::byte>> ring = memory_.Reserve(std::max(capacity, piece));
  if (!ring.ok()) return fail(ring.status());
  {
    std::lock_guard<std::mutex> lock(mu_);
    ring_ = *ring;
    piece_ = piece;
    whole_ = capacity == total;
  }
  if (whole_) {
    // Everything fits: lay the pieces end to end and copy them in one go.
    {
      std::lock_guard<std::mutex> lock(mu_);
      uint64_t pos = 0;
      for (size_t i = 0; i < jobs.size(); ++i) {
        in_flight_.push_back({pos, lens[i], ordinals[i]});
        jobs[i].dst = ring_.subspan(pos, lens[i]);
        pos += lens[i];
      }
    }
    Status copied = memory_.Copy(jobs);
    if (!copied.ok()) return fail(copied.WithContext("staging"));
    std::lock_guard<std::mutex> lock(mu_);
    ready_ = jobs.size();
    produced_ = true;
    cv_.notify_all();
    return Status();
  }
  for (size_t i = 0; i < jobs.size(); ++i) {
    StagingMemory::CopyJob& j = jobs[i];
    {
      std::unique_lock<std::mutex> lock(mu_);
      Result<uint64_t> at = Allocate(lens[i], ordinals[i], lock);
      if (!at.ok()) return at.status();
      if (*at == kNothingLeft) break;
      j.dst = ring_.subspan(*at, lens[i]);
    }
    // Copied without the lock: the writer never touches unready regions.
    Status copied = memory_.Copy(std::span<const StagingMemory::CopyJob>(&j, 1));
    if (!copied.ok()) return fail(copied.WithContext("staging"));
    std::lock_guard<std::mutex> lock(mu_);
    ++ready_;
    cv_.notify_all();
  }
  std::lock_guard<std::mutex> lock(mu_);
  produced_ = true;
  cv_.notify_all();
  return Status();
}

Result<uint64_t> StagingPipe::Allocate(uint64_t len, uint64_t chunk,
                                       std::unique_lock<std::mutex>& lock) {
  for (;;) {
    if (finished_ && !finished_->ok()) return *finished_;
    // The save succeeded: what is left are pieces it skipped (replicas that
    // another rank wrote), which this rank need not stage.
    if (finished_) return kNothingLeft;
    if (in_flight_.empty()) {
      in_flight_.push_back({0, len, chunk});
      return 0;
    }
    const uint64_t tail = in_flight_.front().pos;
    const uint64_t head = in_flight_.back().pos + in_flight_.back().len;
    std::optional<uint64_t> pos;
    if (head > tail) {
      // Free space: [head, end) and [0, tail).
      if (head + len <= ring_.size())
        pos = head;
      else if (len <= tail)
        pos = 0;
    } else if (head + len <= tail) {
      pos = head;  // wrapped: free space is [head, tail)
    }
    if (pos) {
      in_flight_.push_back({*pos, len, chunk});
      return *pos;
    }
    cv_.wait(lock);
  }
}

Result<std::span<const std::byte>> StagingPipe::Next(ChunkRef ref) {
  if (ref.tensor >= first_chunk_.size())
    return InternalError("staging: no tensor " + std::to_string(ref.tensor));
  const uint64_t want = first_chunk_[ref.tensor] + ref.chunk;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    // When the whole state fits, the writer starts after the last piece: on
    // few cores it would otherwise compete with the copy the caller waits for.
    cv_.wait(lock,
             [&] { return (ready_ > handed_ && (!whole_ || produced_)) || !producer_error_.ok(); });
    if (ready_ <= handed_) return producer_error_;
    const Region r = in_flight_[handed_];
    if (r.chunk == want) {
      ++handed_;
      return std::span<const std::byte>(ring_.subspan(r.pos, r.len));
    }
    if (r.chunk > want || handed_ != 0) {
      return InternalError("staging: chunk " + std::to_string(want) + " asked for out of order");
    }
    // A chunk this rank does not write (another rank writes its replica).
    in_flight_.pop_front();
    --ready_;
    cv_.notify_all();
  }
}

void StagingPipe::Release() {
  std::lock_guard<std::mutex> lock(mu_);
  if (handed_ == 0) return;
  in_flight_.pop_front();
  --handed_;
  --ready_;
  cv_.notify_all();
}

void StagingPipe::Finish(const Status& result) {
  std::lock_guard<std::mutex> lock(mu_);
  finished_ = result;
  cv_.notify_all();
}

}  // namespace ckpt::async
