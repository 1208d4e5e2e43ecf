// Host staging memory: one buffer of pages reused across saves, filled by
// several threads.
#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

#include "ckpt/staging.h"
#include "core/strided.h"

namespace ckpt {
namespace {

// Below this a copy is not worth splitting over threads.
constexpr uint64_t kParallelMin = 4ull << 20;

class HostStaging final : public StagingMemory {
 public:
  explicit HostStaging(unsigned threads) : threads_(threads) {
    if (threads_ == 0) threads_ = std::clamp(std::thread::hardware_concurrency(), 1u, 8u);
  }
  ~HostStaging() override { Free(); }

  Result<std::span<std::byte>> Reserve(uint64_t bytes) override {
    if (bytes > size_) {
      Free();
      void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) {
        return UnavailableError("staging: cannot allocate " + std::to_string(bytes) +
                                " bytes of host memory");
      }
      base_ = static_cast<std::byte*>(p);
      size_ = bytes;
      // Touch every page now, in parallel, so the first save does not pay
      // the page faults inside the caller's blocking time.
      ForRanges(size_, [&](uint64_t b, uint64_t e) { std::memset(base_ + b, 0, e - b); });
    }
    return std::span<std::byte>(base_, size_);
  }

  // The jobs' bytes, laid end to end, are split into one equal range per
  // thread; each thread copies its range with as few and as large calls as
  // the jobs allow (large memcpy calls are markedly faster).
  Status Copy(std::span<const CopyJob> jobs) override {
    uint64_t total = 0;
    for (const CopyJob& j : jobs) {
      if (!j.chunk->strides.empty()) {
        const uint64_t esz = DTypeBits(j.dtype) / 8;
        if (esz == 0 || j.offset % esz != 0 || j.dst.size() % esz != 0) {
          return InvalidArgumentError("staging: strided copy not aligned to whole elements");
        }
      }
      total += j.dst.size();
    }
    ForRanges(total, [&](uint64_t b, uint64_t e) {
      uint64_t at = 0;
      for (const CopyJob& j : jobs) {
        const uint64_t jb = at, je = at + j.dst.size();
        at = je;
        if (je <= b || jb >= e) continue;
        const uint64_t from = std::max(b, jb) - jb, to = std::min(e, je) - jb;
        CopyRange(j, from, to);
      }
    });
    return Status();
  }
  uint64_t capacity() const override { return size_; }

 private:
  // Runs fn over [0, n) split into one range per thread.
  template <typename Fn>
  void ForRanges(uint64_t n, Fn fn) {
    const uint64_t parts =
        n < kParallelMin ? 1 : std::min<uint64_t>(threads_, n / (kParallelMin / 4));
    if (parts <= 1) {
      fn(0, n);
      return;
    }
    std::vector<std::thread> workers;
    const uint64_t step = (n + parts - 1) / parts;
    for (uint64_t p = 1; p < parts; ++p) {
      const uint64_t b = std::min(n, p * step), e = std::min(n, b + step);
      workers.emplace_back([&fn, b, e] { fn(b, e); });
    }
    fn(0, std::min(n, step));
    for (auto& w : workers) w.join();
  }

  // Bytes [from, to) of a job's destination. Strided ranges are widened to
  // whole elements by the caller's alignment: a range boundary inside an
  // element is rounded so each element is copied by exactly one range.
  static void CopyRange(const CopyJob& j, uint64_t from, uint64_t to) {
    const LocalChunk& c = *j.chunk;
    if (c.strides.empty()) {
      std::memcpy(j.dst.data() + from, c.data + j.offset + from, to - from);
      return;
    }
    const uint64_t esz = DTypeBits(j.dtype) / 8;
    const uint64_t e0 = (from + esz - 1) / esz, e1 = (to + esz - 1) / esz;
    if (e1 > e0) {
      GatherElements(StridedLayout{c.shape.dims(), c.strides, esz}, c.data, j.offset / esz + e0,
                     e1 - e0, j.dst.data() + e0 * esz);
    }
  }

  void Free() {
    if (base_ != nullptr) ::munmap(base_, size_);
    base_ = nullptr;
    size_ = 0;
  }

  unsigned threads_;
  std::byte* base_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace

std::unique_ptr<StagingMemory> NewHostStagingMemory(unsigned threads) {
  return std::make_unique<HostStaging>(threads);
}

}  // namespace ckpt
