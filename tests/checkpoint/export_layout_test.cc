#include "checkpoint/export_layout.h"

#include <gtest/gtest.h>

#include "test_util.h"

namespace ckpt {
namespace {

using testing::IsOk;
using testing::StatusIs;

ShardedTensorInfo T(std::string fqn, DType d, std::vector<uint64_t> shape) {
  ShardedTensorInfo t;
  t.fqn = std::move(fqn);
  t.dtype = d;
  t.global = Shape(std::move(shape));
  return t;
}

TEST(ExportLayoutTest, WithoutABaseKeysAreDividedBySizeInNaturalOrder) {
  // 400-byte tensors, files of at most 1000 bytes: two per file, layer 10
  // after layer 9.
  const std::vector<ShardedTensorInfo> ts = {
      T("model.layers.10.w", DType::kF32, {100}), T("model.layers.9.w", DType::kF32, {100}),
      T("model.layers.2.w", DType::kF32, {100}), T("lm_head.weight", DType::kBF16, {200})};
  Result<ExportLayout> l = ComputeExportLayout(ts, {}, 1000);
  ASSERT_THAT(l, IsOk());
  EXPECT_EQ(l->files, (std::map<std::string, uint32_t>{{"lm_head.weight", 1},
                                                       {"model.layers.2.w", 1},
                                                       {"model.layers.9.w", 2},
                                                       {"model.layers.10.w", 2}}));
  EXPECT_EQ(l->dtypes.at("model.layers.2.w"), "torch.float32");
  EXPECT_EQ(l->dtypes.at("lm_head.weight"), "torch.bfloat16");
  EXPECT_EQ(l->total_bytes, 1600u);
}

TEST(ExportLayoutTest, ABaseDecidesFilesAndOriginalDtypesAndNewTensorsGoLast) {
  BaseModelLayout base;
  base.files = {{"a", 1}, {"b", 3}, {"c", 2}};
  base.dtypes = {{"a", DType::kBF16}, {"b", DType::kF16}};
  const std::vector<ShardedTensorInfo> ts = {T("a", DType::kF32, {4}), T("b", DType::kF32, {4}),
                                             T("head", DType::kF32, {4})};
  Result<ExportLayout> l = ComputeExportLayout(ts, base, 1);
  ASSERT_THAT(l, IsOk());
  EXPECT_EQ(l->files, (std::map<std::string, uint32_t>{{"a", 1}, {"b", 3}, {"head", 3}}));
  EXPECT_EQ(l->dtypes,
            (std::map<std::string, std::string>{
                {"a", "torch.bfloat16"}, {"b", "torch.float16"}, {"head", "torch.float32"}}));
  EXPECT_EQ(l->total_bytes, 8u + 8u + 16u) << "sizes in the export dtypes";
}

TEST(ExportLayoutTest, ASizeThatOverflowsIsAnError) {
  const std::vector<ShardedTensorInfo> ts = {T("huge", DType::kF64, {1ull << 62, 4})};
  EXPECT_THAT(ComputeExportLayout(ts, {}, 1000),
              StatusIs(StatusCode::kInvalidArgument, "overflows 64 bits"));
}

TEST(ExportLayoutTest, TheScriptQuotesTheBaseDirectoryForTheShell) {
  const std::string plain = ConsolidateScript(false, "");
  EXPECT_TRUE(plain.starts_with("#!/bin/sh\n"));
  EXPECT_NE(plain.find("consolidate \"$here\" \"$out\" \"$@\"\n"), std::string::npos) << plain;
  const std::string full = ConsolidateScript(true, "/models/it's here");
  EXPECT_NE(full.find(" --diffusers --base '/models/it'\\''s here' \"$@\"\n"), std::string::npos)
      << full;
  EXPECT_EQ(ShellQuote("a b"), "'a b'");
  EXPECT_EQ(ShellQuote("'"), "''\\'''");
}

}  // namespace
}  // namespace ckpt
