// One machine-readable line per measured target, for bench/run_all.sh:
//   RESULT {"bench":"io","measure":"...","value":0.93,"target":">= 0.9","met":true}
#ifndef CKPT_BENCH_RESULT_H_
#define CKPT_BENCH_RESULT_H_

#include <cstdio>
#include <string>

namespace ckpt::bench {

// `higher_is_better` decides how `value` compares with `limit`.
inline void EmitResult(const char* bench, const std::string& measure, double value, bool higher_is_better,
                       double limit) {
  const bool met = higher_is_better ? value >= limit : value <= limit;
  std::printf("RESULT {\"bench\":\"%s\",\"measure\":\"%s\",\"value\":%.4g,\"target\":\"%s %.4g\",\"met\":%s}\n",
              bench, measure.c_str(), value, higher_is_better ? ">=" : "<=", limit, met ? "true" : "false");
}

}  // namespace ckpt::bench

#endif  // CKPT_BENCH_RESULT_H_
