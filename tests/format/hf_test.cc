#include <gtest/gtest.h>

#include "ckpt/hf.h"
#include "test_util.h"

namespace ckpt {
namespace {

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
    const char* want;
  };
  const Case cases[] = {
      {R"({"weight_map": {"w": "../secret.safetensors"}})", "contains a path separator"},
      {R"({"weight_map": {"w": "/etc/passwd"}})", "is absolute"},
      {R"({"weight_map": {"w": "sub/model.safetensors"}})", "contains a path separator"},
      {R"({"weight_map": {"w": ".."}})", "contains '..'"},
      {R"({"weight_map": {"w": "a..b"}})", "contains '..'"},
      {R"({"weight_map": {"w": "c:\\x"}})", "contains a path separator"},
      {R"({"weight_map": {"w": ""}})", "file name is empty"},
      {R"({"weight_map": {"w": 3}})", "must be a file name string"},
      {R"({"weight_map": []})", "\"weight_map\" must be an object"},
      {R"({"metadata": {}})", "missing \"weight_map\""},
      {R"({"metadata": {"total_size": -3}, "weight_map": {}})", "total_size must be"},
      {R"([])", "index must be a JSON object"},
      {R"({"weight_map": )", "not valid JSON"},
      {R"({"weight_map": {"a": "x.safetensors", "a": "y.safetensors"}})",
       "duplicate key in a nested object 'a'"},
  };
  for (const Case& c : cases) {
    auto idx = ParseHfIndex(c.json, "model.safetensors.index.json");
    ASSERT_FALSE(idx.ok()) << c.json;
    EXPECT_NE(idx.status().message().find(c.want), std::string::npos) << idx.status().message();
    EXPECT_NE(idx.status().message().find("model.safetensors.index.json"), std::string::npos);
  }
}

class HfModelDirTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(fs_->MakeDirs("/m").ok()); }
  void WriteShard(const std::string& file, const std::vector<std::string>& names) {
    std::vector<TensorData> ts;
    for (const auto& n : names) ts.push_back({n, DType::kU8, Shape({2}), AsBytes("ab")});
    ASSERT_TRUE(WriteSafetensors(*fs_, "/m/" + file, ts, SafetensorsMetadata{{"format", "pt"}}).ok());
  }
  void WriteIndex(const std::map<std::string, std::string>& wm) {
    HfIndex idx;
    idx.weight_map = wm;
    ASSERT_TRUE(WriteFileAtomically(*fs_, "/m/model.safetensors.index.json",
                                    SerializeHfIndex(idx)).ok());
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
  WriteIndex({{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00002-of-00002.safetensors"}});
  auto m = HfModelDir::Open(*fs_, "/m");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kNotFound);
  EXPECT_NE(m.status().message().find("shard 'model-00002-of-00002.safetensors' named in "
                                      "weight_map does not exist"),
            std::string::npos)
      << m.status().message();
}

TEST_F(HfModelDirTest, TensorMissingFromItsShardIsAnError) {
  WriteShard("model-00001-of-00001.safetensors", {"a"});
  WriteIndex({{"a", "model-00001-of-00001.safetensors"}, {"ghost", "model-00001-of-00001.safetensors"}});
  auto m = HfModelDir::Open(*fs_, "/m");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(m.status().message().find("tensor 'ghost' is mapped to "
                                      "'model-00001-of-00001.safetensors' but that shard does "
                                      "not contain it"),
            std::string::npos)
      << m.status().message();
}

TEST_F(HfModelDirTest, TraversalInIndexIsRefused) {
  WriteShard("model.safetensors", {"a"});
  CKPT_ASSERT_OK(WriteFileAtomically(*fs_, "/m/model.safetensors.index.json",
                                     R"({"weight_map": {"a": "../m/model.safetensors"}})"));
  auto m = HfModelDir::Open(*fs_, "/m");
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("weight_map['a']"), std::string::npos);
}

TEST(HfModelDirSizeTest, OversizedIndexIsRefusedBeforeReading) {
  testing::TempDir tmp;
  auto w = PosixStorage()->OpenWrite(tmp / "model.safetensors.index.json", CreateMode::kTruncate);
  CKPT_ASSERT_OK(w);
  CKPT_ASSERT_OK((*w)->WriteAt(kHfIndexMaxSize, AsBytes("}")));  // sparse: cheap to make
  CKPT_ASSERT_OK((*w)->Close());
  auto m = HfModelDir::Open(*PosixStorage(), tmp.path());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("index is 100000001 bytes, more than the 100000000-byte limit"),
            std::string::npos)
      << m.status().message();
}

TEST_F(HfModelDirTest, NotAModelDirectory) {
  auto m = HfModelDir::Open(*fs_, "/m");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kNotFound);
  EXPECT_NE(m.status().message().find("not a Hugging Face model directory"), std::string::npos);
}

}  // namespace
}  // namespace ckpt
