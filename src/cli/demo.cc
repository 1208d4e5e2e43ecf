// `ckpt demo`: everything ckpt does, on a synthetic Llama-shaped model.
//
// A job of N ranks (threads of a forked process) trains with FSDP-style
// dim-0 shards and a real Adam step, checkpoints asynchronously every K
// steps, and is killed (SIGKILL) while a save is still being written. A job
// of M ranks resumes from the newest complete checkpoint, finishes training,
// checks every weight and optimizer moment bit for bit against an
// uninterrupted run, and saves a final checkpoint holding its Hugging Face
// export (model/consolidated/), which it verifies. Every checkpoint holds
// what a training loop saves: model, optimizer, data-loader position per dp
// rank, RNG state per global rank. The table at the end puts each time
// beside a reference measured in the same run.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "checkpoint/synthetic_trainer.h"
#include "ckpt/checkpointer.h"
#include "ckpt/consolidate.h"
#include "ckpt/log.h"
#include "ckpt/mpi_comm.h"
#include "cli/commands.h"

namespace ckpt::cli {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}
double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
std::string Mib(uint64_t b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(b) / (1 << 20));
  return buf;
}

using synthetic::ParamSpec;

std::vector<ParamSpec> LlamaSpecs(const DemoOptions& o) {
  const uint64_t h = o.hidden, i = o.intermediate, v = o.vocab;
  std::vector<ParamSpec> s = {{"model.embed_tokens.weight", {v, h}, false}};
  for (int l = 0; l < o.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
      s.push_back({p + "self_attn." + proj + ".weight", {h, h}, false});
    }
    s.push_back({p + "mlp.gate_proj.weight", {i, h}, false});
    s.push_back({p + "mlp.up_proj.weight", {i, h}, false});
    s.push_back({p + "mlp.down_proj.weight", {h, i}, false});
    s.push_back({p + "input_layernorm.weight", {h}, true});
    s.push_back({p + "post_attention_layernorm.weight", {h}, true});
  }
  s.push_back({"model.norm.weight", {h}, true});
  s.push_back({"lm_head.weight", {v, h}, false});
  return s;
}

std::string LlamaConfig(const DemoOptions& o) {
  json c = {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"hidden_size", o.hidden},
            {"intermediate_size", o.intermediate},
            {"num_hidden_layers", o.layers},
            {"num_attention_heads", o.heads},
            {"num_key_value_heads", o.heads},
            {"vocab_size", o.vocab},
            {"hidden_act", "silu"},
            {"max_position_embeddings", 4096},
            {"rms_norm_eps", 1e-5},
            {"rope_theta", 10000.0},
            {"tie_word_embeddings", false},
            {"torch_dtype", "bfloat16"}};
  return c.dump(2) + "\n";
}

// A rank's random stream (what dropout would draw from): a seed and how many
// steps have drawn from it, like torch's Philox seed and offset. It does not
// enter the arithmetic, so a resumed run matches whatever the layout.
class Rng : public Stateful {
 public:
  Rng(uint64_t seed, int rank)
      : seed_(synthetic::Mix(seed ^ synthetic::Mix(static_cast<uint64_t>(rank)))) {}
  void Advance() { ++offset_; }
  uint64_t offset() const { return offset_; }
  Result<std::string> SaveState() override {
    return json({{"seed", seed_}, {"offset", offset_}}).dump();
  }
  Status LoadState(std::string_view s) override {
    json j = json::parse(s, nullptr, false);
    if (!j.is_object() || !j["seed"].is_number_unsigned() || !j["offset"].is_number_unsigned()) {
      return DataLossError("bad RNG state");
    }
    seed_ = j["seed"].get<uint64_t>();
    offset_ = j["offset"].get<uint64_t>();
    return Status();
  }

 private:
  uint64_t seed_;
  uint64_t offset_ = 0;
};

// One rank's share of the model on the shared synthetic trainer: rows
// [row0, row0 + rows) of every tensor, bf16 weights, f32 Adam moments, 64
// samples a step at a constant learning rate, and the rank's RNG stream.
class DemoModel : public synthetic::Trainer {
 public:
  DemoModel(const std::vector<ParamSpec>& specs, int rank, int world, uint64_t seed)
      : synthetic::Trainer(specs, rank, world, Options(seed)), rng_(seed, rank) {}

  StateDict& optimizer() { return optimizer_state(); }
  Rng& rng() { return rng_; }
  float step() const { return adam_step(); }

  void TrainStep() {
    rng_.Advance();
    synthetic::Trainer::TrainStep(kLr);
  }

 private:
  static constexpr float kLr = 1e-3f;
  static synthetic::TrainerOptions Options(uint64_t seed) {
    synthetic::TrainerOptions o;
    o.weights = DType::kBF16;
    o.seed = seed;
    o.batch = 64;
    o.init_scale = 0.02f;
    o.decay = 0.05f;
    o.grad_noise = 0.01f;
    return o;
  }
  Rng rng_;
};

// What a phase measured (rank 0's view).
struct Measured {
  std::vector<double> blocked;     // per save: SaveModel + SaveOptimizer
  std::vector<double> background;  // per save: until durable and published
  uint64_t staged_bytes = 0;       // rank 0's bytes per save
  uint64_t saved_bytes = 0;        // all ranks' bytes per save
  double load_s = 0;
  uint64_t loaded_bytes = 0;  // rank 0's
  double consolidate_s = 0;
  uint64_t consolidated_bytes = 0;
  std::string resumed_from;
  int crash_step = 0;
};

class Progress {
 public:
  explicit Progress(bool quiet) : quiet_(quiet) {}
  void Say(const std::string& line) {
    if (quiet_) return;
    std::lock_guard<std::mutex> lock(mu_);
    std::fprintf(stderr, "%s\n", line.c_str());
  }

 private:
  bool quiet_;
  std::mutex mu_;
};

CheckpointingConfig DemoConfig(const std::string& root) {
  CheckpointingConfig c;
  c.checkpoint_dir = root;
  c.is_async = true;
  c.max_recent_checkpoints = 2;
  c.timeout = std::chrono::minutes(5);
  // The final checkpoint carries its Hugging Face export, where NeMo puts it.
  c.save_consolidated = ConsolidationMode::kFinal;
  c.consolidation_timeout = std::chrono::minutes(5);
  return c;
}

// What every checkpoint holds besides the model and the optimizer.
Status SaveLoopState(Checkpointer& ck, DemoModel& model, const std::string& dir) {
  CKPT_RETURN_IF_ERROR(ck.SaveOnDpRanks(model.cursor(), "dataloader", dir));
  return ck.SaveOnGlobalRanks(model.rng(), "rng", dir);
}

// The last save step at or before the end: where the first job dies.
int CrashStep(const DemoOptions& o) { return (o.steps - 1) / o.save_every * o.save_every; }

// Whether <dir>/rng holds one state per rank of this job, no more, no less.
Result<bool> SameWorldAsSaved(Communicator& comm, const std::string& dir) {
  auto file = [&](int rank) {
    return JoinPath(JoinPath(dir, "rng"), "rng_global_rank_" + std::to_string(rank) + ".state");
  };
  CKPT_ASSIGN_OR_RETURN(bool last, Exists(*PosixStorage(), file(comm.size() - 1)));
  CKPT_ASSIGN_OR_RETURN(bool beyond, Exists(*PosixStorage(), file(comm.size())));
  return last && !beyond;
}

// The first job. `die` runs once every rank has staged the crash step's save.
Status TrainPhase(Communicator& comm, const DemoOptions& o, const std::vector<ParamSpec>& specs,
                  const std::string& root, Progress& out, Measured* m,
                  const std::function<void()>& die) {
  DemoModel model(specs, comm.rank(), comm.size(), o.seed);
  CKPT_ASSIGN_OR_RETURN(auto ck, Checkpointer::Create(DemoConfig(root), {.dp = comm.rank()}, comm));
  const std::string tag = "[train · " + std::to_string(comm.size()) + " ranks] ";
  const int crash = CrashStep(o);
  for (int step = 1; step <= crash; ++step) {
    auto t = Clock::now();
    model.TrainStep();
    if (comm.rank() == 0)
      out.Say(tag + "step " + std::to_string(step) + "/" + std::to_string(o.steps) + " (" +
              std::to_string(static_cast<int>(Since(t) * 1000)) + " ms)");
    if (step % o.save_every != 0) continue;
    CKPT_ASSIGN_OR_RETURN(std::string dir, ck->Reserve(0, step));
    SaveModelOptions so;
    so.artifacts["config.json"] = LlamaConfig(o);
    auto t0 = Clock::now();
    CKPT_RETURN_IF_ERROR(ck->SaveModel(model, dir, so));
    CKPT_RETURN_IF_ERROR(ck->SaveOptimizer(model.optimizer(), dir));
    const double blocked = Since(t0);
    CKPT_RETURN_IF_ERROR(SaveLoopState(*ck, model, dir));
    if (comm.rank() == 0) {
      m->blocked.push_back(blocked);
      m->staged_bytes = model.model_bytes() + model.optimizer_bytes();
      out.Say(tag + "async save of step " + std::to_string(step) + ": training blocked " +
              std::to_string(static_cast<int>(blocked * 1000)) + " ms");
    }
    if (step == crash) {
      // Everyone's tensors are staged; the writes are under way. Die now.
      CKPT_RETURN_IF_ERROR(comm.Barrier(std::chrono::minutes(5)));
      m->crash_step = step;
      if (die) die();
      return Status();
    }
    auto t1 = Clock::now();
    CKPT_RETURN_IF_ERROR(ck->Publish(dir, {{"val_loss", 1.0 / step}}));
    CKPT_RETURN_IF_ERROR(ck->AsyncWait());  // only to measure the background time
    if (comm.rank() == 0) {
      m->background.push_back(Since(t1));
      out.Say(tag + "step " + std::to_string(step) + " durable and published after " +
              std::to_string(static_cast<int>(m->background.back() * 1000)) +
              " ms in the background");
    }
  }
  return Status();
}

// The second job: resume, finish, save the final checkpoint with its export,
// compare, verify.
Status ResumePhase(Communicator& comm, const DemoOptions& o, const std::vector<ParamSpec>& specs,
                   const std::string& root, Progress& out, Measured* m) {
  DemoModel model(specs, comm.rank(), comm.size(),
                  o.seed + 1);  // other values: the load must replace them
  CKPT_ASSIGN_OR_RETURN(auto ck, Checkpointer::Create(DemoConfig(root), {.dp = comm.rank()}, comm));
  const std::string tag = "[resume · " + std::to_string(comm.size()) + " ranks] ";
  CKPT_ASSIGN_OR_RETURN(std::optional<std::string> latest, ck->FindLatest());
  if (!latest) return NotFoundError("no complete checkpoint in " + root);
  auto t0 = Clock::now();
  CKPT_RETURN_IF_ERROR(ck->LoadModel(model, *latest));
  CKPT_RETURN_IF_ERROR(ck->LoadOptimizer(model.optimizer(), *latest));
  CKPT_RETURN_IF_ERROR(ck->LoadOnDpRanks(model.cursor(), "dataloader", *latest));
  // RNG streams belong to global ranks: restored when the job has as many
  // ranks as the one that saved them, else reseeded at the step reached.
  CKPT_ASSIGN_OR_RETURN(bool same_world, SameWorldAsSaved(comm, *latest));
  if (same_world) {
    CKPT_RETURN_IF_ERROR(ck->LoadOnGlobalRanks(model.rng(), "rng", *latest));
  } else {
    for (int s = 0; s < static_cast<int>(model.step()); ++s) model.rng().Advance();
  }
  const double load = Since(t0);
  const int from = static_cast<int>(model.step());
  if (comm.rank() == 0) {
    m->load_s = load;
    m->loaded_bytes = model.model_bytes() + model.optimizer_bytes();
    m->resumed_from = std::string(Basename(*latest));
    out.Say(tag + "resumed from " + m->resumed_from + " (the newest complete checkpoint) in " +
            std::to_string(static_cast<int>(load * 1000)) + " ms");
  }
  for (int step = from + 1; step <= o.steps; ++step) {
    model.TrainStep();
    if (comm.rank() == 0)
      out.Say(tag + "step " + std::to_string(step) + "/" + std::to_string(o.steps));
  }
  // The final checkpoint, with the export for the world in model/consolidated/.
  CKPT_ASSIGN_OR_RETURN(std::string dir, ck->Reserve(0, o.steps));
  SaveModelOptions so;
  so.artifacts["config.json"] = LlamaConfig(o);
  so.is_final_checkpoint = true;
  ConsolidateStats cs;
  so.export_stats = &cs;
  CKPT_RETURN_IF_ERROR(ck->SaveModel(model, dir, so));
  CKPT_RETURN_IF_ERROR(ck->SaveOptimizer(model.optimizer(), dir));
  CKPT_RETURN_IF_ERROR(SaveLoopState(*ck, model, dir));
  CKPT_RETURN_IF_ERROR(ck->Publish(dir, {{"val_loss", 1.0 / o.steps}}));
  CKPT_RETURN_IF_ERROR(ck->Close());

  // Bit-exactness: an uninterrupted run of this rank's rows.
  DemoModel reference(specs, comm.rank(), comm.size(), o.seed);
  for (int step = 1; step <= o.steps; ++step) reference.TrainStep();
  const std::string diff = model.Diff(reference);
  CKPT_RETURN_IF_ERROR(comm.AgreeOnStatus(
      diff.empty() ? Status()
                   : DataLossError("resumed run differs from the uninterrupted one: " + diff),
      std::chrono::minutes(5)));
  if (comm.rank() == 0)
    out.Say(tag + "weights and Adam moments match an uninterrupted run bit for bit");

  const std::string hf = JoinPath(JoinPath(dir, "model"), "consolidated");
  Status verified;
  if (comm.rank() == 0) verified = VerifyShardedCheckpoint(*PosixStorage(), hf);
  CKPT_RETURN_IF_ERROR(comm.AgreeOnStatus(verified, std::chrono::minutes(5)));
  if (comm.rank() == 0) {
    m->consolidate_s = cs.seconds;
    m->consolidated_bytes = cs.bytes;
    out.Say(tag + "exported " + hf + " (" + std::to_string(cs.files) + " files, " + Mib(cs.bytes) +
            ") with the final checkpoint and verified it");
  }
  return Status();
}

// Seconds for one single-thread memcpy of `bytes` between touched buffers.
double MemcpySeconds(uint64_t bytes) {
  std::vector<std::byte> a(bytes, std::byte{1}), b(bytes, std::byte{2});
  std::vector<double> t;
  for (int i = 0; i < 3; ++i) {
    auto t0 = Clock::now();
    std::memcpy(b.data(), a.data(), bytes);
    t.push_back(Since(t0));
  }
  return Median(t);
}

// Seconds for `dd conv=fsync` to write `bytes` under `dir`.
double DdSeconds(const std::string& dir, uint64_t bytes) {
  const uint64_t blocks = std::max<uint64_t>(1, (bytes + (16u << 20) - 1) >> 24);
  const std::string f = JoinPath(dir, ".dd-reference");
  const std::string cmd = "dd if=/dev/zero of='" + f + "' bs=16M count=" + std::to_string(blocks) +
                          " conv=fsync status=none 2>/dev/null";
  std::vector<double> t;
  for (int i = 0; i < 2; ++i) {
    auto t0 = Clock::now();
    if (std::system(cmd.c_str()) != 0) return 0;
    t.push_back(Since(t0));
  }
  std::remove(f.c_str());
  return Median(t) * static_cast<double>(bytes) / static_cast<double>(blocks << 24);
}

Status RunThreads(int n, const std::function<Status(Communicator&)>& fn) {
  auto comms = NewThreadCommunicators(n);
  std::vector<Status> out(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back(
        [&, r] { out[static_cast<size_t>(r)] = fn(*comms[static_cast<size_t>(r)]); });
  for (auto& t : threads) t.join();
  for (const Status& s : out) {
    if (!s.ok()) return s;
  }
  return Status();
}

json MeasuredJson(const Measured& m) {
  return {{"blocked", m.blocked},
          {"background", m.background},
          {"staged_bytes", m.staged_bytes},
          {"crash_step", m.crash_step}};
}
void FromJson(const json& j, Measured* m) {
  m->blocked = j.value("blocked", std::vector<double>());
  m->background = j.value("background", std::vector<double>());
  m->staged_bytes = j.value("staged_bytes", uint64_t{0});
  m->crash_step = j.value("crash_step", 0);
}

int Report(const DemoOptions& o, const std::vector<ParamSpec>& specs, const std::string& root,
           const Measured& m) {
  uint64_t params = 0;
  for (const ParamSpec& s : specs) {
    uint64_t n = 1;
    for (uint64_t d : s.shape) n *= d;
    params += n;
  }
  const uint64_t model_bytes = params * 2, optim_bytes = params * 8;
  const uint64_t per_save = model_bytes + optim_bytes;
  // The first save also allocates and touches the staging memory; later
  // saves reuse it. All ranks stage (and load) at once on this machine, so
  // the reference copies every rank's bytes.
  std::vector<double> steady(m.blocked.begin() + (m.blocked.size() > 1 ? 1 : 0), m.blocked.end());
  const double block = Median(steady), background = Median(m.background);
  const double memcpy_stage = MemcpySeconds(per_save);
  const double memcpy_load = MemcpySeconds(per_save);
  const double dd_save = DdSeconds(root, per_save);
  const double dd_export = DdSeconds(root, m.consolidated_bytes);
  struct Row {
    std::string what, figure, reference;
    double ratio;
  };
  auto secs = [](double s) {
    char b[32];
    std::snprintf(b, sizeof b, "%.3f s", s);
    return std::string(b);
  };
  std::vector<Row> rows = {
      {"model (bf16, " + std::to_string(params / 1000000) + "M parameters)", Mib(model_bytes), "-",
       0},
      {"optimizer state (f32 exp_avg + exp_avg_sq)", Mib(optim_bytes), "-", 0},
      {"first async save: training blocked", secs(m.blocked.empty() ? 0 : m.blocked[0]), "-", 0},
      {"later async saves: training blocked", secs(block), secs(memcpy_stage) + " memcpy",
       block / memcpy_stage},
      {"background write + fsync + publish", secs(background), secs(dd_save) + " dd fsync",
       background / dd_save},
      {"resume load on " + std::to_string(o.resume_ranks) + " ranks", secs(m.load_s),
       secs(memcpy_load) + " memcpy", m.load_s / memcpy_load},
      {"consolidated HF export (" + Mib(m.consolidated_bytes) + ")", secs(m.consolidate_s),
       secs(dd_export) + " dd fsync", m.consolidate_s / dd_export},
  };
  if (o.json) {
    json j = {{"ranks", o.ranks},
              {"resume_ranks", o.resume_ranks},
              {"steps", o.steps},
              {"crashed_at_step", m.crash_step},
              {"resumed_from", m.resumed_from},
              {"bit_exact", true},
              {"rows", json::array()}};
    for (const Row& r : rows) {
      j["rows"].push_back({{"what", r.what},
                           {"figure", r.figure},
                           {"reference", r.reference},
                           {"ratio", r.ratio > 0 ? json(r.ratio) : json(nullptr)}});
    }
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf(
      "\nckpt demo: %d ranks trained, crashed during the async save of step %d, %d ranks resumed "
      "from %s,\n"
      "finished step %d bit-exact against an uninterrupted run, exported and verified a Hugging "
      "Face "
      "directory.\n\n",
      o.ranks, m.crash_step, o.resume_ranks, m.resumed_from.c_str(), o.steps);
  std::printf("%-48s %12s %22s %8s\n", "what", "figure", "same-run reference", "ratio");
  for (const Row& r : rows) {
    char ratio[16] = "-";
    if (r.ratio > 0) std::snprintf(ratio, sizeof ratio, "%.2f", r.ratio);
    std::printf("%-48s %12s %22s %8s\n", r.what.c_str(), r.figure.c_str(), r.reference.c_str(),
                ratio);
  }
  std::printf(
      "\nratio = time / reference time (lower is better). References: one thread copying every "
      "rank's "
      "model + optimizer bytes (memcpy), `dd conv=fsync` of the same bytes. The ranks are threads "
      "of one "
      "machine (%u cores) that also run the background writers.\n",
      std::thread::hardware_concurrency());
  return 0;
}

}  // namespace

// `ckpt demo --mpi`: one phase per mpirun job, the ranks being MPI's.
int RunMpiPhase(DemoOptions o, const std::vector<ParamSpec>& specs, const std::string& root,
                Progress& out) {
  const std::string ckpts = JoinPath(root, "checkpoints");
  Measured m;
  Result<std::unique_ptr<Communicator>> comm = NewMpiWorldCommunicator();
  if (!comm.ok()) {
    std::fprintf(stderr, "ckpt demo: %s\n", comm.status().ToString().c_str());
    return 1;
  }
  if (o.dir.empty() || (o.phase != "train" && o.phase != "resume")) {
    std::fprintf(stderr,
                 "ckpt demo --mpi needs --dir and --phase train|resume (two mpirun jobs)\n");
    return 2;
  }
  Status s;
  if (o.phase == "train") {
    // Under MPI the job does not kill itself: it leaves the last save
    // written but never published, exactly what a crash leaves.
    s = TrainPhase(**comm, o, specs, ckpts, out, &m, nullptr);
    if (s.ok() && (*comm)->rank() == 0) {
      std::fprintf(o.json ? stderr : stdout,
                   "train phase done: step %d left unpublished; now run the resume phase on "
                   "another number of "
                   "ranks\n",
                   m.crash_step);
    }
  } else {
    o.resume_ranks = (*comm)->size();
    m.crash_step = CrashStep(o);  // where the train phase stopped
    s = ResumePhase(**comm, o, specs, ckpts, out, &m);
    if (s.ok() && (*comm)->rank() == 0) Report(o, specs, root, m);
  }
  if (!s.ok()) {
    std::fprintf(stderr, "ckpt demo: rank %d: %s\n", (*comm)->rank(), s.ToString().c_str());
    return 1;
  }
  return 0;
}

// The first job, in a child process of `ranks` threads that kills itself
// (SIGKILL) mid-save. False (with the reason on stderr) when it did not die
// as planned; *m gets what the job measured.
bool RunCrashingTrainJob(const DemoOptions& o, const std::vector<ParamSpec>& specs,
                         const std::string& root, Progress& out, Measured* m) {
  const std::string ckpts = JoinPath(root, "checkpoints");
  std::fflush(stdout);
  std::fflush(stderr);
  const std::string report = JoinPath(root, ".demo-train.json");
  pid_t pid = ::fork();
  if (pid < 0) {
    std::perror("ckpt demo: fork");
    return false;
  }
  if (pid == 0) {
    Measured cm;
    Status s = RunThreads(o.ranks, [&](Communicator& comm) {
      return TrainPhase(comm, o, specs, ckpts, out, &cm, [&] {
        if (comm.rank() != 0) {
          // Other ranks wait for the end.
          for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
        }
        WriteFileAtomically(*PosixStorage(), report, MeasuredJson(cm).dump()).IgnoreError();
        out.Say("[train] killing the job (SIGKILL) while the step " +
                std::to_string(cm.crash_step) + " checkpoint is being written");
        ::kill(::getpid(), SIGKILL);
      });
    });
    std::fprintf(stderr, "ckpt demo: the training job ended without crashing: %s\n",
                 s.ToString().c_str());
    ::_exit(3);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) {
    std::fprintf(stderr, "ckpt demo: the training job did not die as planned (status %d)\n",
                 status);
    return false;
  }
  Result<std::string> text = ReadFileToString(*PosixStorage(), report);
  if (text.ok()) FromJson(json::parse(*text, nullptr, false), m);
  return true;
}

int RunDemo(const DemoOptions& in) {
  DemoOptions o = in;
  if (o.steps < 2 || o.save_every < 1 || o.save_every >= o.steps || o.ranks < 1 ||
      o.resume_ranks < 1 || o.layers < 1 || o.hidden < 8 || o.intermediate < 8 || o.vocab < 8 ||
      o.heads < 1) {
    std::fprintf(stderr,
                 "ckpt demo: need steps >= 2, 1 <= save-every < steps, positive sizes and ranks\n");
    return 2;
  }
  const std::vector<ParamSpec> specs = LlamaSpecs(o);
  Progress out(false);
  // Progress lines are the demo's own; the library's informational messages
  // (key summaries of loads) would only clutter them.
  SetLogSink([](LogLevel level, std::string_view msg) {
    if (level != LogLevel::kInfo)
      std::fprintf(stderr, "ckpt %s: %.*s\n", std::string(LogLevelName(level)).c_str(),
                   static_cast<int>(msg.size()), msg.data());
  });
  bool temp = o.dir.empty();
  std::string root = o.dir;
  if (temp) {
    const char* base = std::getenv("TMPDIR");
    std::string t = std::string(base && *base ? base : "/tmp") + "/ckpt_demo_XXXXXX";
    std::vector<char> buf(t.begin(), t.end());
    buf.push_back('\0');
    if (::mkdtemp(buf.data()) == nullptr) {
      std::perror("ckpt demo: mkdtemp");
      return 1;
    }
    root = buf.data();
  }
  auto cleanup = [&] {
    if (temp) RemoveAll(*PosixStorage(), root).IgnoreError();
  };
  const std::string ckpts = JoinPath(root, "checkpoints");
  Measured m;

  if (o.mpi) return RunMpiPhase(o, specs, root, out);

  out.Say("ckpt demo in " + root + ": a " + std::to_string(o.layers) +
          "-layer Llama-shaped model, " + std::to_string(o.ranks) + " ranks train, then " +
          std::to_string(o.resume_ranks) + " resume");
  if (!RunCrashingTrainJob(o, specs, root, out, &m)) {
    cleanup();
    return 1;
  }
  out.Say(
      "[crash] the training job is gone; LATEST still names the last checkpoint whose writes "
      "finished");

  Status s = RunThreads(o.resume_ranks, [&](Communicator& comm) {
    return ResumePhase(comm, o, specs, ckpts, out, &m);
  });
  if (!s.ok()) {
    std::fprintf(stderr, "ckpt demo: %s\n", s.ToString().c_str());
    cleanup();
    return 1;
  }
  const int rc = Report(o, specs, root, m);
  // With --json, stdout carries exactly one JSON document.
  if (!temp) std::fprintf(o.json ? stderr : stdout, "checkpoints kept in %s\n", ckpts.c_str());
  cleanup();
  return rc;
}

}  // namespace ckpt::cli
