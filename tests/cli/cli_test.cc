// Runs the real `ckpt` executable.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <nlohmann/json.hpp>

#include "ckpt/safetensors.h"
#include "engine/layouts.h"
#include "format/hostile_files.h"
#include "format/torch_archive_builder.h"
#include "test_util.h"

namespace ckpt {
namespace {

struct CliRun {
  int code;
  std::string out;  // stdout and stderr
};

// `prefix` runs first in the same shell (a deadline, a descriptor limit).
CliRun RunCkptAfter(const std::string& prefix, const std::string& args) {
  std::string cmd = prefix + std::string(CKPT_BINARY) + " " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return {-1, ""};
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

CliRun RunCkpt(const std::string& args) { return RunCkptAfter("", args); }

TEST(CliTest, HelpAndVersion) {
  CliRun help = RunCkpt("--help");
  EXPECT_EQ(help.code, 0);
  for (const char* cmd : {"inspect", "verify", "sample"}) {
    EXPECT_NE(help.out.find(cmd), std::string::npos) << help.out;
  }
  CliRun version = RunCkpt("--version");
  EXPECT_EQ(version.code, 0);
  EXPECT_EQ(version.out.rfind("ckpt ", 0), 0u) << version.out;
  EXPECT_NE(RunCkpt("").code, 0);
  EXPECT_NE(RunCkpt("frobnicate").code, 0);
}

TEST(CliTest, SampleInspectVerifyAgree) {
  testing::TempDir tmp;
  std::string dir = tmp / "model";
  ASSERT_EQ(RunCkpt("sample " + dir + " --layers 2 --hidden 64 --shards 3").code, 0);
  CliRun inspect = RunCkpt("inspect --json " + dir);
  ASSERT_EQ(inspect.code, 0) << inspect.out;
  auto j = nlohmann::json::parse(inspect.out);
  EXPECT_EQ(j["kind"], "hf-sharded");
  EXPECT_EQ(j["num_files"], 3);
  EXPECT_EQ(j["num_tensors"], 2 + 2 * 9 + 1);
  uint64_t sum = 0;
  for (const auto& t : j["tensors"]) {
    EXPECT_EQ(t["dtype"], "BF16");
    uint64_t n = 2;
    for (const auto& d : t["shape"]) n *= d.get<uint64_t>();
    EXPECT_EQ(t["bytes"].get<uint64_t>(), n) << t["name"];
    sum += n;
  }
  EXPECT_EQ(j["total_bytes"].get<uint64_t>(), sum);
  EXPECT_EQ(j["index"]["total_size"].get<uint64_t>(), sum);

  CliRun verify = RunCkpt("verify " + dir);
  EXPECT_EQ(verify.code, 0) << verify.out;
  EXPECT_NE(verify.out.find("OK"), std::string::npos);
  CliRun vjson = RunCkpt("verify --json " + dir);
  EXPECT_EQ(nlohmann::json::parse(vjson.out)["total_bytes"].get<uint64_t>(), sum);

  CliRun text = RunCkpt("inspect " + dir);
  EXPECT_EQ(text.code, 0);
  EXPECT_NE(text.out.find("model.layers.1.mlp.down_proj.weight"), std::string::npos);
  EXPECT_NE(text.out.find("total: 21 tensors"), std::string::npos) << text.out;
}

TEST(CliTest, BadFilesFailInspectAndVerifyWithTheSameError) {
  testing::TempDir tmp;
  const std::pair<const char*, std::string> bad[] = {
      {"trailing",
       testing::RawSafetensors(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", "abc")},
      {"cap", std::string("\xff\xff\xff\xff\xff\xff\xff\x00", 8)},
      {"dtype",
       testing::RawSafetensors(R"({"w":{"dtype":"Q8","shape":[2],"data_offsets":[0,2]}})", "ab")},
  };
  for (const auto& [name, bytes] : bad) {
    std::string path = tmp / (std::string(name) + ".safetensors");
    CKPT_ASSERT_OK(WriteFileAtomically(*PosixStorage(), path, bytes));
    CliRun v = RunCkpt("verify " + path);
    CliRun i = RunCkpt("inspect --json " + path);
    EXPECT_EQ(v.code, 1) << name;
    EXPECT_EQ(i.code, 1) << name;
    EXPECT_NE(v.out.find(path), std::string::npos) << v.out;
    // Both report the same underlying error.
    std::string err = v.out.substr(v.out.find("DataLoss"));
    EXPECT_NE(i.out.find(err), std::string::npos) << i.out << "\nvs\n" << v.out;
    CliRun vj = RunCkpt("verify --json " + path);
    EXPECT_EQ(vj.code, 1);
    EXPECT_FALSE(nlohmann::json::parse(vj.out)["valid"].get<bool>());
  }
  CliRun missing = RunCkpt("verify " + tmp / "nope.safetensors");
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.out.find("NotFound"), std::string::npos);
}

// Every file of the hostile table: verify and inspect both refuse it, with
// the reader's message, and verify --json says the same.
TEST(CliTest, VerifyAndInspectRefuseEveryHostileFile) {
  testing::TempDir tmp;
  for (const testing::HostileCase& c : testing::HostileFiles()) {
    std::string path = tmp / (std::string(c.label) + ".safetensors");
    CKPT_ASSERT_OK(WriteFileAtomically(*PosixStorage(), path, c.bytes));
    CliRun v = RunCkpt("verify " + path);
    CliRun i = RunCkpt("inspect --json " + path);
    EXPECT_EQ(v.code, 1) << c.label;
    EXPECT_EQ(i.code, 1) << c.label;
    EXPECT_NE(v.out.find(c.want), std::string::npos) << c.label << ": " << v.out;
    EXPECT_NE(i.out.find(c.want), std::string::npos) << c.label << ": " << i.out;
    CliRun vj = RunCkpt("verify --json " + path);
    auto j = nlohmann::json::parse(vj.out);
    EXPECT_FALSE(j["valid"].get<bool>());
    EXPECT_NE(j["error"].get<std::string>().find(c.want), std::string::npos) << c.label;
  }
}

TEST(CliTest, VerifyReadsDataAndCatchesAMissingShard) {
  testing::TempDir tmp;
  std::string dir = tmp / "m";
  ASSERT_EQ(RunCkpt("sample " + dir + " --hidden 32 --shards 2").code, 0);
  ASSERT_EQ(std::remove((dir + "/model-00002-of-00002.safetensors").c_str()), 0);
  CliRun v = RunCkpt("verify " + dir);
  EXPECT_EQ(v.code, 1);
  EXPECT_NE(v.out.find("model-00002-of-00002.safetensors' named in weight_map does not exist"),
            std::string::npos)
      << v.out;
}

TEST(CliTest, ShardedCheckpointsShowGlobalTensorsAndVerifyChecksums) {
  testing::TempDir tmp;
  std::string dir = tmp / "sharded";
  ASSERT_EQ(RunCkpt("sample " + dir + " --ranks 3 --hidden 64 --layers 1").code, 0);
  CliRun i = RunCkpt("inspect --json " + dir);
  ASSERT_EQ(i.code, 0) << i.out;
  auto j = nlohmann::json::parse(i.out);
  EXPECT_EQ(j["kind"], "sharded");
  EXPECT_EQ(j["num_files"], 3);
  EXPECT_EQ(j["num_tensors"], 2 + 9 + 1);
  for (const auto& t : j["tensors"]) {
    EXPECT_EQ(t["chunks"], 3) << t["name"];
    if (t["name"] == "lm_head.weight") {
      EXPECT_EQ(t["shape"], nlohmann::json({1024, 64}));
    }
  }
  CliRun v = RunCkpt("verify " + dir);
  EXPECT_EQ(v.code, 0) << v.out;
  EXPECT_NE(v.out.find("12 tensors"), std::string::npos) << v.out;

  // One flipped data byte: the checksum names the file, tensor and range.
  const std::string shard = dir + "/shard-00002-model-00001-of-00001.safetensors";
  std::string bytes = *ReadFileToString(*PosixStorage(), shard);
  bytes[bytes.size() - 1] ^= 1;
  CKPT_ASSERT_OK(WriteFileAtomically(*PosixStorage(), shard, bytes));
  v = RunCkpt("verify " + dir);
  EXPECT_EQ(v.code, 1);
  EXPECT_NE(v.out.find("shard-00002-model-00001-of-00001.safetensors: tensor '"), std::string::npos)
      << v.out;
  EXPECT_NE(v.out.find("does not match the recorded"), std::string::npos) << v.out;
}

TEST(CliTest, VerifyFindsOverlapsAndDtypeDisagreementInShardedDirs) {
  testing::TempDir tmp;
  struct Case {
    const char* offsets1;
    DType dtype1;
    const char* want;
  };
  const Case cases[] = {
      {"[1]", DType::kU8, "chunks [0:2] and [1:3] overlap in [1:2]"},
      {"[3]", DType::kU8, "chunks cover 4 of 5 elements (a hole)"},
      {"[2]", DType::kI8, "tensor 'w' is U8 in"},
  };
  int n = 0;
  for (const Case& c : cases) {
    std::string dir = tmp / ("d" + std::to_string(n++));
    CKPT_ASSERT_OK(PosixStorage()->MakeDirs(dir));
    TensorData t0{"w", DType::kU8, Shape({2}), AsBytes("ab")};
    TensorData t1{"w", c.dtype1, Shape({2}), AsBytes("cd")};
    CKPT_ASSERT_OK(WriteSafetensors(
        *PosixStorage(), dir + "/a.safetensors", std::span(&t0, 1),
        SafetensorsMetadata{{"DCP_SHARDING_INFO", R"({"w":{"saved_offsets":[0]}})"}}));
    CKPT_ASSERT_OK(WriteSafetensors(
        *PosixStorage(), dir + "/b.safetensors", std::span(&t1, 1),
        SafetensorsMetadata{
            {"DCP_SHARDING_INFO", std::string(R"({"w":{"saved_offsets":)") + c.offsets1 + "}}"}}));
    CliRun v = RunCkpt("verify " + dir);
    EXPECT_EQ(v.code, 1) << c.want;
    EXPECT_NE(v.out.find(c.want), std::string::npos) << v.out;
    EXPECT_EQ(RunCkpt("inspect " + dir).code, 1);
  }
}

TEST(CliTest, ConsolidateTurnsAShardedCheckpointIntoAVerifiedHfDirectory) {
  testing::TempDir tmp;
  const std::string in = tmp / "sharded", out = tmp / "hf";
  ASSERT_EQ(RunCkpt("sample " + in + " --ranks 3 --hidden 64 --layers 2").code, 0);
  CliRun c = RunCkpt("consolidate " + in + " " + out + " --max-shard-size 100KiB --cast-dtype F32");
  ASSERT_EQ(c.code, 0) << c.out;
  EXPECT_NE(c.out.find("wrote " + out), std::string::npos) << c.out;
  CliRun v = RunCkpt("verify " + out);
  EXPECT_EQ(v.code, 0) << v.out;
  auto j = nlohmann::json::parse(RunCkpt("inspect --json " + out).out);
  EXPECT_EQ(j["kind"], "hf-sharded");
  EXPECT_GT(j["num_files"].get<int>(), 3);
  for (const auto& t : j["tensors"]) EXPECT_EQ(t["dtype"], "F32") << t["name"];
  // Same global tensors as the sharded checkpoint, and twice the bytes (BF16 -> F32).
  auto src = nlohmann::json::parse(RunCkpt("inspect --json " + in).out);
  EXPECT_EQ(j["num_tensors"], src["num_tensors"]);
  EXPECT_EQ(j["total_bytes"].get<uint64_t>(), 2 * src["total_bytes"].get<uint64_t>());

  CliRun again = RunCkpt("consolidate " + in + " " + out);
  EXPECT_EQ(again.code, 1);
  EXPECT_NE(again.out.find("already exists"), std::string::npos) << again.out;
  CliRun bad = RunCkpt("consolidate " + in + " " + tmp / "x" + " --max-shard-size 5XB");
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.out.find("unknown unit"), std::string::npos) << bad.out;
}

TEST(CliTest, InspectsADirectoryOfPlainShards) {
  testing::TempDir tmp;
  for (int r = 1; r <= 2; ++r) {
    char name[64];
    std::snprintf(name, sizeof name, "shard-%05d-model-00001-of-00001.safetensors", r);
    TensorData t{"w", DType::kF32, Shape({2}), AsBytes("abcdefgh")};
    CKPT_ASSERT_OK(WriteSafetensors(*PosixStorage(), tmp / name, std::span(&t, 1)));
  }
  CliRun i = RunCkpt("inspect --json " + tmp.path());
  ASSERT_EQ(i.code, 0) << i.out;
  auto j = nlohmann::json::parse(i.out);
  EXPECT_EQ(j["kind"], "directory");
  EXPECT_EQ(j["num_files"], 2);
  EXPECT_EQ(j["num_tensors"], 2);
}

// `.bin` archives: inspect, verify (CRC-32 of the data), convert, refusal.
TEST(Cli, TorchBinInspectVerifyConvert) {
  testing::TempDir dir;
  const std::string in = dir / "bin";
  ASSERT_TRUE(PosixStorage()->MakeDirs(in).ok());
  std::string data(4 * 12, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7);
  const std::string archive = testing::ZipBytes(testing::ArchiveRecords(
      "pytorch_model",
      testing::StateDictPickle({{"model.w", "FloatStorage", "", "0", 12, 0, {3, 4}, {4, 1}},
                                {"model.w_t", "FloatStorage", "", "0", 12, 0, {4, 3}, {1, 4}}}),
      {{"0", data}}));
  ASSERT_TRUE(WriteFileAtomically(*PosixStorage(), in + "/pytorch_model.bin", archive).ok());
  ASSERT_TRUE(WriteFileAtomically(*PosixStorage(), in + "/config.json", "{}").ok());

  CliRun inspect = RunCkpt("inspect " + in);
  EXPECT_EQ(inspect.code, 0) << inspect.out;
  EXPECT_NE(inspect.out.find("model.w_t"), std::string::npos) << inspect.out;
  EXPECT_NE(inspect.out.find("stride (1, 4)"), std::string::npos) << inspect.out;
  CliRun js = RunCkpt("inspect --json " + in + "/pytorch_model.bin");
  ASSERT_EQ(js.code, 0) << js.out;
  auto j = nlohmann::json::parse(js.out);
  EXPECT_EQ(j["num_tensors"], 2);
  EXPECT_EQ(j["tensors"][1]["contiguous"], false);
  CliRun verify = RunCkpt("verify " + in + "/pytorch_model.bin");
  EXPECT_EQ(verify.code, 0) << verify.out;

  CliRun convert = RunCkpt("convert " + in + " " + dir / "out");
  ASSERT_EQ(convert.code, 0) << convert.out;
  CliRun verify_out = RunCkpt("verify " + dir / "out");
  EXPECT_EQ(verify_out.code, 0) << verify_out.out;
  CliRun out_json = RunCkpt("inspect --json " + dir / "out");
  ASSERT_EQ(out_json.code, 0) << out_json.out;
  EXPECT_EQ(nlohmann::json::parse(out_json.out)["kind"], "hf-sharded");
  CliRun twice = RunCkpt("convert " + in + " " + dir / "out");
  EXPECT_EQ(twice.code, 1);
  EXPECT_NE(twice.out.find("already exists"), std::string::npos) << twice.out;

  // One flipped byte of tensor data: verify names the record and fails.
  std::string bad = archive;
  bad[bad.find(data) + 5] ^= 1;
  ASSERT_TRUE(WriteFileAtomically(*PosixStorage(), dir / "bad.bin", bad).ok());
  CliRun corrupt = RunCkpt("verify " + dir / "bad.bin");
  EXPECT_EQ(corrupt.code, 1);
  EXPECT_NE(corrupt.out.find("pytorch_model/data/0' fails its CRC-32"), std::string::npos)
      << corrupt.out;
  // A hostile pickle: refused with the global it names.
  testing::PickleWriter w;
  w.Proto(2).Global("os", "system").Unicode("echo hi").Tuple1().Reduce().Stop();
  ASSERT_TRUE(WriteFileAtomically(*PosixStorage(), dir / "evil.bin",
                                  testing::ZipBytes(testing::ArchiveRecords("evil", w.str(), {})))
                  .ok());
  CliRun evil = RunCkpt("inspect " + dir / "evil.bin");
  EXPECT_EQ(evil.code, 1);
  EXPECT_NE(evil.out.find("global 'os.system' is not allowed"), std::string::npos) << evil.out;
}

// ---------------------------------------------------------------- hangs and descriptors

void MakeFifo(const std::string& path) {
  std::remove(path.c_str());
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0) << path;
}

// A FIFO at any name ckpt opens is refused at once (it used to block in
// open() forever). Each run has a deadline so a regression fails, not hangs.
TEST(CliTest, FifosAtEveryNameCkptOpensAreRefusedWithoutHanging) {
  testing::TempDir tmp;
  const std::string hf = tmp / "hf", sharded = tmp / "sharded", bin = tmp / "bin";
  ASSERT_EQ(RunCkpt("sample " + hf + " --hidden 32 --layers 1 --shards 2").code, 0);
  ASSERT_EQ(RunCkpt("sample " + sharded + " --hidden 32 --layers 1 --ranks 2").code, 0);
  const std::string archive = testing::ZipBytes(testing::ArchiveRecords(
      "pytorch_model", testing::StateDictPickle({{"w", "FloatStorage", "", "0", 2, 0, {2}, {1}}}),
      {{"0", std::string(8, 'a')}}));
  struct Case {
    const char* what;
    std::function<void(const std::string& dir)> setup;  // in a fresh copy
    std::string source;                                 // sample to copy
    std::string fifo;                                   // relative to the copy
    std::string command;                                // %D: the copy, %O: an output path
  };
  const Case cases[] = {
      {"the HF index", nullptr, hf, "model.safetensors.index.json", "inspect %D"},
      {"a weight-map shard", nullptr, hf, "model-00002-of-00002.safetensors", "verify %D"},
      {"the single file", [](const std::string& d) { CKPT_EXPECT_OK(PosixStorage()->MakeDirs(d)); },
       "", "model.safetensors", "inspect %D"},
      {".hf_metadata JSON",
       [](const std::string& d) { CKPT_EXPECT_OK(PosixStorage()->MakeDirs(d + "/.hf_metadata")); },
       sharded, ".hf_metadata/fqn_to_file_index_mapping.json", "consolidate %D %O"},
      {"pytorch_model.bin",
       [](const std::string& d) {
         CKPT_EXPECT_OK(PosixStorage()->MakeDirs(d));
         CKPT_EXPECT_OK(WriteFileAtomically(*PosixStorage(), d + "/config.json", "{}"));
       },
       "", "pytorch_model.bin", "convert %D %O"},
      {"the .bin index",
       [&](const std::string& d) {
         CKPT_EXPECT_OK(PosixStorage()->MakeDirs(d));
         CKPT_EXPECT_OK(WriteFileAtomically(*PosixStorage(),
                                            d + "/pytorch_model-00001-of-00001.bin", archive));
       },
       "", "pytorch_model.bin.index.json", "convert %D %O"},
  };
  int n = 0;
  for (const Case& c : cases) {
    const std::string dir = tmp / ("case" + std::to_string(n)),
                      out = tmp / ("out" + std::to_string(n++));
    if (!c.source.empty()) {
      ASSERT_EQ(std::system(("cp -r " + c.source + " " + dir).c_str()), 0);
    }
    if (c.setup) c.setup(dir);
    MakeFifo(dir + "/" + c.fifo);
    std::string cmd = c.command;
    cmd.replace(cmd.find("%D"), 2, dir);
    if (size_t o = cmd.find("%O"); o != std::string::npos) cmd.replace(o, 2, out);
    CliRun r = RunCkptAfter("timeout 30 ", cmd);
    EXPECT_EQ(r.code, 1) << c.what << " (124: it hung): " << r.out;
    EXPECT_NE(r.out.find("not a regular file (a FIFO)"), std::string::npos)
        << c.what << ": " << r.out;
    EXPECT_NE(r.out.find(c.fifo), std::string::npos) << c.what << ": " << r.out;
  }
  // --base's index.
  const std::string base = tmp / "base";
  ASSERT_EQ(std::system(("cp -r " + hf + " " + base).c_str()), 0);
  MakeFifo(base + "/model.safetensors.index.json");
  CliRun r = RunCkptAfter("timeout 30 ",
                          "consolidate " + sharded + " " + tmp / "from_base" + " --base " + base);
  EXPECT_EQ(r.code, 1) << "(124: it hung) " << r.out;
  EXPECT_NE(r.out.find("not a regular file (a FIFO)"), std::string::npos) << r.out;
}

// Hundreds of rank files under a small descriptor limit: every command
// holds a bounded number of files open.
TEST(CliTest, ManyRankFilesFitASmallDescriptorLimit) {
  testing::TempDir tmp;
  const std::string in = tmp / "sharded", out = tmp / "hf";
  ASSERT_EQ(RunCkpt("sample " + in + " --hidden 64 --layers 1 --ranks 150").code, 0);
  for (const std::string& cmd :
       {"verify " + in, "inspect " + in, "consolidate " + in + " " + out + " --threads 8",
        "verify " + out}) {
    CliRun r = RunCkptAfter("ulimit -n 64 && ", cmd);
    EXPECT_EQ(r.code, 0) << cmd << ": " << r.out;
  }
}

// ---------------------------------------------------------------- careless users, aborts

TEST(CliTest, SampleNeverOverwritesAndBoundsWhatItGenerates) {
  testing::TempDir tmp;
  const std::string dir = tmp / "model";
  ASSERT_EQ(RunCkpt("sample " + dir + " --hidden 32 --layers 1").code, 0);
  CKPT_ASSERT_OK(WriteFileAtomically(*PosixStorage(), dir + "/mine.txt", "keep"));
  CliRun again = RunCkpt("sample " + dir + " --hidden 64 --layers 1");
  EXPECT_EQ(again.code, 1) << again.out;
  EXPECT_NE(again.out.find(dir + " already exists; it is never overwritten"), std::string::npos)
      << again.out;
  EXPECT_EQ(*ReadFileToString(*PosixStorage(), dir + "/mine.txt"), "keep");
  auto j = nlohmann::json::parse(RunCkpt("inspect --json " + dir).out);
  EXPECT_EQ(j["tensors"][0]["shape"][1], 32);
  // Sizes that used to abort on an uncaught exception.
  const std::pair<std::string, std::string> bad[] = {
      {"--hidden 1000000000", "--hidden a multiple of 8 in [8, 65536]"},
      {"--ranks 100000", "--ranks in [0, 1024]"},
      {"--ranks -3", "--ranks in [0, 1024]"},
      {"--hidden 65536 --layers 1024", "more than the 4294967296-byte limit of a sample model"},
  };
  for (const auto& [args, want] : bad) {
    CliRun r = RunCkpt("sample " + tmp / "big" + " " + args);
    EXPECT_EQ(r.code, 1) << args << ": " << r.out;
    EXPECT_NE(r.out.find(want), std::string::npos) << args << ": " << r.out;
  }
  EXPECT_FALSE(*Exists(*PosixStorage(), tmp / "big"));
}

TEST(CliTest, ConsolidateRefusesCastsThatAreNotFloatCasts) {
  testing::TempDir tmp;
  const std::string in = tmp / "sharded";
  ASSERT_EQ(RunCkpt("sample " + in + " --ranks 2 --hidden 32 --layers 1").code, 0);
  for (const char* d : {"I8", "F8_E4M3", "U8", "BOOL"}) {
    CliRun r = RunCkpt("consolidate " + in + " " + tmp / "out" + " --cast-dtype " + d);
    EXPECT_EQ(r.code, 1) << d << ": " << r.out;
    EXPECT_NE(r.out.find(std::string("cast dtype ") + d + " is not a float cast"),
              std::string::npos)
        << d << ": " << r.out;
  }
  EXPECT_FALSE(*Exists(*PosixStorage(), tmp / "out"));
  CliRun ok = RunCkpt("consolidate " + in + " " + tmp / "out" + " --cast-dtype F16");
  EXPECT_EQ(ok.code, 0) << ok.out;
}

TEST(CliTest, ConsolidateWithABaseModelGivesTensorsBackTheBaseDTypes) {
  testing::TempDir tmp;
  Storage& fs = *PosixStorage();
  const std::string in = tmp / "sharded", base = tmp / "base";
  // Saved in F32 (as a training run keeps its weights); released in BF16.
  std::vector<float> w = {1.f,      1.00390625f, 1.01171875f, 3.14159265f,
                          -2.5e-3f, 1e-40f,      3e38f,       -0.f};
  std::vector<float> norm(4, 0.5f);
  CKPT_ASSERT_OK(testing::OnRanksOk(2, [&](Communicator& c) {
    // Two ranks, each saving half of w; rank 0 saves norm.
    StateDict mine;
    std::vector<uint64_t> off = {static_cast<uint64_t>(4 * c.rank())};
    LocalChunk half{off, Shape({4}), reinterpret_cast<std::byte*>(w.data() + 4 * c.rank()), {}};
    mine.tensors.push_back({"w", DType::kF32, Shape({8}), {half}});
    if (c.rank() == 0) {
      mine.tensors.push_back(
          WholeTensor("norm", DType::kF32, Shape({4}), reinterpret_cast<std::byte*>(norm.data())));
    }
    return SaveSharded(c, fs, in, mine);
  }));
  CKPT_ASSERT_OK(fs.MakeDirs(base));
  const std::string zeros(16, '\0');
  std::vector<TensorData> ts = {{"w", DType::kBF16, Shape({8}), AsBytes(zeros)},
                                {"norm", DType::kF32, Shape({4}), AsBytes(zeros)}};
  CKPT_ASSERT_OK(WriteSafetensors(fs, base + "/model.safetensors", ts));

  auto exported = [&](const std::string& out) {
    std::map<std::string, std::pair<std::string, std::vector<uint8_t>>> got;
    Result<std::unique_ptr<SafetensorsFile>> f =
        SafetensorsFile::Open(fs, out + "/model-00001-of-00001.safetensors");
    EXPECT_TRUE(f.ok()) << f.status().ToString();
    if (!f.ok()) return got;
    for (const TensorInfo& t : (*f)->header().tensors()) {
      std::vector<uint8_t> bytes(t.nbytes());
      EXPECT_TRUE((*f)->ReadTensor(t.name, std::as_writable_bytes(std::span(bytes))).ok());
      got[t.name] = {std::string(DTypeName(t.dtype)), bytes};
    }
    return got;
  };

  CliRun c = RunCkpt("consolidate " + in + " " + tmp / "hf" + " --base " + base);
  ASSERT_EQ(c.code, 0) << c.out;
  auto got = exported(tmp / "hf");
  EXPECT_EQ(got["w"].first, "BF16");
  // Rounded to nearest, ties to even: 1 + 2^-8 -> 1, 1 + 3 * 2^-8 -> 1 + 2^-6.
  const std::vector<uint8_t> want = {0x80, 0x3F, 0x80, 0x3F, 0x82, 0x3F, 0x49, 0x40,
                                     0x24, 0xBB, 0x01, 0x00, 0x62, 0x7F, 0x00, 0x80};
  EXPECT_EQ(got["w"].second, want);
  EXPECT_EQ(got["norm"].first, "F32");  // originally F32 stays F32
  EXPECT_EQ(RunCkpt("verify " + tmp / "hf").code, 0);

  // An explicit cast still wins.
  c = RunCkpt("consolidate " + in + " " + tmp / "hf16" + " --base " + base + " --cast-dtype F16");
  ASSERT_EQ(c.code, 0) << c.out;
  got = exported(tmp / "hf16");
  EXPECT_EQ(got["w"].first, "F16");
  EXPECT_EQ(got["norm"].first, "F32");

  // A base that is not a model is refused before anything is written.
  c = RunCkpt("consolidate " + in + " " + tmp / "none" + " --base " + tmp / "nowhere");
  EXPECT_EQ(c.code, 1) << c.out;
  EXPECT_NE(c.out.find("NotFound"), std::string::npos) << c.out;
  EXPECT_NE(c.out.find(tmp / "nowhere"), std::string::npos) << c.out;
  EXPECT_FALSE(*Exists(fs, tmp / "none"));
}

TEST(CliTest, InspectEscapesControlCharactersInNames) {
  testing::TempDir tmp;
  const std::string path = tmp / "evil.safetensors";
  const std::string name =
      "w\x1b[2J\x07\r\xe2\x80\xae"
      "gnp.exe";
  TensorData t{name, DType::kU8, Shape({2}), AsBytes("ab")};
  CKPT_ASSERT_OK(WriteSafetensors(*PosixStorage(), path, std::span(&t, 1),
                                  SafetensorsMetadata{{"note\x1b]0;title\x07", "v\x1b[31m"}}));
  CliRun r = RunCkpt("inspect " + path);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out.find('\x1b'), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find('\x07'), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find('\r'), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("w\\x1b[2J\\x07\\x0d\\u{202e}gnp.exe"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("note\\x1b]0;title\\x07 = v\\x1b[31m"), std::string::npos) << r.out;
  // JSON output carries the name itself, escaped as JSON.
  auto j = nlohmann::json::parse(RunCkpt("inspect --json " + path).out);
  EXPECT_EQ(j["tensors"][0]["name"], name);
}

TEST(CliTest, LeftoverStagingOfAKilledRunIsCleanedUp) {
  testing::TempDir tmp;
  const std::string in = tmp / "sharded", out = tmp / "hf";
  ASSERT_EQ(RunCkpt("sample " + in + " --ranks 2 --hidden 32 --layers 1").code, 0);
  // What killed runs left: ours (the same output name) and someone else's.
  const std::string dead = tmp / ".hf.tmp-0123456789abcdef",
                    other = tmp / ".hf2.tmp-0123456789abcdef";
  CKPT_ASSERT_OK(PosixStorage()->MakeDirs(dead + "/sub"));
  CKPT_ASSERT_OK(
      WriteFileAtomically(*PosixStorage(), dead + "/sub/model-00001-of-00001.safetensors", "junk"));
  CKPT_ASSERT_OK(PosixStorage()->MakeDirs(other));
  CliRun r = RunCkpt("consolidate " + in + " " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_FALSE(*Exists(*PosixStorage(), dead));
  EXPECT_TRUE(*Exists(*PosixStorage(), other));
  auto list = PosixStorage()->List(tmp.path());
  CKPT_ASSERT_OK(list);
  for (const DirEntry& e : *list) EXPECT_EQ(e.name.find(".hf.tmp-"), std::string::npos) << e.name;
}

}  // namespace
}  // namespace ckpt
