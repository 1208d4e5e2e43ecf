// The resume scenario under mpirun (see tests/engine/mpi_run.sh "resume"):
//   train DIR    train the tiny model, checkpoint at steps 3 and 5 through the
//                Checkpointer, run on to step 7 and stop without saving
//   train-async DIR   the same with asynchronous saves (a background thread
//                per rank runs its own MPI communicator)
//   resume DIR   on another world size, resume from the latest checkpoint, run
//                to step 9, and compare with an uninterrupted run bit for bit
// Exit status 0 on success; failures are printed with the rank.
#include <cstdio>
#include <string>

#include "checkpoint/trainer.h"
#include "ckpt/checkpointer.h"
#include "ckpt/mpi_comm.h"

namespace ckpt::testing {
namespace {

int Fail(Communicator& c, const std::string& what) {
  std::fprintf(stderr, "rank %d: %s\n", c.rank(), what.c_str());
  return 1;
}

int Main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s train|train-async|resume DIR\n", argv[0]);
    return 2;
  }
  auto comm = NewMpiWorldCommunicator();
  if (!comm.ok()) {
    std::fprintf(stderr, "%s\n", comm.status().ToString().c_str());
    return 1;
  }
  Communicator& c = **comm;
  const std::string mode = argv[1];
  CheckpointingConfig cfg;
  cfg.checkpoint_dir = argv[2];
  cfg.max_recent_checkpoints = 2;
  cfg.timeout = std::chrono::seconds(60);
  cfg.is_async = mode == "train-async";
  Result<std::unique_ptr<Checkpointer>> ck = Checkpointer::Create(cfg, {.dp = c.rank()}, c);
  if (!ck.ok()) return Fail(c, ck.status().ToString());
  TinyTrainer t(c.rank(), c.size());
  if (mode == "train" || mode == "train-async") {
    for (int s = 1; s <= 7; ++s) {
      t.TrainStep();
      if (s == 3 || s == 5) {
        Status saved = SaveTraining(**ck, t, 0, s, 1.f / static_cast<float>(s));
        if (!saved.ok()) return Fail(c, saved.ToString());
      }
    }
    Status closed = (*ck)->Close();
    if (!closed.ok()) return Fail(c, closed.ToString());
    if (c.rank() == 0)
      std::printf("%s: %d ranks saved steps 3 and 5, stopped at 7\n", mode.c_str(), c.size());
    return 0;
  }
  if (mode == "resume") {
    std::string from;
    Status s = ResumeTraining(**ck, t, false, &from);
    if (!s.ok()) return Fail(c, s.ToString());
    if (from != JoinPath(cfg.checkpoint_dir, CheckpointName(0, 5)))
      return Fail(c, "resumed from " + from);
    for (int step = 6; step <= 9; ++step) t.TrainStep();
    TinyTrainer reference(0, 1);
    for (int step = 1; step <= 9; ++step) reference.TrainStep();
    const std::string diff = t.Diff(reference);
    if (!diff.empty()) return Fail(c, "after resuming: " + diff);
    if (c.rank() == 0)
      std::printf("resume: %d ranks match the uninterrupted run bit for bit\n", c.size());
    return 0;
  }
  std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
  return 2;
}

}  // namespace
}  // namespace ckpt::testing

int main(int argc, char** argv) { return ckpt::testing::Main(argc, argv); }
