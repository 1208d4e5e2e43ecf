// Built against an installed ckpt (find_package or pkg-config): saves a
// checkpoint through the Checkpointer and finds it again.
//   ckpt_consumer DIR
#include <cstdio>
#include <vector>

#include "ckpt/checkpointer.h"
#include "ckpt/version.h"

class Weights : public ckpt::Model {
 public:
  explicit Weights(std::vector<float>& w) {
    sd_.tensors.push_back(ckpt::WholeTensor("model.w", ckpt::DType::kF32, ckpt::Shape({2, 3}),
                                            reinterpret_cast<std::byte*>(w.data())));
  }
  ckpt::StateDict& state_dict() override { return sd_; }

 private:
  ckpt::StateDict sd_;
};

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::vector<float> w = {1, 2, 3, 4, 5, 6}, back(6, 0.f);
  auto comm = ckpt::NewSingleRankCommunicator();
  ckpt::CheckpointingConfig config;
  config.checkpoint_dir = argv[1];
  auto c = ckpt::Checkpointer::Create(config, {}, *comm);
  if (!c.ok()) return 1;
  Weights saved(w), loaded(back);
  auto dir = (*c)->Reserve(0, 1);
  if (!dir.ok() || !(*c)->SaveModel(saved, *dir).ok() || !(*c)->Publish(*dir).ok()) return 1;
  auto latest = (*c)->FindLatest();
  if (!latest.ok() || !*latest || !(*c)->LoadModel(loaded, **latest).ok() || back != w) return 1;
  std::printf("OK: ckpt %s saved and loaded %s\n", CKPT_VERSION_STRING, (**latest).c_str());
  return 0;
}
