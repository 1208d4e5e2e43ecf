// Scenarios run under mpirun by CTest (see tests/CMakeLists.txt):
//   roundtrip DIR      collectives; save on every layout of this world size and
//                      load each into every other, bit-exact
//   io-failure DIR     rank 1 cannot create its shard: every rank returns that
//                      error, nothing is published, the previous checkpoint loads
//   save DIR           save a reference checkpoint (dim 0 layout)
//   save-die DIR       like save, but rank 1 dies while writing its shard
//   check GOOD DEAD    GOOD loads bit-exactly; nothing was published at DEAD
// Exit status 0 on success; failures are printed with the rank.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>

#include "ckpt/mpi_comm.h"
#include "ckpt/sharded.h"
#include "engine/layouts.h"

namespace ckpt {
namespace {

using std::chrono::milliseconds;
using testing::Layout;
using testing::Split;

constexpr milliseconds kTimeout(60000);

// Wraps the POSIX backend; on `victim` rank, creating a shard file fails
// (or kills the process).
class FaultyStorage final : public Storage {
 public:
  enum class Mode { kFail, kDie };
  FaultyStorage(int rank, int victim, Mode mode) : rank_(rank), victim_(victim), mode_(mode) {}
  std::string_view name() const override { return "faulty"; }
  Result<std::unique_ptr<ReadableFile>> OpenRead(const std::string& p) override { return base_->OpenRead(p); }
  Result<std::unique_ptr<WritableFile>> OpenWrite(const std::string& p, CreateMode m) override {
    if (rank_ == victim_ && p.find("shard-") != std::string::npos) {
      if (mode_ == Mode::kDie) _exit(9);
      return IOError("creating \"" + p + "\": injected I/O error");
    }
    return base_->OpenWrite(p, m);
  }
  Result<std::vector<DirEntry>> List(const std::string& d) override { return base_->List(d); }
  Result<DirEntry> Stat(const std::string& p) override { return base_->Stat(p); }
  Status Remove(const std::string& p) override { return base_->Remove(p); }
  Status Rename(const std::string& a, const std::string& b) override { return base_->Rename(a, b); }
  Status MakeDirs(const std::string& p) override { return base_->MakeDirs(p); }
  Status SyncDir(const std::string& d) override { return base_->SyncDir(d); }

 private:
  std::shared_ptr<Storage> base_ = PosixStorage();
  int rank_, victim_;
  Mode mode_;
};

int Fail(const Communicator& c, const std::string& what) {
  std::fprintf(stderr, "rank %d: FAILED: %s\n", c.rank(), what.c_str());
  return 1;
}

Status SaveLayout(Communicator& c, Storage& fs, const std::string& dir, const Layout& l) {
  testing::RankState rs = testing::MakeRankState(testing::MixedModel(), l, c.rank(), true);
  return SaveSharded(c, fs, dir, rs.sd, {kTimeout});
}

Status LoadLayout(Communicator& c, Storage& fs, const std::string& dir, const Layout& l) {
  auto defs = testing::MixedModel();
  testing::RankState rs = testing::MakeRankState(defs, l, c.rank(), false);
  CKPT_RETURN_IF_ERROR(LoadSharded(c, fs, dir, rs.sd, testing::WithTimeout(kTimeout)));
  std::string why;
  Status mine = testing::MatchesReference(defs, rs, &why) ? Status() : DataLossError(why);
  return c.AgreeOnStatus(mine, kTimeout);
}

int RoundTrip(Communicator& c, const std::string& root) {
  auto all = c.AllGather(std::to_string(c.rank() * 7), kTimeout);
  if (!all.ok()) return Fail(c, all.status().ToString());
  for (int r = 0; r < c.size(); ++r) {
    if ((*all)[static_cast<size_t>(r)] != std::to_string(r * 7)) return Fail(c, "all-gather content");
  }
  std::string b = c.rank() == c.size() - 1 ? "root data" : "";
  Status s = c.Broadcast(c.size() - 1, &b, kTimeout);
  if (!s.ok() || b != "root data") return Fail(c, "broadcast: " + s.ToString());
  std::vector<Layout> layouts;
  for (Split sp : {Split::kDim0, Split::kDim1, Split::k2D, Split::kReplicated}) layouts.push_back({c.size(), sp});
  Storage& fs = *PosixStorage();
  for (const Layout& save : layouts) {
    const std::string dir = root + "/" + save.Name();
    s = SaveLayout(c, fs, dir, save);
    if (!s.ok()) return Fail(c, "save " + save.Name() + ": " + s.ToString());
    for (const Layout& load : layouts) {
      s = LoadLayout(c, fs, dir, load);
      if (!s.ok()) return Fail(c, save.Name() + " -> " + load.Name() + ": " + s.ToString());
    }
    s = c.Barrier(kTimeout);
    if (!s.ok()) return Fail(c, s.ToString());
  }
  if (c.rank() == 0) std::printf("roundtrip: %zu layouts on %d MPI ranks, all bit-exact\n", layouts.size(), c.size());
  return 0;
}

int IoFailure(Communicator& c, const std::string& root) {
  Storage& fs = *PosixStorage();
  const Layout l{c.size(), Split::kDim0};
  Status s = SaveLayout(c, fs, root + "/good", l);
  if (!s.ok()) return Fail(c, "reference save: " + s.ToString());
  FaultyStorage faulty(c.rank(), 1, FaultyStorage::Mode::kFail);
  s = SaveLayout(c, faulty, root + "/bad", l);
  if (s.ok()) return Fail(c, "save with a failing rank succeeded");
  if (s.message().find("rank 1: ") == std::string::npos ||
      s.message().find("injected I/O error") == std::string::npos) {
    return Fail(c, "error does not name rank 1 and its cause: " + s.ToString());
  }
  Result<bool> published = Exists(fs, root + "/bad");
  if (!published.ok() || *published) return Fail(c, "a failed save was published");
  s = LoadLayout(c, fs, root + "/good", {c.size(), Split::kDim1});
  if (!s.ok()) return Fail(c, "previous checkpoint: " + s.ToString());
  // The next save succeeds.
  s = SaveLayout(c, fs, root + "/next", l);
  if (!s.ok()) return Fail(c, "save after a failure: " + s.ToString());
  if (c.rank() == 0) std::printf("io-failure: every rank got: %s\n", s.ok() ? "(then recovered)" : "");
  return 0;
}

int Main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s roundtrip|io-failure|save|save-die|check DIR [DIR2]\n", argv[0]);
    return 2;
  }
  auto comm = NewMpiWorldCommunicator();
  if (!comm.ok()) {
    std::fprintf(stderr, "%s\n", comm.status().ToString().c_str());
    return 1;
  }
  Communicator& c = **comm;
  const std::string mode = argv[1], dir = argv[2];
  if (mode == "roundtrip") return RoundTrip(c, dir);
  if (mode == "io-failure") return IoFailure(c, dir);
  if (mode == "save" || mode == "save-die") {
    FaultyStorage fs(c.rank(), mode == "save-die" ? 1 : -1, FaultyStorage::Mode::kDie);
    Status s = SaveLayout(c, fs, dir, {c.size(), Split::kDim0});
    return s.ok() ? 0 : Fail(c, s.ToString());
  }
  if (mode == "check" && argc == 4) {
    Status s = LoadLayout(c, *PosixStorage(), dir, {c.size(), Split::k2D});
    if (!s.ok()) return Fail(c, "previous checkpoint: " + s.ToString());
    Result<bool> dead = Exists(*PosixStorage(), argv[3]);
    if (!dead.ok() || *dead) return Fail(c, std::string(argv[3]) + " was published by a job that died");
    if (c.rank() == 0) std::printf("check: previous checkpoint loads, nothing partial published\n");
    return 0;
  }
  std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
  return 2;
}

}  // namespace
}  // namespace ckpt

int main(int argc, char** argv) { return ckpt::Main(argc, argv); }
