// Model save/load through the Checkpointer: the model/ layout with
// .hf_metadata and consolidate.sh, consolidation modes, base-model import,
// PEFT adapters, auxiliary and distributed state.
#include "ckpt/checkpointer.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "checkpoint/trainer.h"
#include "ckpt/hf.h"
#include "ckpt/log.h"
#include "ckpt/safetensors.h"
#include "convert/float_cast.h"
#include "engine/layouts.h"
#include "test_util.h"

namespace ckpt::testing {
namespace {

using json = nlohmann::json;

// A Hugging Face directory holding TinyModelParams in BF16 over two files,
// with config.json and a tokenizer.
void WriteBaseModel(const std::string& dir, bool with_lm_head = true) {
  Storage& st = *PosixStorage();
  ASSERT_TRUE(st.MakeDirs(dir).ok());
  std::vector<std::vector<std::byte>> keep;
  std::vector<TensorData> files[2];
  HfIndex index;
  int i = 0;
  for (const ParamDef& p : TinyModelParams()) {
    if (!with_lm_head && std::string(p.fqn) == "lm_head.weight") continue;
    Shape s(p.shape);
    const uint64_t n = *s.NumElements();
    std::vector<float> f(n);
    for (uint64_t k = 0; k < n; ++k) f[k] = Noise(3, static_cast<uint64_t>(i), k);
    std::vector<std::byte> b(n * 2);
    ASSERT_TRUE(
        CastFloats(DType::kF32,
                   AsBytes(std::string_view(reinterpret_cast<const char*>(f.data()), n * 4)),
                   DType::kBF16, b)
            .ok());
    keep.push_back(std::move(b));
    const int file = i < 3 ? 0 : 1;
    files[file].push_back(TensorData{p.fqn, DType::kBF16, s, keep.back()});
    index.weight_map[p.fqn] = "model-0000" + std::to_string(file + 1) + "-of-00002.safetensors";
    ++i;
  }
  for (int f = 0; f < 2; ++f) {
    ASSERT_TRUE(WriteSafetensors(
                    st,
                    JoinPath(dir, "model-0000" + std::to_string(f + 1) + "-of-00002.safetensors"),
                    files[f], SafetensorsMetadata{{"format", "pt"}})
                    .ok());
  }
  ASSERT_TRUE(WriteFileAtomically(st, JoinPath(dir, "model.safetensors.index.json"),
                                  SerializeHfIndex(index))
                  .ok());
  json cfg = {{"model_type", "llama"},
              {"hidden_size", 16},
              {"num_attention_heads", 2},
              {"tie_word_embeddings", !with_lm_head}};
  ASSERT_TRUE(WriteFileAtomically(st, JoinPath(dir, "config.json"), cfg.dump()).ok());
  ASSERT_TRUE(
      WriteFileAtomically(st, JoinPath(dir, "tokenizer.json"), R"({"version": "1.0"})").ok());
}

CheckpointingConfig BaseConfig(const std::string& root) {
  CheckpointingConfig c;
  c.checkpoint_dir = root;
  c.timeout = std::chrono::seconds(60);
  return c;
}

std::string Read(const std::string& path) {
  Result<std::string> r = ReadFileToString(*PosixStorage(), path);
  return r.ok() ? *r : "<" + r.status().ToString() + ">";
}

bool Exist(const std::string& path) { return *Exists(*PosixStorage(), path); }

// Collects log lines while alive.
class LogCapture {
 public:
  LogCapture() {
    previous_ = SetLogSink([this](LogLevel l, std::string_view m) {
      std::lock_guard<std::mutex> lock(mu_);
      lines_.push_back(std::string(LogLevelName(l)) + ": " + std::string(m));
    });
  }
  ~LogCapture() { SetLogSink(previous_); }
  bool Contains(std::string_view s) {
    std::lock_guard<std::mutex> lock(mu_);
    for (const std::string& l : lines_) {
      if (l.find(s) != std::string::npos) return true;
    }
    return false;
  }

 private:
  LogSink previous_;
  std::mutex mu_;
  std::vector<std::string> lines_;
};

TEST(CheckpointerModel, SaveWritesShardsMetadataAndScript) {
  TempDir tmp;
  WriteBaseModel(tmp / "base");
  CheckpointingConfig cfg = BaseConfig(tmp / "ckpts");
  cfg.model_repo_id = tmp / "base";
  std::string dir;
  CKPT_ASSERT_OK(OnRanksOk(2, [&](Communicator& comm) -> Status {
    TinyTrainer t(comm.rank(), comm.size());
    CKPT_ASSIGN_OR_RETURN(auto c, Checkpointer::Create(cfg, {.dp = comm.rank()}, comm));
    CKPT_ASSIGN_OR_RETURN(std::string d, c->Reserve(0, 1));
    SaveModelOptions o;
    o.artifacts["tokenizer_config.json"] = R"({"model_max_length": 64})";
    CKPT_RETURN_IF_ERROR(c->SaveModel(t, d, o));
    if (comm.rank() == 0) dir = d;
    return c->Publish(d);
  }));
  const std::string model = JoinPath(dir, "model");
  EXPECT_TRUE(Exist(JoinPath(model, "shard-00001-model-00001-of-00001.safetensors")));
  EXPECT_TRUE(Exist(JoinPath(model, "shard-00002-model-00001-of-00001.safetensors")));
  EXPECT_FALSE(Exist(JoinPath(model, "consolidated"))) << "save_consolidated defaults to never";
  const std::string meta = JoinPath(model, ".hf_metadata");
  EXPECT_NE(Read(JoinPath(meta, "config.json")).find("\"model_type\":\"llama\""),
            std::string::npos);
  EXPECT_EQ(Read(JoinPath(meta, "tokenizer.json")), R"({"version": "1.0"})");
  EXPECT_EQ(Read(JoinPath(meta, "tokenizer_config.json")), R"({"model_max_length": 64})");
  json dtypes = json::parse(Read(JoinPath(meta, "fqn_to_dtype_mapping.json")));
  EXPECT_EQ(dtypes["model.norm.weight"], "torch.bfloat16")
      << "the base model's dtype, not the saved F32";
  EXPECT_EQ(dtypes.size(), TinyModelParams().size());
  json files = json::parse(Read(JoinPath(meta, "fqn_to_file_index_mapping.json")));
  EXPECT_EQ(files["model.embed_tokens.weight"], 1);
  EXPECT_EQ(files["lm_head.weight"], 2) << "the base model's layout";
  const std::string script = Read(JoinPath(model, "consolidate.sh"));
  EXPECT_NE(script.find("consolidate \"$here\" \"$out\""), std::string::npos) << script;
  EXPECT_NE(script.find("--base '" + (tmp / "base") + "'"), std::string::npos) << script;
  EXPECT_TRUE(VerifyShardedCheckpoint(*PosixStorage(), model).ok());
}

// The inline export per mode, and consolidate.sh reproducing it offline.
TEST(CheckpointerModel, ConsolidationModesAndOfflineScript) {
  TempDir tmp;
  WriteBaseModel(tmp / "base");
  LogCapture log;
  for (ConsolidationMode mode :
       {ConsolidationMode::kNever, ConsolidationMode::kFinal, ConsolidationMode::kEvery}) {
    CheckpointingConfig cfg =
        BaseConfig(tmp / ("ckpts-" + std::string(ConsolidationModeName(mode))));
    cfg.model_repo_id = tmp / "base";
    cfg.save_consolidated = mode;
    std::vector<ConsolidateStats> final_export(2);
    CKPT_ASSERT_OK(OnRanksOk(2, [&](Communicator& comm) -> Status {
      TinyTrainer t(comm.rank(), comm.size());
      CKPT_ASSIGN_OR_RETURN(auto c, Checkpointer::Create(cfg, {.dp = comm.rank()}, comm));
      for (int step = 1; step <= 2; ++step) {
        t.TrainStep();
        CKPT_ASSIGN_OR_RETURN(std::string d, c->Reserve(0, step));
        SaveModelOptions o;
        o.is_final_checkpoint = step == 2;
        if (step == 2) o.export_stats = &final_export[static_cast<size_t>(comm.rank())];
        CKPT_RETURN_IF_ERROR(c->SaveModel(t, d, o));
        CKPT_RETURN_IF_ERROR(c->Publish(d));
      }
      return Status();
    }));
    const std::string first = JoinPath(cfg.checkpoint_dir, "epoch_0_step_1/model/consolidated");
    const std::string last = JoinPath(cfg.checkpoint_dir, "epoch_0_step_2/model/consolidated");
    EXPECT_EQ(Exist(first), mode == ConsolidationMode::kEvery) << ConsolidationModeName(mode);
    EXPECT_EQ(Exist(last), mode != ConsolidationMode::kNever) << ConsolidationModeName(mode);
    // The export's statistics reach the caller of the save that wrote it.
    for (const ConsolidateStats& st : final_export) {
      EXPECT_EQ(st.files, mode == ConsolidationMode::kNever ? 0u : 2u)
          << ConsolidationModeName(mode);
      EXPECT_EQ(st.bytes > 0, mode != ConsolidationMode::kNever) << ConsolidationModeName(mode);
      EXPECT_EQ(st.seconds > 0, mode != ConsolidationMode::kNever) << ConsolidationModeName(mode);
    }
    if (mode == ConsolidationMode::kNever) {
      EXPECT_TRUE(log.Contains("final checkpoint saved without a Hugging Face export"));
      continue;
    }
    // A ready Hugging Face directory: the base layout, BF16 restored, config copied.
    Result<HfModelDir> hf = HfModelDir::Open(*PosixStorage(), last);
    ASSERT_TRUE(hf.ok()) << hf.status().ToString();
    EXPECT_EQ(hf->files().size(), 2u);
    EXPECT_EQ(hf->tensors().at("model.norm.weight").info->dtype, DType::kBF16);
    EXPECT_TRUE(Exist(JoinPath(last, "config.json")));
    EXPECT_TRUE(Exist(JoinPath(last, "tokenizer.json")));

    if (mode == ConsolidationMode::kEvery) {
      EXPECT_TRUE(log.Contains("save_consolidated = every"));
      // Offline: the script in the checkpoint writes the same files.
      const std::string model = JoinPath(cfg.checkpoint_dir, "epoch_0_step_2/model");
      const std::string out = tmp / "offline";
      const std::string cmd = "CKPT=" CKPT_BINARY " sh " + JoinPath(model, "consolidate.sh") + " " +
                              out + " --threads 2 >/dev/null";
      ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
      for (const std::string name :
           {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
            "model.safetensors.index.json", "config.json"}) {
        EXPECT_EQ(Read(JoinPath(out, name)), Read(JoinPath(last, name))) << name;
      }
    }
  }
}

TEST(CheckpointerModel, SingleRankConsolidationWritesTheSameDirectory) {
  TempDir tmp;
  std::string dirs[2];
  for (int single = 0; single < 2; ++single) {
    CheckpointingConfig cfg = BaseConfig(tmp / ("ckpts" + std::to_string(single)));
    cfg.save_consolidated = ConsolidationMode::kFinal;
    cfg.single_rank_consolidation = single == 1;
    cfg.consolidated_max_shard_size = 4096;
    CKPT_ASSERT_OK(OnRanksOk(3, [&](Communicator& comm) -> Status {
      TinyTrainer t(comm.rank(), comm.size());
      CKPT_ASSIGN_OR_RETURN(auto c, Checkpointer::Create(cfg, {.dp = comm.rank()}, comm));
      CKPT_ASSIGN_OR_RETURN(std::string d, c->Reserve(0, 1));
      CKPT_RETURN_IF_ERROR(c->SaveModel(t, d, {.is_final_checkpoint = true}));
      if (comm.rank() == 0) dirs[single] = JoinPath(d, "model/consolidated");
      return c->Publish(d);
    }));
  }
  Result<HfModelDir> a = HfModelDir::Open(*PosixStorage(), dirs[0]);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_GT(a->files().size(), 1u) << "split by the configured size";
  const std::string index = Read(JoinPath(dirs[0], "model.safetensors.index.json"));
  EXPECT_EQ(index, Read(JoinPath(dirs[1], "model.safetensors.index.json")));
  for (size_t f = 0; f < a->files().size(); ++f) {
    const std::string name(Basename(a->files()[f]->path()));
    EXPECT_EQ(Read(JoinPath(dirs[0], name)), Read(JoinPath(dirs[1], name))) << name;
  }
}

// A model with hooks, for base-model loading.
class HookedModel : public TinyTrainer {
 public:
  using TinyTrainer::TinyTrainer;
  std::vector<std::string> calls;
  Status MaterializeParameters() override {
    calls.push_back("materialize");
    return Status();
  }
  Status InitializeWeights() override {
    calls.push_back("init");
    return Status();
  }
  Status InitPeftAdapters(std::string_view m) override {
    calls.push_back("peft:" + std::string(m));
    return Status();
  }
  Status ReinitNonPersistentBuffers() override {
    calls.push_back("buffers");
    return Status();
  }
};

TEST(CheckpointerModel, LoadBaseModelFromHubCacheWithHooksAndTiedHead) {
  TempDir tmp;
  // A hub cache: models--org--tiny/snapshots/<rev>/ with refs/main.
  const std::string snap = tmp / "hub/models--org--tiny/snapshots/abc123";
  WriteBaseModel(snap, /*with_lm_head=*/false);
  CKPT_ASSERT_OK(PosixStorage()->MakeDirs(tmp / "hub/models--org--tiny/refs"));
  CKPT_ASSERT_OK(
      WriteFileAtomically(*PosixStorage(), tmp / "hub/models--org--tiny/refs/main", "abc123"));
  CheckpointingConfig cfg = BaseConfig(tmp / "ckpts");
  cfg.model_cache_dir = tmp / "hub";
  cfg.model_repo_id = "org/tiny";
  std::vector<std::string> diffs(2);
  std::vector<std::vector<std::string>> calls(2);
  CKPT_ASSERT_OK(OnRanksOk(2, [&](Communicator& comm) -> Status {
    HookedModel m(comm.rank(), comm.size());
    CKPT_ASSIGN_OR_RETURN(auto c, Checkpointer::Create(cfg, {.dp = comm.rank()}, comm));
    CKPT_RETURN_IF_ERROR(c->LoadBaseModel(m).status());
    if (c->base_model_dir() != snap) return InternalError("base dir " + c->base_model_dir());
    calls[static_cast<size_t>(comm.rank())] = m.calls;
    // lm_head came from the embeddings: their bytes match.
    const StateDict& sd = m.state_dict();
    const DistTensor* emb = nullptr;
    const DistTensor* head = nullptr;
    for (const DistTensor& t : sd.tensors) {
      if (t.fqn == "model.embed_tokens.weight") emb = &t;
      if (t.fqn == "lm_head.weight") head = &t;
    }
    const uint64_t n = *emb->chunks[0].shape.NumBytes(DType::kF32);
    if (std::memcmp(emb->chunks[0].data, head->chunks[0].data, n) != 0)
      return InternalError("head not tied");
    return Status();
  }));
  for (const auto& c : calls)
    EXPECT_EQ(c, (std::vector<std::string>{"materialize", "init", "buffers"}));
}

TEST(CheckpointerModel, BaseModelSkipsTaskHeadsAndReportsMissingBase) {
  TempDir tmp;
  WriteBaseModel(tmp / "base");
  CheckpointingConfig cfg = BaseConfig(tmp / "ckpts");
  cfg.skip_task_head_prefixes_for_base_model = {"lm_head."};
  CKPT_ASSERT_OK(OnRanksOk(1, [&](Communicator& comm) -> Status {
    TinyTrainer m(0, 1);
    // A marker in lm_head survives: the head keeps its initialization.
    float* head = nullptr;
    float* norm = nullptr;
    for (DistTensor& t : m.state_dict().tensors) {
      if (t.fqn == "lm_head.weight") head = reinterpret_cast<float*>(t.chunks[0].data);
      if (t.fqn == "model.norm.weight") norm = reinterpret_cast<float*>(t.chunks[0].data);
    }
    head[0] = 1234.5f;
    norm[0] = 1234.5f;
    CKPT_ASSIGN_OR_RETURN(auto c, Checkpointer::Create(cfg, {}, comm));
    CKPT_ASSIGN_OR_RETURN(const LoadStats stats, c->LoadBaseModel(m, {.model_name = tmp / "base"}));
    if (head[0] != 1234.5f) return InternalError("a skipped head was loaded");
    if (norm[0] == 1234.5f) return InternalError("the norm was not loaded");
    if (stats.unexpected_keys.size() != 0)
      return InternalError("skipped keys reported as unexpected");
    EXPECT_THAT(c->LoadBaseModel(m, {.model_name = "org/none", .root_dir = tmp / "nowhere"}),
                StatusIs(StatusCode::kNotFound, "org/none"));
    return Status();
  }));
}

// LoRA tensors beside the base weights, sharded on dimension 0.
class LoraModel : public Model {
 public:
  LoraModel(int rank, int world, float seed) {
    const std::vector<std::pair<std::string, std::vector<uint64_t>>> defs = {
        {"model.layers.0.self_attn.q_proj.weight", {16, 16}},
        {"model.layers.0.self_attn.q_proj.lora_A.weight", {4, 16}},
        {"model.layers.0.self_attn.q_proj.lora_B.weight", {16, 4}},
        {"model.layers.0.self_attn.v_proj.lora_A.weight", {4, 16}},
        {"model.layers.0.self_attn.v_proj.lora_B.weight", {16, 4}},
    };
    data_.resize(defs.size());
    for (size_t i = 0; i < defs.size(); ++i) {
      const auto& [fqn, g] = defs[i];
      uint64_t off, len;
      SplitRange(g[0], world, rank, &off, &len);
      data_[i].resize(len * g[1]);
      for (uint64_t k = 0; k < data_[i].size(); ++k) {
        data_[i][k] = seed + static_cast<float>(i * 1000 + (off * g[1] + k));
      }
      DistTensor t{fqn, DType::kF32, Shape(g), {}};
      t.chunks.push_back(LocalChunk{
          {off, 0}, Shape{len, g[1]}, reinterpret_cast<std::byte*>(data_[i].data()), {}});
      sd_.tensors.push_back(std::move(t));
    }
  }
  StateDict& state_dict() override { return sd_; }
  std::vector<std::vector<float>> data_;
  StateDict sd_;
};

TEST(CheckpointerPeft, AdapterOnlyWithPrefixAndConfigThenLoadsOnOtherRanks) {
  TempDir tmp;
  CheckpointingConfig cfg = BaseConfig(tmp / "ckpts");
  cfg.is_peft = true;
  std::string dir;
  CKPT_ASSERT_OK(OnRanksOk(2, [&](Communicator& comm) -> Status {
    LoraModel m(comm.rank(), comm.size(), 0.f);
    CKPT_ASSIGN_OR_RETURN(auto c, Checkpointer::Create(cfg, {.dp = comm.rank()}, comm));
    CKPT_ASSIGN_OR_RETURN(std::string d, c->Reserve(0, 1));
    PeftConfig peft;
    peft.r = 4;
    peft.lora_alpha = 16;
    peft.target_modules = {"v_proj", "q_proj", "v_proj"};
    peft.base_model_name_or_path = "org/tiny";
    EXPECT_THAT(c->SaveModel(m, d), StatusIs(StatusCode::kInvalidArgument,
                                             "is_peft is set but no PEFT config was given"));
    CKPT_RETURN_IF_ERROR(c->SaveModel(m, d, {.peft = &peft}));
    if (comm.rank() == 0) dir = d;
    return c->Publish(d);
  }));
  const std::string model = JoinPath(dir, "model");
  Result<std::unique_ptr<SafetensorsFile>> f =
      SafetensorsFile::Open(*PosixStorage(), JoinPath(model, "adapter_model.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  std::vector<std::string> names;
  for (const TensorInfo& t : (*f)->header().tensors()) names.push_back(t.name);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{
                       "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                       "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
                       "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
                       "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"}));
  // Whole tensors assembled from both ranks.
  std::vector<float> b(64);
  CKPT_ASSERT_OK(
      (*f)->ReadTensor("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
                       std::span<std::byte>(reinterpret_cast<std::byte*>(b.data()), 256)));
  for (size_t k = 0; k < 64; ++k) ASSERT_EQ(b[k], static_cast<float>(2000 + k)) << k;
  json ac = json::parse(Read(JoinPath(model, "adapter_config.json")));
  EXPECT_EQ(ac["peft_type"], "LORA");
  EXPECT_EQ(ac["task_type"], "CAUSAL_LM");
  EXPECT_EQ(ac["r"], 4);
  EXPECT_EQ(ac["lora_alpha"], 16);
  EXPECT_EQ(ac["use_dora"], false);
  EXPECT_EQ(ac["bias"], "none");
  EXPECT_EQ(ac["target_modules"], json::array({"q_proj", "v_proj"}));
  EXPECT_EQ(ac["base_model_name_or_path"], "org/tiny");

  // Three ranks load the adapter; the base weight is left alone.
  CKPT_ASSERT_OK(OnRanksOk(3, [&](Communicator& comm) -> Status {
    LoraModel m(comm.rank(), comm.size(), -1e6f);
    LoraModel before(comm.rank(), comm.size(), -1e6f);
    LoraModel want(comm.rank(), comm.size(), 0.f);
    CKPT_ASSIGN_OR_RETURN(auto c, Checkpointer::Create(cfg, {.dp = comm.rank()}, comm));
    CKPT_RETURN_IF_ERROR(c->LoadModel(m, model));
    if (m.data_[0] != before.data_[0]) return InternalError("base weight was overwritten");
    for (size_t i = 1; i < m.data_.size(); ++i) {
      if (m.data_[i] != want.data_[i])
        return InternalError("adapter tensor " + std::to_string(i) + " differs");
    }
    return Status();
  }));
}

class Blob : public Stateful {
 public:
  std::string value;
  Result<std::string> SaveState() override { return value; }
  Status LoadState(std::string_view s) override {
    value = std::string(s);
    return Status();
  }
};

TEST(CheckpointerState, DpRanksWriteOncePerDpRankAndGlobalRanksEach) {
  TempDir tmp;
  CheckpointingConfig cfg = BaseConfig(tmp / "ckpts");
  const std::string dir = tmp / "ckpts/epoch_0_step_1";
  // 4 ranks: dp = rank / 2, tp = rank % 2.
  CKPT_ASSERT_OK(OnRanksOk(4, [&](Communicator& comm) -> Status {
    const int dp = comm.rank() / 2, tp = comm.rank() % 2;
    CKPT_ASSIGN_OR_RETURN(auto c, Checkpointer::Create(cfg, {.dp = dp, .tp = tp}, comm));
    CKPT_ASSIGN_OR_RETURN(std::string d, c->Reserve(0, 1));
    Blob b;
    b.value = "dp" + std::to_string(dp) + "tp" + std::to_string(tp);
    CKPT_RETURN_IF_ERROR(c->SaveOnDpRanks(b, "dataloader", d));
    b.value = "rank" + std::to_string(comm.rank());
    CKPT_RETURN_IF_ERROR(c->SaveOnGlobalRanks(b, "rng", d));
    return c->Publish(d);
  }));
  std::vector<std::string> names;
  Result<std::vector<DirEntry>> listed = PosixStorage()->List(JoinPath(dir, "dataloader"));
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  for (const DirEntry& e : *listed) names.push_back(e.name);
  EXPECT_EQ(names,
            (std::vector<std::string>{"dataloader_dp_rank_0.state", "dataloader_dp_rank_1.state"}));
  EXPECT_EQ(Read(JoinPath(dir, "dataloader/dataloader_dp_rank_1.state")), "dp1tp0")
      << "only tp = 0 writes";
  EXPECT_EQ(Read(JoinPath(dir, "rng/rng_global_rank_3.state")), "rank3");
  CKPT_ASSERT_OK(OnRanksOk(4, [&](Communicator& comm) -> Status {
    const int dp = comm.rank() / 2, tp = comm.rank() % 2;
    CKPT_ASSIGN_OR_RETURN(auto c, Checkpointer::Create(cfg, {.dp = dp, .tp = tp}, comm));
    Blob b;
    CKPT_RETURN_IF_ERROR(c->LoadOnDpRanks(b, "dataloader", dir));
    if (b.value != "dp" + std::to_string(dp) + "tp0") return InternalError("dataloader " + b.value);
    CKPT_RETURN_IF_ERROR(c->LoadOnGlobalRanks(b, "rng", dir));
    if (b.value != "rank" + std::to_string(comm.rank())) return InternalError("rng " + b.value);
    return Status();
  }));
  // A rank whose file is missing fails every rank, naming the file.
  std::vector<Status> out = OnRanks(5, [&](Communicator& comm) -> Status {
    CKPT_ASSIGN_OR_RETURN(auto c, Checkpointer::Create(cfg, {.dp = comm.rank()}, comm));
    Blob b;
    return c->LoadOnGlobalRanks(b, "rng", dir);
  });
  for (const Status& s : out) {
    EXPECT_THAT(s, StatusIs(StatusCode::kNotFound, "rng_global_rank_4.state"));
  }
}

TEST(CheckpointerState, DistributedStateReshards) {
  TempDir tmp;
  CheckpointingConfig cfg = BaseConfig(tmp / "ckpts");
  const std::string dir = tmp / "ckpts/epoch_0_step_1";
  auto ema = [](int rank, int world, std::vector<float>* buf) {
    uint64_t off, len;
    SplitRange(40, world, rank, &off, &len);
    buf->resize(len * 3);
    for (uint64_t k = 0; k < buf->size(); ++k) (*buf)[k] = static_cast<float>(off * 3 + k) * 0.5f;
    StateDict sd;
    DistTensor t{"ema.shadow", DType::kF32, Shape{40, 3}, {}};
    t.chunks.push_back(
        LocalChunk{{off, 0}, Shape{len, 3}, reinterpret_cast<std::byte*>(buf->data()), {}});
    sd.tensors.push_back(t);
    sd.json["decay"] = "0.999";
    return sd;
  };
  CKPT_ASSERT_OK(OnRanksOk(2, [&](Communicator& comm) -> Status {
    CKPT_ASSIGN_OR_RETURN(auto c, Checkpointer::Create(cfg, {.dp = comm.rank()}, comm));
    CKPT_ASSIGN_OR_RETURN(std::string d, c->Reserve(0, 1));
    std::vector<float> buf;
    StateDict sd = ema(comm.rank(), comm.size(), &buf);
    CKPT_RETURN_IF_ERROR(c->SaveDistributedState(sd, "ema", d));
    return c->Publish(d);
  }));
  EXPECT_TRUE(Exist(JoinPath(dir, "ema/shard-00002-model-00001-of-00001.safetensors")));
  CKPT_ASSERT_OK(OnRanksOk(3, [&](Communicator& comm) -> Status {
    CKPT_ASSIGN_OR_RETURN(auto c, Checkpointer::Create(cfg, {.dp = comm.rank()}, comm));
    std::vector<float> want, got;
    ema(comm.rank(), comm.size(), &want);
    StateDict sd = ema(comm.rank(), comm.size(), &got);
    std::fill(got.begin(), got.end(), 0.f);
    sd.json["decay"] = "0";
    CKPT_RETURN_IF_ERROR(c->LoadDistributedState(sd, "ema", dir));
    if (got != want) return InternalError("ema differs");
    if (sd.json["decay"] != "0.999") return InternalError("decay " + sd.json["decay"]);
    return Status();
  }));
}

}  // namespace
}  // namespace ckpt::testing
