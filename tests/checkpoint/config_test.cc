#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "ckpt/checkpointer.h"
#include "test_util.h"

namespace ckpt {
namespace {

using testing::StatusIs;

TEST(ConsolidationMode, Spellings) {
  struct Case {
    const char* text;
    ConsolidationMode mode;
  } cases[] = {
      {"never", ConsolidationMode::kNever}, {"final", ConsolidationMode::kFinal},
      {"every", ConsolidationMode::kEvery}, {"true", ConsolidationMode::kEvery},
      {"False", ConsolidationMode::kNever}, {"yes", ConsolidationMode::kEvery},
      {"0", ConsolidationMode::kNever},     {"EVERY", ConsolidationMode::kEvery},
  };
  for (const Case& c : cases) {
    Result<ConsolidationMode> m = ParseConsolidationMode(c.text);
    ASSERT_TRUE(m.ok()) << c.text;
    EXPECT_EQ(*m, c.mode) << c.text;
  }
  Result<ConsolidationMode> bad = ParseConsolidationMode("sometimes");
  EXPECT_THAT(bad, StatusIs(StatusCode::kInvalidArgument, "'sometimes'"));
}

TEST(CheckpointingConfig, ParsesEveryField) {
  Result<CheckpointingConfig> c = ParseCheckpointingConfig(R"({
    "enabled": true, "checkpoint_dir": "/ckpts", "model_save_format": "safetensors",
    "model_cache_dir": "/hub", "model_repo_id": "org/name", "save_consolidated": "final",
    "is_peft": false, "is_async": true, "wait_for_staging": false, "staging_dir": "/dev/shm/x",
    "staging_budget": "64MiB",
    "single_rank_consolidation": true, "consolidation_timeout_s": 90, "timeout_s": 1.5,
    "max_recent_checkpoints": 3, "diffusers_compatible": true, "best_metric_key": "val_ppl",
    "skip_task_head_prefixes_for_base_model": ["score.", "classifier."],
    "consolidated_max_shard_size": "2GiB"})");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->checkpoint_dir, "/ckpts");
  EXPECT_EQ(c->model_cache_dir, "/hub");
  EXPECT_EQ(c->model_repo_id, "org/name");
  EXPECT_EQ(c->save_consolidated, ConsolidationMode::kFinal);
  EXPECT_EQ(c->staging_dir, "/dev/shm/x");
  EXPECT_TRUE(c->is_async);
  EXPECT_FALSE(c->wait_for_staging);
  EXPECT_EQ(c->staging_budget, 64ull << 20);
  EXPECT_TRUE(c->single_rank_consolidation);
  EXPECT_EQ(c->consolidation_timeout, std::chrono::seconds(90));
  EXPECT_EQ(c->timeout, std::chrono::milliseconds(1500));
  EXPECT_EQ(c->max_recent_checkpoints, 3);
  EXPECT_TRUE(c->diffusers_compatible);
  EXPECT_EQ(c->best_metric_key, "val_ppl");
  EXPECT_EQ(c->skip_task_head_prefixes_for_base_model,
            (std::vector<std::string>{"score.", "classifier."}));
  EXPECT_EQ(c->consolidated_max_shard_size, 2ull << 30);

  Result<CheckpointingConfig> b =
      ParseCheckpointingConfig(R"({"checkpoint_dir": "d", "save_consolidated": true})");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->save_consolidated, ConsolidationMode::kEvery);
  EXPECT_FALSE(b->max_recent_checkpoints.has_value());
}

TEST(CheckpointingConfig, InvalidValuesNameFieldAndValue) {
  struct Case {
    const char* json;
    StatusCode code;
    const char* expect;  // in the message
  } cases[] = {
      {R"({"checkpoint_dir": "d", "max_recent_checkpoints": 0})", StatusCode::kInvalidArgument,
       "max_recent_checkpoints = 0"},
      {R"({"checkpoint_dir": "d", "max_recent_checkpoints": -2})", StatusCode::kInvalidArgument,
       "max_recent_checkpoints = -2"},
      {R"({"checkpoint_dir": "d", "max_recent_checkpoints": 1.5})", StatusCode::kInvalidArgument,
       "max_recent_checkpoints = 1.5"},
      {R"({"checkpoint_dir": "d", "save_consolidated": "sometimes"})", StatusCode::kInvalidArgument,
       "'sometimes'"},
      {R"({"checkpoint_dir": "d", "save_consolidated": 3})", StatusCode::kInvalidArgument,
       "save_consolidated = 3"},
      {R"({"checkpoint_dir": "d", "model_save_format": "torch_save"})",
       StatusCode::kInvalidArgument, "'torch_save'"},
      {R"({"checkpoint_dir": "d", "model_save_format": "npz"})", StatusCode::kInvalidArgument,
       "'npz'"},
      {R"({"checkpoint_dir": ""})", StatusCode::kInvalidArgument, "checkpoint_dir = ''"},
      {R"({})", StatusCode::kInvalidArgument, "checkpoint_dir"},
      {R"({"checkpoint_dir": "d", "consolidation_timeout_s": 0})", StatusCode::kInvalidArgument,
       "consolidation_timeout_s = 0"},
      {R"({"checkpoint_dir": "d", "timeout_s": "soon"})", StatusCode::kInvalidArgument,
       "timeout_s = \"soon\""},
      {R"({"checkpoint_dir": "d", "is_peft": "yes"})", StatusCode::kInvalidArgument,
       "is_peft = \"yes\""},
      {R"({"checkpoint_dir": "d", "staging_budget": 4096})", StatusCode::kInvalidArgument,
       "staging_budget = 4096"},
      {R"({"checkpoint_dir": "d", "staging_budget": "lots"})", StatusCode::kInvalidArgument,
       "staging_budget = \"lots\""},
      {R"({"checkpoint_dir": "d", "is_async": 1})", StatusCode::kInvalidArgument, "is_async = 1"},
      {R"({"checkpoint_dir": "d", "is_peft": true, "save_consolidated": "final"})",
       StatusCode::kInvalidArgument, "PEFT"},
      {R"({"checkpoint_dir": "d", "best_metric_key": ""})", StatusCode::kInvalidArgument,
       "best_metric_key"},
      {R"({"checkpoint_dir": "d", "skip_task_head_prefixes_for_base_model": "score."})",
       StatusCode::kInvalidArgument, "skip_task_head_prefixes_for_base_model"},
      {R"({"checkpoint_dir": "d", "consolidated_max_shard_size": "5 parsecs"})",
       StatusCode::kInvalidArgument, "consolidated_max_shard_size"},
      {R"({"checkpoint_dir": "d", "max_recent": 3})", StatusCode::kInvalidArgument,
       "unknown field 'max_recent'"},
      {R"({"checkpoint_dir": "d", "checkpoint_dir": "e"})", StatusCode::kDataLoss, "duplicate"},
      {R"([1, 2])", StatusCode::kInvalidArgument, "JSON object"},
  };
  for (const Case& c : cases) {
    Result<CheckpointingConfig> r = ParseCheckpointingConfig(c.json);
    EXPECT_THAT(r, StatusIs(c.code, c.expect)) << c.json;
  }
}

TEST(CheckpointingConfig, CreateRefusesInvalidConfigAndRanks) {
  auto comm = NewSingleRankCommunicator();
  CheckpointingConfig c;
  c.checkpoint_dir = "/tmp/x";
  c.max_recent_checkpoints = 0;
  EXPECT_THAT(
      Checkpointer::Create(c, {}, *comm),
      StatusIs(StatusCode::kInvalidArgument, "max_recent_checkpoints = 0: must be at least 1"));
  c.max_recent_checkpoints = 1;
  EXPECT_THAT(Checkpointer::Create(c, {.dp = -1}, *comm),
              StatusIs(StatusCode::kInvalidArgument, "negative parallel rank (dp -1"));
  EXPECT_THAT(
      Checkpointer::Create(c, {.ep = 4, .ep_size = 4}, *comm),
      StatusIs(StatusCode::kInvalidArgument, "expert-parallel rank 4 is outside a group of 4"));
  EXPECT_TRUE(
      Checkpointer::Create(c, {.dp = 1, .tp = 2, .pp = 1, .ep = 1, .ep_size = 2}, *comm).ok());
}

TEST(CheckpointName, RoundTripsAndRejects) {
  EXPECT_EQ(CheckpointName(3, 1200), "epoch_3_step_1200");
  int64_t e = -1, s = -1;
  ASSERT_TRUE(ParseCheckpointName("epoch_3_step_1200", &e, &s));
  EXPECT_EQ(e, 3);
  EXPECT_EQ(s, 1200);
  for (const char* bad :
       {"epoch_3_step_", "epoch__step_1", "epoch_03_step_1", "epoch_3_step_1x", "epoch_-1_step_2",
        "LATEST", "epoch_3_step_1200.tmp", ".epoch_3_step_1"}) {
    EXPECT_FALSE(ParseCheckpointName(bad, &e, &s)) << bad;
  }
}

TEST(RopeInvFreq, DefaultMatchesClosedForm) {
  Result<std::vector<float>> f =
      RopeInvFreq(R"({"hidden_size": 64, "num_attention_heads": 4, "rope_theta": 10000})");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_EQ(f->size(), 8u);  // head_dim 16
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_EQ((*f)[i],
              static_cast<float>(1.0 / std::pow(10000.0, 2.0 * static_cast<double>(i) / 16.0)))
        << i;
  }
  Result<std::vector<float>> g =
      RopeInvFreq(R"({"head_dim": 8, "hidden_size": 64, "num_attention_heads": 4,
                                                  "rope_theta": 500000.0, "rope_scaling": {"rope_type": "default"}})");
  ASSERT_TRUE(g.ok());
  ASSERT_EQ(g->size(), 4u);
  EXPECT_EQ((*g)[1], static_cast<float>(1.0 / std::pow(500000.0, 0.25)));
}

TEST(RopeInvFreq, Llama3ScalesLowFrequencies) {
  // Llama 3.1's values on a small head: old context 8192, factor 8, low 1, high 4.
  const char* cfg =
      R"({"head_dim": 128, "hidden_size": 4096, "num_attention_heads": 32, "rope_theta": 500000.0,
      "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192}})";
  Result<std::vector<float>> f = RopeInvFreq(cfg);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_EQ(f->size(), 64u);
  const double pi = std::acos(-1.0);
  int kept = 0, divided = 0, smoothed = 0;
  for (size_t i = 0; i < 64; ++i) {
    const double base = 1.0 / std::pow(500000.0, 2.0 * static_cast<double>(i) / 128.0);
    const double wavelen = 2 * pi / base;
    double want;
    if (wavelen < 8192.0 / 4.0) {
      want = base;
      ++kept;
    } else if (wavelen > 8192.0) {
      want = base / 8.0;
      ++divided;
    } else {
      const double smooth = (8192.0 / wavelen - 1.0) / 3.0;
      want = (1 - smooth) * base / 8.0 + smooth * base;
      ++smoothed;
    }
    EXPECT_EQ((*f)[i], static_cast<float>(want)) << i;
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(smoothed, 0);
}

TEST(RopeInvFreq, RefusesWhatItCannotCompute) {
  struct Case {
    const char* json;
    StatusCode code;
    const char* expect;
  } cases[] = {
      {R"({"hidden_size": 64})", StatusCode::kInvalidArgument, "num_attention_heads"},
      {R"({"head_dim": 16, "rope_scaling": {"rope_type": "yarn", "factor": 4}})",
       StatusCode::kInvalidArgument, "'yarn'"},
      {R"({"head_dim": 16, "rope_scaling": {"rope_type": "llama3", "factor": 8}})",
       StatusCode::kInvalidArgument, "low_freq_factor"},
      {R"({"head_dim": 16, "rope_theta": "big"})", StatusCode::kInvalidArgument, "rope_theta"},
      {R"({"head_dim": 1})", StatusCode::kInvalidArgument, "rotary dimension"},
      {R"({"head_dim": 16, "rope_scaling": 3})", StatusCode::kInvalidArgument, "rope_scaling"},
  };
  for (const Case& c : cases) {
    Result<std::vector<float>> r = RopeInvFreq(c.json);
    EXPECT_THAT(r, StatusIs(c.code, c.expect)) << c.json;
  }
}

}  // namespace
}  // namespace ckpt
