// A table of hand-crafted corrupt or hostile files, each with the error it
// must produce. Every error names the file; tensor errors name the tensor.
#include <gtest/gtest.h>

#include <set>

#include "ckpt/safetensors.h"
#include "format/hostile_files.h"
#include "test_util.h"

namespace ckpt {
namespace {

using testing::HostileCase;
using testing::HostileFiles;
using testing::RawSafetensors;
using testing::StatusIs;
using testing::T;

class SafetensorsHostileTest : public ::testing::TestWithParam<HostileCase> {};

TEST_P(SafetensorsHostileTest, RefusedWithItsMessage) {
  const HostileCase& c = GetParam();
  testing::TempDir tmp;
  std::string path = tmp / (std::string(c.label) + ".safetensors");
  CKPT_ASSERT_OK(WriteFileAtomically(*PosixStorage(), path, c.bytes));
  auto f = SafetensorsFile::Open(*PosixStorage(), path);
  EXPECT_THAT(f, StatusIs(c.code, c.want)) << c.label;
  EXPECT_THAT(f, StatusIs(c.code, path)) << c.label << ": the message must name the file";

  // The in-memory backend refuses the same bytes with the same message.
  auto mem = NewMemoryStorage();
  CKPT_ASSERT_OK(WriteFileAtomically(*mem, "/h.safetensors", c.bytes));
  auto g = SafetensorsFile::Open(*mem, "/h.safetensors");
  EXPECT_THAT(g, StatusIs(c.code, c.want)) << c.label;
}

INSTANTIATE_TEST_SUITE_P(Table, SafetensorsHostileTest, ::testing::ValuesIn(HostileFiles()),
                         [](const auto& p) { return std::string(p.param.label); });

TEST(SafetensorsHostileTableTest, HasAtLeast25DistinctCases) {
  std::set<std::string> msgs;
  for (const HostileCase& c : HostileFiles()) msgs.insert(c.want);
  EXPECT_GE(msgs.size(), 25u);
}

// Things the format allows must still load.
TEST(SafetensorsAcceptTest, EdgeCasesThatAreValid) {
  struct Ok {
    const char* label;
    std::string bytes;
  };
  const Ok ok[] = {
      {"empty_object", RawSafetensors("{}", "")},
      {"leading_whitespace", RawSafetensors("  \n{}", "")},
      {"null_metadata", RawSafetensors(R"({"__metadata__":null})", "")},
      {"scalar", RawSafetensors("{" + T("s", "F32", "[]", 0, 4) + "}", "abcd")},
      {"zero_elements",
       RawSafetensors("{" + T("z", "F32", "[0,5]", 0, 0) + "," + T("y", "U8", "[2]", 0, 2) + "}",
                      "ab")},
      {"unaligned_header_len", RawSafetensors("{" + T("b", "U8", "[1]", 0, 1) + "}", "b")},
      {"unsorted_offsets",
       RawSafetensors("{" + T("b", "U8", "[2]", 2, 4) + "," + T("a", "U8", "[2]", 0, 2) + "}",
                      "aabb")},
      {"f4_pairs", RawSafetensors("{" + T("q", "F4", "[2,3]", 0, 3) + "}", "qqq")},
  };
  for (const Ok& c : ok) {
    auto mem = NewMemoryStorage();
    CKPT_ASSERT_OK(WriteFileAtomically(*mem, "/ok.safetensors", c.bytes));
    auto f = SafetensorsFile::Open(*mem, "/ok.safetensors");
    EXPECT_TRUE(f.ok()) << c.label << ": " << f.status().ToString();
  }
}

}  // namespace
}  // namespace ckpt
