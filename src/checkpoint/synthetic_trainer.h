// A deterministic synthetic training run, shared by `ckpt demo` and the
// resume tests: parameters sharded FSDP-style on dimension 0 (F32 or BF16
// weights, F32 Adam moments), synthetic gradients that depend only on the
// weight, the data-loader position and the element's global index, and a
// real Adam update. Every element's arithmetic is the same in any layout, so
// runs on different world sizes agree bit for bit, and a resumed run agrees
// with an uninterrupted one.
//
// Header-only: it is a user of the Checkpointer API (a Model), not a part
// of the library.
#ifndef CKPT_CHECKPOINT_SYNTHETIC_TRAINER_H_
#define CKPT_CHECKPOINT_SYNTHETIC_TRAINER_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ckpt/checkpointer.h"

namespace ckpt::synthetic {

inline uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// A value in [-1, 1) from the counter (no state: layout-independent).
inline float Noise(uint64_t a, uint64_t b, uint64_t c) {
  const uint64_t x = Mix(Mix(Mix(a) ^ b) ^ c);
  return static_cast<float>(static_cast<double>(x >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

inline uint64_t Hash(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h;
}

// Round to nearest even; the run makes no NaNs.
inline uint16_t ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFF + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}
inline float FromBf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct ParamSpec {
  std::string fqn;
  std::vector<uint64_t> shape;
  bool norm = false;  // starts at 1 instead of noise
};

struct TrainerOptions {
  DType weights = DType::kF32;  // kF32 or kBF16
  uint64_t seed = 7;            // of the initial weights
  uint64_t batch = 8;           // samples each step consumes
  float init_scale = 0.5f;      // initial weight = init_scale · noise
  float decay = 0.1f;           // gradient = decay · w + grad_noise · noise
  float grad_noise = 1.f;
};

// The data loader's position: samples consumed, as {"samples_seen": N}.
class SampleCursor : public Stateful {
 public:
  uint64_t position = 0;
  Result<std::string> SaveState() override {
    return nlohmann::json({{"samples_seen", position}}).dump();
  }
  Status LoadState(std::string_view s) override {
    nlohmann::json j = nlohmann::json::parse(s, nullptr, false);
    if (!j.is_object() || !j["samples_seen"].is_number_unsigned()) {
      return DataLossError("bad data-loader state '" + std::string(s.substr(0, 64)) + "'");
    }
    position = j["samples_seen"].get<uint64_t>();
    return Status();
  }
};

// One rank's part of the run.
class Trainer : public Model {
 public:
  Trainer(const std::vector<ParamSpec>& specs, int rank, int world, const TrainerOptions& o = {})
      : o_(o) {
    for (const ParamSpec& s : specs) {
      Param p;
      p.fqn = s.fqn;
      p.hash = Hash(s.fqn);
      p.global = s.shape;
      for (size_t d = 1; d < s.shape.size(); ++d) p.cols *= s.shape[d];
      const uint64_t step =
          (s.shape[0] + static_cast<uint64_t>(world) - 1) / static_cast<uint64_t>(world);
      p.row0 = std::min<uint64_t>(s.shape[0], step * static_cast<uint64_t>(rank));
      p.rows = std::min<uint64_t>(s.shape[0], p.row0 + step) - p.row0;
      const uint64_t n = p.rows * p.cols;
      p.w.resize(n * DTypeBits(o_.weights) / 8);
      p.m.assign(n, 0.f);
      p.v.assign(n, 0.f);
      for (uint64_t k = 0; k < n; ++k) {
        SetWeight(p, k, s.norm ? 1.f : o_.init_scale * Noise(o_.seed, p.hash, p.row0 * p.cols + k));
      }
      params_.push_back(std::move(p));
    }
    BuildStateDicts();
  }
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  StateDict& state_dict() override { return model_sd_; }
  StateDict& optimizer_state() { return optim_sd_; }
  SampleCursor& cursor() { return cursor_; }
  float adam_step() const { return step_; }
  // This rank's bytes of weights, and of Adam moments.
  uint64_t model_bytes() const {
    uint64_t b = 0;
    for (const Param& p : params_) b += p.w.size();
    return b;
  }
  uint64_t optimizer_bytes() const {
    uint64_t b = 0;
    for (const Param& p : params_) b += (p.m.size() + p.v.size()) * 4;
    return b;
  }

  // One Adam step at learning rate `lr`, consuming `batch` samples.
  void TrainStep(float lr) {
    const uint64_t batch = cursor_.position;
    cursor_.position += o_.batch;
    step_ += 1.f;
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    const float bc1 = 1.f - std::pow(b1, step_), bc2 = 1.f - std::pow(b2, step_);
    for (Param& p : params_) {
      for (uint64_t k = 0; k < p.m.size(); ++k) {
        float w = Weight(p, k);
        const float g = o_.decay * w + o_.grad_noise * Noise(batch, p.hash, p.row0 * p.cols + k);
        p.m[k] = b1 * p.m[k] + (1.f - b1) * g;
        p.v[k] = b2 * p.v[k] + (1.f - b2) * g * g;
        w -= lr * (p.m[k] / bc1) / (std::sqrt(p.v[k] / bc2) + eps);
        SetWeight(p, k, w);
      }
    }
  }

  // Flips the lowest bit of element `i` of parameter `param`'s weight ('w')
  // or Adam moment ('m', 'v'): a corruption a comparison must notice.
  void FlipBit(size_t param, uint64_t i, char which) {
    Param& p = params_[param];
    std::byte* at = which == 'w'   ? p.w.data() + i * (DTypeBits(o_.weights) / 8)
                    : which == 'm' ? reinterpret_cast<std::byte*>(&p.m[i])
                                   : reinterpret_cast<std::byte*>(&p.v[i]);
    *at ^= std::byte{1};
  }

  // "" when every value this rank holds equals `ref`'s, bit for bit; `ref`
  // holds the same rows or more (a world-1 run holds all).
  std::string Diff(const Trainer& ref) const {
    if (step_ != ref.step_)
      return "adam step " + std::to_string(step_) + " vs " + std::to_string(ref.step_);
    if (cursor_.position != ref.cursor_.position) return "data-loader position differs";
    const uint64_t esz = DTypeBits(o_.weights) / 8;
    for (size_t i = 0; i < params_.size(); ++i) {
      const Param& a = params_[i];
      const Param& b = ref.params_[i];
      if (a.row0 < b.row0 || a.row0 + a.rows > b.row0 + b.rows)
        return a.fqn + ": the reference lacks rows";
      const uint64_t at = (a.row0 - b.row0) * a.cols;
      for (uint64_t k = 0; k < a.m.size(); ++k) {
        if (std::memcmp(a.w.data() + k * esz, b.w.data() + (at + k) * esz, esz) != 0 ||
            std::memcmp(&a.m[k], &b.m[at + k], 4) != 0 ||
            std::memcmp(&a.v[k], &b.v[at + k], 4) != 0) {
          return a.fqn + " element " + std::to_string(a.row0 * a.cols + k) + " differs";
        }
      }
    }
    return "";
  }

 private:
  struct Param {
    std::string fqn;
    uint64_t hash = 0;
    std::vector<uint64_t> global;
    uint64_t row0 = 0, rows = 0, cols = 1;
    std::vector<std::byte> w;  // in o_.weights
    std::vector<float> m, v;
  };

  float Weight(const Param& p, uint64_t k) const {
    if (o_.weights == DType::kBF16) {
      uint16_t h;
      std::memcpy(&h, p.w.data() + k * 2, 2);
      return FromBf16(h);
    }
    float f;
    std::memcpy(&f, p.w.data() + k * 4, 4);
    return f;
  }
  void SetWeight(Param& p, uint64_t k, float f) const {
    if (o_.weights == DType::kBF16) {
      const uint16_t h = ToBf16(f);
      std::memcpy(p.w.data() + k * 2, &h, 2);
    } else {
      std::memcpy(p.w.data() + k * 4, &f, 4);
    }
  }

  void BuildStateDicts() {
    for (Param& p : params_) {
      std::vector<uint64_t> off(p.global.size(), 0), shape = p.global;
      off[0] = p.row0;
      shape[0] = p.rows;
      auto chunk = [&](void* data) {
        return LocalChunk{off, Shape(shape), static_cast<std::byte*>(data), {}};
      };
      model_sd_.tensors.push_back({p.fqn, o_.weights, Shape(p.global), {chunk(p.w.data())}});
      optim_sd_.tensors.push_back(
          {OptimizerStateKey(p.fqn, "exp_avg"), DType::kF32, Shape(p.global), {chunk(p.m.data())}});
      optim_sd_.tensors.push_back({OptimizerStateKey(p.fqn, "exp_avg_sq"),
                                   DType::kF32,
                                   Shape(p.global),
                                   {chunk(p.v.data())}});
      // torch keeps Adam's step as a replicated scalar tensor per parameter.
      optim_sd_.tensors.push_back(WholeTensor(OptimizerStateKey(p.fqn, "step"), DType::kF32,
                                              Shape{}, reinterpret_cast<std::byte*>(&step_)));
    }
    optim_sd_.json[std::string(kParamGroupsKey)] =
        nlohmann::json::array(
            {{{"lr", 1e-2}, {"betas", {0.9, 0.999}}, {"eps", 1e-8}, {"weight_decay", 0.0}}})
            .dump();
  }

  TrainerOptions o_;
  std::vector<Param> params_;
  float step_ = 0.f;
  SampleCursor cursor_;
  StateDict model_sd_, optim_sd_;
};

}  // namespace ckpt::synthetic

#endif  // CKPT_CHECKPOINT_SYNTHETIC_TRAINER_H_
