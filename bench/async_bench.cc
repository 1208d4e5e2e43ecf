// Asynchronous saves against references measured in the same run
// (docs/PERFORMANCE.md):
//   blocking time of SaveModel        vs bytes / single-thread memcpy bandwidth (<= 1.2)
//   total time (until durable)        vs a synchronous save of the same state
//   RSS over consecutive saves        vs model + staging budget
// One rank holds the whole model (bf16 [4096, 4096] tensors); the loop
// changes every tensor right after each save, as training would.
//
//   ckpt_async_bench [--gib 1] [--saves 10] [--budget-mib 0] [--dir DIR]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "ckpt/checkpointer.h"

namespace {

using ckpt::bench::Clock;
using ckpt::bench::Median;
using ckpt::bench::Since;
using namespace ckpt;

void Check(const Status& s) { ckpt::bench::CheckOk("ckpt_async_bench", s); }

// VmRSS and VmHWM of this process, in bytes.
uint64_t ProcStatus(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(key, 0) == 0)
      return std::strtoull(line.c_str() + std::strlen(key), nullptr, 10) * 1024;
  }
  return 0;
}

class BenchModel : public Model {
 public:
  BenchModel(int tensors, uint64_t rows, uint64_t cols) : data_(static_cast<size_t>(tensors)) {
    for (int t = 0; t < tensors; ++t) {
      data_[static_cast<size_t>(t)].assign(rows * cols * 2, std::byte{0});
      sd_.tensors.push_back(WholeTensor("model.layers." + std::to_string(t) + ".mlp.up_proj.weight",
                                        DType::kBF16, Shape{rows, cols},
                                        data_[static_cast<size_t>(t)].data()));
    }
    Touch(1);
  }
  StateDict& state_dict() override { return sd_; }
  // What an optimizer step does to memory: every byte changes.
  void Touch(int version) {
    for (auto& d : data_) std::memset(d.data(), version & 0xFF, d.size());
  }
  uint64_t bytes() const { return data_.size() * data_[0].size(); }

 private:
  std::vector<std::vector<std::byte>> data_;
  StateDict sd_;
};

}  // namespace

int main(int argc, char** argv) {
  double gib = 1;
  int saves = 10;
  uint64_t budget_mib = 0;
  std::string dir = "/tmp";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--gib")
      gib = std::atof(argv[i + 1]);
    else if (a == "--saves")
      saves = std::atoi(argv[i + 1]);
    else if (a == "--budget-mib")
      budget_mib = std::strtoull(argv[i + 1], nullptr, 10);
    else if (a == "--dir")
      dir = argv[i + 1];
  }
  const uint64_t rows = 4096, cols = 4096;
  const int tensors = std::max(1, static_cast<int>(gib * (1ull << 30) / (rows * cols * 2)));
  const uint64_t rss0 = ProcStatus("VmRSS:");
  BenchModel model(tensors, rows, cols);
  const uint64_t bytes = model.bytes();
  std::printf(
      "async save bench: %d bf16 tensors [%llu, %llu] = %.2f GiB, %d saves, staging budget %s\n",
      tensors, static_cast<unsigned long long>(rows), static_cast<unsigned long long>(cols),
      static_cast<double>(bytes) / (1ull << 30), saves,
      budget_mib ? (std::to_string(budget_mib) + " MiB").c_str() : "the whole state");

  // Reference: single-thread memcpy of the same tensors into touched memory
  // of the same total size, as staging does.
  std::vector<double> memcpy_s, memcpy_all_s;
  {
    std::vector<std::byte> dst(bytes, std::byte{1});
    const uint64_t each = rows * cols * 2;
    for (int rep = 0; rep < 5; ++rep) {
      auto t0 = Clock::now();
      for (int t = 0; t < tensors; ++t) {
        std::memcpy(dst.data() + static_cast<uint64_t>(t) * each,
                    model.state_dict().tensors[static_cast<size_t>(t)].chunks[0].data, each);
      }
      memcpy_s.push_back(Since(t0));
      // The same with one thread per core, each taking a share of the tensors.
      const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
      t0 = Clock::now();
      std::vector<std::thread> pool;
      for (unsigned k = 0; k < threads; ++k) {
        pool.emplace_back([&, k] {
          for (int t = static_cast<int>(k); t < tensors; t += static_cast<int>(threads)) {
            std::memcpy(dst.data() + static_cast<uint64_t>(t) * each,
                        model.state_dict().tensors[static_cast<size_t>(t)].chunks[0].data, each);
          }
        });
      }
      for (auto& th : pool) th.join();
      memcpy_all_s.push_back(Since(t0));
    }
  }
  const double memcpy_time = Median(memcpy_s), memcpy_all = Median(memcpy_all_s);

  char tmpl[] = "/ckpt_async_bench_XXXXXX";
  std::string root = dir + tmpl;
  std::vector<char> buf(root.begin(), root.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) Check(IOError("mkdtemp under " + dir));
  root = buf.data();
  auto comm = NewSingleRankCommunicator();

  // Synchronous saves, the baseline for the total time.
  std::vector<double> sync_s;
  {
    CheckpointingConfig cfg;
    cfg.checkpoint_dir = root + "/sync";
    cfg.max_recent_checkpoints = 1;
    auto c = Checkpointer::Create(cfg, {}, *comm);
    Check(c.status());
    for (int s = 1; s <= 3; ++s) {
      auto t0 = Clock::now();
      Result<std::string> d = (*c)->Reserve(0, s);
      Check(d.status());
      Check((*c)->SaveModel(model, *d));
      Check((*c)->Publish(*d));
      sync_s.push_back(Since(t0));
    }
  }
  Check(RemoveAll(*PosixStorage(), root + "/sync"));

  CheckpointingConfig cfg;
  cfg.checkpoint_dir = root + "/async";
  cfg.max_recent_checkpoints = 1;
  cfg.is_async = true;
  cfg.staging_budget = budget_mib << 20;
  auto c = Checkpointer::Create(cfg, {}, *comm);
  Check(c.status());
  std::vector<double> block_s, total_s, background_s;
  uint64_t max_rss = 0;
  for (int s = 1; s <= saves; ++s) {
    Result<std::string> d = (*c)->Reserve(0, s);
    Check(d.status());
    auto t0 = Clock::now();
    Check((*c)->SaveModel(model, *d));
    const double blocked = Since(t0);
    Check((*c)->Publish(*d));
    model.Touch(s + 1);  // training goes on
    auto t1 = Clock::now();
    Check((*c)->AsyncWait());
    const double background = Since(t1);
    if (s > 1) {  // the first save also allocates and touches the staging memory
      block_s.push_back(blocked);
      total_s.push_back(Since(t0));
      background_s.push_back(background);
    }
    const uint64_t rss = ProcStatus("VmRSS:");
    max_rss = std::max(max_rss, rss);
    std::printf("  save %2d: blocked %.3f s, RSS %.0f MiB\n", s, blocked,
                static_cast<double>(rss) / (1 << 20));
  }
  Check((*c)->Close());
  Check(RemoveAll(*PosixStorage(), root));

  const double block = Median(block_s), total = Median(total_s), sync = Median(sync_s);
  const uint64_t staging = budget_mib ? std::min<uint64_t>(budget_mib << 20, bytes) : bytes;
  const double bound = static_cast<double>(rss0 + bytes + staging);
  std::printf("\n%-44s %12s %12s %8s %8s\n", "measure", "figure", "reference", "ratio", "target");
  std::printf("%-44s %10.3f s %10.3f s %8.2f %8s\n", "blocking time of SaveModel (median)", block,
              memcpy_time, block / memcpy_time, "<= 1.2");
  std::printf("%-44s %10.3f s %10.3f s %8.2f %8s\n", "blocking time vs memcpy on every core", block,
              memcpy_all, block / memcpy_all, "-");
  std::printf("%-44s %10.3f s %12s %8s %8s\n", "background write + publish (median)",
              Median(background_s), "-", "-", "-");
  std::printf("%-44s %10.3f s %10.3f s %8.2f %8s\n", "async save until durable vs synchronous save",
              total, sync, total / sync, "-");
  std::printf("%-44s %8.0f MiB %8.0f MiB %8.3f %8s\n",
              "peak RSS over the saves vs start + model + staging",
              static_cast<double>(max_rss) / (1 << 20), bound / (1 << 20),
              static_cast<double>(max_rss) / bound, "<= 1.0");
  std::printf("%-44s %+10.1f MiB (staging memory held: %.0f MiB, reused by every save)\n",
              "RSS beyond start + model + staging",
              (static_cast<double>(max_rss) - bound) / (1 << 20),
              static_cast<double>(staging) / (1 << 20));
  ckpt::bench::EmitResult("async", "blocking time of an async save / single-thread memcpy",
                          block / memcpy_time, false, 1.2);
  ckpt::bench::EmitResult("async", "RSS beyond start + model + staging (MiB)",
                          (static_cast<double>(max_rss) - bound) / (1 << 20), false, 0);
  std::printf(
      "(reference of the blocking time: single-thread memcpy of the same %.2f GiB; staging copies "
      "with "
      "one thread per core)\n",
      static_cast<double>(bytes) / (1ull << 30));
  return 0;
}
