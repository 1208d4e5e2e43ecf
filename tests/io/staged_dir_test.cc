#include "io/staged_dir.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "core/encoding.h"
#include "io/fault_storage.h"
#include "test_util.h"

namespace ckpt {
namespace {

using testing::Fault;
using testing::FaultStorage;
using testing::IsOk;
using testing::Op;
using testing::StatusIs;

// Records the order of the directory operations a wrapped backend sees.
class RecordingStorage final : public StorageWrapper {
 public:
  using StorageWrapper::StorageWrapper;
  Status Rename(const std::string& from, const std::string& to) override {
    ops.push_back("rename " + from + " -> " + to);
    return target().Rename(from, to);
  }
  Status SyncDir(const std::string& dir) override {
    ops.push_back("fsync " + dir);
    return target().SyncDir(dir);
  }
  std::vector<std::string> ops;
};

std::vector<std::string> Names(Storage& s, const std::string& dir) {
  std::vector<std::string> out;
  Result<std::vector<DirEntry>> l = s.List(dir);
  if (l.ok()) {
    for (const DirEntry& e : *l) out.push_back(e.name);
  }
  return out;
}

TEST(StagedDirTest, BuildsHiddenThenSyncsRenamesAndSyncsTheParent) {
  RecordingStorage s(NewMemoryStorage());
  std::string seen;
  Status built = BuildDirAtomically(s, "/out/model", [&](const std::string& staging) {
    seen = staging;
    // While building, only the hidden staging name exists.
    EXPECT_EQ(Names(s, "/out"), std::vector<std::string>{std::string(Basename(staging))});
    return WriteFileAtomically(s, JoinPath(staging, "a.json"), "{}");
  });
  ASSERT_THAT(built, IsOk());
  ASSERT_TRUE(seen.starts_with("/out/.model.tmp-")) << seen;
  EXPECT_TRUE(IsToken(std::string_view(seen).substr(std::string("/out/.model.tmp-").size())))
      << seen;
  EXPECT_EQ(Names(s, "/out"), std::vector<std::string>{"model"});
  EXPECT_EQ(Names(s, "/out/model"), std::vector<std::string>{"a.json"});
  // The directory's own fsync comes before its rename, the parent's after.
  const std::vector<std::string> tail(s.ops.end() - 3, s.ops.end());
  EXPECT_EQ(tail, (std::vector<std::string>{"fsync " + seen, "rename " + seen + " -> /out/model",
                                            "fsync /out"}));
}

TEST(StagedDirTest, AnExistingDirectoryIsNeverOverwritten) {
  std::shared_ptr<Storage> s = NewMemoryStorage();
  ASSERT_THAT(s->MakeDirs("/out/model"), IsOk());
  bool ran = false;
  EXPECT_THAT(BuildDirAtomically(*s, "/out/model",
                                 [&](const std::string&) {
                                   ran = true;
                                   return Status();
                                 }),
              StatusIs(StatusCode::kAlreadyExists, "/out/model already exists"));
  EXPECT_FALSE(ran);
  EXPECT_EQ(Names(*s, "/out"), std::vector<std::string>{"model"});
}

TEST(StagedDirTest, AFailedBuildLeavesNothingAndNamesItsError) {
  std::shared_ptr<Storage> s = NewMemoryStorage();
  EXPECT_THAT(
      BuildDirAtomically(*s, "/out/model",
                         [&](const std::string&) { return DataLossError("tensor 'w' is torn"); }),
      StatusIs(StatusCode::kDataLoss, "tensor 'w' is torn"));
  EXPECT_EQ(Names(*s, "/out"), std::vector<std::string>{});
}

TEST(StagedDirTest, AFailedRenameOrFsyncLeavesNoDirectoryAndNoStaging) {
  for (Op op : {Op::kSync, Op::kRename}) {
    SCOPED_TRACE(testing::OpName(op));
    // The first fsync of a directory is the staging directory's own: the
    // file inside is written without AtomicFileWriter so none comes earlier.
    FaultStorage fs(NewMemoryStorage());
    fs.Arm(op, 1, Fault::kIo);
    Status built = BuildDirAtomically(fs, "/out/model", [&](const std::string& staging) -> Status {
      CKPT_ASSIGN_OR_RETURN(auto f, fs.OpenWrite(JoinPath(staging, "a"), CreateMode::kExclusive));
      return f->Close();
    });
    EXPECT_THAT(built, StatusIs(StatusCode::kIOError, "injected EIO"));
    EXPECT_EQ(Names(fs, "/out"), std::vector<std::string>{});
  }
}

TEST(StagedDirTest, StagingLeftByAKilledRunIsRemovedAndOthersAreKept) {
  std::shared_ptr<Storage> s = NewMemoryStorage();
  const std::string stale = "/out/.model.tmp-" + Hex64(1);
  ASSERT_THAT(s->MakeDirs(stale), IsOk());
  ASSERT_THAT(s->MakeDirs("/out/.model.tmp-notatoken"), IsOk());
  ASSERT_THAT(s->MakeDirs("/out/.other.tmp-" + Hex64(2)), IsOk());
  Result<std::string> staging = CreateStagingDir(*s, "/out/model");
  ASSERT_THAT(staging, IsOk());
  const std::vector<std::string> names = Names(*s, "/out");
  EXPECT_EQ(std::count(names.begin(), names.end(), std::string(Basename(stale))), 0)
      << "stale staging kept";
  EXPECT_EQ(std::count(names.begin(), names.end(), ".model.tmp-notatoken"), 1);
  EXPECT_EQ(std::count(names.begin(), names.end(), ".other.tmp-" + Hex64(2)), 1);
  EXPECT_EQ(names.size(), 3u);
}

TEST(StagedDirTest, AGivenTokenNamesTheStagingAndMustBeSixteenHexDigits) {
  std::shared_ptr<Storage> s = NewMemoryStorage();
  Result<std::string> staging = CreateStagingDir(*s, "/out/model", Hex64(0xabc));
  ASSERT_THAT(staging, IsOk());
  EXPECT_EQ(*staging, "/out/.model.tmp-0000000000000abc");
  EXPECT_THAT(
      CreateStagingDir(*s, "/out/other", "ABC"),
      StatusIs(StatusCode::kInvalidArgument, "staging token 'ABC' is not 16 lowercase hex digits"));
}

}  // namespace
}  // namespace ckpt
