// Reserve / publish / find-latest / retention on both storage backends: the
// POSIX one with LATEST symlinks, the memory one with the LATEST.txt fallback;
// and on an S3-protocol server (no rename, no links) when
// tests/python/test_s3.py runs this suite with CKPT_TEST_S3_ENDPOINT set.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <memory>
#include <string>

#include "ckpt/checkpointer.h"
#include "ckpt/s3.h"
#include "engine/layouts.h"
#include "test_util.h"

namespace ckpt::testing {
namespace {

class LifecycleTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "posix") {
      storage_ = PosixStorage();
      root_ = tmp_ / "ckpts";
    } else if (GetParam() == "s3") {
      Result<StoragePath> at =
          ResolveStoragePath("s3://" + std::string(std::getenv("CKPT_TEST_S3_BUCKET")) +
                             "/lifecycle-" + std::to_string(std::random_device{}()) + "/ckpts");
      ASSERT_TRUE(at.ok()) << at.status().ToString();
      storage_ = at->storage;
      root_ = at->path;
    } else {
      storage_ = NewMemoryStorage();
      root_ = "/mem/ckpts";
    }
    comm_ = NewSingleRankCommunicator();
  }

  std::unique_ptr<Checkpointer> Make(std::optional<int> keep = std::nullopt) {
    CheckpointingConfig c;
    c.checkpoint_dir = root_;
    c.max_recent_checkpoints = keep;
    auto r = Checkpointer::Create(c, {}, *comm_, storage_);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return std::move(*r);
  }

  // Reserves, writes a payload, publishes.
  void Save(Checkpointer& c, int64_t step, std::map<std::string, double> metrics = {}) {
    Result<std::string> dir = c.Reserve(0, step);
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    CKPT_ASSERT_OK(WriteFileAtomically(*storage_, JoinPath(*dir, "payload"), std::to_string(step)));
    CKPT_ASSERT_OK(c.Publish(*dir, metrics));
  }

  std::string Latest(Checkpointer& c) {
    Result<std::optional<std::string>> l = c.FindLatest();
    EXPECT_TRUE(l.ok()) << l.status().ToString();
    return l.ok() && *l ? std::string(Basename(**l)) : "";
  }

  // The checkpoint a pointer names, through whichever form it has.
  std::string Pointer(std::string_view name) {
    Result<std::string> link = storage_->ReadLink(JoinPath(root_, name));
    if (link.ok()) return *link;
    Result<std::string> text = ReadFileToString(*storage_, JoinPath(root_, name) + ".txt");
    return text.ok() ? text->substr(0, text->find('\n')) : "";
  }

  std::vector<std::string> Names() {
    std::vector<std::string> out;
    Result<std::vector<DirEntry>> l = storage_->List(root_);
    if (l.ok()) {
      for (const DirEntry& e : *l) out.push_back(e.name);
    }
    return out;
  }

  bool Has(const std::string& rel) { return *Exists(*storage_, JoinPath(root_, rel)); }

  TempDir tmp_;
  std::shared_ptr<Storage> storage_;
  std::string root_;
  std::unique_ptr<Communicator> comm_;
};

TEST_P(LifecycleTest, ReserveMarksAndPublishClearsAndPointsLatest) {
  auto c = Make();
  Result<std::string> dir = c->Reserve(1, 10);
  ASSERT_TRUE(dir.ok()) << dir.status().ToString();
  EXPECT_EQ(*dir, JoinPath(root_, "epoch_1_step_10"));
  EXPECT_TRUE(Has("epoch_1_step_10/.incomplete"));
  EXPECT_EQ(Latest(*c), "") << "an incomplete checkpoint is never found";
  CKPT_ASSERT_OK(c->Publish(*dir, {{"val_loss", 0.5}, {"train_loss", 0.7}}));
  EXPECT_FALSE(Has("epoch_1_step_10/.incomplete"));
  EXPECT_EQ(Pointer("LATEST"), "epoch_1_step_10");
  EXPECT_EQ(Pointer("LOWEST_VAL"), "epoch_1_step_10");
  EXPECT_EQ(Latest(*c), "epoch_1_step_10");
  Result<std::string> losses = ReadFileToString(*storage_, JoinPath(*dir, "losses.json"));
  ASSERT_TRUE(losses.ok());
  EXPECT_NE(losses->find("\"val_loss\": 0.5"), std::string::npos) << *losses;
  if (GetParam() == "posix") {
    EXPECT_TRUE(storage_->ReadLink(JoinPath(root_, "LATEST")).ok())
        << "a symlink where the filesystem has them";
  } else {
    EXPECT_TRUE(Has("LATEST.txt")) << "the text fallback where it has none";
  }
}

TEST_P(LifecycleTest, PublishedCheckpointsAreNeverOverwrittenNorPublishedTwice) {
  auto c = Make();
  Save(*c, 1);
  EXPECT_THAT(c->Reserve(0, 1), StatusIs(StatusCode::kAlreadyExists, "epoch_0_step_1"));
  EXPECT_THAT(c->Publish(JoinPath(root_, "epoch_0_step_1")),
              StatusIs(StatusCode::kFailedPrecondition,
                       "epoch_0_step_1 was not reserved or is already published"));
  EXPECT_THAT(c->Publish(JoinPath(root_, "elsewhere")),
              StatusIs(StatusCode::kInvalidArgument, "elsewhere is not a checkpoint directory"));
  Result<std::string> payload =
      ReadFileToString(*storage_, JoinPath(root_, "epoch_0_step_1/payload"));
  ASSERT_TRUE(payload.ok());
  EXPECT_EQ(*payload, "1");
}

TEST_P(LifecycleTest, ReserveReplacesAnIncompleteCheckpointAndCleansLeftovers) {
  auto c = Make();
  Save(*c, 1);
  Result<std::string> dead = c->Reserve(0, 2);  // a save that dies before publishing
  ASSERT_TRUE(dead.ok());
  CKPT_ASSERT_OK(WriteFileAtomically(*storage_, JoinPath(*dead, "half-written"), "x"));
  CKPT_ASSERT_OK(storage_->MakeDirs(JoinPath(root_, "epoch_0_step_3")));  // another dead one
  CKPT_ASSERT_OK(WriteFileAtomically(*storage_, JoinPath(root_, "epoch_0_step_3/.incomplete"), ""));
  CKPT_ASSERT_OK(storage_->MakeDirs(JoinPath(root_, ".epoch_0_step_4.tmp-0123456789abcdef")));
  CKPT_ASSERT_OK(storage_->MakeDirs(JoinPath(root_, ".epoch_0_step_0.trash-0123456789abcdef")));
  EXPECT_EQ(Latest(*c), "epoch_0_step_1");

  Result<std::string> again = c->Reserve(0, 2);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_TRUE(Has("epoch_0_step_2/.incomplete"));
  EXPECT_FALSE(Has("epoch_0_step_2/half-written"));
  EXPECT_FALSE(Has("epoch_0_step_3"));
  EXPECT_FALSE(Has(".epoch_0_step_4.tmp-0123456789abcdef"));
  EXPECT_FALSE(Has(".epoch_0_step_0.trash-0123456789abcdef"));
  EXPECT_TRUE(Has("epoch_0_step_1/payload"));
  CKPT_ASSERT_OK(c->Publish(*again));
  EXPECT_EQ(Latest(*c), "epoch_0_step_2");
}

TEST_P(LifecycleTest, FindLatestFallsBackToTheNewestCompleteCheckpoint) {
  auto c = Make();
  EXPECT_EQ(Latest(*c), "") << "no root yet";
  Save(*c, 1);
  Save(*c, 3);
  Save(*c, 2);  // LATEST names step 2, though step 3 is newer
  EXPECT_EQ(Latest(*c), "epoch_0_step_2");

  // LATEST naming a checkpoint that lost its completeness.
  CKPT_ASSERT_OK(WriteFileAtomically(*storage_, JoinPath(root_, "epoch_0_step_2/.incomplete"), ""));
  EXPECT_EQ(Latest(*c), "epoch_0_step_3");
  // LATEST naming nothing that exists.
  CKPT_ASSERT_OK(RemoveAll(*storage_, JoinPath(root_, "epoch_0_step_2")));
  EXPECT_EQ(Latest(*c), "epoch_0_step_3");
  // Garbage in the pointer.
  CKPT_ASSERT_OK(RemoveAll(*storage_, JoinPath(root_, "LATEST")));
  CKPT_ASSERT_OK(WriteFileAtomically(*storage_, JoinPath(root_, "LATEST.txt"), "../../etc\n"));
  EXPECT_EQ(Latest(*c), "epoch_0_step_3");
  // Ties on step: the higher epoch.
  CKPT_ASSERT_OK(storage_->MakeDirs(JoinPath(root_, "epoch_1_step_3")));
  EXPECT_EQ(Latest(*c), "epoch_1_step_3");
  // Names that only look like checkpoints are ignored.
  CKPT_ASSERT_OK(storage_->MakeDirs(JoinPath(root_, "epoch_9_step_09")));
  CKPT_ASSERT_OK(WriteFileAtomically(*storage_, JoinPath(root_, "epoch_9_step_99"), "a file"));
  EXPECT_EQ(Latest(*c), "epoch_1_step_3");
}

TEST_P(LifecycleTest, RetentionKeepsNewestKAndPointerTargets) {
  auto c = Make(2);
  const double losses[] = {5, 1, 3, std::numeric_limits<double>::quiet_NaN(), 1, 4};
  for (int s = 1; s <= 6; ++s) Save(*c, s, {{"val_loss", losses[s - 1]}});
  // LOWEST_VAL: step 2 (1.0); neither NaN (step 4) nor a tie (step 5) moves it.
  EXPECT_EQ(Pointer("LOWEST_VAL"), "epoch_0_step_2");
  EXPECT_EQ(Pointer("LATEST"), "epoch_0_step_6");
  std::vector<std::string> ckpts;
  for (const std::string& n : Names()) {
    int64_t e, s;
    if (ParseCheckpointName(n, &e, &s)) ckpts.push_back(n);
  }
  EXPECT_EQ(ckpts,
            (std::vector<std::string>{"epoch_0_step_2", "epoch_0_step_5", "epoch_0_step_6"}));
  for (const std::string& n : Names()) EXPECT_EQ(n.find(".trash-"), std::string::npos) << n;
}

TEST_P(LifecycleTest, InfiniteOrMissingMetricNeverMovesLowestVal) {
  auto c = Make();
  Save(*c, 1, {{"val_loss", 2.0}});
  Save(*c, 2, {{"val_loss", -std::numeric_limits<double>::infinity()}});
  Save(*c, 3, {{"train_loss", 0.1}});
  Save(*c, 4, {{"val_loss", 3.0}});
  EXPECT_EQ(Pointer("LOWEST_VAL"), "epoch_0_step_1");
  Save(*c, 5, {{"val_loss", 1.5}});
  EXPECT_EQ(Pointer("LOWEST_VAL"), "epoch_0_step_5");
}

TEST_P(LifecycleTest, DisabledCheckpointerWritesNothing) {
  CheckpointingConfig cfg;
  cfg.enabled = false;
  cfg.checkpoint_dir = root_;
  auto c = Checkpointer::Create(cfg, {}, *comm_, storage_);
  ASSERT_TRUE(c.ok());
  Result<std::string> dir = (*c)->Reserve(0, 1);
  ASSERT_TRUE(dir.ok());
  CKPT_ASSERT_OK((*c)->Publish(*dir));
  EXPECT_FALSE(*Exists(*storage_, root_));
}

INSTANTIATE_TEST_SUITE_P(Backends, LifecycleTest, ::testing::Values("posix", "memory"));
// Only with a server: test_s3.py runs these and fails unless they ran.
INSTANTIATE_TEST_SUITE_P(Server, LifecycleTest,
                         ::testing::ValuesIn(std::getenv("CKPT_TEST_S3_ENDPOINT")
                                                 ? std::vector<std::string>{"s3"}
                                                 : std::vector<std::string>{}));

TEST(Lifecycle, PosixLinkReplacesAStaleTextPointer) {
  TempDir tmp;
  auto comm = NewSingleRankCommunicator();
  CheckpointingConfig cfg;
  cfg.checkpoint_dir = tmp / "ckpts";
  auto c = Checkpointer::Create(cfg, {}, *comm);
  ASSERT_TRUE(c.ok());
  CKPT_ASSERT_OK(PosixStorage()->MakeDirs(cfg.checkpoint_dir));
  CKPT_ASSERT_OK(WriteFileAtomically(*PosixStorage(), JoinPath(cfg.checkpoint_dir, "LATEST.txt"),
                                     "epoch_0_step_0\n"));
  Result<std::string> dir = (*c)->Reserve(0, 1);
  ASSERT_TRUE(dir.ok());
  CKPT_ASSERT_OK((*c)->Publish(*dir));
  EXPECT_FALSE(*Exists(*PosixStorage(), JoinPath(cfg.checkpoint_dir, "LATEST.txt")));
  Result<std::string> link = PosixStorage()->ReadLink(JoinPath(cfg.checkpoint_dir, "LATEST"));
  ASSERT_TRUE(link.ok());
  EXPECT_EQ(*link, "epoch_0_step_1") << "relative, so the root can move";
}

TEST(Lifecycle, RankZeroFilesystemFailureFailsEveryRank) {
  TempDir tmp;
  CKPT_ASSERT_OK(WriteFileAtomically(*PosixStorage(), tmp / "file", "not a directory"));
  std::vector<Status> out = OnRanks(3, [&](Communicator& comm) -> Status {
    CheckpointingConfig cfg;
    cfg.checkpoint_dir = tmp / "file/ckpts";
    cfg.timeout = std::chrono::seconds(30);
    CKPT_ASSIGN_OR_RETURN(auto c, Checkpointer::Create(cfg, {.dp = comm.rank()}, comm));
    return c->Reserve(0, 1).status();
  });
  for (size_t r = 0; r < out.size(); ++r) {
    EXPECT_THAT(out[r], StatusIs(StatusCode::kFailedPrecondition, "rank 0")) << "rank " << r;
    EXPECT_THAT(out[r], StatusIs(StatusCode::kFailedPrecondition, "file/ckpts")) << "rank " << r;
  }
}

}  // namespace
}  // namespace ckpt::testing
