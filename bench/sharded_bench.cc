// Sharded save/load against references measured in the same run
// (docs/PERFORMANCE.md), ranks as threads:
//   save to disk (fsync)       vs dd conv=fsync of the same bytes
//   save to tmpfs              vs single-thread memcpy
//   load, same layout (warm)   vs single-thread memcpy
//   resharded load             bytes read / bytes needed (<= 1.05),
//                              time / same-layout load time (<= 1.2)
//   (planning at scale: ckpt_plan_bench)
//
//   ckpt_sharded_bench [--gib 1] [--ranks 4] [--reps 3] [--disk DIR] [--shm DIR]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "ckpt/sharded.h"
#include "plan/load_plan.h"

namespace {

using ckpt::bench::Clock;
using ckpt::bench::Median;
using ckpt::bench::Since;
using namespace ckpt;

void Check(const Status& s) { ckpt::bench::CheckOk("ckpt_sharded_bench", s); }

enum class Split { kDim0, kDim1 };

struct Model {
  uint64_t rows, cols;  // each tensor is rows x cols bf16
  int tensors;
  std::vector<std::vector<std::byte>> data;  // global bytes
};

void Slice(const Model& m, Split s, int ranks, int r, std::vector<uint64_t>* off, Shape* shape) {
  uint64_t n = s == Split::kDim0 ? m.rows : m.cols, step = n / static_cast<uint64_t>(ranks);
  *off = {0, 0};
  (*off)[s == Split::kDim0 ? 0 : 1] = step * static_cast<uint64_t>(r);
  *shape = s == Split::kDim0 ? Shape({step, m.cols}) : Shape({m.rows, step});
}

// Per-rank chunk buffers for a layout; `fill` copies the global data in.
struct Ranks {
  std::vector<StateDict> sds;
  std::vector<std::vector<std::vector<std::byte>>> bufs;
};

Ranks MakeRanks(const Model& m, Split s, int ranks, bool fill) {
  Ranks out;
  out.sds.resize(static_cast<size_t>(ranks));
  out.bufs.resize(static_cast<size_t>(ranks));
  for (int r = 0; r < ranks; ++r) {
    for (int t = 0; t < m.tensors; ++t) {
      std::vector<uint64_t> off;
      Shape shape;
      Slice(m, s, ranks, r, &off, &shape);
      std::vector<std::byte> buf(*shape.NumBytes(DType::kBF16));
      if (fill) {
        const auto& g = m.data[static_cast<size_t>(t)];
        for (uint64_t i = 0; i < shape[0]; ++i) {
          std::memcpy(buf.data() + i * shape[1] * 2,
                      g.data() + ((off[0] + i) * m.cols + off[1]) * 2, shape[1] * 2);
        }
      }
      out.bufs[static_cast<size_t>(r)].push_back(std::move(buf));
    }
    for (int t = 0; t < m.tensors; ++t) {
      std::vector<uint64_t> off;
      Shape shape;
      Slice(m, s, ranks, r, &off, &shape);
      out.sds[static_cast<size_t>(r)].tensors.push_back(
          {"layers." + std::to_string(t) + ".weight",
           DType::kBF16,
           Shape({m.rows, m.cols}),
           {{off, shape, out.bufs[static_cast<size_t>(r)][static_cast<size_t>(t)].data(), {}}}});
    }
  }
  return out;
}

template <typename Fn>
double RunRanks(int n, Fn fn) {
  auto comms = NewThreadCommunicators(n);
  std::vector<Status> st(static_cast<size_t>(n));
  auto t0 = Clock::now();
  std::vector<std::thread> th;
  for (int r = 0; r < n; ++r)
    th.emplace_back([&, r] { st[static_cast<size_t>(r)] = fn(*comms[static_cast<size_t>(r)], r); });
  for (auto& t : th) t.join();
  double s = Since(t0);
  for (const Status& x : st) Check(x);
  return s;
}

double Shell(const std::string& cmd) {
  auto t0 = Clock::now();
  if (std::system(cmd.c_str()) != 0) std::exit(1);
  return Since(t0);
}

}  // namespace

int main(int argc, char** argv) {
  double gib = 1;
  int ranks = 4, reps = 3;
  std::string disk = "/var/tmp", shm = "/dev/shm";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--gib")
      gib = std::atof(v.c_str());
    else if (k == "--ranks")
      ranks = std::atoi(v.c_str());
    else if (k == "--reps")
      reps = std::atoi(v.c_str());
    else if (k == "--disk")
      disk = v;
    else if (k == "--shm")
      shm = v;
    else {
      std::fprintf(
          stderr,
          "usage: ckpt_sharded_bench [--gib G] [--ranks N] [--reps N] [--disk DIR] [--shm DIR]\n");
      return 2;
    }
  }
  Model m{4096, 4096, 0, {}};
  const uint64_t tensor_bytes = m.rows * m.cols * 2;
  m.tensors = std::max(1, static_cast<int>(gib * (1ull << 30) / static_cast<double>(tensor_bytes)));
  for (int t = 0; t < m.tensors; ++t) {
    std::vector<std::byte> g(tensor_bytes);
    for (uint64_t i = 0; i < g.size(); i += 64)
      g[i] = static_cast<std::byte>(i / 64 + static_cast<uint64_t>(t));
    m.data.push_back(std::move(g));
  }
  const uint64_t total = tensor_bytes * static_cast<uint64_t>(m.tensors);
  const double gb = static_cast<double>(total) / 1e9;
  Ranks src = MakeRanks(m, Split::kDim0, ranks, true);
  Storage& fs = *PosixStorage();

  std::vector<double> t_memcpy, t_dd, t_save_disk, t_save_shm, t_load_same, t_load_dim1,
      t_load_fewer;
  LoadStats dim1_stats, same_stats;
  std::vector<std::byte> sink(total);
  std::memset(sink.data(), 1, sink.size());
  for (int rep = 0; rep < reps; ++rep) {
    auto t0 = Clock::now();
    uint64_t off = 0;
    for (const auto& g : m.data) {
      std::memcpy(sink.data() + off, g.data(), g.size());
      off += g.size();
    }
    t_memcpy.push_back(Since(t0));
    t_dd.push_back(Shell("dd if=/dev/zero of=" + disk + "/ckpt_bench.dd bs=16M count=" +
                         std::to_string(total >> 24) + " conv=fsync status=none"));
    const std::string ddir = disk + "/ckpt_bench_ckpt", sdir = shm + "/ckpt_bench_ckpt";
    Check(RemoveAll(fs, ddir));
    Check(RemoveAll(fs, sdir));
    t_save_disk.push_back(RunRanks(ranks, [&](Communicator& c, int r) {
      return SaveSharded(c, fs, ddir, src.sds[static_cast<size_t>(r)]);
    }));
    t_save_shm.push_back(RunRanks(ranks, [&](Communicator& c, int r) {
      return SaveSharded(c, fs, sdir, src.sds[static_cast<size_t>(r)]);
    }));
    Ranks same = MakeRanks(m, Split::kDim0, ranks, false);
    std::vector<LoadStats> st(static_cast<size_t>(ranks));
    t_load_same.push_back(RunRanks(ranks, [&](Communicator& c, int r) {
      return LoadSharded(c, fs, sdir, same.sds[static_cast<size_t>(r)], {},
                         &st[static_cast<size_t>(r)]);
    }));
    same_stats = {};
    for (auto& s : st) {
      same_stats.bytes_read += s.bytes_read;
      same_stats.bytes_needed += s.bytes_needed;
    }
    Ranks cols = MakeRanks(m, Split::kDim1, ranks, false);
    t_load_dim1.push_back(RunRanks(ranks, [&](Communicator& c, int r) {
      return LoadSharded(c, fs, sdir, cols.sds[static_cast<size_t>(r)], {},
                         &st[static_cast<size_t>(r)]);
    }));
    dim1_stats = {};
    for (auto& s : st) {
      dim1_stats.bytes_read += s.bytes_read;
      dim1_stats.bytes_needed += s.bytes_needed;
    }
    const int fewer = std::max(1, ranks / 2);
    Ranks half = MakeRanks(m, Split::kDim0, fewer, false);
    t_load_fewer.push_back(RunRanks(fewer, [&](Communicator& c, int r) {
      return LoadSharded(c, fs, sdir, half.sds[static_cast<size_t>(r)]);
    }));
    // Bit-exactness of the column-resharded load.
    for (int r = 0; r < ranks; ++r) {
      const auto& c = cols.sds[static_cast<size_t>(r)].tensors[0].chunks[0];
      const auto& g = m.data[0];
      for (uint64_t i = 0; i < m.rows; i += 97) {
        if (std::memcmp(c.data + i * c.shape[1] * 2, g.data() + (i * m.cols + c.offsets[1]) * 2,
                        c.shape[1] * 2) != 0) {
          std::fprintf(stderr, "resharded load differs\n");
          return 1;
        }
      }
    }
    Check(RemoveAll(fs, ddir));
    Check(RemoveAll(fs, sdir));
    std::remove((disk + "/ckpt_bench.dd").c_str());
  }

  std::printf(
      "ckpt_sharded_bench: %.2f GB in %d bf16 tensors [4096, 4096], %d thread ranks, median of "
      "%d\n",
      gb, m.tensors, ranks, reps);
  std::printf("%-34s %9s %20s %9s %7s %8s\n", "measure", "GB/s", "reference", "ref GB/s", "ratio",
              "target");
  auto row = [&](const char* what, double t, double ref, const char* ref_name, const char* target,
                 double limit) {
    std::printf("%-34s %9.2f %20s %9.2f %7.2f %8s\n", what, gb / t, ref_name, gb / ref, ref / t,
                target);
    ckpt::bench::EmitResult("sharded", std::string(what) + " / " + ref_name, ref / t, true, limit);
  };
  row("save to disk (fsync)", Median(t_save_disk), Median(t_dd), "dd conv=fsync", ">= 0.9", 0.9);
  row("save to tmpfs", Median(t_save_shm), Median(t_memcpy), "memcpy", ">= 0.7", 0.7);
  row("load, same layout (tmpfs, warm)", Median(t_load_same), Median(t_memcpy), "memcpy", ">= 0.8",
      0.8);
  std::printf("%-34s %9.2f %20s %9s %7.2f %8s\n", "load, dim0 -> dim1 resharded",
              gb / Median(t_load_dim1), "same-layout time", "",
              Median(t_load_dim1) / Median(t_load_same), "<= 1.2");
  std::printf("%-34s %9.2f %20s %9s %7.2f %8s\n", "load, dim0 on half the ranks",
              gb / Median(t_load_fewer), "same-layout time", "",
              Median(t_load_fewer) / Median(t_load_same), "<= 1.2");
  std::printf(
      "%-34s %9s %20s %9s %7.3f %8s\n", "resharded bytes read / needed", "", "", "",
      static_cast<double>(dim1_stats.bytes_read) / static_cast<double>(dim1_stats.bytes_needed),
      "<= 1.05");
  std::printf(
      "%-34s %9s %20s %9s %7.3f %8s\n", "same-layout bytes read / needed", "", "", "",
      static_cast<double>(same_stats.bytes_read) / static_cast<double>(same_stats.bytes_needed),
      "1.00");
  ckpt::bench::EmitResult("sharded", "resharded load time / same-layout load time",
                          Median(t_load_dim1) / Median(t_load_same), false, 1.2);
  ckpt::bench::EmitResult("sharded", "load on half the ranks time / same-layout load time",
                          Median(t_load_fewer) / Median(t_load_same), false, 1.2);
  ckpt::bench::EmitResult(
      "sharded", "resharded bytes read / bytes needed",
      static_cast<double>(dim1_stats.bytes_read) / static_cast<double>(dim1_stats.bytes_needed),
      false, 1.05);
  return 0;
}
