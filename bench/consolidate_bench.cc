// Consolidation throughput and memory, against references from the same run:
//   `ckpt consolidate` (a child process) writing the HF directory, fsynced,
//   vs `dd if=/dev/zero bs=16M conv=fsync` of the same bytes  target >= 0.8
//   peak RSS of the consolidating process (getrusage of the child)  target <= 128 MiB
// The checkpoint holds one tensor larger than 1 GiB, saved by 4 thread ranks,
// plus smaller ones.
//
//   ckpt_consolidate_bench CKPT_BINARY [--dir DIR] [--reps 3]
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "ckpt/sharded.h"

namespace {

using namespace ckpt;
using Clock = std::chrono::steady_clock;

void Check(const Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "ckpt_consolidate_bench: %s\n", s.ToString().c_str());
    std::exit(1);
  }
}

// Runs argv as a child; returns wall seconds and its peak RSS in bytes.
std::pair<double, uint64_t> RunChild(const std::vector<std::string>& args) {
  auto t0 = Clock::now();
  pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    int devnull = ::open("/dev/null", O_WRONLY);
    ::dup2(devnull, 1);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  int status = 0;
  struct rusage ru {};
  ::wait4(pid, &status, 0, &ru);
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "ckpt_consolidate_bench: %s failed\n", args[0].c_str());
    std::exit(1);
  }
  return {secs, static_cast<uint64_t>(ru.ru_maxrss) * 1024};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: ckpt_consolidate_bench CKPT_BINARY [--dir DIR] [--reps N]\n");
    return 2;
  }
  const std::string ckpt_bin = argv[1];
  std::string dir = "/var/tmp/ckpt_consolidate_bench";
  int reps = 3;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--dir")
      dir = v;
    else if (k == "--reps")
      reps = std::max(1, std::atoi(v.c_str()));
  }
  Storage& fs = *PosixStorage();
  Check(RemoveAll(fs, dir));
  Check(fs.MakeDirs(dir));

  // One [24576, 24576] bf16 tensor (1.125 GiB) and eight [2048, 4096] ones.
  struct Def {
    std::string name;
    uint64_t rows, cols;
  };
  std::vector<Def> defs = {{"model.embed_tokens.weight", 24576, 24576}};
  for (int i = 0; i < 8; ++i)
    defs.push_back({"model.layers." + std::to_string(i) + ".w", 2048, 4096});
  const int ranks = 4;
  uint64_t total = 0;
  for (const Def& d : defs) total += d.rows * d.cols * 2;
  {
    auto comms = NewThreadCommunicators(ranks);
    std::vector<Status> st(ranks);
    std::vector<std::thread> th;
    for (int r = 0; r < ranks; ++r) {
      th.emplace_back([&, r] {
        StateDict sd;
        std::vector<std::vector<std::byte>> bufs;
        for (const Def& d : defs) {
          uint64_t rows = d.rows / ranks;
          bufs.emplace_back(rows * d.cols * 2);
          auto& b = bufs.back();
          for (uint64_t k = 0; k < b.size(); k += 4096)
            b[k] = static_cast<std::byte>(k / 4096 + static_cast<uint64_t>(r));
          sd.tensors.push_back(
              {d.name,
               DType::kBF16,
               Shape({d.rows, d.cols}),
               {{{rows * static_cast<uint64_t>(r), 0}, Shape({rows, d.cols}), b.data(), {}}}});
        }
        st[static_cast<size_t>(r)] =
            SaveSharded(*comms[static_cast<size_t>(r)], fs, dir + "/sharded", sd);
      });
    }
    for (auto& t : th) t.join();
    for (const Status& s : st) Check(s);
  }

  std::vector<double> t_ckpt, t_dd;
  uint64_t rss = 0;
  for (int rep = 0; rep < reps; ++rep) {
    Check(RemoveAll(fs, dir + "/hf"));
    ::sync();
    auto [secs, peak] =
        RunChild({ckpt_bin, "consolidate", dir + "/sharded", dir + "/hf", "--threads", "2"});
    t_ckpt.push_back(secs);
    rss = std::max(rss, peak);
    ::unlink((dir + "/dd").c_str());
    ::sync();
    auto [dd_secs, dd_rss] =
        RunChild({"/bin/dd", "if=/dev/zero", "of=" + dir + "/dd", "bs=16M",
                  "count=" + std::to_string(total >> 24), "conv=fsync", "status=none"});
    (void)dd_rss;
    t_dd.push_back(dd_secs);
  }
  Check(RemoveAll(fs, dir));
  std::sort(t_ckpt.begin(), t_ckpt.end());
  std::sort(t_dd.begin(), t_dd.end());
  const double gb = static_cast<double>(total) / 1e9;
  const double tc = t_ckpt[t_ckpt.size() / 2], td = t_dd[t_dd.size() / 2];
  std::printf(
      "ckpt_consolidate_bench: %.2f GB (largest tensor 1.125 GiB) from 4 shards, median of %d\n",
      gb, reps);
  std::printf("%-32s %8.2f GB/s   dd conv=fsync %8.2f GB/s   ratio %5.2f   target >= 0.8\n",
              "consolidate (2 threads, fsync)", gb / tc, gb / td, td / tc);
  std::printf("%-32s %8.1f MiB                                            target <= 128 MiB\n",
              "peak RSS of ckpt consolidate", static_cast<double>(rss) / (1 << 20));
  ckpt::bench::EmitResult("consolidate", "consolidation throughput / dd conv=fsync", td / tc, true,
                          0.8);
  ckpt::bench::EmitResult("consolidate", "peak RSS of ckpt consolidate (MiB)",
                          static_cast<double>(rss) / (1 << 20), false, 128);
  return 0;
}
