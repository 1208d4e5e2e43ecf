// Resume scenario: train on 4 ranks, save, keep going and "crash"; resume
// on 2 ranks from the checkpoint and finish; the result matches an
// uninterrupted run bit for bit.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "checkpoint/trainer.h"
#include "ckpt/checkpointer.h"
#include "engine/layouts.h"
#include "test_util.h"

namespace ckpt::testing {
namespace {

constexpr int kSaveAt = 5;
constexpr int kTotal = 9;

CheckpointingConfig ResumeConfig(const std::string& root) {
  CheckpointingConfig c;
  c.checkpoint_dir = root;
  c.max_recent_checkpoints = 2;
  c.timeout = std::chrono::seconds(60);
  return c;
}

void ExpectResumesBitExact(int save_world, int resume_world) {
  TempDir dir;
  const std::string root = dir / "ckpts";
  TinyTrainer reference(0, 1);
  for (int s = 0; s < kTotal; ++s) reference.TrainStep();

  // First job: saves at steps 3 and kSaveAt, runs on, dies without saving.
  CKPT_ASSERT_OK(OnRanksOk(save_world, [&](Communicator& comm) -> Status {
    TinyTrainer t(comm.rank(), comm.size());
    CKPT_ASSIGN_OR_RETURN(auto c,
                          Checkpointer::Create(ResumeConfig(root), {.dp = comm.rank()}, comm));
    for (int s = 1; s <= kTotal - 2; ++s) {
      t.TrainStep();
      if (s == 3 || s == kSaveAt)
        CKPT_RETURN_IF_ERROR(SaveTraining(*c, t, 0, s, 1.f / static_cast<float>(s)));
    }
    return Status();
  }));

  // Second job, another world size.
  std::vector<std::string> diffs(static_cast<size_t>(resume_world));
  CKPT_ASSERT_OK(OnRanksOk(resume_world, [&](Communicator& comm) -> Status {
    TinyTrainer t(comm.rank(), comm.size());
    CKPT_ASSIGN_OR_RETURN(auto c,
                          Checkpointer::Create(ResumeConfig(root), {.dp = comm.rank()}, comm));
    std::string from;
    CKPT_RETURN_IF_ERROR(ResumeTraining(*c, t, save_world == resume_world, &from));
    if (from != JoinPath(root, CheckpointName(0, kSaveAt)))
      return InternalError("resumed from " + from);
    if (t.adam_step() != static_cast<float>(kSaveAt))
      return InternalError("adam step not restored");
    for (int s = kSaveAt + 1; s <= kTotal; ++s) t.TrainStep();
    diffs[static_cast<size_t>(comm.rank())] = t.Diff(reference);
    return Status();
  }));
  for (int r = 0; r < resume_world; ++r)
    EXPECT_EQ(diffs[static_cast<size_t>(r)], "") << "rank " << r;
}

TEST(Resume, FourRanksToTwoIsBitExact) { ExpectResumesBitExact(4, 2); }
TEST(Resume, ThreeRanksToTwoIsBitExact) { ExpectResumesBitExact(3, 2); }
TEST(Resume, SameLayoutRestoresRankRng) {
  TempDir dir;
  const std::string root = dir / "ckpts";
  std::vector<uint64_t> next(2);
  CKPT_ASSERT_OK(OnRanksOk(2, [&](Communicator& comm) -> Status {
    TinyTrainer t(comm.rank(), comm.size());
    t.rng().gen.seed(100 + static_cast<uint64_t>(comm.rank()));
    CKPT_ASSIGN_OR_RETURN(auto c,
                          Checkpointer::Create(ResumeConfig(root), {.dp = comm.rank()}, comm));
    t.TrainStep();
    CKPT_RETURN_IF_ERROR(SaveTraining(*c, t, 0, 1, 1.f));
    next[static_cast<size_t>(comm.rank())] = t.rng().gen();
    return Status();
  }));
  CKPT_ASSERT_OK(OnRanksOk(2, [&](Communicator& comm) -> Status {
    TinyTrainer t(comm.rank(), comm.size());
    CKPT_ASSIGN_OR_RETURN(auto c,
                          Checkpointer::Create(ResumeConfig(root), {.dp = comm.rank()}, comm));
    std::string from;
    CKPT_RETURN_IF_ERROR(ResumeTraining(*c, t, true, &from));
    if (t.rng().gen() != next[static_cast<size_t>(comm.rank())])
      return InternalError("rng state not restored");
    return Status();
  }));
}

// The comparison sees a single flipped bit in a weight or a moment.
TEST(Resume, DiffSeesOneFlippedBit) {
  TinyTrainer a(0, 1), b(0, 1);
  for (int s = 0; s < 3; ++s) {
    a.TrainStep();
    b.TrainStep();
  }
  EXPECT_EQ(a.Diff(b), "");
  a.FlipBit(2, 17, 'w');
  EXPECT_NE(a.Diff(b), "");
  a.FlipBit(2, 17, 'w');
  a.FlipBit(5, 0, 'v');
  EXPECT_NE(a.Diff(b), "");
}

}  // namespace
}  // namespace ckpt::testing
