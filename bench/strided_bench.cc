// Strided copies: core/strided.h's run-merging gather and scatter against
// the element-at-a-time walk every copy used before, on the views training
// code hands over (a row slice, a column slice, a transpose), measured on
// the same buffers in the same run.
//
//   ckpt_strided_bench [--mib N] [--reps K]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/strided.h"

namespace ckpt::bench {
namespace {

// The pre-helper copy: one memcpy per element.
void PerElementGather(const StridedLayout& l, const std::byte* base, std::byte* dst) {
  const size_t rank = l.shape.size();
  uint64_t n = 1;
  for (uint64_t d : l.shape) n *= d;
  std::vector<uint64_t> idx(rank, 0);
  const auto esz = static_cast<int64_t>(l.elem_bytes);
  for (uint64_t e = 0; e < n; ++e) {
    int64_t off = 0;
    for (size_t d = 0; d < rank; ++d) off += static_cast<int64_t>(idx[d]) * l.strides[d];
    std::memcpy(dst + e * l.elem_bytes, base + off * esz, l.elem_bytes);
    for (size_t d = rank; d-- > 0;) {
      if (++idx[d] < l.shape[d]) break;
      idx[d] = 0;
    }
  }
}

struct View {
  const char* name;
  StridedLayout layout;
  double min_speedup;  // the target
};

int Main(int argc, char** argv) {
  uint64_t mib = 256;
  int reps = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--mib")
      mib = std::strtoull(argv[i + 1], nullptr, 10);
    else if (a == "--reps")
      reps = std::atoi(argv[i + 1]);
  }
  // A [rows, 4096] BF16 matrix of `mib` MiB.
  const uint64_t cols = 4096, esz = 2, rows = mib * (1 << 20) / (cols * esz);
  std::vector<std::byte> src(rows * cols * esz), dst(src.size()), ref(src.size());
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<std::byte>(i * 131 + 7);
  const int64_t c = static_cast<int64_t>(cols);
  const View views[] = {
      {"row slice (first half of the rows)", {{rows / 2, cols}, {c, 1}, esz}, 10},
      {"column slice (first half of each row)", {{rows, cols / 2}, {c, 1}, esz}, 10},
      // Nothing to merge: the helper must not be slower than the old walk.
      {"transpose (no contiguous run)", {{cols, rows}, {1, c}, esz}, 0.8},
  };
  std::printf("%-40s %12s %12s %9s\n", "view", "per-element", "runs", "speedup");
  for (const View& v : views) {
    uint64_t n = 1;
    for (uint64_t d : v.layout.shape) n *= d;
    const double gib = static_cast<double>(n * esz) / (1 << 30);
    std::vector<double> slow, fast;
    for (int k = 0; k < reps; ++k) {
      auto t = Clock::now();
      PerElementGather(v.layout, src.data(), ref.data());
      slow.push_back(Since(t));
      t = Clock::now();
      GatherAll(v.layout, src.data(), dst.data());
      fast.push_back(Since(t));
      if (std::memcmp(ref.data(), dst.data(), n * esz) != 0) {
        std::fprintf(stderr, "strided: %s: the two copies differ\n", v.name);
        return 1;
      }
    }
    const double s = Median(slow), f = Median(fast), speedup = s / f;
    std::printf("%-40s %9.2f GiB/s %7.2f GiB/s %8.1fx\n", v.name, gib / s, gib / f, speedup);
    EmitResult("strided", std::string("gather speedup over per-element, ") + v.name, speedup, true,
               v.min_speedup);
  }
  return 0;
}

}  // namespace
}  // namespace ckpt::bench

int main(int argc, char** argv) { return ckpt::bench::Main(argc, argv); }
