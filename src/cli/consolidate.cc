// `ckpt consolidate IN OUT`: a sharded checkpoint → a Hugging Face directory.
// Runs alone, or under mpirun (one output file set per rank).
#include "ckpt/consolidate.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "ckpt/mpi_comm.h"
#include "ckpt/s3.h"
#include "cli/commands.h"
#include "cli/target.h"

namespace ckpt::cli {

int RunConsolidate(const ConsolidateCliOptions& c) {
  ConsolidateOptions o;
  o.base_model_dir = c.base;
  o.threads = c.threads;
  o.diffusers = c.diffusers;
  o.equal_files = c.equal_files;
  if (!c.cast_dtype.empty()) {
    Result<DType> d = ParseDType(c.cast_dtype);
    if (!d.ok()) {
      std::fprintf(stderr, "ckpt consolidate: --cast-dtype: %s\n", d.status().message().c_str());
      return 1;
    }
    o.cast_dtype = *d;
  }
  Result<uint64_t> size = ParseByteSize(c.max_shard_size);
  if (!size.ok()) {
    std::fprintf(stderr, "ckpt consolidate: --max-shard-size: %s\n",
                 size.status().message().c_str());
    return 1;
  }
  o.max_shard_size = *size;

  const bool under_mpi =
      std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMI_SIZE") != nullptr;
  Result<std::unique_ptr<Communicator>> comm =
      under_mpi ? NewMpiWorldCommunicator()
                : Result<std::unique_ptr<Communicator>>(NewSingleRankCommunicator());
  if (!comm.ok()) {
    std::fprintf(stderr, "ckpt consolidate: %s\n", comm.status().ToString().c_str());
    return 1;
  }
  const bool leader = (*comm)->rank() == 0;
  const bool bar = leader && ::isatty(STDOUT_FILENO);
  std::mutex mu;
  if (bar) {
    o.progress = [&mu](uint64_t done, uint64_t total) {
      std::lock_guard<std::mutex> lock(mu);
      const int width = 40;
      const int filled = total ? static_cast<int>(width * done / total) : width;
      std::printf("\r[%.*s%*s] %s / %s", filled, "########################################",
                  width - filled, "", HumanBytes(done).c_str(), HumanBytes(total).c_str());
      std::fflush(stdout);
    };
  }
  auto t0 = std::chrono::steady_clock::now();
  ConsolidateStats stats;
  // Both sides live on one storage: a local directory, or one bucket.
  Result<StoragePath> in = ResolveStoragePath(c.in_dir), out = ResolveStoragePath(c.out_dir);
  Status s = in.ok() ? out.status() : in.status();
  if (s.ok() && in->storage != out->storage) {
    s = InvalidArgumentError(
        "consolidating " + c.in_dir + " into " + c.out_dir +
        ": input and output must be on the same storage (both local, or the same bucket)");
  }
  if (s.ok()) s = Consolidate(**comm, *in->storage, in->path, out->path, o, &stats);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (bar) std::printf("\n");
  if (!s.ok()) {
    std::fprintf(stderr, "ckpt consolidate: %s\n", s.ToString().c_str());
    return 1;
  }
  if (leader) {
    for (const std::string& w : stats.warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
    std::printf("wrote %s: %llu tensors, %s in %u file%s in %.2f s (%.2f GB/s) on %d rank%s\n",
                c.out_dir.c_str(), static_cast<unsigned long long>(stats.tensors),
                HumanBytes(stats.bytes).c_str(), stats.files, stats.files == 1 ? "" : "s", secs,
                static_cast<double>(stats.bytes) / 1e9 / secs, (*comm)->size(),
                (*comm)->size() == 1 ? "" : "s");
  }
  return 0;
}

}  // namespace ckpt::cli
