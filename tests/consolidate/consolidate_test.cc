#include "ckpt/consolidate.h"

#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "ckpt/hf.h"
#include "ckpt/safetensors.h"
#include "ckpt/sharded.h"
#include "convert/float_cast.h"
#include "engine/layouts.h"
#include "test_util.h"

namespace ckpt {
namespace {

using std::chrono::milliseconds;
using testing::Layout;
using testing::Split;


Status SaveModel(Storage& fs, const std::string& dir, const std::vector<testing::TensorDef>& defs, const Layout& l) {
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
    EXPECT_FALSE(ParseByteSize(bad).ok()) << bad;
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
      {D::kBF16, D::kF32, std::nullopt, D::kF32, false},  // originally F32 stays F32
      {D::kBF16, D::kF32, D::kF16, D::kF32, false},       // ... even with a cast
      {D::kF32, D::kBF16, std::nullopt, D::kBF16, false}, // original float dtype back
      {D::kF32, D::kBF16, D::kF16, D::kF16, false},       // explicit cast wins over it
      {D::kF8_E4M3, std::nullopt, D::kBF16, D::kF8_E4M3, false},  // FP8 never cast
      {D::kBF16, D::kF8_E4M3, std::nullopt, D::kBF16, true},      // was quantized, now float: kept, warned
      {D::kF32, std::nullopt, std::nullopt, D::kF32, false},      // no mapping: saved dtype
      {D::kI64, D::kI64, D::kBF16, D::kI64, false},               // integers untouched
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
  for (const Layout& save : {Layout{1, Split::kDim0}, Layout{4, Split::kDim1}, Layout{8, Split::k2D},
                             Layout{2, Split::kReplicated}}) {
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
  std::vector<testing::TensorDef> defs = {{"a", DType::kBF16, Shape({4, 4})}, {"b", DType::kF32, Shape({8})},
                                          {"q", DType::kF8_E4M3, Shape({4})}};
  CKPT_ASSERT_OK(SaveModel(*fs, "/in", defs, {2, Split::kDim0}));
  ConsolidateOptions o;
  o.original_dtypes = {{"a", DType::kF32}};
  o.cast_dtype = DType::kF16;
  CKPT_ASSERT_OK(testing::OnRanksOk(2, [&](Communicator& c) { return Consolidate(c, *fs, "/in", "/out", o); }));
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
  std::vector<testing::TensorDef> defs = {{"x.0", DType::kU8, Shape({4})}, {"x.1", DType::kU8, Shape({4})},
                                          {"x.2", DType::kU8, Shape({4})}, {"new", DType::kU8, Shape({4})}};
  CKPT_ASSERT_OK(SaveModel(*fs, "/ckpt/model", defs, {2, Split::kDim0}));
  // The checkpoint's HF metadata and a base model whose index puts x.0 and x.2 in file 2 of 2.
  CKPT_ASSERT_OK(fs->MakeDirs("/ckpt/model/.hf_metadata"));
  CKPT_ASSERT_OK(WriteFileAtomically(*fs, "/ckpt/model/.hf_metadata/config.json", "{\"model_type\": \"llama\"}\n"));
  CKPT_ASSERT_OK(WriteFileAtomically(*fs, "/ckpt/model/.hf_metadata/tokenizer.json", "{}\n"));
  CKPT_ASSERT_OK(WriteFileAtomically(*fs, "/ckpt/model/.hf_metadata/fqn_to_dtype_mapping.json", "{}\n"));
  CKPT_ASSERT_OK(fs->MakeDirs("/base"));
  for (int f = 1; f <= 2; ++f) {
    std::vector<TensorData> ts;
    for (const char* n : f == 1 ? std::vector<const char*>{"x.1"} : std::vector<const char*>{"x.0", "x.2"}) {
      ts.push_back({n, DType::kU8, Shape({4}), AsBytes("abcd")});
    }
    char name[64];
    std::snprintf(name, sizeof name, "model-%05d-of-00002.safetensors", f);
    CKPT_ASSERT_OK(WriteSafetensors(*fs, std::string("/base/") + name, ts));
  }
  HfIndex idx;
  idx.weight_map = {{"x.0", "model-00002-of-00002.safetensors"}, {"x.1", "model-00001-of-00002.safetensors"},
                    {"x.2", "model-00002-of-00002.safetensors"}};
  CKPT_ASSERT_OK(WriteFileAtomically(*fs, "/base/model.safetensors.index.json", SerializeHfIndex(idx)));

  ConsolidateOptions o;
  o.base_model_dir = "/base";
  CKPT_ASSERT_OK(testing::OnRanksOk(1, [&](Communicator& c) { return Consolidate(c, *fs, "/ckpt/model", "/hf", o); }));
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

TEST(ConsolidateTest, HolesOverlapsAndExistingOutputAreErrors) {
  auto fs = NewMemoryStorage();
  CKPT_ASSERT_OK(fs->MakeDirs("/hole"));
  std::vector<float> g(3, 1.f);
  for (int r = 0; r < 2; ++r) {
    TensorData t{"w", DType::kF32, Shape({1}), std::as_bytes(std::span<const float>(g.data(), 1))};
    SafetensorsMetadata md{{"DCP_SHARDING_INFO", "{\"w\": {\"saved_offsets\": [" + std::to_string(2 * r) + "]}}"}};
    CKPT_ASSERT_OK(WriteSafetensors(*fs, "/hole/" + ShardFileName(r), std::span(&t, 1), md));
  }
  Status s = testing::OnRanksOk(2, [&](Communicator& c) { return Consolidate(c, *fs, "/hole", "/out"); });
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("chunks cover 2 of 3 elements (a hole)"), std::string::npos) << s.message();
  EXPECT_FALSE(*Exists(*fs, "/out"));

  CKPT_ASSERT_OK(SaveModel(*fs, "/ok", {{"w", DType::kU8, Shape({4})}}, {1, Split::kDim0}));
  CKPT_ASSERT_OK(fs->MakeDirs("/exists"));
  s = testing::OnRanksOk(1, [&](Communicator& c) { return Consolidate(c, *fs, "/ok", "/exists"); });
  EXPECT_EQ(s.code(), StatusCode::kAlreadyExists);
}

}  // namespace
}  // namespace ckpt
