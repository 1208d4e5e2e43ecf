// Scenarios run under mpirun by CTest (see tests/CMakeLists.txt):
//   roundtrip DIR      collectives; save on every layout of this world size and
//                      load each into every other, bit-exact
//   io-failure DIR     rank 1 cannot create its shard: every rank returns that
//                      error, nothing is published, the previous checkpoint loads
//   save DIR           save a reference checkpoint (dim 0 layout)
//   save-die DIR       like save, but rank 1 dies while writing its shard
//   check GOOD DEAD    GOOD loads bit-exactly; nothing was published at DEAD
//   moe-ep DIR         a Qwen3-MoE HF directory loads into grouped experts, each
//                      rank holding 8/np experts and reading only their bytes;
//                      saved back through HF views and consolidated: bit-exact
// Exit status 0 on success; failures are printed with the rank.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>

#include "ckpt/consolidate.h"
#include "ckpt/hf.h"
#include "ckpt/moe.h"
#include "ckpt/mpi_comm.h"
#include "ckpt/safetensors.h"
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
class FaultyStorage final : public StorageWrapper {
 public:
  enum class Mode { kFail, kDie };
  FaultyStorage(int rank, int victim, Mode mode)
      : StorageWrapper(PosixStorage()), rank_(rank), victim_(victim), mode_(mode) {}
  std::string_view name() const override { return "faulty"; }
  Result<std::unique_ptr<WritableFile>> OpenWrite(const std::string& p, CreateMode m) override {
    if (rank_ == victim_ && p.find("shard-") != std::string::npos) {
      if (mode_ == Mode::kDie) _exit(9);
      return IOError("creating \"" + p + "\": injected I/O error");
    }
    return target().OpenWrite(p, m);
  }

 private:
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
    if ((*all)[static_cast<size_t>(r)] != std::to_string(r * 7))
      return Fail(c, "all-gather content");
  }
  std::string b = c.rank() == c.size() - 1 ? "root data" : "";
  Status s = c.Broadcast(c.size() - 1, &b, kTimeout);
  if (!s.ok() || b != "root data") return Fail(c, "broadcast: " + s.ToString());
  std::vector<Layout> layouts;
  for (Split sp : {Split::kDim0, Split::kDim1, Split::k2D, Split::kReplicated})
    layouts.push_back({c.size(), sp});
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
  if (c.rank() == 0)
    std::printf("roundtrip: %zu layouts on %d MPI ranks, all bit-exact\n", layouts.size(),
                c.size());
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
  // Every rank reports the failing rank's I/O error, code and cause.
  if (s.code() != StatusCode::kIOError || s.message().find("rank 1: ") == std::string::npos ||
      s.message().find("injected I/O error") == std::string::npos) {
    return Fail(c, "error is not rank 1's IOError with its cause: " + s.ToString());
  }
  Result<bool> published = Exists(fs, root + "/bad");
  if (!published.ok() || *published) return Fail(c, "a failed save was published");
  s = LoadLayout(c, fs, root + "/good", {c.size(), Split::kDim1});
  if (!s.ok()) return Fail(c, "previous checkpoint: " + s.ToString());
  // The next save succeeds.
  s = SaveLayout(c, fs, root + "/next", l);
  if (!s.ok()) return Fail(c, "save after a failure: " + s.ToString());
  if (c.rank() == 0)
    std::printf("io-failure: every rank got: %s\n", s.ok() ? "(then recovered)" : "");
  return 0;
}

// Byte i of tensor `name`: the same in every process.
std::byte MoeByte(const std::string& name, uint64_t i) {
  uint64_t h = 1469598103934665603ull;
  for (char ch : name) h = (h ^ static_cast<unsigned char>(ch)) * 1099511628211ull;
  return static_cast<std::byte>((h + i * 131) % 251);
}

int MoeExpertParallel(Communicator& c, const std::string& root) {
  const MoeAdapter a = FindMoeAdapter("qwen3_moe").value();
  const uint64_t E = 8, dim = 16, inter = 12, L = 2;
  Storage& fs = *PosixStorage();
  const std::string hf = root + "/hf";
  std::map<std::string, Shape> shapes = {{"model.embed_tokens.weight", Shape({40, dim})}};
  for (uint32_t l = 0; l < L; ++l) {
    shapes["model.layers." + std::to_string(l) + ".mlp.gate.weight"] = Shape({E, dim});
    for (uint32_t e = 0; e < E; ++e) {
      shapes[HfExpertName(a, l, e, MoeProj::kGate)] = Shape({inter, dim});
      shapes[HfExpertName(a, l, e, MoeProj::kUp)] = Shape({inter, dim});
      shapes[HfExpertName(a, l, e, MoeProj::kDown)] = Shape({dim, inter});
    }
  }
  auto bytes_of = [&](const std::string& name) {
    std::vector<std::byte> b(shapes.at(name).NumBytes(DType::kBF16).value());
    for (uint64_t i = 0; i < b.size(); ++i) b[i] = MoeByte(name, i);
    return b;
  };
  Status made;
  if (c.rank() == 0) {
    std::vector<std::vector<std::byte>> keep;
    std::vector<TensorData> td;
    for (const auto& [name, shape] : shapes) {
      keep.push_back(bytes_of(name));
      td.push_back({name, DType::kBF16, shape, keep.back()});
    }
    made = fs.MakeDirs(hf);
    if (made.ok()) made = WriteSafetensors(fs, hf + "/model.safetensors", td);
    if (made.ok())
      made = WriteFileAtomically(fs, hf + "/config.json",
                                 R"({"num_hidden_layers": 2, "num_experts": 8})");
  }
  Status agreed = c.AgreeOnStatus(made, kTimeout);
  if (!agreed.ok()) return Fail(c, "writing the HF directory: " + agreed.ToString());
  // This rank's experts [e0, e0 + per).
  const uint64_t per = E / static_cast<uint64_t>(c.size()),
                 e0 = per * static_cast<uint64_t>(c.rank());
  std::map<std::string, std::vector<std::byte>> mem;
  StateDict grouped;
  for (uint32_t l = 0; l < L; ++l) {
    Shape gs({per, dim, 2 * inter}), ds({per, inter, dim});
    mem[GroupedGateUpName(l)].resize(gs.NumBytes(DType::kBF16).value());
    mem[GroupedDownName(l)].resize(ds.NumBytes(DType::kBF16).value());
    grouped.tensors.push_back(
        DistTensor{GroupedGateUpName(l),
                   DType::kBF16,
                   Shape({E, dim, 2 * inter}),
                   {LocalChunk{{e0, 0, 0}, gs, mem[GroupedGateUpName(l)].data(), {}}}});
    grouped.tensors.push_back(
        DistTensor{GroupedDownName(l),
                   DType::kBF16,
                   Shape({E, inter, dim}),
                   {LocalChunk{{e0, 0, 0}, ds, mem[GroupedDownName(l)].data(), {}}}});
  }
  for (const auto& [name, shape] : shapes) {
    if (name.find(".experts.") != std::string::npos) continue;
    auto& b = mem[name];
    b.resize(shape.NumBytes(DType::kBF16).value());
    grouped.tensors.push_back(WholeTensor(name, DType::kBF16, shape, b.data()));
  }
  Result<StateDict> views = HfViewsOfGrouped(a, MoeConfig{2, 8}, grouped);
  if (!views.ok()) return Fail(c, views.status().ToString());
  LoadStats stats;
  LoadOptions lo;
  lo.timeout = kTimeout;
  Status s = LoadSharded(c, fs, hf, *views, lo, &stats);
  if (!s.ok()) return Fail(c, "load: " + s.ToString());
  // The grouped layout: gate_and_up[e, r, i] = gate_e[i, r], [.., inter + i] = up_e[i, r], down[e,
  // i, r] = down_e[r, i].
  for (uint32_t l = 0; l < L; ++l) {
    const auto& gu = mem[GroupedGateUpName(l)];
    const auto& dn = mem[GroupedDownName(l)];
    for (uint64_t k = 0; k < per; ++k) {
      const auto e = static_cast<uint32_t>(e0 + k);
      const std::string g = HfExpertName(a, l, e, MoeProj::kGate),
                        u = HfExpertName(a, l, e, MoeProj::kUp),
                        d = HfExpertName(a, l, e, MoeProj::kDown);
      for (uint64_t r = 0; r < dim; ++r) {
        for (uint64_t i = 0; i < inter; ++i) {
          for (uint64_t b = 0; b < 2; ++b) {
            if (gu[((k * dim + r) * 2 * inter + i) * 2 + b] != MoeByte(g, (i * dim + r) * 2 + b) ||
                gu[((k * dim + r) * 2 * inter + inter + i) * 2 + b] !=
                    MoeByte(u, (i * dim + r) * 2 + b) ||
                dn[((k * inter + i) * dim + r) * 2 + b] != MoeByte(d, (r * inter + i) * 2 + b)) {
              return Fail(c, "expert " + std::to_string(e) + " of layer " + std::to_string(l) +
                                 " misplaced");
            }
          }
        }
      }
    }
  }
  uint64_t replicated = 0;
  for (const auto& [name, shape] : shapes) {
    if (name.find(".experts.") == std::string::npos)
      replicated += shape.NumBytes(DType::kBF16).value();
  }
  const uint64_t own = L * per * 3 * dim * inter * 2 + replicated;
  if (stats.bytes_needed != own || stats.bytes_read != own) {
    return Fail(c, "read " + std::to_string(stats.bytes_read) + " bytes for " +
                       std::to_string(stats.bytes_needed) + " held; expected " +
                       std::to_string(own));
  }
  SaveOptions so;
  so.timeout = kTimeout;
  s = SaveSharded(c, fs, root + "/dcp", *views, so);
  ConsolidateOptions co;
  co.timeout = kTimeout;
  if (s.ok()) s = Consolidate(c, fs, root + "/dcp", root + "/out", co);
  if (!s.ok()) return Fail(c, "save/consolidate: " + s.ToString());
  if (c.rank() == 0) {
    Result<HfModelDir> out = HfModelDir::Open(fs, root + "/out");
    if (!out.ok()) return Fail(c, out.status().ToString());
    if (out->tensors().size() != shapes.size())
      return Fail(c, "export has " + std::to_string(out->tensors().size()) + " tensors");
    for (const auto& [name, loc] : out->tensors()) {
      std::vector<std::byte> got(loc.info->nbytes());
      Status r = out->files()[loc.file]->ReadTensor(name, got);
      if (!r.ok() || got != bytes_of(name)) return Fail(c, "export differs at " + name);
    }
    std::printf(
        "moe-ep: %d ranks, %llu experts each, reads = holdings (%llu bytes), export bit-exact\n",
        c.size(), static_cast<unsigned long long>(per), static_cast<unsigned long long>(own));
  }
  return 0;
}

int Main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s roundtrip|io-failure|save|save-die|check|moe-ep DIR [DIR2]\n",
                 argv[0]);
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
  if (mode == "moe-ep") return MoeExpertParallel(c, dir);
  if (mode == "save" || mode == "save-die") {
    FaultyStorage fs(c.rank(), mode == "save-die" ? 1 : -1, FaultyStorage::Mode::kDie);
    Status s = SaveLayout(c, fs, dir, {c.size(), Split::kDim0});
    return s.ok() ? 0 : Fail(c, s.ToString());
  }
  if (mode == "check" && argc == 4) {
    Status s = LoadLayout(c, *PosixStorage(), dir, {c.size(), Split::k2D});
    if (!s.ok()) return Fail(c, "previous checkpoint: " + s.ToString());
    Result<bool> dead = Exists(*PosixStorage(), argv[3]);
    if (!dead.ok() || *dead)
      return Fail(c, std::string(argv[3]) + " was published by a job that died");
    if (c.rank() == 0) std::printf("check: previous checkpoint loads, nothing partial published\n");
    return 0;
  }
  std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
  return 2;
}

}  // namespace
}  // namespace ckpt

int main(int argc, char** argv) { return ckpt::Main(argc, argv); }
