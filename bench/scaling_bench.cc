// Growth of the work that hostile or unusual inputs used to make quadratic
// (issue 20, item 3). Each row runs one case at size n and at 4n and prints
// both times and their ratio: about 4 for linear work, about 5 for n log n,
// 16 for quadratic. Target: ratio <= 8.
//   consolidate   a [n, 2] U16 tensor split along dimension 1 (2n row pieces)
//   header parse  a safetensors header with n tensors
//   tiling check  n column chunks sharing one dimension-0 range
//   verify        n shard files of one chunk each (files x chunks before)
//
//   ckpt_scaling_bench [--scale 1]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "ckpt/consolidate.h"
#include "ckpt/safetensors.h"
#include "ckpt/sharded.h"
#include "plan/box.h"

namespace {

using namespace ckpt;
using Clock = std::chrono::steady_clock;

void Check(const Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "ckpt_scaling_bench: %s\n", s.ToString().c_str());
    std::exit(1);
  }
}

// Seconds of `run(n)` (its setup excluded by the caller's own timing).
double Time(const std::function<double(uint64_t)>& run, uint64_t n) { return run(n); }

template <typename F>
double Seconds(F&& f) {
  auto t0 = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double ConsolidatePieces(uint64_t n) {
  auto fs = NewMemoryStorage();
  std::vector<uint16_t> half(n);
  for (uint64_t i = 0; i < n; ++i) half[i] = static_cast<uint16_t>(i);
  auto comms = NewThreadCommunicators(2);
  std::vector<std::thread> th;
  std::vector<Status> st(2);
  for (int r = 0; r < 2; ++r) {
    th.emplace_back([&, r] {
      StateDict sd;
      sd.tensors.push_back({"w",
                            DType::kU16,
                            Shape({n, 2}),
                            {{{0, static_cast<uint64_t>(r)},
                              Shape({n, 1}),
                              reinterpret_cast<std::byte*>(half.data()),
                              {}}}});
      st[static_cast<size_t>(r)] = SaveSharded(*comms[static_cast<size_t>(r)], *fs, "/ckpt", sd);
    });
  }
  for (auto& t : th) t.join();
  for (const Status& s : st) Check(s);
  auto one = NewSingleRankCommunicator();
  return Seconds([&] { Check(ckpt::Consolidate(*one, *fs, "/ckpt", "/out")); });
}

double HeaderParse(uint64_t n) {
  std::string h = "{";
  for (uint64_t i = 0; i < n; ++i) {
    if (i) h += ',';
    h += "\"model.layers." + std::to_string(i) +
         ".weight\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[" + std::to_string(i) + "," +
         std::to_string(i + 1) + "]}";
  }
  h += '}';
  return Seconds([&] { Check(SafetensorsHeader::Parse(h, n, "bench").status()); });
}

double Tiling(uint64_t n) {
  std::vector<plan::Box> boxes;
  for (uint64_t i = 0; i < n; ++i) boxes.push_back({{0, i}, {8, 1}});
  return Seconds([&] { Check(plan::CheckTiling("w", Shape({8, n}), boxes)); });
}

double Verify(uint64_t n) {
  auto fs = NewMemoryStorage();
  Check(fs->MakeDirs("/v"));
  for (uint64_t i = 0; i < n; ++i) {
    const uint8_t b = static_cast<uint8_t>(i);
    TensorData t{"w", DType::kU8, Shape({1}), std::as_bytes(std::span<const uint8_t>(&b, 1))};
    SafetensorsMetadata md{
        {"DCP_SHARDING_INFO", "{\"w\": {\"saved_offsets\": [" + std::to_string(i) + "]}}"}};
    Check(WriteSafetensors(*fs, "/v/" + ShardFileName(static_cast<int>(i)), std::span(&t, 1), md));
  }
  return Seconds([&] { Check(VerifyShardedCheckpoint(*fs, "/v")); });
}

}  // namespace

int main(int argc, char** argv) {
  double scale = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--scale") scale = std::max(0.01, std::atof(argv[i + 1]));
  }
  struct Row {
    const char* name;
    uint64_t n;
    std::function<double(uint64_t)> run;
  };
  auto n = [&](double v) { return static_cast<uint64_t>(v * scale); };
  const Row rows[] = {
      {"consolidate dim-1 pieces", n(65536), ConsolidatePieces},
      {"header parse (tensors)", n(8192), HeaderParse},
      {"tiling check (chunks)", n(6000), Tiling},
      {"verify (files)", n(1500), Verify},
  };
  std::printf("%-26s %10s %10s %10s %10s %7s\n", "case", "n", "time(n)", "4n", "time(4n)", "ratio");
  for (const Row& r : rows) {
    const double a = Time(r.run, r.n), b = Time(r.run, 4 * r.n);
    const double ratio = b / std::max(a, 1e-6);
    std::printf("%-26s %10llu %9.4fs %10llu %9.4fs %7.2f   target <= 8\n", r.name,
                static_cast<unsigned long long>(r.n), a, static_cast<unsigned long long>(4 * r.n),
                b, ratio);
    ckpt::bench::EmitResult("scaling", std::string(r.name) + ": time(4n) / time(n)", ratio, false,
                            8);
  }
  return 0;
}
