// Conversions: `.bin` → safetensors and MoE grouped ⇄ HF, each timed against
// the disk write limit (dd of the same bytes, fsync'd) in the same run, and
// the anonymous memory they add (sampled RssAnon peak minus the start).
//
//   ckpt_convert_bench [--dir D] [--mib N] [--runs K]
#include <malloc.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>

#include "bench_util.h"
#include "ckpt/hf.h"
#include "ckpt/moe.h"
#include "ckpt/safetensors.h"
#include "ckpt/storage.h"
#include "ckpt/torch_bin.h"
#include "format/torch_archive_builder.h"

namespace ckpt::bench {
namespace {

uint64_t RssAnonKiB() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("RssAnon:", 0) == 0) return std::stoull(line.substr(8));
  }
  return 0;
}

// Runs fn while sampling RssAnon; returns (seconds, peak anon MiB above start).
template <typename Fn>
std::pair<double, double> Measure(Fn fn) {
  malloc_trim(0);  // freed heap pages would hide new allocations
  const uint64_t start = RssAnonKiB();
  std::atomic<bool> done{false};
  std::atomic<uint64_t> peak{start};
  std::thread sampler([&] {
    while (!done.load()) {
      const uint64_t v = RssAnonKiB();
      if (v > peak.load()) peak.store(v);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  const auto t0 = Clock::now();
  fn();
  const double secs = Since(t0);
  done = true;
  sampler.join();
  return {secs, static_cast<double>(peak.load() - start) / 1024.0};
}

double DdSeconds(const std::string& path, uint64_t mib) {
  const std::string cmd = "dd if=/dev/zero of=" + path + " bs=1M count=" + std::to_string(mib) +
                          " conv=fsync status=none";
  const auto t0 = Clock::now();
  if (std::system(cmd.c_str()) != 0) std::exit(1);
  const double s = Since(t0);
  std::remove(path.c_str());
  return s;
}

std::string RandomBytes(uint64_t n, uint64_t seed) {
  std::string s(n, '\0');
  std::mt19937_64 rng(seed);
  for (uint64_t i = 0; i + 8 <= n; i += 8) {
    const uint64_t v = rng();
    std::memcpy(s.data() + i, &v, 8);
  }
  return s;
}

}  // namespace
}  // namespace ckpt::bench

int main(int argc, char** argv) {
  using namespace ckpt;
  using namespace ckpt::bench;
  std::string dir = "/tmp";
  uint64_t mib = 512;
  int runs = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--dir") dir = argv[i + 1];
    if (a == "--mib") mib = std::stoull(argv[i + 1]);
    if (a == "--runs") runs = std::stoi(argv[i + 1]);
  }
  Storage& st = *PosixStorage();
  const std::string root = JoinPath(dir, "ckpt_convert_bench");
  CheckOk("convert", RemoveAll(st, root));
  CheckOk("convert", st.MakeDirs(JoinPath(root, "bin")));

  // 1. A .bin of 32 f32 tensors, half of them transposed views.
  const uint64_t per = mib / 32;
  std::vector<testing::PickledTensor> tensors;
  std::vector<std::pair<std::string, std::string>> storages;
  const int64_t side = static_cast<int64_t>(std::sqrt(static_cast<double>(per << 20) / 4));
  for (int i = 0; i < 32; ++i) {
    const std::string key = std::to_string(i);
    const bool t = i % 2 == 1;
    tensors.push_back({"model.layers." + std::to_string(i) + ".weight",
                       "FloatStorage",
                       "",
                       key,
                       side * side,
                       0,
                       {side, side},
                       t ? std::vector<int64_t>{1, side} : std::vector<int64_t>{side, 1}});
    storages.push_back(
        {key, RandomBytes(static_cast<uint64_t>(side * side * 4), static_cast<uint64_t>(i))});
  }
  {
    std::ofstream f(JoinPath(root, "bin/pytorch_model.bin"), std::ios::binary);
    const std::string z = testing::ZipBytes(
        testing::ArchiveRecords("pytorch_model", testing::StateDictPickle(tensors), storages));
    f.write(z.data(), static_cast<std::streamsize>(z.size()));
  }
  storages.clear();
  const uint64_t bin_mib = static_cast<uint64_t>(side * side * 4 * 32) >> 20;
  std::vector<double> conv, dd, mem;
  for (int r = 0; r < runs; ++r) {
    CheckOk("convert", RemoveAll(st, JoinPath(root, "st")));
    std::system("sync");
    TorchConvertStats stats;
    auto [secs, anon] = Measure([&] {
      CheckOk("convert",
              ConvertTorchBinDir(st, JoinPath(root, "bin"), JoinPath(root, "st"), {}, &stats));
    });
    conv.push_back(secs);
    mem.push_back(anon);
    dd.push_back(DdSeconds(JoinPath(root, "dd"), bin_mib));
  }
  const double bin_ratio = Median(dd) / Median(conv);
  std::printf(
      "bin -> safetensors: %llu MiB (16 of 32 tensors strided views), convert %.3f s, dd %.3f s, "
      "anon memory +%.1f MiB\n",
      static_cast<unsigned long long>(bin_mib), Median(conv), Median(dd), Median(mem));
  EmitResult("convert", "bin_to_safetensors_vs_disk_write", bin_ratio, true, 0.8);
  EmitResult("convert", "bin_to_safetensors_anon_mib", Median(mem), false, 128);

  // 2. MoE: 2 layers × 64 experts, dim 1024, inter = per-expert size chosen for ~mib total.
  const MoeAdapter a = FindMoeAdapter("qwen3_moe").value();
  const uint64_t E = 64, dim = 1024;
  const uint64_t inter = std::max<uint64_t>(64, (mib << 20) / (2 * E * 3 * dim * 2));
  CheckOk("convert", st.MakeDirs(JoinPath(root, "grouped")));
  {
    std::vector<std::string> keep;
    std::vector<TensorData> td;
    for (uint32_t l = 0; l < 2; ++l) {
      keep.push_back(RandomBytes(E * dim * 2 * inter * 2, l));
      td.push_back({GroupedGateUpName(l), DType::kBF16, Shape({E, dim, 2 * inter}),
                    std::as_bytes(std::span<const char>(keep.back()))});
      keep.push_back(RandomBytes(E * inter * dim * 2, l + 7));
      td.push_back({GroupedDownName(l), DType::kBF16, Shape({E, inter, dim}),
                    std::as_bytes(std::span<const char>(keep.back()))});
    }
    CheckOk("convert", WriteSafetensors(st, JoinPath(root, "grouped/model.safetensors"), td));
    CheckOk("convert", WriteFileAtomically(st, JoinPath(root, "grouped/config.json"),
                                           "{\"num_hidden_layers\": 2, \"num_experts\": 64}"));
  }
  const uint64_t moe_mib = (2 * E * 3 * dim * inter * 2) >> 20;
  conv.clear();
  dd.clear();
  mem.clear();
  MoeConvertStats ms;
  for (int r = 0; r < runs; ++r) {
    CheckOk("convert", RemoveAll(st, JoinPath(root, "hf")));
    std::system("sync");
    auto [secs, anon] = Measure([&] {
      CheckOk("convert", ConvertMoeDir(st, JoinPath(root, "grouped"), JoinPath(root, "hf"), a,
                                       MoeDirection::kToHf, {}, &ms));
    });
    conv.push_back(secs);
    mem.push_back(anon);
    dd.push_back(DdSeconds(JoinPath(root, "dd"), moe_mib));
  }
  std::printf(
      "MoE grouped -> HF export: %llu MiB, %llu expert tensors of %.2f MiB, convert %.3f s, dd "
      "%.3f s, "
      "largest buffer per expert %.2f MiB, anon memory +%.1f MiB\n",
      static_cast<unsigned long long>(moe_mib), static_cast<unsigned long long>(2 * E * 3),
      static_cast<double>(ms.largest_expert) / (1 << 20), Median(conv), Median(dd),
      static_cast<double>(ms.peak_transient) / (1 << 20), Median(mem));
  EmitResult("convert", "moe_export_vs_disk_write", Median(dd) / Median(conv), true, 0.8);
  EmitResult("convert", "moe_export_transient_over_one_expert",
             static_cast<double>(ms.peak_transient) / static_cast<double>(ms.largest_expert), false,
             1.0);
  CheckOk("convert", RemoveAll(st, root));
  return 0;
}
