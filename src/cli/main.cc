// The `ckpt` command line.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <new>

#include "ckpt/version.h"
#include "cli/commands.h"

// One CLI11 declaration per subcommand and option, kept together so the
// command line reads as one table (kept whole past the function-size limit).
//
// NOLINTNEXTLINE(readability-function-size)
int main(int argc, char** argv) {
  CLI::App app{
      "ckpt: checkpoints for distributed training of large models.\n"
      "Reads and writes safetensors, Hugging Face model directories and sharded "
      "training checkpoints."};
  app.set_version_flag("--version", std::string("ckpt ") + CKPT_VERSION_STRING);
  app.require_subcommand(1);

  ckpt::cli::InspectOptions inspect;
  CLI::App* inspect_cmd =
      app.add_subcommand("inspect",
                         "List the tensors (dtype, shape, bytes, file), metadata and totals of a "
                         "safetensors file, a model directory or a torch .bin archive");
  inspect_cmd->add_option("PATH", inspect.path, "safetensors file, .bin file or directory")
      ->required();
  inspect_cmd->add_flag("--json", inspect.json, "print machine-readable JSON");

  ckpt::cli::VerifyOptions verify;
  CLI::App* verify_cmd = app.add_subcommand("verify",
                                            "Validate a safetensors file, a model directory or a "
                                            "torch .bin archive; exit 0 when valid, 1 otherwise");
  verify_cmd->add_option("PATH", verify.path, "safetensors file, .bin file or directory")
      ->required();
  verify_cmd->add_flag("--quick", verify.quick, "check headers and structure, skip reading data");
  verify_cmd->add_flag("--json", verify.json, "print the result as JSON");

  ckpt::cli::SampleOptions sample;
  CLI::App* sample_cmd = app.add_subcommand(
      "sample", "Write a small Llama-shaped Hugging Face model directory to try the commands on");
  sample_cmd->add_option("DIR", sample.out_dir, "output directory")->required();
  sample_cmd->add_option("--layers", sample.layers, "decoder layers")->capture_default_str();
  sample_cmd->add_option("--hidden", sample.hidden, "hidden size")->capture_default_str();
  sample_cmd->add_option("--shards", sample.shards, "number of safetensors files")
      ->capture_default_str();
  sample_cmd->add_option("--seed", sample.seed, "random seed")->capture_default_str();
  sample_cmd->add_option("--ranks", sample.ranks,
                         "write a sharded checkpoint (DCP layout) saved by this many ranks, "
                         "each holding a dim-0 slice of every matrix");

  ckpt::cli::ConsolidateCliOptions consolidate;
  CLI::App* consolidate_cmd =
      app.add_subcommand("consolidate",
                         "Turn a sharded checkpoint directory into a Hugging Face model directory "
                         "(alone or under mpirun)");
  consolidate_cmd->add_option("INPUT_DIR", consolidate.in_dir, "sharded checkpoint directory")
      ->required();
  consolidate_cmd->add_option("OUTPUT_DIR", consolidate.out_dir, "new Hugging Face model directory")
      ->required();
  consolidate_cmd->add_option("--base", consolidate.base,
                              "reuse this Hugging Face model directory's file layout");
  consolidate_cmd->add_option("--cast-dtype", consolidate.cast_dtype,
                              "cast float tensors (not FP8): F16, BF16, F32");
  consolidate_cmd
      ->add_option("--max-shard-size", consolidate.max_shard_size,
                   "size limit per file: 5GiB, 5GB or bytes")
      ->capture_default_str();
  consolidate_cmd->add_option("--equal-files", consolidate.equal_files,
                              "divide tensors equally over this many files");
  consolidate_cmd->add_option("--threads", consolidate.threads,
                              "writer threads per rank (0: one per core)");
  consolidate_cmd->add_flag("--diffusers", consolidate.diffusers, "diffusers file and index names");

  ckpt::cli::ConvertOptions convert;
  CLI::App* convert_cmd = app.add_subcommand(
      "convert",
      "Turn a PyTorch .bin model directory (pytorch_model.bin or its shards) into a Hugging Face "
      "safetensors directory, reading the archives without running them; with --adapter, convert "
      "mixture-of-experts weights between per-expert (Hugging Face) and grouped tensors");
  convert_cmd->add_option("MODEL_DIR", convert.in, "input model directory")->required();
  convert_cmd->add_option("OUT_DIR", convert.out, "new safetensors model directory")->required();
  convert_cmd->add_option("--adapter", convert.adapter,
                          "MoE adapter: mixtral, qwen2_moe, qwen3_moe, deepseek_v2, deepseek_v3");
  convert_cmd->add_option("--to", convert.to,
                          "with --adapter: grouped (from Hugging Face) or hf (from grouped)");
  convert_cmd
      ->add_option("--max-shard-size", convert.max_shard_size,
                   "size limit per file: 5GiB, 5GB or bytes")
      ->capture_default_str();

  ckpt::cli::DemoOptions demo;
  CLI::App* demo_cmd = app.add_subcommand(
      "demo",
      "Train a synthetic Llama-shaped model on several ranks with asynchronous checkpoints, crash, "
      "resume on fewer ranks bit-exactly, export a Hugging Face directory, and print what it "
      "measured");
  demo_cmd->add_option("--layers", demo.layers, "decoder layers")->capture_default_str();
  demo_cmd->add_option("--hidden", demo.hidden, "hidden size")->capture_default_str();
  demo_cmd->add_option("--intermediate", demo.intermediate, "MLP size")->capture_default_str();
  demo_cmd->add_option("--vocab", demo.vocab, "vocabulary size")->capture_default_str();
  demo_cmd->add_option("--ranks", demo.ranks, "ranks of the job that crashes")
      ->capture_default_str();
  demo_cmd->add_option("--resume-ranks", demo.resume_ranks, "ranks of the job that resumes")
      ->capture_default_str();
  demo_cmd->add_option("--steps", demo.steps, "training steps in all")->capture_default_str();
  demo_cmd->add_option("--save-every", demo.save_every, "checkpoint every K steps")
      ->capture_default_str();
  demo_cmd->add_option("--dir", demo.dir,
                       "keep the checkpoints and the export here (default: a temporary "
                       "directory, removed at the end)");
  demo_cmd->add_flag("--json", demo.json, "print the final table as JSON");
  demo_cmd->add_flag("--mpi", demo.mpi,
                     "ranks are MPI processes (run under mpirun, with --dir and --phase)");
  demo_cmd->add_option("--phase", demo.phase,
                       "with --mpi: train (first job) or resume (second job)");

  CLI11_PARSE(app, argc, argv);
  // Errors are values; this is the boundary where anything the standard
  // library still throws (out of memory, no more threads) becomes one.
  try {
    if (*demo_cmd) return ckpt::cli::RunDemo(demo);
    if (*convert_cmd) return ckpt::cli::RunConvert(convert);
    if (*consolidate_cmd) return ckpt::cli::RunConsolidate(consolidate);
    if (*inspect_cmd) return ckpt::cli::RunInspect(inspect);
    if (*verify_cmd) return ckpt::cli::RunVerify(verify);
    if (*sample_cmd) return ckpt::cli::RunSample(sample);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "ckpt: out of memory\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ckpt: %s\n", e.what());
  }
  return 1;
}
