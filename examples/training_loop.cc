// The README's Checkpointer tour, compiled and run as a test so it stays true:
// a loop on 2 thread ranks checkpoints every 2 steps, then a new "job"
// resumes from the latest checkpoint.
//   training_loop DIR
#include <cstdio>
#include <thread>
#include <vector>

#include "ckpt/checkpointer.h"

using namespace ckpt;

// Rank r of n holds rows [4r, 4r + 4) of an [4n, 8] weight, FSDP-style.
class MyModel : public Model {
 public:
  MyModel(int rank, std::vector<float>& rows) {
    const uint64_t r = static_cast<uint64_t>(rank);
    sd_.tensors.push_back(
        {"model.w",
         DType::kF32,
         Shape({8, 8}),
         {{{4 * r, 0}, Shape({4, 8}), reinterpret_cast<std::byte*>(rows.data()), {}}}});
  }
  StateDict& state_dict() override { return sd_; }

 private:
  StateDict sd_;
};

Status Train(Communicator& comm, const std::string& root, std::vector<float>& w,
             int* resumed_step) {
  CheckpointingConfig config;
  config.checkpoint_dir = root;
  config.max_recent_checkpoints = 2;
  CKPT_ASSIGN_OR_RETURN(auto ckpt, Checkpointer::Create(config, {.dp = comm.rank()}, comm));
  MyModel model(comm.rank(), w);
  int first = 1;
  CKPT_ASSIGN_OR_RETURN(std::optional<std::string> latest, ckpt->FindLatest());
  if (latest) {  // resume
    CKPT_RETURN_IF_ERROR(ckpt->LoadModel(model, *latest));
    int64_t epoch, step;
    ParseCheckpointName(Basename(*latest), &epoch, &step);
    first = static_cast<int>(step) + 1;
    *resumed_step = static_cast<int>(step);
  }
  for (int step = first; step <= 6; ++step) {
    for (float& x : w) x += 1.f;  // "training"
    if (step % 2 == 0) {
      CKPT_ASSIGN_OR_RETURN(std::string dir, ckpt->Reserve(0, step));
      CKPT_RETURN_IF_ERROR(ckpt->SaveModel(model, dir));
      CKPT_RETURN_IF_ERROR(ckpt->Publish(dir, {{"val_loss", 1.0 / step}}));
    }
    if (step == 5 && !latest) return Status();  // the first job stops here
  }
  return Status();
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::string root = std::string(argv[1]) + "/ckpts";
  bool ok = true;
  int resumed[2] = {0, 0};
  std::vector<std::vector<float>> w(2, std::vector<float>(32, 0.f));
  for (int job = 0; job < 2; ++job) {
    auto comms = NewThreadCommunicators(2);
    std::vector<std::thread> ranks;
    for (int r = 0; r < 2; ++r) {
      ranks.emplace_back([&, r] {
        if (job == 1) w[r].assign(32, -1.f);  // a fresh process: nothing in memory
        Status s = Train(*comms[r], root, w[r], &resumed[r]);
        if (!s.ok()) {
          std::fprintf(stderr, "rank %d: %s\n", r, s.ToString().c_str());
          ok = false;
        }
      });
    }
    for (auto& t : ranks) t.join();
  }
  // Resumed from step 4 (saved before the stop at 5), then steps 5 and 6: 6 in all.
  for (int r = 0; r < 2; ++r) {
    if (resumed[r] != 4 || w[r][0] != 6.f) ok = false;
  }
  std::printf(ok ? "OK\n" : "FAILED\n");
  return ok ? 0 : 1;
}
