// Shared by the benchmarks: timing, medians, failing loudly, and one
// machine-readable line per measured target for bench/run_all.sh:
//   RESULT {"bench":"io","measure":"...","value":0.93,"target":">= 0.9","met":true}
#ifndef CKPT_BENCH_BENCH_UTIL_H_
#define CKPT_BENCH_BENCH_UTIL_H_

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "ckpt/status.h"

namespace ckpt::bench {

using Clock = std::chrono::steady_clock;

inline double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Exits with the error, prefixed by the benchmark's name.
inline void CheckOk(const char* bench, const Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", bench, s.ToString().c_str());
    std::exit(1);
  }
}

// `higher_is_better` decides how `value` compares with `limit`.
inline void EmitResult(const char* bench, const std::string& measure, double value,
                       bool higher_is_better, double limit) {
  const bool met = higher_is_better ? value >= limit : value <= limit;
  std::printf(
      "RESULT {\"bench\":\"%s\",\"measure\":\"%s\",\"value\":%.4g,\"target\":\"%s "
      "%.4g\",\"met\":%s}\n",
      bench, measure.c_str(), value, higher_is_better ? ">=" : "<=", limit, met ? "true" : "false");
}

}  // namespace ckpt::bench

#endif  // CKPT_BENCH_BENCH_UTIL_H_
