// A small deterministic training run for resume tests, on the synthetic
// trainer `ckpt demo` runs too (src/checkpoint/synthetic_trainer.h): f32
// parameters sharded FSDP-style on dimension 0, an LR scheduler, a per-rank
// RNG. Runs on different world sizes agree bit for bit.
#ifndef CKPT_TESTS_CHECKPOINT_TRAINER_H_
#define CKPT_TESTS_CHECKPOINT_TRAINER_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "checkpoint/synthetic_trainer.h"
#include "ckpt/checkpointer.h"

namespace ckpt::testing {

using synthetic::Noise;

struct ParamDef {
  const char* fqn;
  std::vector<uint64_t> shape;
};

inline const std::vector<ParamDef>& TinyModelParams() {
  static const std::vector<ParamDef> kParams = {
      {"model.embed_tokens.weight", {50, 16}},
      {"model.layers.0.self_attn.q_proj.weight", {16, 16}},
      {"model.layers.0.mlp.up_proj.weight", {24, 16}},
      {"model.layers.0.input_layernorm.weight", {16}},
      {"model.norm.weight", {16}},
      {"lm_head.weight", {50, 16}},
  };
  return kParams;
}

inline std::vector<synthetic::ParamSpec> TinyModelSpecs() {
  std::vector<synthetic::ParamSpec> out;
  for (const ParamDef& p : TinyModelParams()) out.push_back({p.fqn, p.shape, false});
  return out;
}

// lr = base · 0.97^steps, as an LR scheduler's JSON state.
class StepDecayScheduler : public Stateful {
 public:
  float lr() const {
    return static_cast<float>(1e-2 * std::pow(0.97, static_cast<double>(steps_)));
  }
  void Step() { ++steps_; }
  int64_t steps() const { return steps_; }
  Result<std::string> SaveState() override {
    return nlohmann::json({{"last_epoch", steps_}}).dump();
  }
  Status LoadState(std::string_view s) override {
    nlohmann::json j = nlohmann::json::parse(s, nullptr, false);
    if (!j.is_object() || !j["last_epoch"].is_number_integer())
      return InvalidArgumentError("bad scheduler state");
    steps_ = j["last_epoch"].get<int64_t>();
    return Status();
  }

 private:
  int64_t steps_ = 0;
};

// A per-rank RNG whose state must survive a same-layout resume.
class RankRng : public Stateful {
 public:
  std::mt19937_64 gen;
  Result<std::string> SaveState() override {
    std::ostringstream o;
    o << gen;
    return o.str();
  }
  Status LoadState(std::string_view s) override {
    std::istringstream i{std::string(s)};
    i >> gen;
    return i.fail() ? InvalidArgumentError("bad rng state") : Status();
  }
};

// One rank's part of the run: the shared synthetic trainer (f32 weights,
// 8 samples a step) with an LR scheduler and an RNG that each step advances.
class TinyTrainer : public synthetic::Trainer {
 public:
  TinyTrainer(int rank, int world) : synthetic::Trainer(TinyModelSpecs(), rank, world) {}

  StepDecayScheduler& scheduler() { return scheduler_; }
  RankRng& rng() { return rng_; }

  void TrainStep() {
    synthetic::Trainer::TrainStep(scheduler_.lr());
    scheduler_.Step();
    rng_.gen();
  }

  // Every value this rank holds, compared with `ref` (world 1, all rows).
  std::string Diff(const TinyTrainer& ref) const {
    if (scheduler_.steps() != ref.scheduler_.steps()) return "scheduler differs";
    return synthetic::Trainer::Diff(ref);
  }

 private:
  StepDecayScheduler scheduler_;
  RankRng rng_;
};

// Saves everything a training loop owns at (epoch, step).
inline Status SaveTraining(Checkpointer& c, TinyTrainer& t, int64_t epoch, int64_t step,
                           float loss) {
  CKPT_ASSIGN_OR_RETURN(std::string dir, c.Reserve(epoch, step));
  CKPT_RETURN_IF_ERROR(c.SaveModel(t, dir));
  CKPT_RETURN_IF_ERROR(c.SaveOptimizer(t.optimizer_state(), dir, &t.scheduler()));
  CKPT_RETURN_IF_ERROR(c.SaveOnDpRanks(t.cursor(), "dataloader", dir));
  CKPT_RETURN_IF_ERROR(c.SaveOnGlobalRanks(t.rng(), "rng", dir));
  CKPT_RETURN_IF_ERROR(c.SaveConfig("model: tiny\nsteps: " + std::to_string(step) + "\n", dir));
  return c.Publish(dir, {{"val_loss", loss}});
}

// Restores from the latest checkpoint; the RNG only when the world matches.
inline Status ResumeTraining(Checkpointer& c, TinyTrainer& t, bool same_world, std::string* from) {
  CKPT_ASSIGN_OR_RETURN(std::optional<std::string> dir, c.FindLatest());
  if (!dir) return NotFoundError("no checkpoint to resume from");
  *from = *dir;
  CKPT_RETURN_IF_ERROR(c.LoadModel(t, *dir));
  CKPT_RETURN_IF_ERROR(c.LoadOptimizer(t.optimizer_state(), *dir, &t.scheduler()));
  CKPT_RETURN_IF_ERROR(c.LoadOnDpRanks(t.cursor(), "dataloader", *dir));
  if (same_world) CKPT_RETURN_IF_ERROR(c.LoadOnGlobalRanks(t.rng(), "rng", *dir));
  return Status();
}

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_CHECKPOINT_TRAINER_H_
