// Sharded save and resharding load with thread ranks.
#include "ckpt/sharded.h"

#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "ckpt/safetensors.h"
#include "engine/layouts.h"
#include "plan/box.h"
#include "plan/load_plan.h"
#include "test_util.h"

namespace ckpt {
namespace {

using std::chrono::milliseconds;
using testing::Layout;
using testing::Split;
using testing::StatusIs;

using testing::OnRanks;

Status Save(Storage& fs, const std::string& dir, const std::vector<testing::TensorDef>& defs,
            const Layout& l) {
  std::vector<Status> st = OnRanks(l.world, [&](Communicator& c) {
    testing::RankState rs = testing::MakeRankState(defs, l, c.rank(), true);
    return SaveSharded(c, fs, dir, rs.sd, {milliseconds(20000)});
  });
  for (const Status& s : st) {
    if (!s.ok()) return s;
  }
  return Status();
}

Status LoadAndCheck(Storage& fs, const std::string& dir,
                    const std::vector<testing::TensorDef>& defs, const Layout& l,
                    LoadStats* stats = nullptr) {
  std::vector<LoadStats> all(static_cast<size_t>(l.world));
  std::vector<Status> st = OnRanks(l.world, [&](Communicator& c) -> Status {
    testing::RankState rs = testing::MakeRankState(defs, l, c.rank(), false);
    CKPT_RETURN_IF_ERROR(LoadSharded(c, fs, dir, rs.sd, testing::WithTimeout(milliseconds(20000)),
                                     &all[static_cast<size_t>(c.rank())]));
    std::string why;
    if (!testing::MatchesReference(defs, rs, &why)) {
      return DataLossError("rank " + std::to_string(c.rank()) + ": " + why);
    }
    return Status();
  });
  if (stats) {
    for (const LoadStats& s : all) {
      stats->bytes_needed += s.bytes_needed;
      stats->bytes_read += s.bytes_read;
    }
  }
  for (const Status& s : st) {
    if (!s.ok()) return s;
  }
  return Status();
}

std::vector<Layout> AllLayouts() {
  std::vector<Layout> out;
  for (int w : {1, 2, 4, 8}) {
    for (Split s : {Split::kDim0, Split::kDim1, Split::k2D, Split::kReplicated}) {
      if (w == 1 && s != Split::kDim0) continue;
      out.push_back({w, s});
    }
  }
  return out;
}

// Every save layout loads bit-exactly into every load layout.
TEST(ShardedMatrixTest, AnyLayoutLoadsIntoAnyOther) {
  auto fs = NewMemoryStorage();
  const auto defs = testing::MixedModel();
  int checkpoints = 0, loads = 0;
  for (const Layout& save : AllLayouts()) {
    const std::string dir = "/ckpt/" + save.Name();
    Status s = Save(*fs, dir, defs, save);
    ASSERT_TRUE(s.ok()) << save.Name() << ": " << s.ToString();
    ++checkpoints;
    for (const Layout& load : AllLayouts()) {
      Status l = LoadAndCheck(*fs, dir, defs, load);
      ASSERT_TRUE(l.ok()) << save.Name() << " -> " << load.Name() << ": " << l.ToString();
      ++loads;
    }
  }
  EXPECT_EQ(checkpoints, 13);
  EXPECT_EQ(loads, 13 * 13);
}

TEST(ShardedSaveTest, FilesFollowTheDcpLayoutExactly) {
  testing::TempDir tmp;
  std::vector<testing::TensorDef> defs = {{"w", DType::kF32, Shape({4, 2})},
                                          {"r", DType::kBF16, Shape({3})}};
  const std::string dir = tmp / "model";
  CKPT_ASSERT_OK(Save(*PosixStorage(), dir, defs, {2, Split::kDim0}));
  auto list = PosixStorage()->List(dir);
  CKPT_ASSERT_OK(list);
  std::vector<std::string> names;
  for (const auto& e : *list) names.push_back(e.name);
  EXPECT_EQ(names, (std::vector<std::string>{"ckpt_manifest.json",
                                             "shard-00001-model-00001-of-00001.safetensors",
                                             "shard-00002-model-00001-of-00001.safetensors"}));
  auto f =
      SafetensorsFile::Open(*PosixStorage(), dir + "/shard-00002-model-00001-of-00001.safetensors");
  CKPT_ASSERT_OK(f);
  const auto& md = (*f)->header().metadata();
  EXPECT_EQ(md.at("DCP_VERSION"), "1.0");
  EXPECT_EQ(md.at("format"), "pt");
  auto info = nlohmann::json::parse(md.at("DCP_SHARDING_INFO"));
  EXPECT_EQ(info["w"]["saved_offsets"], nlohmann::json({2, 0}));
  EXPECT_EQ((*f)->header().Find("w")->shape, Shape({2, 2}));  // the chunk shape
  EXPECT_TRUE(nlohmann::json::parse(md.at("ckpt_chunk_xxh64"))["w"].is_string());
  EXPECT_EQ(md.size(), 4u);
  auto manifest =
      nlohmann::json::parse(*ReadFileToString(*PosixStorage(), dir + "/ckpt_manifest.json"));
  EXPECT_EQ(manifest["world_size"], 2);
  EXPECT_EQ(manifest["files"].size(), 2u);
  CKPT_EXPECT_OK(VerifyShardedCheckpoint(*PosixStorage(), dir));
  // Nothing but the checkpoint is left in the parent.
  EXPECT_EQ(PosixStorage()->List(tmp.path())->size(), 1u);
}

TEST(ShardedSaveTest, ReplicatedChunksAreWrittenOnceAndBalanced) {
  auto fs = NewMemoryStorage();
  std::vector<testing::TensorDef> defs;
  for (int i = 0; i < 40; ++i) defs.push_back({"t" + std::to_string(i), DType::kF32, Shape({256})});
  CKPT_ASSERT_OK(Save(*fs, "/c", defs, {4, Split::kReplicated}));
  uint64_t total = 0, largest = 0;
  std::set<std::string> seen;
  for (int r = 0; r < 4; ++r) {
    auto f = SafetensorsFile::Open(*fs, "/c/" + ShardFileName(r));
    CKPT_ASSERT_OK(f);
    uint64_t bytes = (*f)->header().data_size();
    total += bytes;
    largest = std::max(largest, bytes);
    for (const auto& t : (*f)->header().tensors())
      EXPECT_TRUE(seen.insert(t.name).second) << t.name;
  }
  EXPECT_EQ(seen.size(), 40u);
  EXPECT_EQ(total, 40u * 1024);
  EXPECT_LE(static_cast<double>(largest), 1.1 * static_cast<double>(total) / 4);
}

TEST(ShardedSaveTest, StridedSourcesAndDestinations) {
  auto fs = NewMemoryStorage();
  // A 6x4 F32 tensor held transposed in memory (column-major): strides {1, 6}.
  std::vector<float> colmajor(24);
  for (int i = 0; i < 6; ++i) {
    for (int j = 0; j < 4; ++j)
      colmajor[static_cast<size_t>(j * 6 + i)] = static_cast<float>(i * 10 + j);
  }
  StateDict sd;
  sd.tensors.push_back(
      {"t",
       DType::kF32,
       Shape({6, 4}),
       {{{0, 0}, Shape({6, 4}), reinterpret_cast<std::byte*>(colmajor.data()), {1, 6}}}});
  auto one = NewSingleRankCommunicator();
  CKPT_ASSERT_OK(SaveSharded(*one, *fs, "/s", sd));
  // Load rows 2..5 into a strided destination as well (every other float).
  std::vector<float> wide(32, -1.f);
  StateDict dst;
  dst.tensors.push_back(
      {"t",
       DType::kF32,
       Shape({6, 4}),
       {{{2, 0}, Shape({4, 4}), reinterpret_cast<std::byte*>(wide.data()), {8, 2}}}});
  LoadOptions o;
  CKPT_ASSERT_OK(LoadSharded(*one, *fs, "/s", dst, o));
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 4; ++j) {
      EXPECT_EQ(wide[static_cast<size_t>(i * 8 + j * 2)], static_cast<float>((i + 2) * 10 + j));
      EXPECT_EQ(wide[static_cast<size_t>(i * 8 + j * 2 + 1)], -1.f);
    }
  }
}

TEST(ShardedSaveTest, NonTensorEntriesRoundTrip) {
  auto fs = NewMemoryStorage();
  auto one = NewSingleRankCommunicator();
  float w = 1.5f;
  StateDict sd;
  sd.tensors.push_back(WholeTensor("w", DType::kF32, Shape({}), reinterpret_cast<std::byte*>(&w)));
  sd.json["step"] = "{\"step\": 120, \"lr\": 0.5}";
  sd.bytes["rng"] = {std::byte{0}, std::byte{255}, std::byte{7}, std::byte{42}};
  CKPT_ASSERT_OK(SaveSharded(*one, *fs, "/x", sd));
  float w2 = 0;
  StateDict back;
  back.tensors.push_back(
      WholeTensor("w", DType::kF32, Shape({}), reinterpret_cast<std::byte*>(&w2)));
  back.json["step"] = "";
  back.bytes["rng"] = {};
  CKPT_ASSERT_OK(LoadSharded(*one, *fs, "/x", back));
  EXPECT_EQ(w2, 1.5f);
  EXPECT_EQ(nlohmann::json::parse(back.json["step"])["step"], 120);
  EXPECT_EQ(back.bytes["rng"], sd.bytes["rng"]);
}

// The manifest lists the extra state with its size and XXH64; a load (and
// ReadExtraState) refuses one changed, missing, or not listed.
TEST(ShardedSaveTest, TheManifestCoversTheExtraState) {
  auto fs = NewMemoryStorage();
  auto one = NewSingleRankCommunicator();
  float w = 1.5f;
  StateDict sd;
  sd.tensors.push_back(WholeTensor("w", DType::kF32, Shape({}), reinterpret_cast<std::byte*>(&w)));
  sd.json["step"] = "120";
  CKPT_ASSERT_OK(SaveSharded(*one, *fs, "/x", sd));
  const std::string extra = "/x/" + std::string(kExtraStateName);
  auto text = ReadFileToString(*fs, extra);
  CKPT_ASSERT_OK(text);
  auto manifest = nlohmann::json::parse(*ReadFileToString(*fs, "/x/" + std::string(kManifestName)));
  EXPECT_EQ(manifest["extra_state"]["size"], text->size());
  EXPECT_EQ(manifest["extra_state"]["xxh64"].get<std::string>().size(), 16u);
  auto load = [&](const std::string& dir) {
    float w2 = 0;
    StateDict back;
    back.tensors.push_back(
        WholeTensor("w", DType::kF32, Shape({}), reinterpret_cast<std::byte*>(&w2)));
    back.json["step"] = "";
    return LoadSharded(*one, *fs, dir, back);
  };
  CKPT_ASSERT_OK(load("/x"));
  // The same size, one digit changed.
  std::string changed = *text;
  changed[changed.find("120")] = '9';
  CKPT_ASSERT_OK(WriteFileAtomically(*fs, extra, changed));
  EXPECT_THAT(load("/x"),
              StatusIs(StatusCode::kDataLoss, "ckpt_extra_state.json: its bytes hash to"));
  EXPECT_THAT(ReadExtraState(*fs, "/x").status(),
              StatusIs(StatusCode::kDataLoss, "but the manifest records"));
  CKPT_ASSERT_OK(fs->Remove(extra));
  EXPECT_THAT(load("/x"),
              StatusIs(StatusCode::kDataLoss, "extra state 'ckpt_extra_state.json' is missing"));
  EXPECT_THAT(ReadExtraState(*fs, "/x").status(),
              StatusIs(StatusCode::kDataLoss, "is missing from /x"));
  // A save without non-tensor entries records none; one added later is refused.
  StateDict plain;
  plain.tensors.push_back(sd.tensors[0]);
  CKPT_ASSERT_OK(SaveSharded(*one, *fs, "/y", plain));
  EXPECT_TRUE(nlohmann::json::parse(
                  *ReadFileToString(*fs, "/y/" + std::string(kManifestName)))["extra_state"]
                  .is_null());
  CKPT_ASSERT_OK(WriteFileAtomically(*fs, "/y/" + std::string(kExtraStateName), *text));
  EXPECT_THAT(load("/y"), StatusIs(StatusCode::kDataLoss, "not part of the checkpoint's manifest"));
  EXPECT_THAT(ReadExtraState(*fs, "/y").status(),
              StatusIs(StatusCode::kDataLoss, "records no extra state"));
}

TEST(ShardedSaveTest, ExistingDirectoryIsNeverOverwritten) {
  auto fs = NewMemoryStorage();
  std::vector<testing::TensorDef> defs = {{"w", DType::kU8, Shape({4})}};
  CKPT_ASSERT_OK(Save(*fs, "/c", defs, {2, Split::kDim0}));
  Status again = Save(*fs, "/c", defs, {2, Split::kDim0});
  EXPECT_THAT(again,
              StatusIs(StatusCode::kAlreadyExists, "/c already exists; it is never overwritten"));
  CKPT_EXPECT_OK(LoadAndCheck(*fs, "/c", defs, {1, Split::kDim0}));
}

TEST(ShardedSaveTest, BadGlobalPlansNameTensorAndChunks) {
  auto fs = NewMemoryStorage();
  std::vector<std::byte> buf(64);
  auto chunk = [&](std::vector<uint64_t> off, std::vector<uint64_t> len) {
    return LocalChunk{off, Shape(len), buf.data(), {}};
  };
  struct Case {
    std::vector<std::vector<DistTensor>> per_rank;
    StatusCode code;
    std::string want;
  };
  std::vector<Case> cases = {
      {{{{"w", DType::kU8, Shape({4}), {chunk({0}, {3})}}},
        {{"w", DType::kU8, Shape({4}), {chunk({2}, {2})}}}},
       StatusCode::kInvalidArgument,
       "tensor 'w' of shape [4]: chunks [0:3] and [2:4] overlap in [2:3]"},
      {{{{"w", DType::kU8, Shape({4}), {chunk({0}, {1})}}},
        {{"w", DType::kU8, Shape({4}), {chunk({2}, {2})}}}},
       StatusCode::kInvalidArgument,
       "chunks cover 3 of 4 elements (a hole)"},
      {{{{"w", DType::kU8, Shape({4}), {chunk({0}, {2})}}},
        {{"w", DType::kU8, Shape({4}), {chunk({3}, {2})}}}},
       StatusCode::kInvalidArgument,
       "chunk [3:5] is out of bounds in dimension 0"},
      {{{{"w", DType::kU8, Shape({4}), {chunk({0}, {2})}}},
        {{"w", DType::kI8, Shape({4}), {chunk({2}, {2})}}}},
       StatusCode::kInvalidArgument,
       "tensor 'w': rank 0 has U8 [4] but rank 1 has I8 [4]"},
      {{{{"w", DType::kU8, Shape({4}), {chunk({0}, {2}), chunk({2}, {2})}}}, {}},
       StatusCode::kInvalidArgument,
       "tensor 'w': rank 0 holds 2 different chunks"},
  };
  for (const Case& c : cases) {
    std::vector<Status> st = OnRanks(2, [&](Communicator& comm) {
      StateDict sd;
      sd.tensors = c.per_rank[static_cast<size_t>(comm.rank())];
      return SaveSharded(comm, *fs, "/bad", sd, {milliseconds(5000)});
    });
    for (const Status& s : st) {
      EXPECT_THAT(s, StatusIs(c.code, c.want));
    }
    EXPECT_FALSE(*Exists(*fs, "/bad"));
  }
}

// Chunks that tile a tensor whose byte size does not fit 64 bits (the
// element count does): refused when indexed, so inspect and verify never
// meet a size they cannot compute.
TEST(ShardedLoadTest, GlobalByteSizesBeyond64BitsAreRefusedWhenIndexed) {
  plan::SavedIndex index;
  plan::SavedChunk c;
  c.box.offsets = {0};
  c.box.sizes = {1ull << 62};
  CKPT_ASSERT_OK(index.Add("w", DType::kF32, c, "a.safetensors"));
  Status s = index.Finalize();
  EXPECT_THAT(
      s, StatusIs(StatusCode::kDataLoss,
                  "tensor 'w': global shape [4611686018427387904] of F32 is more than 2^64 bytes"));
}

// Tiling checks stay O(n log n) for the layouts sharding makes, however many
// chunks share a range (6,000 column slices used to take seconds), and
// overlaps among them are still found.
TEST(TilingTest, ManyChunksSharingARangeAreCheckedAndOverlapsFound) {
  auto cols = [](uint64_t n, uint64_t rows) {
    std::vector<plan::Box> boxes;
    for (uint64_t i = 0; i < n; ++i) boxes.push_back({{0, i}, {rows, 1}});
    return boxes;
  };
  std::vector<plan::Box> b = cols(60000, 4);
  CKPT_EXPECT_OK(plan::CheckTiling("w", Shape({4, 60000}), b));
  // A grid of uneven 300 x 200 blocks, and 3-D slices along the last dimension.
  std::vector<plan::Box> grid;
  for (uint64_t i = 0, r = 0; i < 300; r += 1 + i % 3, ++i) {
    for (uint64_t j = 0, c = 0; j < 200; c += 2 + j % 2, ++j)
      grid.push_back({{r, c}, {1 + i % 3, 2 + j % 2}});
  }
  CKPT_EXPECT_OK(plan::CheckTiling("g", Shape({600, 500}), grid));
  std::vector<plan::Box> cube;
  for (uint64_t k = 0; k < 20000; ++k) cube.push_back({{0, 0, k}, {2, 3, 1}});
  CKPT_EXPECT_OK(plan::CheckTiling("c", Shape({2, 3, 20000}), cube));

  struct Case {
    std::vector<plan::Box> boxes;
    Shape shape;
    const char* want;
  };
  std::vector<Case> cases;
  b = cols(60000, 4);
  b[30000] = {{0, 29999}, {4, 2}};  // overlaps its neighbour
  b[30001] = {{0, 30001}, {4, 0}};  // empty (keeps the volume)
  cases.push_back(
      {b, Shape({4, 60000}),
       "chunks [0:4, 29999:30000] and [0:4, 29999:30001] overlap in [0:4, 29999:30000]"});
  b = cols(60000, 4);
  b[7] = b[8];  // a duplicate: same volume, one column missing
  cases.push_back({b, Shape({4, 60000}), "chunks [0:4, 8:9] and [0:4, 8:9] overlap in [0:4, 8:9]"});
  cube[5] = {{0, 1, 5}, {2, 2, 2}};
  cases.push_back({cube, Shape({2, 3, 20000}),
                   "chunks [0:2, 0:3, 6:7] and [0:2, 1:3, 5:7] overlap in [0:2, 1:3, 6:7]"});
  for (const Case& c : cases) {
    Status s = plan::CheckTiling("w", c.shape, c.boxes);
    EXPECT_THAT(s, StatusIs(StatusCode::kInvalidArgument, c.want));
  }
}

TEST(ShardedLoadTest, KeyProblemsAreReportedTogether) {
  auto fs = NewMemoryStorage();
  std::vector<testing::TensorDef> saved = {{"a", DType::kF32, Shape({4})},
                                           {"b", DType::kF32, Shape({4})},
                                           {"c", DType::kF32, Shape({4})}};
  CKPT_ASSERT_OK(Save(*fs, "/k", saved, {2, Split::kDim0}));
  std::vector<testing::TensorDef> wanted = {{"a", DType::kF32, Shape({4, 1})},
                                            {"b", DType::kF16, Shape({4})},
                                            {"z", DType::kF32, Shape({4})}};
  Status s = LoadAndCheck(*fs, "/k", wanted, {2, Split::kDim0});
  for (const char* part : {"missing keys (1): z", "unexpected keys (1): c",
                           "'a' is F32 [4] in the checkpoint but F32 [4, 1] in the state dict",
                           "'b' is F32 [4] in the checkpoint but F16 [4] in the state dict"}) {
    EXPECT_THAT(s, StatusIs(StatusCode::kInvalidArgument, part));
  }
  // A subset of the checkpoint loads when asked.
  std::vector<Status> st = OnRanks(2, [&](Communicator& c) {
    testing::RankState rs = testing::MakeRankState({saved[1]}, {2, Split::kDim1}, c.rank(), false);
    LoadOptions o = testing::WithTimeout(milliseconds(5000));
    o.allow_unexpected = true;
    CKPT_RETURN_IF_ERROR(LoadSharded(c, *fs, "/k", rs.sd, o));
    std::string why;
    return testing::MatchesReference({saved[1]}, rs, &why) ? Status() : DataLossError(why);
  });
  for (const Status& x : st) CKPT_EXPECT_OK(x);
}

// A directory as PyTorch/NeMo write it: shard files with DCP metadata, no
// manifest, no checksums; and a plain HF directory (no sharding info).
TEST(ShardedLoadTest, ForeignDirectories) {
  auto fs = NewMemoryStorage();
  CKPT_ASSERT_OK(fs->MakeDirs("/torch"));
  std::vector<float> g(12);
  for (int i = 0; i < 12; ++i) g[static_cast<size_t>(i)] = static_cast<float>(i);
  for (int r = 0; r < 2; ++r) {
    TensorData t{"w", DType::kF32, Shape({2, 3}),
                 std::as_bytes(std::span<const float>(g.data() + r * 6, 6))};
    SafetensorsMetadata md{
        {"DCP_SHARDING_INFO", "{\"w\": {\"saved_offsets\": [" + std::to_string(2 * r) + ", 0]}}"},
        {"DCP_VERSION", "1.0"},
        {"format", "pt"}};
    CKPT_ASSERT_OK(WriteSafetensors(*fs, "/torch/" + ShardFileName(r), std::span(&t, 1), md));
  }
  auto one = NewSingleRankCommunicator();
  std::vector<float> got(12, -1);
  StateDict sd;
  sd.tensors.push_back(
      WholeTensor("w", DType::kF32, Shape({4, 3}), reinterpret_cast<std::byte*>(got.data())));
  CKPT_ASSERT_OK(LoadSharded(*one, *fs, "/torch", sd));
  EXPECT_EQ(got, g);

  CKPT_ASSERT_OK(fs->MakeDirs("/hf"));
  TensorData whole{"w", DType::kF32, Shape({4, 3}), std::as_bytes(std::span<const float>(g))};
  CKPT_ASSERT_OK(WriteSafetensors(*fs, "/hf/model.safetensors", std::span(&whole, 1)));
  std::vector<Status> st = OnRanks(2, [&](Communicator& c) -> Status {
    std::vector<float> half(6, -1);
    StateDict part;
    part.tensors.push_back({"w",
                            DType::kF32,
                            Shape({4, 3}),
                            {{{static_cast<uint64_t>(2 * c.rank()), 0},
                              Shape({2, 3}),
                              reinterpret_cast<std::byte*>(half.data()),
                              {}}}});
    CKPT_RETURN_IF_ERROR(LoadSharded(c, *fs, "/hf", part));
    for (int i = 0; i < 6; ++i) {
      if (half[static_cast<size_t>(i)] != g[static_cast<size_t>(c.rank() * 6 + i)])
        return DataLossError("mismatch");
    }
    return Status();
  });
  for (const Status& s : st) CKPT_EXPECT_OK(s);
}

TEST(ShardedLoadTest, ResavedDirectoryWithOverlapOrHoleIsRefused) {
  auto fs = NewMemoryStorage();
  CKPT_ASSERT_OK(fs->MakeDirs("/o"));
  std::vector<float> g(6, 1.f);
  for (int r = 0; r < 2; ++r) {
    TensorData t{"w", DType::kF32, Shape({3}), std::as_bytes(std::span<const float>(g.data(), 3))};
    SafetensorsMetadata md{
        {"DCP_SHARDING_INFO", "{\"w\": {\"saved_offsets\": [" + std::to_string(2 * r) + "]}}"}};
    CKPT_ASSERT_OK(WriteSafetensors(*fs, "/o/" + ShardFileName(r), std::span(&t, 1), md));
  }
  auto one = NewSingleRankCommunicator();
  std::vector<float> got(5);
  StateDict sd;
  sd.tensors.push_back(
      WholeTensor("w", DType::kF32, Shape({5}), reinterpret_cast<std::byte*>(got.data())));
  Status s = LoadSharded(*one, *fs, "/o", sd);
  EXPECT_THAT(s, StatusIs(StatusCode::kDataLoss, "chunks [0:3] and [2:5] overlap in [2:3]"));
  EXPECT_THAT(VerifyShardedCheckpoint(*fs, "/o"), StatusIs(StatusCode::kDataLoss, "overlap"));
}

// BF16 values that are exact in every float dtype: the cast is checkable.
TEST(ShardedLoadTest, CastFloatsConvertsIntoStridedChunksAndNeverFp8) {
  testing::TempDir tmp;
  const std::string dir = tmp / "hf";
  ASSERT_TRUE(PosixStorage()->MakeDirs(dir).ok());
  std::vector<uint16_t> bf(6 * 4);
  for (size_t i = 0; i < bf.size(); ++i) {
    const float f = static_cast<float>(i) - 7.5f;
    uint32_t u;
    std::memcpy(&u, &f, 4);
    bf[i] = static_cast<uint16_t>(u >> 16);
  }
  std::vector<std::byte> fp8(8, std::byte{0x38});
  std::vector<TensorData> ts = {
      {"w", DType::kBF16, Shape{6, 4},
       std::span<const std::byte>(reinterpret_cast<const std::byte*>(bf.data()), 48)},
      {"q", DType::kF8_E4M3, Shape{8}, fp8}};
  CKPT_ASSERT_OK(WriteSafetensors(*PosixStorage(), JoinPath(dir, "model.safetensors"), ts));

  // Two ranks, each holding three rows of `w` as F32 through a transposed
  // (column-major) view.
  LoadOptions cast;
  cast.cast_floats = true;
  cast.allow_unexpected = true;
  CKPT_ASSERT_OK(testing::OnRanksOk(2, [&](Communicator& comm) -> Status {
    std::vector<float> storage(12, -1.f);
    StateDict sd;
    DistTensor t{"w", DType::kF32, Shape{6, 4}, {}};
    t.chunks.push_back(LocalChunk{{static_cast<uint64_t>(3 * comm.rank()), 0},
                                  Shape{3, 4},
                                  reinterpret_cast<std::byte*>(storage.data()),
                                  {1, 3}});
    sd.tensors.push_back(t);
    CKPT_RETURN_IF_ERROR(LoadSharded(comm, *PosixStorage(), dir, sd, cast));
    for (int r = 0; r < 3; ++r) {
      for (int c = 0; c < 4; ++c) {
        const float want = static_cast<float>((3 * comm.rank() + r) * 4 + c) - 7.5f;
        if (storage[static_cast<size_t>(c * 3 + r)] != want) {
          return InternalError("element " + std::to_string(r) + "," + std::to_string(c) + " wrong");
        }
      }
    }
    return Status();
  }));

  auto comm = NewSingleRankCommunicator();
  std::vector<float> w(24), q(8);
  StateDict sd;
  sd.tensors.push_back(
      WholeTensor("w", DType::kF32, Shape{6, 4}, reinterpret_cast<std::byte*>(w.data())));
  LoadOptions strict;
  strict.allow_unexpected = true;
  Status refused = LoadSharded(*comm, *PosixStorage(), dir, sd, strict);
  EXPECT_THAT(refused, StatusIs(StatusCode::kInvalidArgument,
                                "'w' is BF16 [6, 4] in the checkpoint but F32 [6, 4]"));
  sd.tensors.push_back(
      WholeTensor("q", DType::kF32, Shape{8}, reinterpret_cast<std::byte*>(q.data())));
  Status no_fp8 = LoadSharded(*comm, *PosixStorage(), dir, sd, cast);
  EXPECT_THAT(no_fp8, StatusIs(StatusCode::kInvalidArgument, "'q' is F8_E4M3"));
}

// A flipped data bit is caught when a rank reads the chunk whole, on every
// rank, naming file, tensor and byte range; it can be switched off.
TEST(ShardedLoadTest, ChecksumsAreVerifiedOnSameLayoutLoads) {
  testing::TempDir tmp;
  const std::string dir = tmp / "c";
  std::vector<testing::TensorDef> defs = {{"w", DType::kF32, Shape({64, 4})},
                                          {"b", DType::kBF16, Shape({16})}};
  CKPT_ASSERT_OK(Save(*PosixStorage(), dir, defs, {2, Split::kDim0}));
  CKPT_ASSERT_OK(LoadAndCheck(*PosixStorage(), dir, defs, {2, Split::kDim0}));
  const std::string shard = dir + "/" + ShardFileName(1);
  std::string bytes = *ReadFileToString(*PosixStorage(), shard);
  bytes[bytes.size() - 3] ^= 0x01;  // the last tensor of the file, rank 1's chunk
  CKPT_ASSERT_OK(WriteFileAtomically(*PosixStorage(), shard, bytes));

  std::vector<Status> st = OnRanks(2, [&](Communicator& c) -> Status {
    testing::RankState rs = testing::MakeRankState(defs, {2, Split::kDim0}, c.rank(), false);
    return LoadSharded(c, *PosixStorage(), dir, rs.sd, testing::WithTimeout(milliseconds(20000)));
  });
  for (const Status& s : st) {
    EXPECT_THAT(s, StatusIs(StatusCode::kDataLoss,
                            ShardFileName(1) + ": tensor 'b' chunk at [8:16], bytes [856, 872)"));
    EXPECT_THAT(s, StatusIs(StatusCode::kDataLoss, "does not match the recorded"));
  }
  // Switched off, the load goes through (and the flipped value shows).
  std::vector<Status> off = OnRanks(2, [&](Communicator& c) -> Status {
    testing::RankState rs = testing::MakeRankState(defs, {2, Split::kDim0}, c.rank(), false);
    LoadOptions o = testing::WithTimeout(milliseconds(20000));
    o.verify_checksums = false;
    CKPT_RETURN_IF_ERROR(LoadSharded(c, *PosixStorage(), dir, rs.sd, o));
    std::string why;
    return testing::MatchesReference(defs, rs, &why) == (c.rank() == 0) ? Status()
                                                                        : InternalError(why);
  });
  for (const Status& s : off) CKPT_EXPECT_OK(s);
}

// Every bit of every header, and every 7th bit of the data, flipped one at
// a time: the load refuses each, naming the file (and for data the tensor
// and byte range); truncated and extended files are refused too.
TEST(ShardedLoadTest, BitFlipSweepIsAlwaysDetected) {
  testing::TempDir tmp;
  const std::string dir = tmp / "c";
  std::vector<testing::TensorDef> defs = {{"w", DType::kF32, Shape({8, 4})},
                                          {"b", DType::kBF16, Shape({6})}};
  CKPT_ASSERT_OK(Save(*PosixStorage(), dir, defs, {2, Split::kDim0}));
  auto comm = NewSingleRankCommunicator();
  auto load = [&]() -> Status {
    // Two ranks' layout, loaded by one rank holding both chunks.
    StateDict sd;
    std::vector<std::vector<std::byte>> bufs;
    for (int r = 0; r < 2; ++r) {
      testing::RankState rs = testing::MakeRankState(defs, {2, Split::kDim0}, r, false);
      for (DistTensor& t : rs.sd.tensors) {
        for (LocalChunk& c : t.chunks) {
          bufs.emplace_back(*c.shape.NumBytes(t.dtype));
          c.data = bufs.back().data();
        }
        auto it = std::find_if(sd.tensors.begin(), sd.tensors.end(),
                               [&](const DistTensor& x) { return x.fqn == t.fqn; });
        if (it == sd.tensors.end())
          sd.tensors.push_back(t);
        else
          it->chunks.insert(it->chunks.end(), t.chunks.begin(), t.chunks.end());
      }
    }
    return LoadSharded(*comm, *PosixStorage(), dir, sd);
  };
  CKPT_ASSERT_OK(load());
  int header_bits = 0, data_bits = 0;
  for (int r = 0; r < 2; ++r) {
    const std::string shard = dir + "/" + ShardFileName(r);
    const std::string good = *ReadFileToString(*PosixStorage(), shard);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(good[static_cast<size_t>(i)]);
    const uint64_t header_end = 8 + n;
    for (uint64_t bit = 0; bit < good.size() * 8; bit += bit < header_end * 8 ? 1 : 7) {
      std::string bad = good;
      bad[bit / 8] = static_cast<char>(bad[bit / 8] ^ (1 << (bit % 8)));
      CKPT_ASSERT_OK(WriteFileAtomically(*PosixStorage(), shard, bad));
      Status s = load();
      ASSERT_THAT(s, StatusIs(StatusCode::kDataLoss, ShardFileName(r)))
          << "bit " << bit << " of " << shard;
      if (bit >= header_end * 8) {
        ASSERT_THAT(s, StatusIs(StatusCode::kDataLoss, "bytes ["))
            << "bit " << bit << " of " << shard;
        ++data_bits;
      } else {
        ++header_bits;
      }
    }
    for (const std::string& bad : {good.substr(0, good.size() - 1), good + std::string(1, '\0')}) {
      CKPT_ASSERT_OK(WriteFileAtomically(*PosixStorage(), shard, bad));
      Status s = load();
      EXPECT_THAT(s, StatusIs(StatusCode::kDataLoss, ShardFileName(r)));
    }
    CKPT_ASSERT_OK(WriteFileAtomically(*PosixStorage(), shard, good));
  }
  CKPT_ASSERT_OK(load());
  std::printf("bit-flip sweep: %d header bits and %d data bits flipped, all detected\n",
              header_bits, data_bits);
}

TEST(ShardedVerifyTest, ChecksumsCatchFlippedDataAndManifestCatchesMissingFiles) {
  testing::TempDir tmp;
  const std::string dir = tmp / "c";
  std::vector<testing::TensorDef> defs = {{"w", DType::kF32, Shape({64, 4})}};
  CKPT_ASSERT_OK(Save(*PosixStorage(), dir, defs, {2, Split::kDim0}));
  CKPT_ASSERT_OK(VerifyShardedCheckpoint(*PosixStorage(), dir));
  const std::string shard = dir + "/" + ShardFileName(1);
  std::string bytes = *ReadFileToString(*PosixStorage(), shard);
  bytes[bytes.size() - 5] ^= 0x10;
  CKPT_ASSERT_OK(WriteFileAtomically(*PosixStorage(), shard, bytes));
  Status v = VerifyShardedCheckpoint(*PosixStorage(), dir);
  EXPECT_THAT(v, StatusIs(StatusCode::kDataLoss, "tensor 'w' bytes ["));
  EXPECT_THAT(v, StatusIs(StatusCode::kDataLoss, "does not match the recorded"));
  CKPT_ASSERT_OK(PosixStorage()->Remove(shard));
  v = VerifyShardedCheckpoint(*PosixStorage(), dir);
  EXPECT_THAT(v, StatusIs(StatusCode::kDataLoss,
                          "shard-00002-model-00001-of-00001.safetensors' is missing"));
}

TEST(ShardedSaveTest, ARankThatStopsMidSaveFailsTheOthersAndPublishesNothing) {
  auto fs = NewMemoryStorage();
  std::vector<testing::TensorDef> defs = {{"w", DType::kF32, Shape({8, 8})}};
  auto comms = NewThreadCommunicators(4);
  std::vector<Status> st(4);
  std::vector<double> secs(4);
  std::vector<std::thread> threads;
  for (int r = 0; r < 4; ++r) {
    threads.emplace_back([&, r] {
      Communicator& c = *comms[static_cast<size_t>(r)];
      testing::RankState rs = testing::MakeRankState(defs, {4, Split::kDim0}, r, true);
      if (r == 2) {
        // Takes part in planning, then stops answering.
        (void)c.AllGather("", milliseconds(2000));
        return;
      }
      auto t0 = std::chrono::steady_clock::now();
      st[static_cast<size_t>(r)] = SaveSharded(c, *fs, "/dead", rs.sd, {milliseconds(300)});
      secs[static_cast<size_t>(r)] =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    });
  }
  for (auto& t : threads) t.join();
  for (int r : {0, 1, 3}) {
    EXPECT_THAT(st[static_cast<size_t>(r)],
                StatusIs(StatusCode::kUnavailable, "timed out after 300 ms waiting for rank(s) 2"))
        << r;
    EXPECT_LT(secs[static_cast<size_t>(r)], 10.0);
  }
  EXPECT_FALSE(*Exists(*fs, "/dead"));
}

}  // namespace
}  // namespace ckpt
