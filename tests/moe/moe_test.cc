// Mixture-of-experts adapters: per-expert Hugging Face tensors ⇄ grouped
// tensors, in files and in memory under expert parallelism; FP8 block
// dequantization.
#include "ckpt/moe.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>

#include "ckpt/checkpointer.h"
#include "ckpt/comm.h"
#include "ckpt/consolidate.h"
#include "ckpt/hf.h"
#include "ckpt/safetensors.h"
#include "ckpt/sharded.h"
#include "test_util.h"

namespace ckpt {
namespace {

using testing::StatusIs;
using testing::TempDir;

constexpr uint32_t kLayers = 3;
constexpr uint32_t kExperts = 8;
constexpr uint64_t kDim = 16;
constexpr uint64_t kInter = 12;

struct HfModel {
  std::map<std::string, std::vector<std::byte>> tensors;
  std::map<std::string, Shape> shapes;
};

std::vector<std::byte> Random(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::byte> b(n);
  for (auto& x : b) x = static_cast<std::byte>(rng() & 0xff);
  return b;
}

std::string Config(const MoeAdapter& a, uint32_t layers, uint32_t experts) {
  return "{\"model_type\": \"" + a.name + "\", \"num_hidden_layers\": " + std::to_string(layers) +
         ", \"" + a.expert_count_keys.front() + "\": " + std::to_string(experts) +
         ", \"hidden_size\": " + std::to_string(kDim) + "}";
}

// A BF16 model: layer 0 dense, layers 1.. MoE; embeddings, attention, a router
// and (for DeepSeek) a shared expert pass through. Two files and an index.
HfModel WriteHfModel(const std::string& dir, const MoeAdapter& a, uint32_t experts = kExperts) {
  HfModel m;
  uint64_t seed = 1;
  auto add = [&](const std::string& name, Shape shape) {
    m.tensors[name] = Random(shape.NumBytes(DType::kBF16).value(), seed++);
    m.shapes[name] = shape;
  };
  add("model.embed_tokens.weight", Shape({50, kDim}));
  add("model.layers.0.mlp.gate_proj.weight", Shape({kInter, kDim}));
  for (uint32_t l = 0; l < kLayers; ++l)
    add("model.layers." + std::to_string(l) + ".self_attn.q_proj.weight", Shape({kDim, kDim}));
  for (uint32_t l = 1; l < kLayers; ++l) {
    const std::string moe = a.name == "mixtral" ? ".block_sparse_moe" : ".mlp";
    add("model.layers." + std::to_string(l) + moe + ".gate.weight", Shape({experts, kDim}));
    if (a.name == "deepseek_v3")
      add("model.layers." + std::to_string(l) + ".mlp.shared_experts.up_proj.weight",
          Shape({kInter, kDim}));
    for (uint32_t e = 0; e < experts; ++e) {
      add(HfExpertName(a, l, e, MoeProj::kGate), Shape({kInter, kDim}));
      add(HfExpertName(a, l, e, MoeProj::kUp), Shape({kInter, kDim}));
      add(HfExpertName(a, l, e, MoeProj::kDown), Shape({kDim, kInter}));
    }
  }
  std::vector<TensorData> f1, f2;
  HfIndex index;
  size_t i = 0;
  for (const auto& [name, bytes] : m.tensors) {
    const bool first = i++ % 2 == 0;
    (first ? f1 : f2).push_back(TensorData{name, DType::kBF16, m.shapes[name], bytes});
    index.weight_map[name] =
        first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  EXPECT_TRUE(PosixStorage()->MakeDirs(dir).ok());
  EXPECT_TRUE(
      WriteSafetensors(*PosixStorage(), JoinPath(dir, "model-00001-of-00002.safetensors"), f1)
          .ok());
  EXPECT_TRUE(
      WriteSafetensors(*PosixStorage(), JoinPath(dir, "model-00002-of-00002.safetensors"), f2)
          .ok());
  EXPECT_TRUE(
      WriteFileAtomically(*PosixStorage(), JoinPath(dir, kHfIndexName), SerializeHfIndex(index))
          .ok());
  EXPECT_TRUE(WriteFileAtomically(*PosixStorage(), JoinPath(dir, "config.json"),
                                  Config(a, kLayers, kExperts))
                  .ok());
  return m;
}

std::map<std::string, std::vector<std::byte>> ReadAll(const std::string& dir) {
  std::map<std::string, std::vector<std::byte>> out;
  Result<HfModelDir> m = HfModelDir::Open(*PosixStorage(), dir);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  if (!m.ok()) return out;
  for (const auto& [name, loc] : m->tensors()) {
    std::vector<std::byte> b(loc.info->nbytes());
    EXPECT_TRUE(m->files()[loc.file]->ReadTensor(name, b).ok());
    out[name] = std::move(b);
  }
  return out;
}

uint16_t Bf16At(const std::vector<std::byte>& b, uint64_t i) {
  uint16_t v;
  std::memcpy(&v, b.data() + 2 * i, 2);
  return v;
}

class MoeAdapters : public ::testing::TestWithParam<std::string> {};

TEST_P(MoeAdapters, FilesRoundTripBitExactly) {
  const MoeAdapter a = FindMoeAdapter(GetParam()).value();
  TempDir dir;
  const HfModel m = WriteHfModel(dir / "hf", a);
  MoeConvertStats to_grouped, to_hf;
  CKPT_ASSERT_OK(ConvertMoeDir(*PosixStorage(), dir / "hf", dir / "grouped", a,
                               MoeDirection::kToGrouped, {}, &to_grouped));
  const auto grouped = ReadAll(dir / "grouped");
  // Layer 0 is dense: only layers 1 and 2 are grouped; passthrough kept.
  EXPECT_EQ(grouped.count(GroupedGateUpName(0)), 0u);
  ASSERT_EQ(grouped.count(GroupedGateUpName(1)), 1u);
  EXPECT_EQ(grouped.size(), m.tensors.size() - 2 * 3 * kExperts + 2 * 2);
  EXPECT_EQ(grouped.at("model.layers.0.mlp.gate_proj.weight"),
            m.tensors.at("model.layers.0.mlp.gate_proj.weight"));
  // The layout, element by element.
  for (uint32_t l = 1; l < kLayers; ++l) {
    const auto& gu = grouped.at(GroupedGateUpName(l));
    const auto& dn = grouped.at(GroupedDownName(l));
    for (uint32_t e = 0; e < kExperts; ++e) {
      const auto& g = m.tensors.at(HfExpertName(a, l, e, MoeProj::kGate));
      const auto& u = m.tensors.at(HfExpertName(a, l, e, MoeProj::kUp));
      const auto& d = m.tensors.at(HfExpertName(a, l, e, MoeProj::kDown));
      for (uint64_t r = 0; r < kDim; ++r) {
        for (uint64_t i = 0; i < kInter; ++i) {
          ASSERT_EQ(Bf16At(gu, (e * kDim + r) * 2 * kInter + i), Bf16At(g, i * kDim + r));
          ASSERT_EQ(Bf16At(gu, (e * kDim + r) * 2 * kInter + kInter + i), Bf16At(u, i * kDim + r));
          ASSERT_EQ(Bf16At(dn, (e * kInter + i) * kDim + r), Bf16At(d, r * kInter + i));
        }
      }
    }
  }
  CKPT_ASSERT_OK(ConvertMoeDir(*PosixStorage(), dir / "grouped", dir / "back", a,
                               MoeDirection::kToHf, {}, &to_hf));
  const auto back = ReadAll(dir / "back");
  ASSERT_EQ(back.size(), m.tensors.size());
  for (const auto& [name, bytes] : m.tensors) EXPECT_EQ(back.at(name), bytes) << name;
  EXPECT_EQ(ReadFileToString(*PosixStorage(), dir / "back/config.json").value(),
            Config(a, kLayers, kExperts));
  // Export transient memory: one expert projection (the grouped file is mapped).
  const uint64_t expert = kDim * kInter * 2;
  EXPECT_EQ(to_hf.largest_expert, expert);
  EXPECT_EQ(to_hf.peak_transient, expert);
  EXPECT_EQ(to_grouped.peak_transient, 2 * expert);  // one expert's [dim, 2·inter] block
}

INSTANTIATE_TEST_SUITE_P(All, MoeAdapters,
                         ::testing::Values("mixtral", "qwen3_moe", "deepseek_v3"));

TEST(Moe, ConfigAndTensorsMustAgree) {
  const MoeAdapter a = FindMoeAdapter("qwen3_moe").value();
  EXPECT_THAT(FindMoeAdapter("gpt_oss"), StatusIs(StatusCode::kNotFound, "mixtral"));
  TempDir dir;
  WriteHfModel(dir / "hf", a, 6);  // the config says 8 experts
  Status s = ConvertMoeDir(*PosixStorage(), dir / "hf", dir / "out", a, MoeDirection::kToGrouped);
  EXPECT_THAT(
      s, StatusIs(StatusCode::kInvalidArgument,
                  "layer 1 lacks 'model.layers.1.mlp.experts.6.gate_proj.weight' (config.json says "
                  "num_experts = 8"));
  EXPECT_FALSE(Exists(*PosixStorage(), dir / "out").value());
  // More layers in the tensors than the config has.
  CKPT_ASSERT_OK(WriteFileAtomically(*PosixStorage(), dir / "hf/config.json", Config(a, 2, 6)));
  s = ConvertMoeDir(*PosixStorage(), dir / "hf", dir / "out", a, MoeDirection::kToGrouped);
  EXPECT_THAT(s, StatusIs(StatusCode::kInvalidArgument,
                          "is in layer 2 but config.json says num_hidden_layers = 2"));
  // No expert count at all.
  CKPT_ASSERT_OK(
      WriteFileAtomically(*PosixStorage(), dir / "hf/config.json", "{\"num_hidden_layers\": 3}"));
  s = ConvertMoeDir(*PosixStorage(), dir / "hf", dir / "out", a, MoeDirection::kToGrouped);
  EXPECT_THAT(s, StatusIs(StatusCode::kInvalidArgument, "no num_experts"));
  // Mixtral names in a Qwen conversion: nothing to group.
  const MoeAdapter mixtral = FindMoeAdapter("mixtral").value();
  CKPT_ASSERT_OK(
      WriteFileAtomically(*PosixStorage(), dir / "hf/config.json", Config(mixtral, 3, 6)));
  s = ConvertMoeDir(*PosixStorage(), dir / "hf", dir / "out", mixtral, MoeDirection::kToGrouped);
  EXPECT_THAT(s, StatusIs(StatusCode::kInvalidArgument, "no mixtral expert tensors"));
}

// A few empty grouped tensors that claim a million experts: refused before
// 60 million per-expert tensors are planned.
TEST(Moe, GroupedTensorsThatExpandToTooManyExpertTensorsAreRefused) {
  const MoeAdapter a = FindMoeAdapter("qwen3_moe").value();
  std::map<std::string, TensorMeta> grouped;
  for (uint32_t l = 0; l < 20; ++l) {
    grouped[GroupedGateUpName(l)] = TensorMeta{DType::kBF16, Shape({1000000, 0, 0})};
    grouped[GroupedDownName(l)] = TensorMeta{DType::kBF16, Shape({1000000, 0, 0})};
  }
  Result<MoePlan> p = PlanGroupedToHf(a, MoeConfig{20, 1000000}, grouped, "in/model.safetensors");
  EXPECT_THAT(p,
              StatusIs(StatusCode::kInvalidArgument,
                       "in/model.safetensors: 20 grouped layers of 1000000 experts (num_experts) "
                       "expand to 60000000 per-expert tensors, more than 1048576"));
}

// Grouped memory on `world` expert-parallel ranks (optionally each expert
// range further split in two on the hidden dimension), loaded from the HF
// directory through HF views, then saved through the same views and
// consolidated: bit-exact, and every rank reads exactly the bytes it holds.
void ExpertParallelRoundTrip(const MoeAdapter& a, int world, bool split_hidden) {
  SCOPED_TRACE(a.name + " on " + std::to_string(world) + " ranks" +
               (split_hidden ? ", hidden split" : ""));
  TempDir dir;
  const HfModel m = WriteHfModel(dir / "hf", a);
  const MoeConfig config{kLayers, kExperts};
  const int ep = split_hidden ? world / 2 : world;
  auto comms = NewThreadCommunicators(world);
  std::vector<std::string> errors(world, "OK");
  std::vector<LoadStats> stats(world);
  std::vector<std::map<std::string, std::vector<std::byte>>> memory(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      const uint64_t per = kExperts / static_cast<uint64_t>(ep);
      const uint64_t e0 = static_cast<uint64_t>(r % ep) * per;
      const uint64_t h = split_hidden ? static_cast<uint64_t>(r / ep) : 0;
      StateDict grouped;
      auto& mem = memory[r];
      for (uint32_t l = 1; l < kLayers; ++l) {
        // gate_and_up [E, dim, 2I] split on dim; down_projs [E, I, dim] split on dim (the last
        // axis).
        const uint64_t rows = split_hidden ? kDim / 2 : kDim;
        Shape gs({per, rows, 2 * kInter}), ds({per, kInter, rows});
        auto& gu = mem[GroupedGateUpName(l)];
        auto& dn = mem[GroupedDownName(l)];
        gu.assign(gs.NumBytes(DType::kBF16).value(), std::byte{0});
        dn.assign(ds.NumBytes(DType::kBF16).value(), std::byte{0});
        grouped.tensors.push_back(DistTensor{GroupedGateUpName(l),
                                             DType::kBF16,
                                             Shape({kExperts, kDim, 2 * kInter}),
                                             {LocalChunk{{e0, h * rows, 0}, gs, gu.data(), {}}}});
        grouped.tensors.push_back(DistTensor{GroupedDownName(l),
                                             DType::kBF16,
                                             Shape({kExperts, kInter, kDim}),
                                             {LocalChunk{{e0, 0, h * rows}, ds, dn.data(), {}}}});
      }
      // Passthrough tensors: rank 0 of each hidden half... simply replicated everywhere.
      for (const auto& [name, bytes] : m.tensors) {
        if (name.find(".experts.") != std::string::npos) continue;
        auto& b = mem[name];
        b.assign(bytes.size(), std::byte{0});
        grouped.tensors.push_back(WholeTensor(name, DType::kBF16, m.shapes.at(name), b.data()));
      }
      Result<StateDict> views = HfViewsOfGrouped(a, config, grouped);
      if (!views.ok()) {
        errors[r] = views.status().ToString();
        return;
      }
      Status s = LoadSharded(*comms[r], *PosixStorage(), dir / "hf", *views, {}, &stats[r]);
      if (s.ok()) s = SaveSharded(*comms[r], *PosixStorage(), dir / "dcp", *views);
      if (s.ok()) s = Consolidate(*comms[r], *PosixStorage(), dir / "dcp", dir / "out");
      errors[r] = s.ToString();
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) ASSERT_EQ(errors[r], "OK") << "rank " << r;
  // Each rank's grouped memory holds its experts, laid out as documented.
  for (int r = 0; r < world; ++r) {
    const uint64_t per = kExperts / static_cast<uint64_t>(ep);
    const uint64_t e0 = static_cast<uint64_t>(r % ep) * per;
    const uint64_t rows = split_hidden ? kDim / 2 : kDim;
    const uint64_t h0 = split_hidden ? static_cast<uint64_t>(r / ep) * rows : 0;
    for (uint32_t l = 1; l < kLayers; ++l) {
      const auto& gu = memory[r].at(GroupedGateUpName(l));
      const auto& dn = memory[r].at(GroupedDownName(l));
      for (uint64_t k = 0; k < per; ++k) {
        const auto& g =
            m.tensors.at(HfExpertName(a, l, static_cast<uint32_t>(e0 + k), MoeProj::kGate));
        const auto& u =
            m.tensors.at(HfExpertName(a, l, static_cast<uint32_t>(e0 + k), MoeProj::kUp));
        const auto& d =
            m.tensors.at(HfExpertName(a, l, static_cast<uint32_t>(e0 + k), MoeProj::kDown));
        for (uint64_t rr = 0; rr < rows; ++rr) {
          for (uint64_t i = 0; i < kInter; ++i) {
            ASSERT_EQ(Bf16At(gu, (k * rows + rr) * 2 * kInter + i), Bf16At(g, i * kDim + h0 + rr));
            ASSERT_EQ(Bf16At(gu, (k * rows + rr) * 2 * kInter + kInter + i),
                      Bf16At(u, i * kDim + h0 + rr));
            ASSERT_EQ(Bf16At(dn, (k * kInter + i) * rows + rr), Bf16At(d, (h0 + rr) * kInter + i));
          }
        }
      }
    }
    // Bytes read = bytes held: its experts' share plus the replicated tensors.
    uint64_t passthrough = 0;
    for (const auto& [name, bytes] : m.tensors) {
      if (name.find(".experts.") == std::string::npos) passthrough += bytes.size();
    }
    const uint64_t experts = (kLayers - 1) * per * 3 * kInter * rows * 2;
    EXPECT_EQ(stats[r].bytes_needed, experts + passthrough) << "rank " << r;
    EXPECT_EQ(stats[r].bytes_read, stats[r].bytes_needed) << "rank " << r;
  }
  // Saved through the views and consolidated: the original, bit for bit.
  const auto out = ReadAll(dir / "out");
  ASSERT_EQ(out.size(), m.tensors.size());
  for (const auto& [name, bytes] : m.tensors) EXPECT_EQ(out.at(name), bytes) << name;
}

TEST(Moe, ExpertParallelLoadSaveRoundTrip) {
  for (const char* name : {"mixtral", "qwen3_moe", "deepseek_v3"}) {
    const MoeAdapter a = FindMoeAdapter(name).value();
    for (int world : {1, 2, 4}) ExpertParallelRoundTrip(a, world, false);
  }
  ExpertParallelRoundTrip(FindMoeAdapter("deepseek_v3").value(), 4, true);
}

// ---------------------------------------------------------------- FP8

// F8_E4M3 bytes with exactly known values.
struct Fp8Value {
  uint8_t byte;
  float value;
};
constexpr Fp8Value kFp8[] = {{0x38, 1.0f}, {0x40, 2.0f},  {0x3c, 1.5f},    {0xb8, -1.0f},
                             {0x00, 0.0f}, {0x7e, 448.f}, {0x01, 0x1p-9f}, {0x0f, 0x1.ep-6f}};

// Scales per 128×128 block of a [130, 260] weight: 2 × 3 blocks, the last
// row and column of blocks partial.
constexpr float kScales[2][3] = {{0.5f, 3.0f, 0.1f}, {4.0f, 1.0f, 0.25f}};

// The upper half of a float32 that bf16 holds exactly.
uint16_t Bf16Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  EXPECT_EQ(u & 0xffff, 0u) << f;
  return static_cast<uint16_t>(u >> 16);
}

TEST(Fp8, BlockDequantizationIsExactIncludingPartialBlocks) {
  TempDir dir;
  const uint64_t R = 130, C = 260;
  std::vector<uint8_t> w(R * C);
  for (uint64_t i = 0; i < R; ++i) {
    for (uint64_t j = 0; j < C; ++j) w[i * C + j] = kFp8[(i * 7 + j * 3) % std::size(kFp8)].byte;
  }
  std::vector<float> scales(6);
  std::memcpy(scales.data(), kScales, sizeof kScales);
  const std::vector<std::byte> extra = Random(8, 5);
  std::vector<TensorData> t = {
      {"model.layers.0.mlp.down_proj.weight", DType::kF8_E4M3, Shape({R, C}),
       std::as_bytes(std::span<const uint8_t>(w))},
      {"model.layers.0.mlp.down_proj.weight_scale_inv", DType::kF32, Shape({2, 3}),
       std::as_bytes(std::span<const float>(scales))},
      {"model.norm.weight", DType::kBF16, Shape({4}), extra},
  };
  CKPT_ASSERT_OK(WriteSafetensors(*PosixStorage(), dir / "model.safetensors", t));
  // Expected: float32(w) × scale, then bf16 (nearest even). The products
  // are exact in bf16 except in the 0.1 block, whose values are worked out:
  // 0.1f = 0x3dcccccd.
  auto expected = [&](uint64_t i, uint64_t j) -> uint16_t {
    const Fp8Value& v = kFp8[(i * 7 + j * 3) % std::size(kFp8)];
    const float scale = kScales[i / 128][j / 128];
    if (scale != 0.1f) return Bf16Bits(v.value * scale);
    switch (v.byte) {
      case 0x38:
        return 0x3dcd;  // 0x3dcccccd rounds up
      case 0x40:
        return 0x3e4d;  // 0x3e4ccccd
      case 0x3c:
        return 0x3e1a;  // 0.15f = 0x3e19999a
      case 0xb8:
        return 0xbdcd;
      case 0x00:
        return 0x0000;
      case 0x7e:
        return 0x4233;  // 44.8f = 0x42333333 rounds down
      case 0x01:
        return 0x394d;  // 0x394ccccd
      default:
        return 0x3b40;  // 15·2^-9 × 0.1f = 0x3b400000 in float32, exact in bf16
    }
  };
  // Two ranks, rows split at 65: every box crosses block edges.
  auto comms = NewThreadCommunicators(2);
  std::vector<std::vector<uint16_t>> got(2, std::vector<uint16_t>(65 * C));
  std::vector<std::vector<float>> got32(2, std::vector<float>(65 * C));
  std::vector<std::string> errors(2);
  std::vector<LoadStats> stats(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      std::vector<std::byte> norm(8);
      StateDict sd;
      sd.tensors.push_back(DistTensor{"model.layers.0.mlp.down_proj.weight",
                                      DType::kBF16,
                                      Shape({R, C}),
                                      {LocalChunk{{static_cast<uint64_t>(r) * 65, 0},
                                                  Shape({65, C}),
                                                  reinterpret_cast<std::byte*>(got[r].data()),
                                                  {}}}});
      sd.tensors.push_back(WholeTensor("model.norm.weight", DType::kBF16, Shape({4}), norm.data()));
      LoadOptions o;
      o.dequantize_fp8 = true;
      Status s = LoadSharded(*comms[r], *PosixStorage(), dir.path(), sd, o, &stats[r]);
      if (s.ok()) {
        sd.tensors[0].dtype = DType::kF32;
        sd.tensors[0].chunks[0].data = reinterpret_cast<std::byte*>(got32[r].data());
        s = LoadSharded(*comms[r], *PosixStorage(), dir.path(), sd, o);
      }
      errors[r] = s.ToString();
    });
  }
  for (auto& th : threads) th.join();
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(errors[r], "OK");
    EXPECT_TRUE(stats[r].unexpected_keys.empty());  // the scales were consumed
    for (uint64_t i = 0; i < 65; ++i) {
      for (uint64_t j = 0; j < C; ++j) {
        const uint64_t gi = static_cast<uint64_t>(r) * 65 + i;
        const Fp8Value& v = kFp8[(gi * 7 + j * 3) % std::size(kFp8)];
        ASSERT_EQ(got32[r][i * C + j], v.value * kScales[gi / 128][j / 128]) << gi << "," << j;
        ASSERT_EQ(got[r][i * C + j], expected(gi, j)) << gi << "," << j;
      }
    }
  }
}

TEST(Fp8, WithoutScalesOrWithoutTheOptionItIsRefused) {
  TempDir dir;
  std::vector<uint8_t> w(4 * 4, 0x38);
  std::vector<float> bad_scale(4, 1.f);
  std::vector<TensorData> t = {
      {"a.weight", DType::kF8_E4M3, Shape({4, 4}), std::as_bytes(std::span<const uint8_t>(w))},
      {"a.weight_scale_inv", DType::kF32, Shape({2, 2}),
       std::as_bytes(std::span<const float>(bad_scale))},
      {"b.weight", DType::kF8_E4M3, Shape({4, 4}), std::as_bytes(std::span<const uint8_t>(w))},
  };
  CKPT_ASSERT_OK(WriteSafetensors(*PosixStorage(), dir / "model.safetensors", t));
  auto comms = NewThreadCommunicators(1);
  std::vector<uint16_t> out(16);
  auto load = [&](const std::string& name, bool dequant) {
    StateDict sd;
    sd.tensors.push_back(
        WholeTensor(name, DType::kBF16, Shape({4, 4}), reinterpret_cast<std::byte*>(out.data())));
    LoadOptions o;
    o.dequantize_fp8 = dequant;
    o.allow_unexpected = true;
    return LoadSharded(*comms[0], *PosixStorage(), dir.path(), sd, o);
  };
  Status s = load("a.weight", false);
  EXPECT_THAT(s, StatusIs(StatusCode::kInvalidArgument,
                          "'a.weight' is F8_E4M3 [4, 4] in the checkpoint but BF16"));
  s = load("a.weight", true);
  EXPECT_THAT(s, StatusIs(StatusCode::kInvalidArgument,
                          "'a.weight_scale_inv' is F32 [2, 2]; dequantizing FP8 weight 'a.weight' "
                          "[4, 4] needs F32 [1, 1]"));
  s = load("b.weight", true);
  EXPECT_THAT(s, StatusIs(StatusCode::kInvalidArgument,
                          "FP8 weight 'b.weight' has no 'b.weight_scale_inv'"));
}

// The Checkpointer with a grouped model: a DeepSeek-V3-style FP8 base model
// loads into grouped BF16 memory on 2 expert-parallel ranks (dequantized,
// scales consumed), and the final save exports per-expert HF tensors.
class GroupedModel : public Model {
 public:
  GroupedModel(uint64_t e0, uint64_t per) {
    gu_.assign(per * kDim * 2 * kInter, 0);
    dn_.assign(per * kInter * kDim, 0);
    norm_.assign(kDim, 0);
    sd_.tensors.push_back(DistTensor{GroupedGateUpName(1),
                                     DType::kBF16,
                                     Shape({4, kDim, 2 * kInter}),
                                     {LocalChunk{{e0, 0, 0},
                                                 Shape({per, kDim, 2 * kInter}),
                                                 reinterpret_cast<std::byte*>(gu_.data()),
                                                 {}}}});
    sd_.tensors.push_back(DistTensor{GroupedDownName(1),
                                     DType::kBF16,
                                     Shape({4, kInter, kDim}),
                                     {LocalChunk{{e0, 0, 0},
                                                 Shape({per, kInter, kDim}),
                                                 reinterpret_cast<std::byte*>(dn_.data()),
                                                 {}}}});
    sd_.tensors.push_back(WholeTensor("model.norm.weight", DType::kBF16, Shape({kDim}),
                                      reinterpret_cast<std::byte*>(norm_.data())));
  }
  StateDict& state_dict() override { return sd_; }
  std::vector<uint16_t> gu_, dn_, norm_;

 private:
  StateDict sd_;
};

TEST(Moe, CheckpointerLoadsFp8BaseIntoGroupedExpertsAndExportsHf) {
  TempDir tmp;
  const MoeAdapter a = FindMoeAdapter("deepseek_v3").value();
  const std::string base = tmp / "base";
  CKPT_ASSERT_OK(PosixStorage()->MakeDirs(base));
  // Expert e, projection p: FP8 bytes 0x38 (1.0) or 0x40 (2.0), scale 2^(e+p).
  std::vector<std::vector<uint8_t>> w;
  std::vector<std::vector<float>> sc;
  std::vector<TensorData> t;
  w.reserve(12);
  sc.reserve(12);
  for (uint32_t e = 0; e < 4; ++e) {
    for (MoeProj p : {MoeProj::kGate, MoeProj::kUp, MoeProj::kDown}) {
      const Shape shape = p == MoeProj::kDown ? Shape({kDim, kInter}) : Shape({kInter, kDim});
      w.emplace_back(kDim * kInter);
      for (size_t i = 0; i < w.back().size(); ++i) w.back()[i] = (i % 3 == 0) ? 0x40 : 0x38;
      sc.push_back({std::ldexp(1.f, static_cast<int>(e) + static_cast<int>(p))});
      const std::string name = HfExpertName(a, 1, e, p);
      t.push_back(
          {name, DType::kF8_E4M3, shape, std::as_bytes(std::span<const uint8_t>(w.back()))});
      t.push_back({name + "_scale_inv", DType::kF32, Shape({1, 1}),
                   std::as_bytes(std::span<const float>(sc.back()))});
    }
  }
  std::vector<uint16_t> norm(kDim, 0x3f80);  // 1.0
  t.push_back({"model.norm.weight", DType::kBF16, Shape({kDim}),
               std::as_bytes(std::span<const uint16_t>(norm))});
  CKPT_ASSERT_OK(WriteSafetensors(*PosixStorage(), base + "/model.safetensors", t));
  CKPT_ASSERT_OK(WriteFileAtomically(
      *PosixStorage(), base + "/config.json",
      R"({"model_type": "deepseek_v3", "num_hidden_layers": 2, "n_routed_experts": 4})"));
  CheckpointingConfig cfg;
  cfg.checkpoint_dir = tmp / "ckpts";
  cfg.timeout = std::chrono::seconds(60);
  cfg.dequantize_base_fp8 = true;
  cfg.save_consolidated = ConsolidationMode::kFinal;
  std::vector<std::string> errors(2);
  auto comms = NewThreadCommunicators(2);
  std::vector<std::unique_ptr<GroupedModel>> models(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      auto run = [&]() -> Status {
        models[r] = std::make_unique<GroupedModel>(static_cast<uint64_t>(r) * 2, 2);
        CKPT_ASSIGN_OR_RETURN(auto hf, MoeHfModel::Create(*models[r], a, MoeConfig{2, 4}));
        CKPT_ASSIGN_OR_RETURN(
            auto c, Checkpointer::Create(cfg, {.dp = 0, .ep = r, .ep_size = 2}, *comms[r]));
        CKPT_ASSIGN_OR_RETURN(const LoadStats stats, c->LoadBaseModel(*hf, {.model_name = base}));
        if (!stats.unexpected_keys.empty())
          return InternalError("unexpected: " + stats.unexpected_keys[0]);
        CKPT_ASSIGN_OR_RETURN(std::string dir, c->Reserve(0, 1));
        CKPT_RETURN_IF_ERROR(c->SaveModel(*hf, dir, {.is_final_checkpoint = true}));
        return c->Publish(dir, {});
      };
      errors[r] = run().ToString();
    });
  }
  for (auto& th : threads) th.join();
  for (int r = 0; r < 2; ++r) ASSERT_EQ(errors[r], "OK") << r;
  // bf16 of (1 or 2) × 2^(e+p): exponent bits only.
  auto bf16 = [](float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    return static_cast<uint16_t>(u >> 16);
  };
  for (int r = 0; r < 2; ++r) {
    const GroupedModel& m = *models[r];
    for (uint64_t k = 0; k < 2; ++k) {
      const int e = r * 2 + static_cast<int>(k);
      for (uint64_t row = 0; row < kDim; ++row) {
        for (uint64_t i = 0; i < kInter; ++i) {
          const float g = ((i * kDim + row) % 3 == 0 ? 2.f : 1.f) * std::ldexp(1.f, e);
          const float u = ((i * kDim + row) % 3 == 0 ? 2.f : 1.f) * std::ldexp(1.f, e + 1);
          const float d = ((row * kInter + i) % 3 == 0 ? 2.f : 1.f) * std::ldexp(1.f, e + 2);
          ASSERT_EQ(m.gu_[(k * kDim + row) * 2 * kInter + i], bf16(g));
          ASSERT_EQ(m.gu_[(k * kDim + row) * 2 * kInter + kInter + i], bf16(u));
          ASSERT_EQ(m.dn_[(k * kInter + i) * kDim + row], bf16(d));
        }
      }
    }
    EXPECT_EQ(m.norm_, norm);
  }
  // Resume on 4 expert-parallel ranks (one expert each) with asynchronous
  // saves: load step 1, save step 2 in the background while the memory is
  // overwritten, load step 2 back.
  auto check = [&](const GroupedModel& m, int e) -> Status {
    for (uint64_t row = 0; row < kDim; ++row) {
      for (uint64_t i = 0; i < kInter; ++i) {
        const float g = ((i * kDim + row) % 3 == 0 ? 2.f : 1.f) * std::ldexp(1.f, e);
        const float u = ((i * kDim + row) % 3 == 0 ? 2.f : 1.f) * std::ldexp(1.f, e + 1);
        const float d = ((row * kInter + i) % 3 == 0 ? 2.f : 1.f) * std::ldexp(1.f, e + 2);
        uint32_t gb, ub, db;
        std::memcpy(&gb, &g, 4);
        std::memcpy(&ub, &u, 4);
        std::memcpy(&db, &d, 4);
        if (m.gu_[row * 2 * kInter + i] != gb >> 16 ||
            m.gu_[row * 2 * kInter + kInter + i] != ub >> 16 || m.dn_[i * kDim + row] != db >> 16) {
          return InternalError("expert " + std::to_string(e) + " differs");
        }
      }
    }
    return Status();
  };
  cfg.is_async = true;
  cfg.save_consolidated = ConsolidationMode::kNever;
  auto comms4 = NewThreadCommunicators(4);
  std::vector<std::string> errors4(4);
  threads.clear();
  for (int r = 0; r < 4; ++r) {
    threads.emplace_back([&, r] {
      auto run = [&]() -> Status {
        GroupedModel m(static_cast<uint64_t>(r), 1);
        CKPT_ASSIGN_OR_RETURN(auto hf, MoeHfModel::Create(m, a, MoeConfig{2, 4}));
        CKPT_ASSIGN_OR_RETURN(
            auto c, Checkpointer::Create(cfg, {.dp = 0, .ep = r, .ep_size = 4}, *comms4[r]));
        CKPT_RETURN_IF_ERROR(c->LoadModel(*hf, tmp / "ckpts/epoch_0_step_1/model"));
        CKPT_RETURN_IF_ERROR(check(m, r));
        CKPT_ASSIGN_OR_RETURN(std::string dir, c->Reserve(0, 2));
        CKPT_RETURN_IF_ERROR(c->SaveModel(*hf, dir));
        std::fill(m.gu_.begin(), m.gu_.end(), 0);
        std::fill(m.dn_.begin(), m.dn_.end(), 0);
        CKPT_RETURN_IF_ERROR(c->Publish(dir, {}));
        CKPT_RETURN_IF_ERROR(c->AsyncWait());
        CKPT_RETURN_IF_ERROR(c->LoadModel(*hf, dir));
        CKPT_RETURN_IF_ERROR(check(m, r));
        return c->Close();
      };
      errors4[r] = run().ToString();
    });
  }
  for (auto& th : threads) th.join();
  for (int r = 0; r < 4; ++r) EXPECT_EQ(errors4[r], "OK") << r;

  // The export: per-expert names, no scales, the dequantized values.
  auto out = ReadAll(tmp / "ckpts/epoch_0_step_1/model/consolidated");
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out.size(), 4u * 3 + 1);
  const auto& down3 = out.at(HfExpertName(a, 1, 3, MoeProj::kDown));
  EXPECT_EQ(Bf16At(down3, 0), bf16(2.f * std::ldexp(1.f, 5)));
  EXPECT_EQ(Bf16At(down3, 1), bf16(std::ldexp(1.f, 5)));
}

TEST(Moe, CliConvertBothWays) {
  TempDir tmp;
  const MoeAdapter a = FindMoeAdapter("mixtral").value();
  const HfModel m = WriteHfModel(tmp / "hf", a);
  auto run = [](const std::string& args) {
    const std::string cmd = std::string(CKPT_BINARY) + " " + args + " > /dev/null 2>&1";
    return std::system(cmd.c_str());
  };
  ASSERT_EQ(run("convert --adapter mixtral --to grouped " + tmp / "hf" + " " + tmp / "grouped"), 0);
  ASSERT_EQ(run("verify " + tmp / "grouped"), 0);
  ASSERT_EQ(run("convert --adapter mixtral --to hf --max-shard-size 4000 " + tmp / "grouped" + " " +
                tmp / "back"),
            0);
  const auto back = ReadAll(tmp / "back");
  ASSERT_EQ(back.size(), m.tensors.size());
  for (const auto& [name, bytes] : m.tensors) EXPECT_EQ(back.at(name), bytes) << name;
  EXPECT_NE(run("convert --adapter gpt_oss --to hf " + tmp / "grouped" + " " + tmp / "x"), 0);
  EXPECT_NE(run("convert --adapter mixtral " + tmp / "grouped" + " " + tmp / "x"), 0);  // no --to
  EXPECT_NE(run("convert --adapter mixtral --to hf " + tmp / "hf" + " " + tmp / "x"),
            0);  // not grouped
  EXPECT_FALSE(Exists(*PosixStorage(), tmp / "x").value());
}

}  // namespace
}  // namespace ckpt
