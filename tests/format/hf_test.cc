#include "ckpt/hf.h"

#include <gtest/gtest.h>

#include "ckpt/comm.h"
#include "engine/shard_dir.h"
#include "test_util.h"

namespace ckpt {
namespace {

using testing::StatusIs;

TEST(HfIndexTest, SerializesLikeTransformers) {
  HfIndex idx;
  idx.total_size = 48;
  idx.weight_map = {{"model.b", "model-00002-of-00002.safetensors"},
                    {"model.a", "model-00001-of-00002.safetensors"}};
  EXPECT_EQ(SerializeHfIndex(idx),
            "{\n"
            "  \"metadata\": {\n"
            "    \"total_size\": 48\n"
            "  },\n"
            "  \"weight_map\": {\n"
            "    \"model.a\": \"model-00001-of-00002.safetensors\",\n"
            "    \"model.b\": \"model-00002-of-00002.safetensors\"\n"
            "  }\n"
            "}\n");
}

TEST(HfIndexTest, RoundTripKeepsExtraMetadataAndEscapesNonAscii) {
  std::string text = R"({"metadata": {"total_parameters": 12, "total_size": 24},
                         "weight_map": {"caf\u00e9": "model.safetensors"}})";
  auto idx = ParseHfIndex(text, "idx.json");
  CKPT_ASSERT_OK(idx);
  EXPECT_EQ(idx->total_size, 24u);
  EXPECT_EQ(idx->extra_metadata.at("total_parameters"), "12");
  EXPECT_EQ(idx->weight_map.at("caf\xc3\xa9"), "model.safetensors");
  std::string out = SerializeHfIndex(*idx);
  EXPECT_NE(out.find("\"caf\\u00e9\""), std::string::npos) << out;
  EXPECT_NE(out.find("\"total_parameters\": 12"), std::string::npos);
  auto again = ParseHfIndex(out, "again");
  CKPT_ASSERT_OK(again);
  EXPECT_EQ(again->weight_map, idx->weight_map);
}

TEST(HfIndexTest, RejectsHostileWeightMaps) {
  struct Case {
    const char* json;
    StatusCode code;
    const char* want;
  };
  const Case cases[] = {
      {R"({"weight_map": {"w": "../secret.safetensors"}})", StatusCode::kDataLoss,
       "contains a path separator"},
      {R"({"weight_map": {"w": "/etc/passwd"}})", StatusCode::kDataLoss, "is absolute"},
      {R"({"weight_map": {"w": "sub/model.safetensors"}})", StatusCode::kDataLoss,
       "contains a path separator"},
      {R"({"weight_map": {"w": ".."}})", StatusCode::kDataLoss, "contains '..'"},
      {R"({"weight_map": {"w": "a..b"}})", StatusCode::kDataLoss, "contains '..'"},
      {R"({"weight_map": {"w": "c:\\x"}})", StatusCode::kDataLoss, "contains a path separator"},
      {R"({"weight_map": {"w": ""}})", StatusCode::kDataLoss, "file name is empty"},
      {R"({"weight_map": {"w": 3}})", StatusCode::kDataLoss, "must be a file name string"},
      {R"({"weight_map": []})", StatusCode::kDataLoss, "\"weight_map\" must be an object"},
      {R"({"metadata": {}})", StatusCode::kDataLoss, "missing \"weight_map\""},
      {R"({"metadata": {"total_size": -3}, "weight_map": {}})", StatusCode::kDataLoss,
       "total_size must be"},
      {R"([])", StatusCode::kDataLoss, "index must be a JSON object"},
      {R"({"weight_map": )", StatusCode::kDataLoss, "not valid JSON"},
      {R"({"weight_map": {"a": "x.safetensors", "a": "y.safetensors"}})", StatusCode::kDataLoss,
       "duplicate key in a nested object 'a'"},
  };
  for (const Case& c : cases) {
    auto idx = ParseHfIndex(c.json, "model.safetensors.index.json");
    EXPECT_THAT(idx, StatusIs(c.code, c.want)) << c.json;
    EXPECT_THAT(idx, StatusIs(c.code, "model.safetensors.index.json")) << c.json;
  }
}

class HfModelDirTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(fs_->MakeDirs("/m").ok()); }
  void WriteShard(const std::string& file, const std::vector<std::string>& names) {
    std::vector<TensorData> ts;
    for (const auto& n : names) ts.push_back({n, DType::kU8, Shape({2}), AsBytes("ab")});
    ASSERT_TRUE(
        WriteSafetensors(*fs_, "/m/" + file, ts, SafetensorsMetadata{{"format", "pt"}}).ok());
  }
  void WriteIndex(const std::map<std::string, std::string>& wm) {
    HfIndex idx;
    idx.weight_map = wm;
    ASSERT_TRUE(
        WriteFileAtomically(*fs_, "/m/model.safetensors.index.json", SerializeHfIndex(idx)).ok());
  }
  std::shared_ptr<Storage> fs_ = NewMemoryStorage();
};

TEST_F(HfModelDirTest, SingleFile) {
  WriteShard("model.safetensors", {"a", "b"});
  auto m = HfModelDir::Open(*fs_, "/m");
  CKPT_ASSERT_OK(m);
  EXPECT_EQ(m->index_name(), "");
  EXPECT_EQ(m->tensors().size(), 2u);
  EXPECT_EQ(m->files().size(), 1u);
}

TEST_F(HfModelDirTest, ShardedWithIndex) {
  WriteShard("model-00001-of-00002.safetensors", {"a", "b"});
  WriteShard("model-00002-of-00002.safetensors", {"c", "stray"});
  WriteIndex({{"a", "model-00001-of-00002.safetensors"},
              {"b", "model-00001-of-00002.safetensors"},
              {"c", "model-00002-of-00002.safetensors"}});
  auto m = HfModelDir::Open(*fs_, "/m");
  CKPT_ASSERT_OK(m);
  EXPECT_EQ(m->index_name(), kHfIndexName);
  ASSERT_EQ(m->tensors().size(), 3u);
  const auto& c = m->tensors().at("c");
  EXPECT_EQ(Basename(m->files()[c.file]->path()), "model-00002-of-00002.safetensors");
  EXPECT_EQ(m->unindexed(), std::vector<std::string>{"stray"});
}

TEST_F(HfModelDirTest, DiffusersIndexName) {
  WriteShard("diffusion_pytorch_model-00001-of-00001.safetensors", {"unet.w"});
  HfIndex idx;
  idx.weight_map = {{"unet.w", "diffusion_pytorch_model-00001-of-00001.safetensors"}};
  CKPT_ASSERT_OK(WriteFileAtomically(*fs_, "/m/diffusion_pytorch_model.safetensors.index.json",
                                     SerializeHfIndex(idx)));
  auto m = HfModelDir::Open(*fs_, "/m");
  CKPT_ASSERT_OK(m);
  EXPECT_EQ(m->index_name(), kDiffusersIndexName);
}

TEST_F(HfModelDirTest, MissingShardIsAnError) {
  WriteShard("model-00001-of-00002.safetensors", {"a"});
  WriteIndex(
      {{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00002-of-00002.safetensors"}});
  auto m = HfModelDir::Open(*fs_, "/m");
  EXPECT_THAT(
      m, StatusIs(StatusCode::kNotFound,
                  "shard 'model-00002-of-00002.safetensors' named in weight_map does not exist"));
}

TEST_F(HfModelDirTest, TensorMissingFromItsShardIsAnError) {
  WriteShard("model-00001-of-00001.safetensors", {"a"});
  WriteIndex(
      {{"a", "model-00001-of-00001.safetensors"}, {"ghost", "model-00001-of-00001.safetensors"}});
  auto m = HfModelDir::Open(*fs_, "/m");
  EXPECT_THAT(
      m,
      StatusIs(StatusCode::kDataLoss,
               "tensor 'ghost' is mapped to 'model-00001-of-00001.safetensors' but that shard does "
               "not contain it"));
}

// Exactly what sharded loads and consolidation read through an index: the
// same names are refused by both readers (ckpt verify uses this one).
TEST_F(HfModelDirTest, IndexNamingHiddenOrNonSafetensorsShardsOrNothingIsRefused) {
  WriteShard(".hidden.safetensors", {"a"});
  WriteShard("model.bin", {"a"});
  struct Case {
    std::map<std::string, std::string> wm;
    const char* want;
  };
  const Case cases[] = {
      {{{"a", ".hidden.safetensors"}},
       "weight_map['a'] names '.hidden.safetensors', a hidden file"},
      {{{"a", "model.bin"}}, "weight_map['a'] names 'model.bin', not a .safetensors file"},
      {{}, "weight_map is empty"},
  };
  for (const Case& c : cases) {
    WriteIndex(c.wm);
    auto m = HfModelDir::Open(*fs_, "/m");
    EXPECT_THAT(m, StatusIs(StatusCode::kDataLoss, c.want));
    EXPECT_THAT(engine::ListShardDir(*fs_, "/m"), StatusIs(StatusCode::kDataLoss, c.want));
  }
}

// A stale copy of a tensor in a shard the index does not name for it is
// reported (verify warns) and ignored by every reader.
TEST_F(HfModelDirTest, StaleCopyInAnotherShardIsUnindexedAndIgnoredByLoads) {
  WriteShard("model-00001-of-00002.safetensors", {"a"});
  WriteShard("model-00002-of-00002.safetensors", {"a", "b"});
  WriteIndex(
      {{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00002-of-00002.safetensors"}});
  auto m = HfModelDir::Open(*fs_, "/m");
  CKPT_ASSERT_OK(m);
  EXPECT_EQ(m->unindexed(), std::vector<std::string>{"a"});
  auto one = NewSingleRankCommunicator();
  auto ck = engine::ReadCheckpointCollective(*one, *fs_, "/m", kDefaultCollectiveTimeout);
  CKPT_ASSERT_OK(ck);
  ASSERT_EQ(ck->index.Find("a")->chunks.size(), 1u);
  EXPECT_EQ(ck->listing.files[ck->index.Find("a")->chunks[0].file],
            "model-00001-of-00002.safetensors");
}

// Listings travel from rank 0 as bytes: a file name that is not UTF-8 arrives unchanged.
TEST(ShardListingTest, NamesThatAreNotUtf8SurviveTheBroadcast) {
  engine::ShardListing l;
  l.files = {"a\xff\xfe.safetensors", "b.safetensors"};
  l.sizes = {8, 16};
  l.manifest = "{}";
  l.weight_map = {{"w\xc3", "a\xff\xfe.safetensors"}};
  l.index_name = "model.safetensors.index.json";
  l.side_files = {{"config.json", 3}, {"\x80", UINT64_MAX}};
  auto back = engine::DecodeListing(engine::EncodeListing(l));
  CKPT_ASSERT_OK(back);
  EXPECT_EQ(back->files, l.files);
  EXPECT_EQ(back->sizes, l.sizes);
  EXPECT_EQ(back->manifest, l.manifest);
  EXPECT_EQ(back->weight_map, l.weight_map);
  EXPECT_EQ(back->index_name, l.index_name);
  EXPECT_EQ(back->side_files, l.side_files);
  const std::string text = engine::EncodeListing(l);
  EXPECT_THAT(engine::DecodeListing(text.substr(0, text.size() - 1)),
              StatusIs(StatusCode::kInternal, "malformed directory listing"));
}

TEST_F(HfModelDirTest, TraversalInIndexIsRefused) {
  WriteShard("model.safetensors", {"a"});
  CKPT_ASSERT_OK(WriteFileAtomically(*fs_, "/m/model.safetensors.index.json",
                                     R"({"weight_map": {"a": "../m/model.safetensors"}})"));
  auto m = HfModelDir::Open(*fs_, "/m");
  EXPECT_THAT(m, StatusIs(StatusCode::kDataLoss, "weight_map['a']"));
}

TEST(HfModelDirSizeTest, OversizedIndexIsRefusedBeforeReading) {
  testing::TempDir tmp;
  auto w = PosixStorage()->OpenWrite(tmp / "model.safetensors.index.json", CreateMode::kTruncate);
  CKPT_ASSERT_OK(w);
  CKPT_ASSERT_OK((*w)->WriteAt(kHfIndexMaxSize, AsBytes("}")));  // sparse: cheap to make
  CKPT_ASSERT_OK((*w)->Close());
  auto m = HfModelDir::Open(*PosixStorage(), tmp.path());
  EXPECT_THAT(m, StatusIs(StatusCode::kDataLoss,
                          "index is 100000001 bytes, more than the 100000000-byte limit"));
}

TEST_F(HfModelDirTest, NotAModelDirectory) {
  auto m = HfModelDir::Open(*fs_, "/m");
  EXPECT_THAT(m, StatusIs(StatusCode::kNotFound, "not a Hugging Face model directory"));
}

}  // namespace
}  // namespace ckpt
