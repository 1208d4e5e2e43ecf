// Crash campaign: a child process trains and checkpoints in a loop (2 thread
// ranks; synchronous and asynchronous saves in alternate rounds) and is
// SIGKILLed at a random moment, 200 times, seeded. After every kill the
// checkpoint find_latest returns is complete, verifies, and loads
// bit-exactly; dead saves are never returned, and the next reserve cleans
// them. The next child resumes from it.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <string>
#include <thread>

#include "checkpoint/trainer.h"
#include "ckpt/checkpointer.h"
#include "engine/layouts.h"
#include "test_util.h"

namespace ckpt::testing {
namespace {

CheckpointingConfig CampaignConfig(const std::string& root, bool async) {
  CheckpointingConfig c;
  c.checkpoint_dir = root;
  c.is_async = async;
  c.max_recent_checkpoints = 3;
  c.timeout = std::chrono::seconds(30);
  return c;
}

// The child: resume from the newest complete checkpoint, then train and save
// every step until killed.
[[noreturn]] void TrainForever(const std::string& root, bool async) {
  Status s = OnRanksOk(2, [&](Communicator& comm) -> Status {
    TinyTrainer t(comm.rank(), comm.size());
    CKPT_ASSIGN_OR_RETURN(
        auto c, Checkpointer::Create(CampaignConfig(root, async), {.dp = comm.rank()}, comm));
    CKPT_ASSIGN_OR_RETURN(std::optional<std::string> latest, c->FindLatest());
    if (latest) {
      std::string from;
      CKPT_RETURN_IF_ERROR(ResumeTraining(*c, t, false, &from));
    }
    for (;;) {
      t.TrainStep();
      CKPT_RETURN_IF_ERROR(
          SaveTraining(*c, t, 0, static_cast<int64_t>(t.adam_step()), 1.f / t.adam_step()));
    }
  });
  std::fprintf(stderr, "campaign child stopped: %s\n", s.ToString().c_str());
  ::_exit(3);
}

// Loads checkpoint `dir` (step `step`) on 2 ranks against an uninterrupted run.
Status LoadsBitExact(const std::string& root, const std::string& dir, int step) {
  TinyTrainer reference(0, 1);
  for (int s = 0; s < step; ++s) reference.TrainStep();
  return OnRanksOk(2, [&](Communicator& comm) -> Status {
    TinyTrainer t(comm.rank(), comm.size());
    CKPT_ASSIGN_OR_RETURN(
        auto c, Checkpointer::Create(CampaignConfig(root, false), {.dp = comm.rank()}, comm));
    CKPT_RETURN_IF_ERROR(c->LoadModel(t, dir));
    CKPT_RETURN_IF_ERROR(c->LoadOptimizer(t.optimizer_state(), dir, &t.scheduler()));
    CKPT_RETURN_IF_ERROR(c->LoadOnDpRanks(t.cursor(), "dataloader", dir));
    const std::string diff = t.Diff(reference);
    return diff.empty() ? Status() : DataLossError(dir + " loads wrong: " + diff);
  });
}

TEST(CrashCampaign, TwoHundredKillsNeverLoseACommittedCheckpoint) {
  constexpr uint64_t kSeed = 20261128;
  constexpr int kKills = 200;
  std::mt19937_64 rng(kSeed);
  TempDir tmp;
  const std::string root = tmp / "ckpts";
  int last_step = 0, with_checkpoint = 0, max_incomplete = 0;
  // Kill times are drawn from [2 ms, 2 ms + window). On a slow machine (or
  // under a sanitizer) a child may need longer than the window to reach a
  // save; after 3 rounds without progress the window doubles (up to 4 s),
  // and it halves again (down to 60 ms) after a round of fast progress.
  uint64_t window_us = 60000;
  int stalled = 0;
  for (int round = 0; round < kKills; ++round) {
    const bool async = round % 2 == 1;
    const auto delay = std::chrono::microseconds(2000 + rng() % window_us);
    std::fflush(nullptr);
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) TrainForever(root, async);
    std::this_thread::sleep_for(delay);
    ::kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status))
        << "round " << round << ": the child exited on its own (status " << status << "); seed "
        << kSeed;
    Result<std::optional<std::string>> latest = FindLatestCheckpoint(*PosixStorage(), root);
    ASSERT_TRUE(latest.ok()) << latest.status().ToString();
    // Dead saves: at most the ones in flight when the child died (async: a
    // checkpoint waiting for its publish, the next one being written, and
    // the one just reserved). Older ones were cleaned by a reserve.
    int incomplete = 0;
    Result<std::vector<DirEntry>> entries = PosixStorage()->List(root);
    if (entries.ok()) {
      for (const DirEntry& e : *entries) {
        if (*Exists(*PosixStorage(), JoinPath(root, e.name + "/.incomplete"))) ++incomplete;
      }
    }
    max_incomplete = std::max(max_incomplete, incomplete);
    ASSERT_LE(incomplete, 3) << "round " << round
                             << ": dead saves are not cleaned at the next reserve";
    if (!latest->has_value()) {
      ASSERT_EQ(last_step, 0) << "round " << round << ": a committed checkpoint disappeared; seed "
                              << kSeed;
      if (++stalled >= 3 && window_us < 4000000) {
        window_us *= 2;
        stalled = 0;
      }
      continue;
    }
    const std::string dir = **latest;
    int64_t epoch = 0, step = 0;
    ASSERT_TRUE(ParseCheckpointName(Basename(dir), &epoch, &step)) << dir;
    ASSERT_FALSE(*Exists(*PosixStorage(), JoinPath(dir, ".incomplete"))) << dir;
    ASSERT_GE(step, last_step) << "round " << round << ": went back from step " << last_step
                               << " to " << step;
    CKPT_ASSERT_OK(VerifyShardedCheckpoint(*PosixStorage(), JoinPath(dir, "model")));
    CKPT_ASSERT_OK(VerifyShardedCheckpoint(*PosixStorage(), JoinPath(dir, "optim")));
    CKPT_ASSERT_OK(LoadsBitExact(root, dir, static_cast<int>(step)));
    stalled = step > last_step ? 0 : stalled + 1;
    if (stalled >= 3 && window_us < 4000000) {
      window_us *= 2;
      stalled = 0;
    } else if (step > last_step + 4 && window_us > 60000) {
      window_us /= 2;  // fast progress: kill sooner, within fewer saves
    }
    last_step = static_cast<int>(step);
    ++with_checkpoint;
  }
  std::printf(
      "crash campaign (seed %llu): %d kills, %d left a checkpoint to resume from, reached step %d, "
      "at most "
      "%d dead saves at once, final kill window %llu ms\n",
      static_cast<unsigned long long>(kSeed), kKills, with_checkpoint, last_step, max_incomplete,
      static_cast<unsigned long long>(window_us / 1000));
  EXPECT_GE(last_step, 10) << "the children made too little progress to exercise the saves";
}

}  // namespace
}  // namespace ckpt::testing
