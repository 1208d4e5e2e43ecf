// A small deterministic training run for resume tests: f32 parameters
// sharded FSDP-style on dimension 0, synthetic gradients that depend on the
// parameter, the data-loader position and the element's global index, and a
// real Adam update. Every element's arithmetic is the same in any layout, so
// runs on different world sizes agree bit for bit.
#ifndef CKPT_TESTS_CHECKPOINT_TRAINER_H_
#define CKPT_TESTS_CHECKPOINT_TRAINER_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckpt/checkpointer.h"

namespace ckpt::testing {

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

inline uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// A value in [-1, 1) from the counter (no state: layout-independent).
inline float Noise(uint64_t a, uint64_t b, uint64_t c) {
  uint64_t x = Mix(Mix(Mix(a) ^ b) ^ c);
  return static_cast<float>(static_cast<double>(x >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

// lr = base · 0.97^steps, as an LR scheduler's JSON state.
class StepDecayScheduler : public Stateful {
 public:
  float lr() const { return static_cast<float>(1e-2 * std::pow(0.97, static_cast<double>(steps_))); }
  void Step() { ++steps_; }
  int64_t steps() const { return steps_; }
  Result<std::string> SaveState() override { return nlohmann::json({{"last_epoch", steps_}}).dump(); }
  Status LoadState(std::string_view s) override {
    nlohmann::json j = nlohmann::json::parse(s, nullptr, false);
    if (!j.is_object() || !j["last_epoch"].is_number_integer()) return InvalidArgumentError("bad scheduler state");
    steps_ = j["last_epoch"].get<int64_t>();
    return Status();
  }

 private:
  int64_t steps_ = 0;
};

// The data loader's position: samples consumed.
class Cursor : public Stateful {
 public:
  uint64_t position = 0;
  Result<std::string> SaveState() override { return std::to_string(position); }
  Status LoadState(std::string_view s) override {
    position = std::stoull(std::string(s));
    return Status();
  }
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

// One rank's part of the run.
class TinyTrainer : public Model {
 public:
  TinyTrainer(int rank, int world) : rank_(rank), world_(world) {
    for (const ParamDef& p : TinyModelParams()) {
      Param q;
      q.fqn = p.fqn;
      q.global = p.shape;
      q.cols = 1;
      for (size_t d = 1; d < p.shape.size(); ++d) q.cols *= p.shape[d];
      const uint64_t step = (p.shape[0] + static_cast<uint64_t>(world) - 1) / static_cast<uint64_t>(world);
      q.row0 = std::min<uint64_t>(p.shape[0], step * static_cast<uint64_t>(rank));
      q.rows = std::min<uint64_t>(p.shape[0], q.row0 + step) - q.row0;
      const uint64_t n = q.rows * q.cols;
      q.w.resize(n);
      q.m.assign(n, 0.f);
      q.v.assign(n, 0.f);
      for (uint64_t i = 0; i < n; ++i) q.w[i] = 0.5f * Noise(7, Hash(q.fqn), q.row0 * q.cols + i);
      params_.push_back(std::move(q));
    }
    Rebuild();
  }
  TinyTrainer(const TinyTrainer&) = delete;
  TinyTrainer& operator=(const TinyTrainer&) = delete;

  StateDict& state_dict() override { return model_sd_; }
  StateDict& optimizer_state() { return optim_sd_; }
  StepDecayScheduler& scheduler() { return scheduler_; }
  Cursor& cursor() { return cursor_; }
  RankRng& rng() { return rng_; }
  float adam_step() const { return step_; }

  // One optimizer step: every rank consumes `world`-independent 8 samples.
  void TrainStep() {
    const uint64_t batch = cursor_.position;
    cursor_.position += 8;
    step_ += 1.f;
    const float lr = scheduler_.lr();
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    const float bc1 = 1.f - std::pow(b1, step_), bc2 = 1.f - std::pow(b2, step_);
    for (Param& q : params_) {
      const uint64_t h = Hash(q.fqn);
      for (uint64_t i = 0; i < q.w.size(); ++i) {
        const uint64_t gi = q.row0 * q.cols + i;
        const float g = 0.1f * q.w[i] + Noise(batch, h, gi);
        q.m[i] = b1 * q.m[i] + (1.f - b1) * g;
        q.v[i] = b2 * q.v[i] + (1.f - b2) * g * g;
        const float mhat = q.m[i] / bc1, vhat = q.v[i] / bc2;
        q.w[i] -= lr * mhat / (std::sqrt(vhat) + eps);
      }
    }
    scheduler_.Step();
    rng_.gen();
  }

  void FlipBit(size_t param, uint64_t i, char which) {
    Param& q = params_[param];
    float& f = which == 'w' ? q.w[i] : which == 'm' ? q.m[i] : q.v[i];
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    bits ^= 1;
    std::memcpy(&f, &bits, 4);
  }

  // Every value this rank holds, compared with `ref` (world 1, all rows).
  std::string Diff(const TinyTrainer& ref) const {
    if (step_ != ref.step_) return "adam step " + std::to_string(step_) + " vs " + std::to_string(ref.step_);
    if (cursor_.position != ref.cursor_.position) return "data-loader position differs";
    if (scheduler_.steps() != ref.scheduler_.steps()) return "scheduler differs";
    for (size_t p = 0; p < params_.size(); ++p) {
      const Param& a = params_[p];
      const Param& b = ref.params_[p];
      const uint64_t at = a.row0 * a.cols;
      for (uint64_t i = 0; i < a.w.size(); ++i) {
        if (std::memcmp(&a.w[i], &b.w[at + i], 4) != 0 || std::memcmp(&a.m[i], &b.m[at + i], 4) != 0 ||
            std::memcmp(&a.v[i], &b.v[at + i], 4) != 0) {
          return a.fqn + " element " + std::to_string(at + i) + " differs";
        }
      }
    }
    return "";
  }

 private:
  struct Param {
    std::string fqn;
    std::vector<uint64_t> global;
    uint64_t row0 = 0, rows = 0, cols = 1;
    std::vector<float> w, m, v;
  };

  static uint64_t Hash(const std::string& s) {
    uint64_t h = 1469598103934665603ull;
    for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    return h;
  }

  DistTensor Tensor(const std::string& fqn, const Param& q, std::vector<float>& data) {
    std::vector<uint64_t> off(q.global.size(), 0), shape = q.global;
    off[0] = q.row0;
    shape[0] = q.rows;
    DistTensor t{fqn, DType::kF32, Shape(q.global), {}};
    t.chunks.push_back(LocalChunk{off, Shape(shape), reinterpret_cast<std::byte*>(data.data()), {}});
    return t;
  }

  void Rebuild() {
    model_sd_ = {};
    optim_sd_ = {};
    for (Param& q : params_) {
      model_sd_.tensors.push_back(Tensor(q.fqn, q, q.w));
      optim_sd_.tensors.push_back(Tensor(OptimizerStateKey(q.fqn, "exp_avg"), q, q.m));
      optim_sd_.tensors.push_back(Tensor(OptimizerStateKey(q.fqn, "exp_avg_sq"), q, q.v));
      // torch keeps Adam's step as a replicated scalar tensor per parameter.
      optim_sd_.tensors.push_back(
          WholeTensor(OptimizerStateKey(q.fqn, "step"), DType::kF32, Shape{}, reinterpret_cast<std::byte*>(&step_)));
    }
    optim_sd_.json[std::string(kParamGroupsKey)] =
        nlohmann::json::array({{{"lr", 1e-2}, {"betas", {0.9, 0.999}}, {"eps", 1e-8}, {"weight_decay", 0.0}}})
            .dump();
  }

  int rank_, world_;
  std::vector<Param> params_;
  float step_ = 0.f;
  StepDecayScheduler scheduler_;
  Cursor cursor_;
  RankRng rng_;
  StateDict model_sd_, optim_sd_;
};

// Saves everything a training loop owns at (epoch, step).
inline Status SaveTraining(Checkpointer& c, TinyTrainer& t, int64_t epoch, int64_t step, float loss) {
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
  CKPT_RETURN_IF_ERROR(c.LoadModel(t, JoinPath(*dir, "model")));
  CKPT_RETURN_IF_ERROR(c.LoadOptimizer(t.optimizer_state(), *dir, &t.scheduler()));
  CKPT_RETURN_IF_ERROR(c.LoadOnDpRanks(t.cursor(), "dataloader", *dir));
  if (same_world) CKPT_RETURN_IF_ERROR(c.LoadOnGlobalRanks(t.rng(), "rng", *dir));
  return Status();
}

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_CHECKPOINT_TRAINER_H_
