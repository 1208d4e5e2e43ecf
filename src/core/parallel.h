// Data parallelism for CPU-bound loops (plan building, decoding): split
// [0, n) into contiguous ranges, one per thread, the caller's thread running
// the first. Ranges are in order, so a caller that keeps per-range results
// can merge them deterministically (for example: report the error of the
// lowest range that has one).
#ifndef CKPT_CORE_PARALLEL_H_
#define CKPT_CORE_PARALLEL_H_

#include <algorithm>
#include <cstddef>
#include <thread>
#include <vector>

namespace ckpt {

// How many ranges `work` items deserve: one per `min_per_range` items, at
// most the machine's cores (and 8).
inline unsigned RangesFor(size_t work, size_t min_per_range) {
  const unsigned cores = std::clamp(std::thread::hardware_concurrency(), 1u, 8u);
  const size_t wanted = std::max<size_t>(1, work / std::max<size_t>(1, min_per_range));
  return static_cast<unsigned>(std::min<size_t>(cores, wanted));
}

// fn(begin, end, range) for `ranges` ranges covering [0, n); returns when all
// are done. fn must not throw.
template <typename Fn>
void ForEachRange(size_t n, unsigned ranges, const Fn& fn) {
  ranges = static_cast<unsigned>(std::clamp<size_t>(ranges, 1, std::max<size_t>(1, n)));
  auto bound = [&](unsigned k) { return n * k / ranges; };
  std::vector<std::thread> threads;
  threads.reserve(ranges - 1);
  for (unsigned k = 1; k < ranges; ++k)
    threads.emplace_back([&, k] { fn(bound(k), bound(k + 1), k); });
  fn(bound(0), bound(1), 0u);
  for (std::thread& t : threads) t.join();
}

}  // namespace ckpt

#endif  // CKPT_CORE_PARALLEL_H_
