// Planning at scale: the global save plan of T tensors on R ranks, built on
// one process from R encoded local plans (what a save gathers), for several
// R: the compact plans ranks of one model send, and for comparison the full
// plans (names included) sent when ranks hold different tensors. Each configuration runs in a child
// process so its peak memory is its own. Prints time, time per chunk and peak memory beyond the
// encoded plans, and one RESULT line per target:
//   ckpt_plan_bench [--tensors 10000] [--ranks 64,256,1024] [--reps 3] [--full 1]
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bench_util.h"
#include "ckpt/state_dict.h"
#include "plan/save_plan.h"

using namespace ckpt;
using namespace ckpt::bench;

namespace {

long PeakKiB() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

// FSDP-like: every tensor split along dim 0 evenly over the ranks; nine in
// ten are [4096, 1024] bf16 matrices, one in ten a [4096] norm weight.
struct Encoded {
  std::vector<std::string> compact, full;
  std::shared_ptr<const plan::TensorTable> table;
};

Encoded EncodedPlans(int tensors, int ranks) {
  StateDict sd;
  for (int t = 0; t < tensors; ++t) {
    const bool norm = t % 10 == 9;
    const std::string name = "model.layers." + std::to_string(t / 10) +
                             (norm ? ".norm.weight" : ".w" + std::to_string(t % 10));
    sd.tensors.push_back({name, DType::kBF16, norm ? Shape({4096}) : Shape({4096, 1024}), {}});
    sd.tensors.back().chunks.push_back({});
  }
  const uint64_t rows = 4096 / static_cast<uint64_t>(ranks);
  Encoded out;
  out.table = plan::TensorTable::Of(sd);
  for (int r = 0; r < ranks; ++r) {
    for (DistTensor& t : sd.tensors) {
      LocalChunk& c = t.chunks[0];
      if (t.global_shape.rank() == 1) {
        c.offsets = {static_cast<uint64_t>(r) * rows};
        c.shape = Shape({rows});
      } else {
        c.offsets = {static_cast<uint64_t>(r) * rows, 0};
        c.shape = Shape({rows, 1024});
      }
    }
    out.compact.push_back(plan::EncodeChunkPlan(sd));
    out.full.push_back(plan::EncodeLocalPlan(sd));
  }
  return out;
}

struct Figures {
  double seconds = 0;       // median of the repetitions: decode + global plan, compact plans
  double full_seconds = 0;  // the same from full plans
  double peak_mib = 0;      // peak beyond the encoded plans, compact plans
  double wire_mib = 0;      // the compact plans themselves
  double full_wire_mib = 0;
};

void CheckPlan(const Result<plan::GlobalPlan>& g, int tensors) {
  CheckOk("plan", g.status());
  if (g->num_tensors != static_cast<size_t>(tensors)) {
    std::fprintf(stderr, "plan: %zu tensors planned, expected %d\n", g->num_tensors, tensors);
    std::exit(1);
  }
}

Figures Measure(int tensors, int ranks, int reps, bool full_too) {
  Encoded wire = EncodedPlans(tensors, ranks);
  Figures f;
  for (const std::string& w : wire.compact) f.wire_mib += static_cast<double>(w.size()) / (1 << 20);
  for (const std::string& w : wire.full)
    f.full_wire_mib += static_cast<double>(w.size()) / (1 << 20);
  const long before = PeakKiB();
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    std::vector<std::string> copy = wire.compact;  // decoding takes the bytes, as after a gather
    const auto t0 = Clock::now();
    auto plans = plan::DecodeChunkPlans(wire.table, std::move(copy));
    CheckOk("plan", plans.status());
    if (!plans->has_value()) {
      std::fprintf(stderr, "plan: the compact plans did not decode\n");
      std::exit(1);
    }
    Result<plan::GlobalPlan> g = plan::BuildGlobalPlan(**plans);
    times.push_back(Since(t0));
    CheckPlan(g, tensors);
  }
  f.seconds = Median(times);
  // The copy of the plans counts too: it is what a gather receives.
  f.peak_mib = static_cast<double>(PeakKiB() - before) / 1024.0;
  times.clear();
  for (int i = 0; i < (full_too ? reps : 0); ++i) {
    std::vector<std::string> copy = wire.full;
    const auto t0 = Clock::now();
    std::vector<plan::LocalPlan> decoded;
    decoded.reserve(copy.size());
    for (std::string& w : copy) {
      Result<plan::LocalPlan> p = plan::DecodeLocalPlan(std::move(w));
      CheckOk("plan", p.status());
      decoded.push_back(std::move(*p));
    }
    Result<plan::GlobalPlan> g = plan::BuildGlobalPlan(decoded);
    times.push_back(Since(t0));
    CheckPlan(g, tensors);
  }
  f.full_seconds = Median(times);
  return f;
}

// Runs Measure in a child so each configuration's peak is its own.
Figures MeasureInChild(int tensors, int ranks, int reps, bool full_too) {
  int fds[2];
  if (pipe(fds) != 0) std::exit(1);
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    Figures f = Measure(tensors, ranks, reps, full_too);
    if (write(fds[1], &f, sizeof f) != static_cast<ssize_t>(sizeof f)) _exit(1);
    _exit(0);
  }
  close(fds[1]);
  Figures f;
  const ssize_t n = read(fds[0], &f, sizeof f);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (n != static_cast<ssize_t>(sizeof f) || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "plan: the measurement for %d ranks failed\n", ranks);
    std::exit(1);
  }
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  int tensors = 10000, reps = 3;
  bool full_too = true;
  std::vector<int> rank_counts = {64, 256, 1024};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--tensors") {
      tensors = std::atoi(v.c_str());
    } else if (k == "--reps") {
      reps = std::atoi(v.c_str());
    } else if (k == "--full") {
      full_too = v != "0";
    } else if (k == "--ranks") {
      rank_counts.clear();
      std::stringstream ss(v);
      for (std::string x; std::getline(ss, x, ',');) rank_counts.push_back(std::atoi(x.c_str()));
    } else {
      std::fprintf(
          stderr,
          "usage: ckpt_plan_bench [--tensors T] [--ranks R1,R2,...] [--reps N] [--full 0|1]\n");
      return 2;
    }
  }
  std::printf("%8s %12s %10s %10s %10s %10s %12s %12s\n", "ranks", "chunks", "time ms", "ns/chunk",
              "plans MiB", "peak MiB", "full ms", "full MiB");
  for (int ranks : rank_counts) {
    if (ranks <= 0 || 4096 % ranks != 0) {
      std::fprintf(stderr, "plan: --ranks must divide 4096, got %d\n", ranks);
      return 2;
    }
    const Figures f = MeasureInChild(tensors, ranks, reps, full_too);
    const double chunks = static_cast<double>(tensors) * ranks;
    std::printf("%8d %12.0f %10.1f %10.1f %10.1f %10.1f %12.1f %12.1f\n", ranks, chunks,
                f.seconds * 1e3, f.seconds * 1e9 / chunks, f.wire_mib, f.peak_mib,
                f.full_seconds * 1e3, f.full_wire_mib);
    std::fflush(stdout);
    const std::string what =
        std::to_string(tensors) + " tensors x " + std::to_string(ranks) + " ranks";
    if (ranks == 64) EmitResult("plan", "global save plan ms, " + what, f.seconds * 1e3, false, 50);
    if (ranks == 1024) EmitResult("plan", "global save plan s, " + what, f.seconds, false, 2);
  }
  return 0;
}
