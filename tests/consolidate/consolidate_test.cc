#include "ckpt/consolidate.h"

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <thread>

#include "ckpt/hf.h"
#include "ckpt/safetensors.h"
#include "ckpt/sharded.h"
#include "convert/float_cast.h"
#include "engine/layouts.h"
#include "engine/shard_dir.h"
#include "test_util.h"

namespace ckpt {
namespace {

using std::chrono::milliseconds;
using testing::Layout;
using testing::Split;
using testing::StatusIs;

Status SaveModel(Storage& fs, const std::string& dir, const std::vector<testing::TensorDef>& defs,
                 const Layout& l) {
  return testing::OnRanksOk(l.world, [&](Communicator& c) {
    testing::RankState rs = testing::MakeRankState(defs, l, c.rank(), true);
    return SaveSharded(c, fs, dir, rs.sd, {milliseconds(20000)});
  });
}

TEST(ConsolidateRulesTest, ByteSizes) {
  EXPECT_EQ(*ParseByteSize("5GiB"), 5ull << 30);
  EXPECT_EQ(*ParseByteSize("5GB"), 5000000000ull);
  EXPECT_EQ(*ParseByteSize("512mib"), 512ull << 20);
  EXPECT_EQ(*ParseByteSize("1234"), 1234u);
  EXPECT_EQ(*ParseByteSize("7B"), 7u);
  for (const char* bad : {"", "GiB", "5XB", "0", "99999999999999999999", "20000000000GiB"}) {
    EXPECT_THAT(ParseByteSize(bad),
                StatusIs(StatusCode::kInvalidArgument, "size '" + std::string(bad) + "'"))
        << bad;
  }
}

TEST(ConsolidateRulesTest, FileDivision) {
  EXPECT_EQ(DivideEqually(10, 3), (std::vector<uint32_t>{1, 1, 1, 1, 2, 2, 2, 3, 3, 3}));
  EXPECT_EQ(DivideEqually(2, 3), (std::vector<uint32_t>{1, 2}));
  // New file when the current one is not empty and the next tensor would pass the target.
  EXPECT_EQ(DivideBySize({4, 4, 4, 10, 1, 1}, 8), (std::vector<uint32_t>{1, 1, 2, 3, 4, 4}));
  EXPECT_EQ(DivideBySize({20}, 8), (std::vector<uint32_t>{1}));  // alone in its file
}

TEST(ConsolidateRulesTest, ExportDTypes) {
  using D = DType;
  struct Case {
    D saved;
    std::optional<D> original, cast;
    D want;
    bool warns;
  };
  const Case cases[] = {
      {D::kBF16, D::kF32, std::nullopt, D::kF32, false},          // originally F32 stays F32
      {D::kBF16, D::kF32, D::kF16, D::kF32, false},               // ... even with a cast
      {D::kF32, D::kBF16, std::nullopt, D::kBF16, false},         // original float dtype back
      {D::kF32, D::kBF16, D::kF16, D::kF16, false},               // explicit cast wins over it
      {D::kF8_E4M3, std::nullopt, D::kBF16, D::kF8_E4M3, false},  // FP8 never cast
      {D::kBF16, D::kF8_E4M3, std::nullopt, D::kBF16,
       true},  // was quantized, now float: kept, warned
      {D::kF32, std::nullopt, std::nullopt, D::kF32, false},  // no mapping: saved dtype
      {D::kI64, D::kI64, D::kBF16, D::kI64, false},           // integers untouched
  };
  for (const Case& c : cases) {
    std::string warning;
    EXPECT_EQ(ExportDType(c.saved, c.original, c.cast, &warning), c.want) << DTypeName(c.saved);
    EXPECT_EQ(!warning.empty(), c.warns) << warning;
  }
}

// Any saved layout consolidates, on 1, 2 and 3 ranks, into an HF directory
// that holds exactly the original tensors.
TEST(ConsolidateTest, AnyLayoutIntoAnHfDirectory) {
  auto fs = NewMemoryStorage();
  const auto defs = testing::MixedModel();
  int n = 0;
  for (const Layout& save : {Layout{1, Split::kDim0}, Layout{4, Split::kDim1},
                             Layout{8, Split::k2D}, Layout{2, Split::kReplicated}}) {
    const std::string in = "/in/" + save.Name();
    CKPT_ASSERT_OK(SaveModel(*fs, in, defs, save));
    for (int world : {1, 2, 3}) {
      const std::string out = "/out/" + std::to_string(n++);
      ConsolidateOptions o;
      o.max_shard_size = 200;  // several files
      o.threads = 2;
      ConsolidateStats stats;
      CKPT_ASSERT_OK(testing::OnRanksOk(world, [&](Communicator& c) {
        ConsolidateStats mine;
        Status s = Consolidate(c, *fs, in, out, o, &mine);
        if (c.rank() == 0) stats = mine;
        return s;
      }));
      auto m = HfModelDir::Open(*fs, out);
      CKPT_ASSERT_OK(m);
      EXPECT_EQ(m->files().size(), stats.files);
      EXPECT_GT(stats.files, 2u);
      ASSERT_EQ(m->tensors().size(), defs.size());
      for (const auto& d : defs) {
        const auto& loc = m->tensors().at(d.fqn);
        EXPECT_EQ(loc.info->dtype, d.dtype);
        EXPECT_EQ(loc.info->shape, d.shape);
        std::vector<std::byte> got(loc.info->nbytes());
        CKPT_ASSERT_OK(m->files()[loc.file]->ReadTensor(d.fqn, got));
        EXPECT_EQ(got, testing::GlobalBytes(d)) << save.Name() << " on " << world << ": " << d.fqn;
        EXPECT_EQ(m->files()[loc.file]->header().metadata().at("format"), "pt");
      }
      EXPECT_EQ(*m->index()->total_size, stats.bytes);
      EXPECT_EQ(fs->List("/out")->size(), static_cast<size_t>(n));  // no staging left
    }
  }
}

TEST(ConsolidateTest, DtypesAreRestoredOrCast) {
  auto fs = NewMemoryStorage();
  std::vector<testing::TensorDef> defs = {{"a", DType::kBF16, Shape({4, 4})},
                                          {"b", DType::kF32, Shape({8})},
                                          {"q", DType::kF8_E4M3, Shape({4})}};
  CKPT_ASSERT_OK(SaveModel(*fs, "/in", defs, {2, Split::kDim0}));
  ConsolidateOptions o;
  o.original_dtypes = {{"a", DType::kF32}};
  o.cast_dtype = DType::kF16;
  CKPT_ASSERT_OK(testing::OnRanksOk(
      2, [&](Communicator& c) { return Consolidate(c, *fs, "/in", "/out", o); }));
  auto m = HfModelDir::Open(*fs, "/out");
  CKPT_ASSERT_OK(m);
  auto read = [&](const std::string& name) {
    const auto& loc = m->tensors().at(name);
    std::vector<std::byte> got(loc.info->nbytes());
    EXPECT_TRUE(m->files()[loc.file]->ReadTensor(name, got).ok());
    return std::make_pair(loc.info->dtype, got);
  };
  auto [adt, a] = read("a");
  EXPECT_EQ(adt, DType::kF32);  // originally F32: restored, not cast
  std::vector<std::byte> want_a(a.size());
  CKPT_ASSERT_OK(CastFloats(DType::kBF16, testing::GlobalBytes(defs[0]), DType::kF32, want_a));
  EXPECT_EQ(a, want_a);
  auto [bdt, b] = read("b");
  EXPECT_EQ(bdt, DType::kF16);  // cast
  std::vector<std::byte> want_b(b.size());
  CKPT_ASSERT_OK(CastFloats(DType::kF32, testing::GlobalBytes(defs[1]), DType::kF16, want_b));
  EXPECT_EQ(b, want_b);
  auto [qdt, q] = read("q");
  EXPECT_EQ(qdt, DType::kF8_E4M3);  // FP8 never cast
  EXPECT_EQ(q, testing::GlobalBytes(defs[2]));
}

TEST(ConsolidateTest, BaseModelLayoutAndHfArtifacts) {
  auto fs = NewMemoryStorage();
  std::vector<testing::TensorDef> defs = {{"x.0", DType::kU8, Shape({4})},
                                          {"x.1", DType::kU8, Shape({4})},
                                          {"x.2", DType::kU8, Shape({4})},
                                          {"new", DType::kU8, Shape({4})}};
  CKPT_ASSERT_OK(SaveModel(*fs, "/ckpt/model", defs, {2, Split::kDim0}));
  // The checkpoint's HF metadata and a base model whose index puts x.0 and x.2 in file 2 of 2.
  CKPT_ASSERT_OK(fs->MakeDirs("/ckpt/model/.hf_metadata"));
  CKPT_ASSERT_OK(WriteFileAtomically(*fs, "/ckpt/model/.hf_metadata/config.json",
                                     "{\"model_type\": \"llama\"}\n"));
  CKPT_ASSERT_OK(WriteFileAtomically(*fs, "/ckpt/model/.hf_metadata/tokenizer.json", "{}\n"));
  CKPT_ASSERT_OK(
      WriteFileAtomically(*fs, "/ckpt/model/.hf_metadata/fqn_to_dtype_mapping.json", "{}\n"));
  CKPT_ASSERT_OK(fs->MakeDirs("/base"));
  for (int f = 1; f <= 2; ++f) {
    std::vector<TensorData> ts;
    for (const char* n :
         f == 1 ? std::vector<const char*>{"x.1"} : std::vector<const char*>{"x.0", "x.2"}) {
      ts.push_back({n, DType::kU8, Shape({4}), AsBytes("abcd")});
    }
    char name[64];
    std::snprintf(name, sizeof name, "model-%05d-of-00002.safetensors", f);
    CKPT_ASSERT_OK(WriteSafetensors(*fs, std::string("/base/") + name, ts));
  }
  HfIndex idx;
  idx.weight_map = {{"x.0", "model-00002-of-00002.safetensors"},
                    {"x.1", "model-00001-of-00002.safetensors"},
                    {"x.2", "model-00002-of-00002.safetensors"}};
  CKPT_ASSERT_OK(
      WriteFileAtomically(*fs, "/base/model.safetensors.index.json", SerializeHfIndex(idx)));

  ConsolidateOptions o;
  o.base_model_dir = "/base";
  CKPT_ASSERT_OK(testing::OnRanksOk(
      1, [&](Communicator& c) { return Consolidate(c, *fs, "/ckpt/model", "/hf", o); }));
  auto m = HfModelDir::Open(*fs, "/hf");
  CKPT_ASSERT_OK(m);
  const auto& wm = m->index()->weight_map;
  EXPECT_EQ(wm.at("x.0"), "model-00002-of-00002.safetensors");
  EXPECT_EQ(wm.at("x.1"), "model-00001-of-00002.safetensors");
  EXPECT_EQ(wm.at("new"), "model-00002-of-00002.safetensors");  // unmapped keys go to the last file
  EXPECT_EQ(*ReadFileToString(*fs, "/hf/config.json"), "{\"model_type\": \"llama\"}\n");
  EXPECT_TRUE(*Exists(*fs, "/hf/tokenizer.json"));
  EXPECT_FALSE(*Exists(*fs, "/hf/fqn_to_dtype_mapping.json"));
}

// F32 values whose BF16 rounding is not a truncation: ties go to even.
const std::vector<float> kNeedRounding = {1.f,      1.00390625f, 1.01171875f, 3.14159265f,
                                          -2.5e-3f, 1e-40f,      3e38f,       -0.f};

// A checkpoint saved in F32 (w, norm, head) and I32 (ids), and a base model
// holding w in BF16, norm in F32 and ids in I32 (no head: a new tensor).
void WriteF32CheckpointAndBf16Base(Storage& fs, const std::string& ckpt, const std::string& base) {
  std::vector<float> w = kNeedRounding, norm(4, 0.1f), head = kNeedRounding;
  std::vector<int32_t> ids = {7, -7};
  StateDict sd;
  sd.tensors.push_back(
      WholeTensor("w", DType::kF32, Shape({2, 4}), reinterpret_cast<std::byte*>(w.data())));
  sd.tensors.push_back(
      WholeTensor("norm", DType::kF32, Shape({4}), reinterpret_cast<std::byte*>(norm.data())));
  sd.tensors.push_back(
      WholeTensor("head", DType::kF32, Shape({8}), reinterpret_cast<std::byte*>(head.data())));
  sd.tensors.push_back(
      WholeTensor("ids", DType::kI32, Shape({2}), reinterpret_cast<std::byte*>(ids.data())));
  CKPT_ASSERT_OK(
      testing::OnRanksOk(1, [&](Communicator& c) { return SaveSharded(c, fs, ckpt, sd); }));
  CKPT_ASSERT_OK(fs.MakeDirs(base));
  const std::string zeros(16, '\0');
  std::vector<TensorData> ts = {
      {"w", DType::kBF16, Shape({2, 4}), AsBytes(zeros)},
      {"norm", DType::kF32, Shape({4}), AsBytes(zeros)},
      {"ids", DType::kI32, Shape({2}), AsBytes(std::string_view(zeros).substr(0, 8))}};
  CKPT_ASSERT_OK(WriteSafetensors(fs, JoinPath(base, kHfSingleFileName), ts));
}

// The exported bytes of every tensor of an HF directory.
std::map<std::string, std::pair<DType, std::vector<std::byte>>> ReadExport(Storage& fs,
                                                                           const std::string& dir) {
  std::map<std::string, std::pair<DType, std::vector<std::byte>>> out;
  Result<HfModelDir> m = HfModelDir::Open(fs, dir);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  if (!m.ok()) return out;
  for (const auto& [name, loc] : m->tensors()) {
    std::vector<std::byte> bytes(loc.info->nbytes());
    EXPECT_TRUE(m->files()[loc.file]->ReadTensor(name, bytes).ok()) << name;
    out[name] = {loc.info->dtype, std::move(bytes)};
  }
  return out;
}

std::vector<std::byte> Bf16Bytes(const std::vector<float>& v) {
  std::vector<std::byte> out(v.size() * 2);
  for (size_t i = 0; i < v.size(); ++i) {
    const uint16_t b = DoubleToBf16(v[i]);
    std::memcpy(out.data() + 2 * i, &b, 2);
  }
  return out;
}

TEST(ConsolidateTest, BaseModelDTypesComeBackOnExport) {
  auto fs = NewMemoryStorage();
  WriteF32CheckpointAndBf16Base(*fs, "/ckpt", "/base");
  // The rounding is the cast code's: ties to even, not truncation.
  EXPECT_EQ(DoubleToBf16(1.00390625), 0x3F80);
  EXPECT_EQ(DoubleToBf16(1.01171875), 0x3F82);

  ConsolidateOptions o;
  o.base_model_dir = "/base";
  CKPT_ASSERT_OK(testing::OnRanksOk(
      1, [&](Communicator& c) { return Consolidate(c, *fs, "/ckpt", "/hf", o); }));
  auto out = ReadExport(*fs, "/hf");
  ASSERT_EQ(out.size(), 4u);
  EXPECT_EQ(out["w"].first, DType::kBF16);
  EXPECT_EQ(out["w"].second, Bf16Bytes(kNeedRounding));
  EXPECT_EQ(out["norm"].first, DType::kF32);  // originally F32 stays F32
  EXPECT_EQ(out["head"].first, DType::kF32);  // not in the base: kept as saved
  EXPECT_EQ(out["ids"].first, DType::kI32);
  auto idx = HfModelDir::Open(*fs, "/hf");
  CKPT_ASSERT_OK(idx);
  EXPECT_EQ(idx->index()->total_size, 8u * 2 + 4 * 4 + 8 * 4 + 2 * 4);

  // The base wins over the checkpoint's own dtype record.
  CKPT_ASSERT_OK(fs->MakeDirs("/ckpt/.hf_metadata"));
  CKPT_ASSERT_OK(WriteFileAtomically(*fs, "/ckpt/.hf_metadata/fqn_to_dtype_mapping.json",
                                     R"({"w": "torch.float16", "head": "torch.bfloat16"})"));
  CKPT_ASSERT_OK(testing::OnRanksOk(
      1, [&](Communicator& c) { return Consolidate(c, *fs, "/ckpt", "/hf2", o); }));
  out = ReadExport(*fs, "/hf2");
  EXPECT_EQ(out["w"].first, DType::kBF16);
  EXPECT_EQ(out["head"].first, DType::kBF16);  // the record still serves tensors the base lacks
  EXPECT_EQ(out["head"].second, Bf16Bytes(kNeedRounding));

  // An explicit cast wins over the base's float dtypes, but F32 originals stay F32.
  o.cast_dtype = DType::kF16;
  CKPT_ASSERT_OK(testing::OnRanksOk(
      1, [&](Communicator& c) { return Consolidate(c, *fs, "/ckpt", "/hf3", o); }));
  out = ReadExport(*fs, "/hf3");
  EXPECT_EQ(out["w"].first, DType::kF16);
  EXPECT_EQ(out["head"].first, DType::kF16);
  EXPECT_EQ(out["norm"].first, DType::kF32);
  EXPECT_EQ(out["ids"].first, DType::kI32);

  // A base that cannot be read is an error, not a silent fallback.
  o.cast_dtype.reset();
  o.base_model_dir = "/nobase";
  Status s = testing::OnRanksOk(
      1, [&](Communicator& c) { return Consolidate(c, *fs, "/ckpt", "/hf4", o); });
  EXPECT_THAT(s, StatusIs(StatusCode::kNotFound, "/nobase"));
  EXPECT_FALSE(*Exists(*fs, "/hf4"));
}

TEST(ConsolidateTest, HolesOverlapsAndExistingOutputAreErrors) {
  auto fs = NewMemoryStorage();
  CKPT_ASSERT_OK(fs->MakeDirs("/hole"));
  std::vector<float> g(3, 1.f);
  for (int r = 0; r < 2; ++r) {
    TensorData t{"w", DType::kF32, Shape({1}), std::as_bytes(std::span<const float>(g.data(), 1))};
    SafetensorsMetadata md{
        {"DCP_SHARDING_INFO", "{\"w\": {\"saved_offsets\": [" + std::to_string(2 * r) + "]}}"}};
    CKPT_ASSERT_OK(WriteSafetensors(*fs, "/hole/" + ShardFileName(r), std::span(&t, 1), md));
  }
  Status s =
      testing::OnRanksOk(2, [&](Communicator& c) { return Consolidate(c, *fs, "/hole", "/out"); });
  EXPECT_THAT(s, StatusIs(StatusCode::kDataLoss, "chunks cover 2 of 3 elements (a hole)"));
  EXPECT_FALSE(*Exists(*fs, "/out"));

  CKPT_ASSERT_OK(SaveModel(*fs, "/ok", {{"w", DType::kU8, Shape({4})}}, {1, Split::kDim0}));
  CKPT_ASSERT_OK(fs->MakeDirs("/exists"));
  s = testing::OnRanksOk(1, [&](Communicator& c) { return Consolidate(c, *fs, "/ok", "/exists"); });
  EXPECT_THAT(
      s, StatusIs(StatusCode::kAlreadyExists, "/exists already exists; it is never overwritten"));
}

Status ConsolidateOne(Storage& fs, const std::string& in, const std::string& out,
                      const ConsolidateOptions& o = {}, ConsolidateStats* stats = nullptr) {
  return testing::OnRanksOk(1,
                            [&](Communicator& c) { return Consolidate(c, fs, in, out, o, stats); });
}

// Numbers read from side files decide how many output files there are and
// where each tensor goes: every one is checked before anything is allocated.
TEST(ConsolidateTest, FileNumbersFromSideFilesAndBaseModelsAreChecked) {
  auto fs = NewMemoryStorage();
  CKPT_ASSERT_OK(SaveModel(*fs, "/ckpt", {{"w", DType::kU8, Shape({4})}}, {1, Split::kDim0}));
  CKPT_ASSERT_OK(fs->MakeDirs("/ckpt/.hf_metadata"));
  const std::string mapping = "/ckpt/.hf_metadata/fqn_to_file_index_mapping.json";
  struct Case {
    const char* json;
    const char* want;
  };
  const Case cases[] = {
      {R"({"w": 4294967296})",
       "fqn_to_file_index_mapping.json: tensor 'w': file number 4294967296 is not an integer"},
      {R"({"w": 3e9})",
       "tensor 'w': file number 3000000000.0 is not an integer between 1 and 99999"},
      {R"({"w": 20000})", "tensor 'w': file number 20000 is not between 1 and 1"},
      {R"({"w": 0})", "tensor 'w': file number 0 is not an integer"},
      {R"({"w": -1})", "tensor 'w': file number -1 is not an integer"},
      {R"({"w": 1, "x": 3})", "tensor 'x': file number 3 is not between 1 and 2"},
      {R"({"w": 123456789012345678901234567890})",
       "tensor 'w': file number 1.2345678901234568e+29"},
  };
  for (const Case& c : cases) {
    RemoveAll(*fs, mapping).IgnoreError();
    CKPT_ASSERT_OK(WriteFileAtomically(*fs, mapping, c.json));
    Status s = ConsolidateOne(*fs, "/ckpt", "/out");
    EXPECT_THAT(s, StatusIs(StatusCode::kInvalidArgument, c.want)) << c.json;
    EXPECT_FALSE(*Exists(*fs, "/out"));
  }
  RemoveAll(*fs, mapping).IgnoreError();

  // --base: the numbers in the base model's file names.
  const char* bases[][2] = {
      {"model-00000-of-00001.safetensors",
       "file number 0 in 'model-00000-of-00001.safetensors' is not between 1 and 1"},
      {"model-4294967297-of-4294967297.safetensors",
       "file number 4294967297 in 'model-4294967297-of-4294967297"
       ".safetensors' exceeds the limit of 99999 files"},
      {"model-99999999999999999999999-of-99999999999999999999999.safetensors",
       "exceeds the limit of 99999 files"},
      {"model-00003-of-00002.safetensors",
       "file number 3 in 'model-00003-of-00002.safetensors' is not between 1 and 2"},
      {"model-00002-of-00002.safetensors", "tensor 'w': file number 2 is not between 1 and 1"},
  };
  for (const auto& [file, want] : bases) {
    RemoveAll(*fs, "/base").IgnoreError();
    CKPT_ASSERT_OK(fs->MakeDirs("/base"));
    TensorData t{"w", DType::kU8, Shape({4}), AsBytes("abcd")};
    CKPT_ASSERT_OK(WriteSafetensors(*fs, std::string("/base/") + file, std::span(&t, 1)));
    HfIndex idx;
    idx.weight_map = {{"w", file}};
    CKPT_ASSERT_OK(
        WriteFileAtomically(*fs, "/base/model.safetensors.index.json", SerializeHfIndex(idx)));
    ConsolidateOptions o;
    o.base_model_dir = "/base";
    Status s = ConsolidateOne(*fs, "/ckpt", "/out", o);
    EXPECT_THAT(s, StatusIs(StatusCode::kInvalidArgument, want)) << file;
    EXPECT_THAT(s, StatusIs(StatusCode::kInvalidArgument, "/base")) << file;
    EXPECT_FALSE(*Exists(*fs, "/out"));
  }
  ConsolidateOptions o;
  o.fqn_to_file = {{"w", 7}};
  Status s = ConsolidateOne(*fs, "/ckpt", "/out", o);
  EXPECT_THAT(s, StatusIs(StatusCode::kInvalidArgument,
                          "fqn_to_file: tensor 'w': file number 7 is not between 1 and 1"));
}

// Side files are copied only as regular files of artifact kinds, never over
// a file the export writes and never through a link.
TEST(ConsolidateTest, SideFilesNeverReplaceTheExportAndLinksAreNotFollowed) {
  testing::TempDir tmp;
  Storage& fs = *PosixStorage();
  const std::string in = tmp / "ckpt";
  CKPT_ASSERT_OK(SaveModel(fs, in, {{"w", DType::kU8, Shape({4})}}, {2, Split::kDim0}));
  const std::string meta = JoinPath(in, ".hf_metadata");
  CKPT_ASSERT_OK(fs.MakeDirs(meta));
  CKPT_ASSERT_OK(WriteFileAtomically(fs, JoinPath(meta, "model.safetensors.index.json"),
                                     R"({"weight_map": {}})"));
  CKPT_ASSERT_OK(
      WriteFileAtomically(fs, JoinPath(meta, "model-00001-of-00001.safetensors"), "evil"));
  CKPT_ASSERT_OK(WriteFileAtomically(fs, JoinPath(meta, "config.json"), "{}"));
  CKPT_ASSERT_OK(WriteFileAtomically(fs, tmp / "secret", "top secret"));
  CKPT_ASSERT_OK(fs.Symlink(tmp / "secret", JoinPath(meta, "tokenizer.json")));
  ConsolidateStats stats;
  CKPT_ASSERT_OK(ConsolidateOne(fs, in, tmp / "out", {}, &stats));
  auto m = HfModelDir::Open(fs, tmp / "out");
  CKPT_ASSERT_OK(m);
  EXPECT_EQ(m->index()->weight_map.at("w"), "model-00001-of-00001.safetensors");
  CKPT_EXPECT_OK(VerifyShardedCheckpoint(fs, tmp / "out"));
  EXPECT_EQ(*ReadFileToString(fs, tmp / "out/config.json"), "{}");
  EXPECT_FALSE(*Exists(fs, tmp / "out/tokenizer.json"));
  std::string all;
  for (const std::string& w : stats.warnings) all += w + "\n";
  EXPECT_NE(all.find("tokenizer.json is a symbolic link"), std::string::npos) << all;
  EXPECT_NE(all.find("model.safetensors.index.json: not a Hugging Face artifact kind, or a name "
                     "the export writes"),
            std::string::npos)
      << all;

  // The whole .hf_metadata a link (to a directory of anything): nothing copied.
  const std::string in2 = tmp / "ckpt2";
  CKPT_ASSERT_OK(SaveModel(fs, in2, {{"w", DType::kU8, Shape({4})}}, {1, Split::kDim0}));
  CKPT_ASSERT_OK(fs.MakeDirs(tmp / "elsewhere"));
  CKPT_ASSERT_OK(WriteFileAtomically(fs, tmp / "elsewhere/config.json", "{\"secret\": 1}"));
  CKPT_ASSERT_OK(fs.Symlink(tmp / "elsewhere", JoinPath(in2, ".hf_metadata")));
  stats = {};
  CKPT_ASSERT_OK(ConsolidateOne(fs, in2, tmp / "out2", {}, &stats));
  EXPECT_FALSE(*Exists(fs, tmp / "out2/config.json"));
  ASSERT_EQ(stats.warnings.size(), 1u);
  EXPECT_NE(stats.warnings[0].find(".hf_metadata is a symbolic link"), std::string::npos)
      << stats.warnings[0];
}

// A bit flip in a chunk is caught while consolidating, naming the file and the tensor.
TEST(ConsolidateTest, ChunkChecksumsAreVerifiedWhileConsolidating) {
  for (Split split : {Split::kDim0, Split::kDim1}) {
    auto fs = NewMemoryStorage();
    CKPT_ASSERT_OK(SaveModel(*fs, "/ckpt", {{"w", DType::kF32, Shape({8, 6})}}, {2, split}));
    const std::string shard = "/ckpt/" + ShardFileName(1);
    std::string bytes = *ReadFileToString(*fs, shard);
    bytes[bytes.size() - 3] ^= 0x10;
    CKPT_ASSERT_OK(WriteFileAtomically(*fs, shard, bytes));
    Status s = ConsolidateOne(*fs, "/ckpt", "/out");
    EXPECT_THAT(s, StatusIs(StatusCode::kDataLoss, shard + ": tensor 'w' chunk at"));
    EXPECT_THAT(s, StatusIs(StatusCode::kDataLoss, "does not match the recorded"));
    EXPECT_FALSE(*Exists(*fs, "/out"));
  }
}

// The manifest covers .hf_metadata: a side file changed, added or removed
// after the save is refused by verify and by consolidate alike.
TEST(ConsolidateTest, ManifestCoversSideFiles) {
  auto fs = NewMemoryStorage();
  CKPT_ASSERT_OK(SaveModel(*fs, "/ckpt",
                           {{"w", DType::kU8, Shape({4})}, {"v", DType::kU8, Shape({4})}},
                           {1, Split::kDim0}));
  CKPT_ASSERT_OK(fs->MakeDirs("/ckpt/.hf_metadata"));
  const std::string mapping = "/ckpt/.hf_metadata/fqn_to_file_index_mapping.json";
  CKPT_ASSERT_OK(WriteFileAtomically(*fs, mapping, R"({"w": 1, "v": 2})"));
  CKPT_ASSERT_OK(WriteFileAtomically(*fs, "/ckpt/.hf_metadata/config.json", "{}"));
  CKPT_ASSERT_OK(engine::AddSideFilesToManifest(*fs, "/ckpt"));
  CKPT_ASSERT_OK(VerifyShardedCheckpoint(*fs, "/ckpt"));
  ConsolidateStats stats;
  CKPT_ASSERT_OK(ConsolidateOne(*fs, "/ckpt", "/ok", {}, &stats));
  EXPECT_EQ(stats.files, 2u);

  struct Case {
    std::function<void()> tamper;
    std::function<void()> undo;
    const char* want;
  };
  const Case cases[] = {
      {[&] { CKPT_EXPECT_OK(WriteFileAtomically(*fs, mapping, R"({"w": 2, "v": 1})")); },
       [&] { CKPT_EXPECT_OK(WriteFileAtomically(*fs, mapping, R"({"w": 1, "v": 2})")); },
       "fqn_to_file_index_mapping.json: 16 bytes hash to"},
      {[&] { CKPT_EXPECT_OK(WriteFileAtomically(*fs, "/ckpt/.hf_metadata/config.json", "{ }")); },
       [&] { CKPT_EXPECT_OK(WriteFileAtomically(*fs, "/ckpt/.hf_metadata/config.json", "{}")); },
       "side file 'config.json' is 3 bytes but the manifest records"},
      {[&] { CKPT_EXPECT_OK(WriteFileAtomically(*fs, "/ckpt/.hf_metadata/extra.json", "{}")); },
       [&] { CKPT_EXPECT_OK(fs->Remove("/ckpt/.hf_metadata/extra.json")); },
       "file 'extra.json' is not part of the checkpoint's manifest"},
      {[&] { CKPT_EXPECT_OK(fs->Remove("/ckpt/.hf_metadata/config.json")); },
       [&] { CKPT_EXPECT_OK(WriteFileAtomically(*fs, "/ckpt/.hf_metadata/config.json", "{}")); },
       "side file 'config.json' is missing"},
  };
  for (const Case& c : cases) {
    c.tamper();
    EXPECT_THAT(VerifyShardedCheckpoint(*fs, "/ckpt"), StatusIs(StatusCode::kDataLoss, c.want));
    EXPECT_THAT(ConsolidateOne(*fs, "/ckpt", "/out"), StatusIs(StatusCode::kDataLoss, c.want));
    EXPECT_FALSE(*Exists(*fs, "/out"));
    c.undo();
  }
  CKPT_EXPECT_OK(VerifyShardedCheckpoint(*fs, "/ckpt"));
}

// F4 chunks that split bytes cannot be placed by any export: every reader
// refuses them alike (verify used to pass them).
TEST(ConsolidateTest, SubByteChunksSplittingBytesAreRefusedByVerifyToo) {
  auto fs = NewMemoryStorage();
  CKPT_ASSERT_OK(fs->MakeDirs("/f4"));
  // [2, 3] F4 as a [2, 2] and a [2, 1] chunk: rows of 12 bits.
  const uint64_t widths[] = {2, 1};
  for (int r = 0; r < 2; ++r) {
    std::string data(widths[r] == 2 ? 2 : 1, '\x11');
    TensorData t{"w", DType::kF4, Shape({2, widths[r]}), AsBytes(data)};
    SafetensorsMetadata md{
        {"DCP_SHARDING_INFO", "{\"w\": {\"saved_offsets\": [0, " + std::to_string(2 * r) + "]}}"}};
    CKPT_ASSERT_OK(WriteSafetensors(*fs, "/f4/" + ShardFileName(r), std::span(&t, 1), md));
  }
  EXPECT_THAT(
      VerifyShardedCheckpoint(*fs, "/f4"),
      StatusIs(
          StatusCode::kDataLoss,
          "saved tensor 'w' (F4, shape [2, 3]): chunk [0:2, 0:2]: chunk boundaries split bytes"));
  EXPECT_THAT(ConsolidateOne(*fs, "/f4", "/out"),
              StatusIs(StatusCode::kDataLoss, "chunk boundaries split bytes"));
}

// 262,144 chunk pieces (a [131072, 2] tensor split along dimension 1 in
// two): assembled in row blocks, so the work is linear. It used to take
// minutes; correctness is checked here, speed in bench/consolidate_bench.
TEST(ConsolidateTest, ManyNarrowPiecesAlongDim1ConsolidateExactly) {
  auto fs = NewMemoryStorage();
  std::vector<testing::TensorDef> defs = {{"w", DType::kU16, Shape({131072, 2})},
                                          {"b", DType::kF32, Shape({7, 3})}};
  CKPT_ASSERT_OK(SaveModel(*fs, "/ckpt", defs, {2, Split::kDim1}));
  ConsolidateOptions o;
  o.cast_dtype =
      DType::kF16;  // U16 is never cast; F32 b is (F32 stays F32 only with an original dtype)
  CKPT_ASSERT_OK(ConsolidateOne(*fs, "/ckpt", "/out", o));
  auto f = SafetensorsFile::Open(*fs, "/out/model-00001-of-00001.safetensors");
  CKPT_ASSERT_OK(f);
  std::vector<std::byte> w(131072 * 2 * 2);
  CKPT_ASSERT_OK((*f)->ReadRange("w", 0, w));
  EXPECT_EQ(w, testing::GlobalBytes(defs[0]));
  std::vector<std::byte> b(7 * 3 * 2), want(7 * 3 * 2);
  CKPT_ASSERT_OK((*f)->ReadRange("b", 0, b));
  CKPT_ASSERT_OK(CastFloats(DType::kF32, testing::GlobalBytes(defs[1]), DType::kF16, want));
  EXPECT_EQ(b, want);
}

}  // namespace
}  // namespace ckpt
