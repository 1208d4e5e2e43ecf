// `ckpt sample DIR`: a small Llama-shaped Hugging Face model directory with
// deterministic bf16 weights, for trying the other commands.
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "ckpt/hf.h"
#include "ckpt/safetensors.h"
#include "ckpt/sharded.h"
#include "cli/commands.h"
#include "io/staged_dir.h"

namespace ckpt::cli {
namespace {

struct SampleTensor {
  std::string name;
  Shape shape;
  std::vector<std::byte> data;
};

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// bf16 values in about [-0.05, 0.05): a float32's top 16 bits.
std::vector<std::byte> RandomBf16(uint64_t n, uint64_t* rng) {
  std::vector<std::byte> out(n * 2);
  for (uint64_t i = 0; i < n; ++i) {
    float f = (static_cast<float>(SplitMix64(rng) >> 40) / 16777216.0f - 0.5f) * 0.1f;
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    uint16_t h = static_cast<uint16_t>(bits >> 16);
    out[2 * i] = static_cast<std::byte>(h & 0xFF);
    out[2 * i + 1] = static_cast<std::byte>(h >> 8);
  }
  return out;
}

// Each rank holds a dim-0 slice of every tensor, as FSDP would.
int WriteSharded(Storage& fs, const SampleOptions& o, const std::vector<SampleTensor>& ts) {
  auto comms = NewThreadCommunicators(o.ranks);
  std::vector<Status> results(static_cast<size_t>(o.ranks));
  std::vector<std::thread> threads;
  for (int r = 0; r < o.ranks; ++r) {
    threads.emplace_back([&, r] {
      StateDict sd;
      for (const SampleTensor& t : ts) {
        const uint64_t rows = t.shape[0], step = (rows + static_cast<uint64_t>(o.ranks) - 1) /
                                                 static_cast<uint64_t>(o.ranks);
        const uint64_t begin = std::min(rows, step * static_cast<uint64_t>(r)),
                       end = std::min(rows, begin + step);
        std::vector<uint64_t> dims = t.shape.dims(), offsets(dims.size(), 0);
        dims[0] = end - begin;
        offsets[0] = begin;
        const uint64_t row_bytes = t.data.size() / rows;
        auto* data = const_cast<std::byte*>(t.data.data()) + begin * row_bytes;
        sd.tensors.push_back({t.name, DType::kBF16, t.shape, {{offsets, Shape(dims), data, {}}}});
      }
      results[static_cast<size_t>(r)] =
          SaveSharded(*comms[static_cast<size_t>(r)], fs, o.out_dir, sd);
    });
  }
  for (auto& t : threads) t.join();
  if (!results[0].ok()) {
    std::fprintf(stderr, "ckpt sample: %s\n", results[0].ToString().c_str());
    return 1;
  }
  std::printf("wrote %s: sharded checkpoint of %zu tensors saved by %d ranks\n", o.out_dir.c_str(),
              ts.size(), o.ranks);
  return 0;
}

}  // namespace

int RunSample(const SampleOptions& o) {
  if (o.layers < 1 || o.layers > kMaxSampleLayers || o.hidden < 8 || o.hidden % 8 != 0 ||
      o.hidden > kMaxSampleHidden || o.shards < 1 || o.ranks < 0 || o.ranks > kMaxSampleRanks) {
    std::fprintf(stderr,
                 "ckpt sample: need --layers in [1, %d], --hidden a multiple of 8 in [8, %d], "
                 "--shards >= 1 and "
                 "--ranks in [0, %d] (got --layers %d --hidden %d --shards %d --ranks %d)\n",
                 kMaxSampleLayers, kMaxSampleHidden, kMaxSampleRanks, o.layers, o.hidden, o.shards,
                 o.ranks);
    return 1;
  }
  const uint64_t h = static_cast<uint64_t>(o.hidden), inter = h * 8 / 3 / 8 * 8, vocab = 1024;
  // The weights are generated in memory: bound them before allocating.
  const uint64_t params =
      2 * vocab * h + h + static_cast<uint64_t>(o.layers) * (2 * h + 4 * h * h + 3 * inter * h);
  if (params * 2 > kMaxSampleBytes) {
    std::fprintf(
        stderr,
        "ckpt sample: --layers %d --hidden %d make %llu bytes of weights, more than the %llu-byte "
        "limit of a sample model\n",
        o.layers, o.hidden, static_cast<unsigned long long>(params * 2),
        static_cast<unsigned long long>(kMaxSampleBytes));
    return 1;
  }
  uint64_t rng = o.seed;
  std::vector<SampleTensor> ts;
  auto add = [&](std::string name, Shape shape) {
    uint64_t n = *shape.NumElements();
    ts.push_back({std::move(name), shape, RandomBf16(n, &rng)});
  };
  add("model.embed_tokens.weight", {vocab, h});
  for (int l = 0; l < o.layers; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {h});
    for (const char* m : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
      add(p + "self_attn." + m + ".weight", {h, h});
    }
    add(p + "post_attention_layernorm.weight", {h});
    add(p + "mlp.gate_proj.weight", {inter, h});
    add(p + "mlp.up_proj.weight", {inter, h});
    add(p + "mlp.down_proj.weight", {h, inter});
  }
  add("model.norm.weight", {h});
  add("lm_head.weight", {vocab, h});

  Storage& fs = *PosixStorage();
  if (o.ranks > 0) return WriteSharded(fs, o, ts);
  // Equal division of the tensors over the shards, in state-dict order.
  const size_t n = ts.size(), shards = std::min<size_t>(static_cast<size_t>(o.shards), n);
  HfIndex index;
  uint64_t total = 0;
  // Built in a staging directory: an existing directory is never overwritten.
  Status s = BuildDirAtomically(fs, o.out_dir, [&](const std::string& dir) -> Status {
    Status w;
    for (size_t i = 0, begin = 0; i < shards && w.ok(); ++i) {
      size_t count = n / shards + (i < n % shards ? 1 : 0);
      char name[64];
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards);
      std::vector<TensorData> part;
      for (size_t k = begin; k < begin + count; ++k) {
        part.push_back({ts[k].name, DType::kBF16, ts[k].shape, ts[k].data});
        index.weight_map[ts[k].name] = name;
        total += ts[k].data.size();
      }
      begin += count;
      w = WriteSafetensors(fs, JoinPath(dir, name), part, SafetensorsMetadata{{"format", "pt"}});
    }
    index.total_size = total;
    if (w.ok()) w = WriteFileAtomically(fs, JoinPath(dir, kHfIndexName), SerializeHfIndex(index));
    if (w.ok()) {
      nlohmann::json config = {{"architectures", {"LlamaForCausalLM"}},
                               {"model_type", "llama"},
                               {"hidden_size", h},
                               {"intermediate_size", inter},
                               {"num_hidden_layers", o.layers},
                               {"num_attention_heads", std::max<uint64_t>(1, h / 64)},
                               {"vocab_size", vocab},
                               {"torch_dtype", "bfloat16"},
                               {"tie_word_embeddings", false}};
      w = WriteFileAtomically(fs, JoinPath(dir, "config.json"), config.dump(2) + "\n");
    }
    return w;
  });
  if (!s.ok()) {
    std::fprintf(stderr, "ckpt sample: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("wrote %s: %zu tensors in %zu shards, %llu bytes of bf16 weights\n",
              o.out_dir.c_str(), n, shards, static_cast<unsigned long long>(total));
  return 0;
}

}  // namespace ckpt::cli
