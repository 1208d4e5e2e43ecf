// Loading Hugging Face directories (and consolidated checkpoints) into
// sharded state dicts: hub cache, key mapping, subsets, tied embeddings.
#include <gtest/gtest.h>

#include <thread>

#include "ckpt/consolidate.h"
#include "ckpt/hf.h"
#include "ckpt/safetensors.h"
#include "ckpt/sharded.h"
#include "engine/layouts.h"
#include "test_util.h"

namespace ckpt {
namespace {

using std::chrono::milliseconds;
using testing::Layout;
using testing::Split;
using testing::StatusIs;

TEST(KeyMappingTest, FirstChangingPatternWins) {
  std::vector<std::pair<std::string, std::string>> m = {
      {"^nothing$", "x"},
      {R"(^model\.layers\.(\d+)\.)", R"(layers.\1.)"},
      {R"(^model\.)", "$0"},  // would not change anything
      {R"(^lm_head\.)", "output."},
  };
  EXPECT_EQ(*MapKey(m, "model.layers.12.mlp.w"), "layers.12.mlp.w");
  EXPECT_EQ(*MapKey(m, "lm_head.weight"), "output.weight");
  EXPECT_EQ(*MapKey(m, "model.norm.weight"), "model.norm.weight");
  EXPECT_EQ(*MapKey({{"(a)(b)", "$2$1"}}, "xab"), "xba");
  Result<std::string> bad = MapKey({{"([", "x"}}, "k");
  EXPECT_THAT(bad, StatusIs(StatusCode::kInvalidArgument, "pattern '([' is not a valid regex"));
}

TEST(HubCacheTest, PrefersTheSnapshotWithAnIndex) {
  auto fs = NewMemoryStorage();
  const std::string repo = "/cache/models--meta-llama--Llama-3-8B";
  CKPT_ASSERT_OK(fs->MakeDirs(repo + "/snapshots/aaa"));
  CKPT_ASSERT_OK(fs->MakeDirs(repo + "/snapshots/bbb"));
  CKPT_ASSERT_OK(fs->MakeDirs(repo + "/refs"));
  CKPT_ASSERT_OK(WriteFileAtomically(*fs, repo + "/snapshots/aaa/model.safetensors", "x"));
  CKPT_ASSERT_OK(
      WriteFileAtomically(*fs, repo + "/snapshots/bbb/model.safetensors.index.json", "{}"));
  CKPT_ASSERT_OK(WriteFileAtomically(*fs, repo + "/refs/main", "aaa\n"));
  EXPECT_EQ(*ResolveHfModelDir(*fs, repo), repo + "/snapshots/bbb");
  EXPECT_EQ(*ResolveHfModelDir(*fs, "/cache", "meta-llama/Llama-3-8B"), repo + "/snapshots/bbb");
  CKPT_ASSERT_OK(fs->Remove(repo + "/snapshots/bbb/model.safetensors.index.json"));
  EXPECT_EQ(*ResolveHfModelDir(*fs, repo), repo + "/snapshots/aaa");  // refs/main
  EXPECT_EQ(*ResolveHfModelDir(*fs, repo + "/snapshots/aaa"), repo + "/snapshots/aaa");
  EXPECT_THAT(ResolveHfModelDir(*fs, "/cache", "no/such"),
              StatusIs(StatusCode::kNotFound, "/cache/models--no--such: no model files"));
}

// Sharded save → consolidate → load the HF directory into other layouts.
TEST(ImportTest, ExportThenImportAcrossLayouts) {
  auto fs = NewMemoryStorage();
  const auto defs = testing::MixedModel();
  CKPT_ASSERT_OK(testing::OnRanksOk(4, [&](Communicator& c) {
    testing::RankState rs = testing::MakeRankState(defs, {4, Split::k2D}, c.rank(), true);
    return SaveSharded(c, *fs, "/ckpt", rs.sd, {milliseconds(20000)});
  }));
  ConsolidateOptions o;
  o.max_shard_size = 300;
  CKPT_ASSERT_OK(testing::OnRanksOk(
      2, [&](Communicator& c) { return Consolidate(c, *fs, "/ckpt", "/hf", o); }));
  for (const Layout& l :
       {Layout{1, Split::kDim0}, Layout{3, Split::kDim1}, Layout{8, Split::k2D}}) {
    Status s = testing::OnRanksOk(l.world, [&](Communicator& c) -> Status {
      testing::RankState rs = testing::MakeRankState(defs, l, c.rank(), false);
      CKPT_RETURN_IF_ERROR(
          LoadSharded(c, *fs, "/hf", rs.sd, testing::WithTimeout(milliseconds(20000))));
      std::string why;
      return testing::MatchesReference(defs, rs, &why) ? Status() : DataLossError(why);
    });
    EXPECT_TRUE(s.ok()) << l.Name() << ": " << s.ToString();
  }
}

class HfImportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs_->MakeDirs("/m").ok());
    std::vector<TensorData> ts = {
        {"model.embed_tokens.weight", DType::kF32, Shape({2, 2}),
         std::as_bytes(std::span<const float>(emb_))},
        {"model.layers.0.w", DType::kF32, Shape({2}), std::as_bytes(std::span<const float>(w_))},
        {"score.weight", DType::kF32, Shape({2}), std::as_bytes(std::span<const float>(w_))},
    };
    ASSERT_TRUE(WriteSafetensors(*fs_, "/m/model.safetensors", ts).ok());
  }
  std::shared_ptr<Storage> fs_ = NewMemoryStorage();
  std::vector<float> emb_ = {1, 2, 3, 4}, w_ = {5, 6};
};

TEST_F(HfImportTest, MappingPrefixesAndTiedHead) {
  auto one = NewSingleRankCommunicator();
  std::vector<float> emb(4), head(4), w(2);
  StateDict sd;
  sd.tensors.push_back(WholeTensor("embed.weight", DType::kF32, Shape({2, 2}),
                                   reinterpret_cast<std::byte*>(emb.data())));
  sd.tensors.push_back(WholeTensor("lm_head.weight", DType::kF32, Shape({2, 2}),
                                   reinterpret_cast<std::byte*>(head.data())));
  sd.tensors.push_back(
      WholeTensor("layers.0.w", DType::kF32, Shape({2}), reinterpret_cast<std::byte*>(w.data())));
  LoadOptions o;
  o.key_mapping = {{R"(^model\.layers\.)", "layers."}, {R"(^model\.embed_tokens\.)", "embed."}};
  o.skip_prefixes = {"score."};
  // Without tying, lm_head is missing from the checkpoint.
  Status s = LoadSharded(*one, *fs_, "/m", sd, o);
  EXPECT_THAT(s, StatusIs(StatusCode::kInvalidArgument, "missing keys (1): lm_head.weight"));
  // Tied: filled from the embeddings (under their original checkpoint name).
  o.key_mapping = {{R"(^model\.layers\.)", "layers."}};
  sd.tensors[0].fqn = "model.embed_tokens.weight";
  o.tie_word_embeddings = true;
  LoadStats stats;
  CKPT_ASSERT_OK(LoadSharded(*one, *fs_, "/m", sd, o, &stats));
  EXPECT_EQ(emb, emb_);
  EXPECT_EQ(head, emb_);
  EXPECT_EQ(w, w_);
  EXPECT_TRUE(stats.missing_keys.empty());
  EXPECT_TRUE(stats.unexpected_keys.empty());
}

TEST_F(HfImportTest, SubsetRules) {
  auto one = NewSingleRankCommunicator();
  std::vector<float> w(2), extra(3);
  StateDict sd;
  sd.tensors.push_back(WholeTensor("model.layers.0.w", DType::kF32, Shape({2}),
                                   reinterpret_cast<std::byte*>(w.data())));
  sd.tensors.push_back(WholeTensor("model.new_head", DType::kF32, Shape({3}),
                                   reinterpret_cast<std::byte*>(extra.data())));
  LoadOptions o;
  o.allow_missing = true;  // model keys absent from the checkpoint are dropped
  Status s = LoadSharded(*one, *fs_, "/m", sd, o);
  // ... but checkpoint keys the model lacks are an error, listed sorted.
  EXPECT_THAT(s, StatusIs(StatusCode::kInvalidArgument,
                          "unexpected keys (2): model.embed_tokens.weight, score.weight"));
  o.skip_prefixes = {"score.", "model.embed_tokens."};
  LoadStats stats;
  CKPT_ASSERT_OK(LoadSharded(*one, *fs_, "/m", sd, o, &stats));
  EXPECT_EQ(w, w_);
  EXPECT_EQ(stats.missing_keys, std::vector<std::string>{"model.new_head"});
  // Nothing in common is always an error.
  StateDict none;
  none.tensors.push_back(
      WholeTensor("x", DType::kF32, Shape({3}), reinterpret_cast<std::byte*>(extra.data())));
  o.allow_unexpected = true;
  s = LoadSharded(*one, *fs_, "/m", none, o);
  EXPECT_THAT(s, StatusIs(StatusCode::kInvalidArgument, "no state-dict key is in the checkpoint"));
}

}  // namespace
}  // namespace ckpt

namespace ckpt {
namespace {

using testing::StatusIs;

// Loading an HF directory honours its index: only the files it names, each
// of which must exist and hold the tensors mapped to it.
TEST(HfIndexImportTest, HostileOrBrokenIndexes) {
  auto fs = NewMemoryStorage();
  auto one = NewSingleRankCommunicator();
  CKPT_ASSERT_OK(fs->MakeDirs("/m"));
  std::vector<float> a = {1, 2};
  TensorData t{"a", DType::kF32, Shape({2}), std::as_bytes(std::span<const float>(a))};
  CKPT_ASSERT_OK(WriteSafetensors(*fs, "/m/model-00001-of-00002.safetensors", std::span(&t, 1)));
  // A stray file the index does not name is not read.
  TensorData stray{"a", DType::kF32, Shape({2}), std::as_bytes(std::span<const float>(a))};
  CKPT_ASSERT_OK(WriteSafetensors(*fs, "/m/stray.safetensors", std::span(&stray, 1)));
  auto load = [&]() {
    std::vector<float> got(2);
    StateDict sd;
    sd.tensors.push_back(
        WholeTensor("a", DType::kF32, Shape({2}), reinterpret_cast<std::byte*>(got.data())));
    LoadOptions o;
    o.allow_unexpected = true;
    return LoadSharded(*one, *fs, "/m", sd, o);
  };
  auto index = [&](const std::string& json) {
    ASSERT_TRUE(WriteFileAtomically(*fs, "/m/model.safetensors.index.json", json).ok());
  };
  index(R"({"weight_map": {"a": "model-00001-of-00002.safetensors"}})");
  CKPT_EXPECT_OK(load());  // without the index the stray file would overlap 'a'
  index(
      R"({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})");
  EXPECT_THAT(
      load(),
      StatusIs(StatusCode::kNotFound,
               "shard 'model-00002-of-00002.safetensors' named in weight_map does not exist"));
  index(
      R"({"weight_map": {"a": "model-00001-of-00002.safetensors", "ghost": "model-00001-of-00002.safetensors"}})");
  EXPECT_THAT(
      load(),
      StatusIs(StatusCode::kDataLoss,
               "tensor 'ghost' is mapped to 'model-00001-of-00002.safetensors' but that shard "
               "does not contain it"));
  index(R"({"weight_map": {"a": "../m/model-00001-of-00002.safetensors"}})");
  EXPECT_THAT(load(), StatusIs(StatusCode::kDataLoss, "contains a path separator"));
}

}  // namespace
}  // namespace ckpt
