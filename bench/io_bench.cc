// Safetensors write/read throughput against physical references measured in
// the same run (docs/PERFORMANCE.md):
//   disk write   vs  dd if=/dev/zero bs=16M conv=fsync, same bytes   target >= 0.9
//   tmpfs write  vs  single-thread memcpy of the same bytes          target >= 0.7
//   warm read    vs  single-thread memcpy                             target >= 0.8
//   cold read    vs  dd of=/dev/null after dropping the file's pages  target >= 0.9
// Also reported, without targets: tmpfs write against memcpy into freshly
// allocated pages (what a new tmpfs file costs the kernel), and reads against
// memcpy on all hardware threads (reads of large tensors use several threads).
// Each figure is the median of --reps runs.
//
//   ckpt_io_bench [--gib 2] [--reps 3] [--disk DIR] [--shm DIR] [--json FILE]
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "ckpt/safetensors.h"
#include "ckpt/storage.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  double gib = 2;
  int reps = 3;
  std::string disk = "/var/tmp";
  std::string shm = "/dev/shm";
  std::string json;
};

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void Check(const ckpt::Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "ckpt_io_bench: %s\n", s.ToString().c_str());
    std::exit(1);
  }
}

double RunShell(const std::string& cmd) {
  auto t0 = Clock::now();
  if (std::system(cmd.c_str()) != 0) {
    std::fprintf(stderr, "ckpt_io_bench: command failed: %s\n", cmd.c_str());
    std::exit(1);
  }
  return Seconds(t0, Clock::now());
}

void DropCache(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

struct Model {
  std::vector<std::vector<std::byte>> buffers;
  std::vector<ckpt::TensorData> tensors;
  uint64_t bytes = 0;
};

// bf16 tensors of 64 MiB each (the last one smaller), filled with a pattern
// that is not all zeros.
Model MakeModel(uint64_t total) {
  Model m;
  const uint64_t kTensor = 64ull << 20;
  for (uint64_t off = 0, i = 0; off < total; off += kTensor, ++i) {
    uint64_t n = std::min(kTensor, total - off) / 2 * 2;
    std::vector<std::byte> buf(n);
    for (uint64_t k = 0; k < n; k += 4096) buf[k] = static_cast<std::byte>(k * 31 + i);
    m.buffers.push_back(std::move(buf));
    m.bytes += n;
  }
  for (size_t i = 0; i < m.buffers.size(); ++i) {
    m.tensors.push_back({"model.layers." + std::to_string(i) + ".weight", ckpt::DType::kBF16,
                         ckpt::Shape({m.buffers[i].size() / 2}), m.buffers[i]});
  }
  return m;
}

double MemcpyTime(const Model& m, std::vector<std::byte>& dst) {
  auto t0 = Clock::now();
  uint64_t off = 0;
  for (const auto& b : m.buffers) {
    std::memcpy(dst.data() + off, b.data(), b.size());
    off += b.size();
  }
  double t = Seconds(t0, Clock::now());
  if (dst[4096] != m.buffers[0][4096]) std::exit(2);  // keep the copy observable
  return t;
}

// memcpy on every hardware thread, each taking a contiguous slice.
double MemcpyAllThreadsTime(const Model& m, std::vector<std::byte>& dst) {
  unsigned n = std::max(1u, std::thread::hardware_concurrency());
  auto t0 = Clock::now();
  std::vector<std::thread> ts;
  for (unsigned k = 0; k < n; ++k) {
    ts.emplace_back([&, k] {
      uint64_t off = 0;
      for (size_t i = 0; i < m.buffers.size(); ++i) {
        if (i % n == k) std::memcpy(dst.data() + off, m.buffers[i].data(), m.buffers[i].size());
        off += m.buffers[i].size();
      }
    });
  }
  for (auto& t : ts) t.join();
  return Seconds(t0, Clock::now());
}

// memcpy into pages that were never touched: the cost of putting bytes into
// newly allocated memory, which is what writing a new tmpfs file does.
double MemcpyFreshPagesTime(const Model& m) {
  void* p = ::mmap(nullptr, m.bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) std::exit(2);
  auto* dst = static_cast<std::byte*>(p);
  auto t0 = Clock::now();
  uint64_t off = 0;
  for (const auto& b : m.buffers) {
    std::memcpy(dst + off, b.data(), b.size());
    off += b.size();
  }
  double t = Seconds(t0, Clock::now());
  ::munmap(p, m.bytes);
  return t;
}

double WriteTime(const Model& m, const std::string& path) {
  ckpt::Storage& fs = *ckpt::PosixStorage();
  fs.Remove(path).IgnoreError();
  auto t0 = Clock::now();
  Check(ckpt::WriteSafetensors(fs, path, m.tensors));
  return Seconds(t0, Clock::now());
}

double ReadTime(const std::string& path, std::vector<std::byte>& dst) {
  auto t0 = Clock::now();
  auto f = ckpt::SafetensorsFile::Open(*ckpt::PosixStorage(), path);
  Check(f.status());
  uint64_t off = 0;
  for (const ckpt::TensorInfo& t : (*f)->header().tensors()) {
    Check((*f)->ReadTensor(t.name, std::span(dst).subspan(off, t.nbytes())));
    off += t.nbytes();
  }
  return Seconds(t0, Clock::now());
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--gib")
      o.gib = std::atof(v.c_str());
    else if (k == "--reps")
      o.reps = std::max(1, std::atoi(v.c_str()));
    else if (k == "--disk")
      o.disk = v;
    else if (k == "--shm")
      o.shm = v;
    else if (k == "--json")
      o.json = v;
    else {
      std::fprintf(
          stderr,
          "usage: ckpt_io_bench [--gib G] [--reps N] [--disk DIR] [--shm DIR] [--json FILE]\n");
      return 2;
    }
  }
  const uint64_t total =
      static_cast<uint64_t>(o.gib * (1ull << 30)) / (16ull << 20) * (16ull << 20);
  Model m = MakeModel(total);
  std::vector<std::byte> dst(m.bytes);
  std::memset(dst.data(), 1, dst.size());  // fault the pages in once
  const std::string disk_file = o.disk + "/ckpt_io_bench.safetensors";
  const std::string dd_file = o.disk + "/ckpt_io_bench.dd";
  const std::string shm_file = o.shm + "/ckpt_io_bench.safetensors";
  const uint64_t dd_count = m.bytes / (16ull << 20);

  std::vector<double> t_memcpy, t_memcpy_all, t_memcpy_fresh, t_dd_write, t_disk_write, t_shm_write,
      t_warm_read, t_shm_read, t_dd_cold, t_cold_read;
  for (int r = 0; r < o.reps; ++r) {
    t_memcpy.push_back(MemcpyTime(m, dst));
    t_memcpy_all.push_back(MemcpyAllThreadsTime(m, dst));
    t_memcpy_fresh.push_back(MemcpyFreshPagesTime(m));
    t_dd_write.push_back(RunShell("dd if=/dev/zero of=" + dd_file + " bs=16M count=" +
                                  std::to_string(dd_count) + " conv=fsync status=none"));
    t_disk_write.push_back(WriteTime(m, disk_file));
    t_warm_read.push_back(ReadTime(disk_file, dst));
    t_shm_write.push_back(WriteTime(m, shm_file));
    t_shm_read.push_back(ReadTime(shm_file, dst));
    DropCache(dd_file);
    t_dd_cold.push_back(RunShell("dd if=" + dd_file + " of=/dev/null bs=16M status=none"));
    DropCache(disk_file);
    t_cold_read.push_back(ReadTime(disk_file, dst));
  }
  for (const std::string& p : {disk_file, dd_file, shm_file}) ::unlink(p.c_str());

  const double gb = static_cast<double>(m.bytes) / 1e9;
  struct Row {
    const char* what;
    double t, ref;
    const char* ref_name;
    double target;
  };
  const Row rows[] = {
      {"disk write (fsync)", Median(t_disk_write), Median(t_dd_write), "dd conv=fsync", 0.9},
      {"tmpfs write", Median(t_shm_write), Median(t_memcpy), "memcpy", 0.7},
      {"tmpfs write", Median(t_shm_write), Median(t_memcpy_fresh), "memcpy new pages", 0},
      {"warm read (disk file)", Median(t_warm_read), Median(t_memcpy), "memcpy", 0.8},
      {"warm read (disk file)", Median(t_warm_read), Median(t_memcpy_all), "memcpy all thr", 0},
      {"warm read (tmpfs)", Median(t_shm_read), Median(t_memcpy), "memcpy", 0.8},
      {"warm read (tmpfs)", Median(t_shm_read), Median(t_memcpy_all), "memcpy all thr", 0},
      {"cold read", Median(t_cold_read), Median(t_dd_cold), "dd cold read", 0.9},
  };
  std::printf("ckpt_io_bench: %.2f GB in %zu bf16 tensors, median of %d runs\n", gb,
              m.tensors.size(), o.reps);
  std::printf("%-24s %10s %16s %10s %7s %7s\n", "measure", "GB/s", "reference", "ref GB/s", "ratio",
              "target");
  std::string json = "{\"bytes\":" + std::to_string(m.bytes) +
                     ",\"reps\":" + std::to_string(o.reps) + ",\"results\":[";
  for (size_t i = 0; i < std::size(rows); ++i) {
    const Row& r = rows[i];
    double ratio = r.ref / r.t;
    std::string target = r.target > 0 ? std::to_string(r.target).substr(0, 4) : "-";
    std::printf("%-24s %10.2f %16s %10.2f %7.2f %7s%s\n", r.what, gb / r.t, r.ref_name, gb / r.ref,
                ratio, target.c_str(), ratio >= r.target ? "" : "  (below target)");
    if (r.target > 0) {
      ckpt::bench::EmitResult("io", std::string(r.what) + " / " + r.ref_name, ratio, true,
                              r.target);
    }
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "%s{\"measure\":\"%s\",\"gbps\":%.3f,\"reference\":\"%s\",\"ref_gbps\":%.3f,"
                  "\"ratio\":%.3f,\"target\":%.2f}",
                  i ? "," : "", r.what, gb / r.t, r.ref_name, gb / r.ref, ratio, r.target);
    json += buf;
  }
  json += "]}\n";
  if (!o.json.empty()) {
    FILE* f = std::fopen(o.json.c_str(), "w");
    if (f) {
      std::fputs(json.c_str(), f);
      std::fclose(f);
    }
  }
  return 0;
}
