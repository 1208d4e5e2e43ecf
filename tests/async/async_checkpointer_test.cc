// Asynchronous saves through the Checkpointer: the loop changes its tensors
// right after every save and the checkpoints never see it; LATEST moves only
// once the background work is durable; background errors surface once.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "async/hooked_storage.h"
#include "checkpoint/trainer.h"
#include "ckpt/checkpointer.h"
#include "engine/layouts.h"
#include "test_util.h"

namespace ckpt::testing {
namespace {

// Two [1024, 512] f32 tensors (4 MiB), rows sharded over the ranks; every
// element encodes a version number, so what a checkpoint holds is checkable.
class VersionedModel : public Model {
 public:
  VersionedModel(int rank, int world) {
    for (int t = 0; t < 2; ++t) {
      uint64_t off, len;
      SplitRange(1024, world, rank, &off, &len);
      row0_[t] = off;
      data_[t].assign(len * 512, 0.f);
      DistTensor d{"model.layers." + std::to_string(t) + ".mlp.up_proj.weight",
                   DType::kF32,
                   Shape{1024, 512},
                   {}};
      d.chunks.push_back(
          LocalChunk{{off, 0}, Shape{len, 512}, reinterpret_cast<std::byte*>(data_[t].data()), {}});
      sd_.tensors.push_back(std::move(d));
    }
  }
  StateDict& state_dict() override { return sd_; }
  void Set(int version) {
    for (int t = 0; t < 2; ++t) {
      for (size_t i = 0; i < data_[t].size(); ++i)
        data_[t][i] = Value(version, t, row0_[t] * 512 + i);
    }
  }
  // The version every element holds, or -1 when they disagree.
  int Version() const {
    const int v = static_cast<int>(data_[0].empty() ? data_[1][0] : data_[0][0]) / 1000000;
    for (int t = 0; t < 2; ++t) {
      for (size_t i = 0; i < data_[t].size(); ++i) {
        if (data_[t][i] != Value(v, t, row0_[t] * 512 + i)) return -1;
      }
    }
    return v;
  }

 private:
  static float Value(int version, int t, uint64_t i) {
    return static_cast<float>(version * 1000000 + t * 100000 + static_cast<int>(i % 99991));
  }
  uint64_t row0_[2] = {0, 0};
  std::vector<float> data_[2];
  StateDict sd_;
};

CheckpointingConfig AsyncConfig(const std::string& root) {
  CheckpointingConfig c;
  c.checkpoint_dir = root;
  c.is_async = true;
  c.timeout = std::chrono::seconds(60);
  return c;
}

struct Variant {
  uint64_t budget;
  bool wait_for_staging;
};

class AsyncMutation : public ::testing::TestWithParam<Variant> {};

TEST_P(AsyncMutation, ChangesAfterTheCallNeverReachTheCheckpoint) {
  TempDir tmp;
  CheckpointingConfig cfg = AsyncConfig(tmp / "ckpts");
  cfg.staging_budget = GetParam().budget;
  cfg.wait_for_staging = GetParam().wait_for_staging;
  CKPT_ASSERT_OK(OnRanksOk(2, [&](Communicator& comm) -> Status {
    VersionedModel m(comm.rank(), comm.size());
    CKPT_ASSIGN_OR_RETURN(auto c, Checkpointer::Create(cfg, {.dp = comm.rank()}, comm));
    for (int step = 1; step <= 4; ++step) {
      m.Set(step);
      CKPT_ASSIGN_OR_RETURN(std::string dir, c->Reserve(0, step));
      CKPT_RETURN_IF_ERROR(c->SaveModel(m, dir));
      CKPT_RETURN_IF_ERROR(c->MaybeWaitForStaging());
      m.Set(1000 + step);  // the next optimizer step, while the save is written
      CKPT_RETURN_IF_ERROR(c->Publish(dir));
    }
    return c->Close();
  }));
  // Every checkpoint holds exactly what the model held when it was saved.
  for (int step = 1; step <= 4; ++step) {
    std::vector<int> versions(3, -2);
    CKPT_ASSERT_OK(OnRanksOk(3, [&](Communicator& comm) -> Status {
      VersionedModel m(comm.rank(), comm.size());
      CheckpointingConfig sync = cfg;
      sync.is_async = false;
      CKPT_ASSIGN_OR_RETURN(auto c, Checkpointer::Create(sync, {.dp = comm.rank()}, comm));
      CKPT_RETURN_IF_ERROR(c->LoadModel(m, JoinPath(cfg.checkpoint_dir, CheckpointName(0, step))));
      versions[static_cast<size_t>(comm.rank())] = m.Version();
      return Status();
    }));
    EXPECT_EQ(versions, std::vector<int>(3, step)) << "step " << step;
  }
  Result<std::optional<std::string>> latest =
      FindLatestCheckpoint(*PosixStorage(), cfg.checkpoint_dir);
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ(Basename(**latest), "epoch_0_step_4");
}

INSTANTIATE_TEST_SUITE_P(Budgets, AsyncMutation,
                         ::testing::Values(Variant{0, true}, Variant{1 << 20, true},
                                           Variant{0, false}, Variant{1 << 20, false}),
                         [](const ::testing::TestParamInfo<Variant>& i) {
                           return std::string(i.param.budget ? "Budget1MiB" : "Unbounded") +
                                  (i.param.wait_for_staging ? "Staged" : "Deferred");
                         });

// The training scenario with asynchronous saves after every step: a resume
// on another world size still matches an uninterrupted run bit for bit.
TEST(AsyncResume, SavesEveryStepWhileTrainingThenResumesBitExact) {
  TempDir tmp;
  CheckpointingConfig cfg = AsyncConfig(tmp / "ckpts");
  cfg.max_recent_checkpoints = 2;
  TinyTrainer reference(0, 1);
  for (int s = 0; s < 8; ++s) reference.TrainStep();
  CKPT_ASSERT_OK(OnRanksOk(4, [&](Communicator& comm) -> Status {
    TinyTrainer t(comm.rank(), comm.size());
    CKPT_ASSIGN_OR_RETURN(auto c, Checkpointer::Create(cfg, {.dp = comm.rank()}, comm));
    for (int s = 1; s <= 5; ++s) {
      t.TrainStep();
      CKPT_RETURN_IF_ERROR(SaveTraining(*c, t, 0, s, 1.f / static_cast<float>(s)));
    }
    return c->Close();
  }));
  std::vector<std::string> diffs(2);
  CKPT_ASSERT_OK(OnRanksOk(2, [&](Communicator& comm) -> Status {
    TinyTrainer t(comm.rank(), comm.size());
    CKPT_ASSIGN_OR_RETURN(auto c, Checkpointer::Create(cfg, {.dp = comm.rank()}, comm));
    std::string from;
    CKPT_RETURN_IF_ERROR(ResumeTraining(*c, t, false, &from));
    if (Basename(from) != "epoch_0_step_5") return InternalError("resumed from " + from);
    for (int s = 6; s <= 8; ++s) t.TrainStep();
    diffs[static_cast<size_t>(comm.rank())] = t.Diff(reference);
    return c->Close();
  }));
  EXPECT_EQ(diffs, std::vector<std::string>(2, ""));
}

// Holds rank 0's shard of one checkpoint until released.
class Gate {
 public:
  Status Pass(std::string_view op, const std::string& path, const std::string& held) {
    if (op != "create" || path.find(held) == std::string::npos ||
        path.find("shard-00001") == std::string::npos) {
      return Status();
    }
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return open_; });
    return Status();
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

TEST(AsyncLifecycle, LatestMovesOnlyAfterTheBackgroundWorkAndReserveKeepsPendingSaves) {
  TempDir tmp;
  Gate gate;
  auto storage = std::make_shared<HookedStorage>([&](std::string_view op, const std::string& p) {
    return gate.Pass(op, p, "epoch_0_step_2/");
  });
  CheckpointingConfig cfg = AsyncConfig(tmp / "ckpts");
  std::vector<std::string> seen(2);
  CKPT_ASSERT_OK(OnRanksOk(2, [&](Communicator& comm) -> Status {
    VersionedModel m(comm.rank(), comm.size());
    CKPT_ASSIGN_OR_RETURN(auto c, Checkpointer::Create(cfg, {.dp = comm.rank()}, comm, storage));
    m.Set(1);
    CKPT_ASSIGN_OR_RETURN(std::string d1, c->Reserve(0, 1));
    CKPT_RETURN_IF_ERROR(c->SaveModel(m, d1));
    CKPT_RETURN_IF_ERROR(c->Publish(d1));
    CKPT_RETURN_IF_ERROR(c->AsyncWait());
    m.Set(2);
    CKPT_ASSIGN_OR_RETURN(std::string d2, c->Reserve(0, 2));
    CKPT_RETURN_IF_ERROR(c->SaveModel(m, d2));  // staged; rank 0's file is held back
    CKPT_RETURN_IF_ERROR(c->Publish(d2));
    // Still the previous checkpoint, and the reserve of the next one leaves
    // the running save alone.
    CKPT_ASSIGN_OR_RETURN(std::optional<std::string> latest, c->FindLatest());
    CKPT_ASSIGN_OR_RETURN(std::string d3, c->Reserve(0, 3));
    CKPT_ASSIGN_OR_RETURN(bool marker, Exists(*PosixStorage(), d2 + "/.incomplete"));
    seen[static_cast<size_t>(comm.rank())] =
        std::string(Basename(latest.value_or(""))) + (marker ? "+marked" : "");
    CKPT_RETURN_IF_ERROR(comm.Barrier(std::chrono::seconds(30)));
    if (comm.rank() == 0) gate.Open();
    CKPT_RETURN_IF_ERROR(c->AsyncWait());
    CKPT_ASSIGN_OR_RETURN(latest, c->FindLatest());
    if (!latest || Basename(*latest) != "epoch_0_step_2")
      return InternalError("LATEST did not move to step 2");
    m.Set(3);
    CKPT_RETURN_IF_ERROR(c->SaveModel(m, d3));
    CKPT_RETURN_IF_ERROR(c->Publish(d3));
    return c->Close();
  }));
  EXPECT_EQ(seen, std::vector<std::string>(2, "epoch_0_step_1+marked"));
  EXPECT_EQ(Basename(*PosixStorage()->ReadLink(tmp / "ckpts/LATEST")), "epoch_0_step_3");
}

TEST(AsyncLifecycle, BackgroundFailureIsReturnedOnceAndNothingIsPublished) {
  TempDir tmp;
  auto storage =
      std::make_shared<HookedStorage>([&](std::string_view op, const std::string& p) -> Status {
        if (op == "rename" && p.find("epoch_0_step_2/model") != std::string::npos &&
            p.find("shard-") == std::string::npos) {
          return IOError("renaming into " + p + ": injected I/O error");
        }
        return Status();
      });
  CheckpointingConfig cfg = AsyncConfig(tmp / "ckpts");
  std::vector<Status> errors(2);
  CKPT_ASSERT_OK(OnRanksOk(2, [&](Communicator& comm) -> Status {
    VersionedModel m(comm.rank(), comm.size());
    CKPT_ASSIGN_OR_RETURN(auto c, Checkpointer::Create(cfg, {.dp = comm.rank()}, comm, storage));
    for (int step = 1; step <= 3; ++step) {
      m.Set(step);
      CKPT_ASSIGN_OR_RETURN(std::string d, c->Reserve(0, step));
      CKPT_RETURN_IF_ERROR(c->SaveModel(m, d));  // staging succeeds; the failure comes later
      CKPT_RETURN_IF_ERROR(c->Publish(d));
      Status waited = c->AsyncWait();
      if (step == 2) {
        errors[static_cast<size_t>(comm.rank())] = waited;
        CKPT_RETURN_IF_ERROR(c->AsyncWait());  // already returned: OK now
        CKPT_ASSIGN_OR_RETURN(std::optional<std::string> latest, c->FindLatest());
        if (Basename(latest.value_or("")) != "epoch_0_step_1")
          return InternalError("a failed save moved LATEST");
      } else {
        CKPT_RETURN_IF_ERROR(waited);
      }
    }
    return c->Close();
  }));
  for (const Status& e : errors)
    EXPECT_THAT(e, StatusIs(StatusCode::kIOError, "injected I/O error"));
  EXPECT_EQ(Basename(*PosixStorage()->ReadLink(tmp / "ckpts/LATEST")), "epoch_0_step_3");
  // Never published, then cleaned by the next reserve.
  EXPECT_FALSE(*Exists(*PosixStorage(), tmp / "ckpts/epoch_0_step_2"));
}

// A process that dies while its background save is being written leaves
// the previous checkpoint as the one to resume from.
TEST(AsyncLifecycle, CrashDuringBackgroundWriteKeepsThePreviousCheckpoint) {
  TempDir tmp;
  const std::string root = tmp / "ckpts";
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto storage =
        std::make_shared<HookedStorage>([](std::string_view op, const std::string& p) -> Status {
          if (op == "create" && p.find("epoch_0_step_2/") != std::string::npos &&
              p.find("shard-") != std::string::npos) {
            ::_exit(9);  // dies in the background thread, mid-save
          }
          return Status();
        });
    auto comm = NewSingleRankCommunicator();
    VersionedModel m(0, 1);
    auto c = Checkpointer::Create(AsyncConfig(root), {}, *comm, storage);
    if (!c.ok()) ::_exit(2);
    for (int step = 1; step <= 2; ++step) {
      m.Set(step);
      Result<std::string> d = (*c)->Reserve(0, step);
      if (!d.ok() || !(*c)->SaveModel(m, *d).ok() || !(*c)->Publish(*d).ok()) ::_exit(3);
      if (step == 1 && !(*c)->AsyncWait().ok()) ::_exit(4);
    }
    (void)(*c)->AsyncWait();
    ::_exit(0);  // not reached: the background thread exits first
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 9) << "the child should have died in its background save";
  Result<std::optional<std::string>> latest = FindLatestCheckpoint(*PosixStorage(), root);
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ(Basename(**latest), "epoch_0_step_1");
  EXPECT_TRUE(*Exists(*PosixStorage(), JoinPath(root, "epoch_0_step_2/.incomplete")));
  auto comm = NewSingleRankCommunicator();
  VersionedModel m(0, 1);
  CheckpointingConfig sync = AsyncConfig(root);
  sync.is_async = false;
  auto c = Checkpointer::Create(sync, {}, *comm);
  ASSERT_TRUE(c.ok());
  CKPT_ASSERT_OK((*c)->LoadModel(m, **latest));
  EXPECT_EQ(m.Version(), 1);
  // The next reserve cleans the dead save.
  CKPT_ASSERT_OK((*c)->Reserve(0, 3).status());
  EXPECT_FALSE(*Exists(*PosixStorage(), JoinPath(root, "epoch_0_step_2")));
}

TEST(AsyncLifecycle, ClosedCheckpointerRefusesSaves) {
  TempDir tmp;
  CKPT_ASSERT_OK(OnRanksOk(1, [&](Communicator& comm) -> Status {
    VersionedModel m(0, 1);
    CKPT_ASSIGN_OR_RETURN(auto c, Checkpointer::Create(AsyncConfig(tmp / "ckpts"), {}, comm));
    CKPT_ASSIGN_OR_RETURN(std::string d, c->Reserve(0, 1));
    CKPT_RETURN_IF_ERROR(c->Close());
    Status s = c->SaveModel(m, d);
    if (s.code() != StatusCode::kFailedPrecondition)
      return InternalError("save after close: " + s.ToString());
    return Status();
  }));
}

}  // namespace
}  // namespace ckpt::testing
