// DCP's own format: the `.metadata` reader and writer, hostile metadata
// pickles, and DCP directories (torch.save archives inside .distcp files)
// loaded resharded through LoadSharded.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <numeric>
#include <thread>

#include "ckpt/sharded.h"
#include "engine/dcp_dir.h"
#include "format/dcp_metadata.h"
#include "format/torch_archive_builder.h"
#include "test_util.h"

namespace ckpt {
namespace {

using testing::PickleWriter;
using testing::StatusIs;

constexpr std::string_view kMeta = "torch.distributed.checkpoint.metadata";

std::string ReadSourceFile(const std::string& rel) {
  Result<std::string> s =
      ReadFileToString(*PosixStorage(), std::string(CKPT_SOURCE_DIR) + "/" + rel);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? *s : "";
}

DcpMetadata Sample() {
  DcpMetadata m;
  DcpTensor& w = m.tensors["optim.state.w.exp_avg"];
  w.dtype = DType::kBF16;
  w.size = {5, 3};
  w.chunks.push_back({{0, 0}, {3, 3}, {"__0_0.distcp", 0, 700}});
  w.chunks.push_back({{3, 0}, {2, 3}, {"__1_0.distcp", 70000, 1u << 31}});
  DcpTensor& step = m.tensors["optim.state.w.step"];
  step.dtype = DType::kF32;
  step.chunks.push_back({{}, {}, {"__0_0.distcp", 700, 600}});
  m.bytes["sched.last_epoch"] = {"__0_0.distcp", 1300, 900};
  return m;
}

TEST(DcpMetadata, WrittenPickleReadsBackTheSameEntries) {
  const DcpMetadata m = Sample();
  Result<std::string> pickle = WriteDcpMetadata(m);
  CKPT_ASSERT_OK(pickle);
  Result<DcpMetadata> back = ParseDcpMetadata(*pickle, "/x/.metadata");
  CKPT_ASSERT_OK(back);
  EXPECT_EQ(back->version, "1.0.0");
  ASSERT_EQ(back->tensors.size(), 2u);
  const DcpTensor& w = back->tensors.at("optim.state.w.exp_avg");
  EXPECT_EQ(w.dtype, DType::kBF16);
  EXPECT_EQ(w.size, (std::vector<uint64_t>{5, 3}));
  ASSERT_EQ(w.chunks.size(), 2u);
  EXPECT_EQ(w.chunks[1].offsets, (std::vector<uint64_t>{3, 0}));
  EXPECT_EQ(w.chunks[1].sizes, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(w.chunks[1].storage.relative_path, "__1_0.distcp");
  EXPECT_EQ(w.chunks[1].storage.offset, 70000u);
  EXPECT_EQ(w.chunks[1].storage.length, 1u << 31);  // LONG1
  EXPECT_TRUE(back->tensors.at("optim.state.w.step").size.empty());
  ASSERT_EQ(back->bytes.count("sched.last_epoch"), 1u);
  EXPECT_EQ(back->bytes.at("sched.last_epoch").offset, 1300u);
}

// Written by torch 2.13's dcp.save (pickle protocol 4: FRAME, MEMOIZE,
// STACK_GLOBAL; StorageMeta with a pathlib.PosixPath): {"w": f32 [4, 3]
// tensor, "step": 7, "name": "x"}. Also the fuzz target's seed.
TEST(DcpMetadata, ReadsTheMetadataTorchWrites) {
  const std::string data = ReadSourceFile("fuzz/corpus/dcp_metadata_fuzz/real_torch_2_13");
  Result<DcpMetadata> m = ParseDcpMetadata(data, ".metadata");
  CKPT_ASSERT_OK(m);
  ASSERT_EQ(m->tensors.count("w"), 1u);
  EXPECT_EQ(m->tensors.at("w").dtype, DType::kF32);
  EXPECT_EQ(m->tensors.at("w").size, (std::vector<uint64_t>{4, 3}));
  ASSERT_EQ(m->tensors.at("w").chunks.size(), 1u);
  EXPECT_EQ(m->tensors.at("w").chunks[0].storage.relative_path, "__0_0.distcp");
  EXPECT_EQ(m->bytes.size(), 2u);
  EXPECT_EQ(m->bytes.count("step"), 1u);
  EXPECT_EQ(m->version, "1.0.0");
}

// A Metadata with one bytes entry, written by hand so each case can replace
// one piece: the entry's storage info, the root class, extra globals.
struct Parts {
  std::string root_module = std::string(kMeta);
  std::string root_class = "Metadata";
  std::string relative_path = "__0_0.distcp";
  bool offset_as_str = false;
  bool transform = false;
  bool root_args = false;
};

std::string Handmade(const Parts& p) {
  PickleWriter w;
  w.Proto(2).Global(p.root_module, p.root_class);
  if (p.root_args) {
    w.Mark().Int(1).Tuple();
  } else {
    w.EmptyTuple();
  }
  w.Op(0x81).EmptyDict().Mark();
  w.Unicode("state_dict_metadata").EmptyDict().Unicode("b");
  w.Global(std::string(kMeta), "BytesStorageMetadata")
      .EmptyTuple()
      .Op(0x81)
      .EmptyDict()
      .Build()
      .SetItem();
  w.Unicode("storage_data").EmptyDict();
  w.Global(std::string(kMeta), "MetadataIndex")
      .EmptyTuple()
      .Op(0x81)
      .EmptyDict()
      .Mark()
      .Unicode("fqn")
      .Unicode("b");
  w.Unicode("index").None().SetItems().Build();
  w.Global("torch.distributed.checkpoint.filesystem", "_StorageInfo")
      .EmptyTuple()
      .Op(0x81)
      .EmptyDict()
      .Mark();
  w.Unicode("relative_path").Unicode(p.relative_path).Unicode("offset");
  if (p.offset_as_str) {
    w.Unicode("0");
  } else {
    w.Int(0);
  }
  w.Unicode("length").Int(10);
  if (p.transform) w.Unicode("transform_descriptors").EmptyList().Unicode("zstd").Append();
  w.SetItems().Build().SetItem();
  w.SetItems().Build().Stop();
  return w.str();
}

TEST(DcpMetadata, HandmadePickleIsAccepted) {
  Result<DcpMetadata> m = ParseDcpMetadata(Handmade({}), "m");
  CKPT_ASSERT_OK(m);
  EXPECT_EQ(m->bytes.at("b").length, 10u);
}

TEST(DcpMetadata, HostilePicklesAreRefusedWithTheReason) {
  struct Case {
    const char* name;
    std::string pickle;
    const char* message;
  };
  std::vector<Case> cases;
  Parts foreign;
  foreign.root_module = "os";
  foreign.root_class = "system";
  cases.push_back(
      {"foreign global", Handmade(foreign), "global 'os.system' is not allowed in DCP metadata"});
  Parts rebuild;
  rebuild.root_module = "torch._utils";
  rebuild.root_class = "_rebuild_tensor_v2";
  cases.push_back(
      {"torch.save global", Handmade(rebuild), "'torch._utils._rebuild_tensor_v2' is not allowed"});
  Parts wrong_root;
  wrong_root.root_class = "BytesStorageMetadata";
  cases.push_back({"wrong root class", Handmade(wrong_root), "not a Metadata"});
  Parts args;
  args.root_args = true;
  cases.push_back({"constructor arguments", Handmade(args), "expected NEWOBJ with no arguments"});
  Parts str_offset;
  str_offset.offset_as_str = true;
  cases.push_back({"offset of the wrong type", Handmade(str_offset),
                   "storage of 'b'.offset: is a str, not a non-negative int"});
  Parts escape;
  escape.relative_path = "../../etc/passwd";
  cases.push_back({"path outside the directory", Handmade(escape),
                   "'../../etc/passwd' is not a plain file name"});
  Parts transformed;
  transformed.transform = true;
  cases.push_back({"compressed entry", Handmade(transformed),
                   "transformed (e.g. compressed) entries are not supported"});
  {
    PickleWriter w;
    w.Proto(4).Unicode("os").Unicode("system").Op(0x93).Stop();
    cases.push_back(
        {"STACK_GLOBAL of a foreign name", w.str(), "global 'os.system' is not allowed"});
  }
  {
    DcpMetadata m = Sample();
    m.tensors.at("optim.state.w.exp_avg").chunks[1].offsets = {4, 0};  // 4 + 2 > 5
    cases.push_back({"chunk past the tensor", *WriteDcpMetadata(m),
                     "reach past the tensor's size [5, 3] in dimension 0"});
  }
  {
    // Chunk offsets no storage entry matches: rebuilt with the entry's
    // offsets changed by hand.
    std::string p = *WriteDcpMetadata(Sample());
    const std::string from =
        std::string("X\x07\0\0\0offsets", 12) + "ctorch\nSize\n(K\x03" + std::string("K\0t", 3);
    const size_t at = p.find(from);
    ASSERT_NE(at, std::string::npos);
    p[at + from.size() - 4] = 2;  // the chunk now claims offsets [2, 0]
    cases.push_back(
        {"chunk without storage", p, "chunk 1: no storage_data entry for offsets [2, 0]"});
  }
  {
    const std::string p = *WriteDcpMetadata(Sample());
    cases.push_back({"truncated", p.substr(0, p.size() / 2), "pickle"});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    EXPECT_THAT(ParseDcpMetadata(c.pickle, "/ck/.metadata"),
                StatusIs(StatusCode::kInvalidArgument, c.message));
    EXPECT_THAT(ParseDcpMetadata(c.pickle, "/ck/.metadata"),
                StatusIs(StatusCode::kInvalidArgument, "/ck/.metadata"));
  }
}

TEST(DcpMetadata, TheStateDictDialectStillRefusesDcpClassesAndProtocol4) {
  PickleWriter w;
  w.Proto(2).Global(std::string(kMeta), "Metadata").EmptyTuple().Op(0x81).Stop();
  EXPECT_THAT(ParseTorchPickle(w.str(), "data.pkl"),
              StatusIs(StatusCode::kInvalidArgument, "is not allowed"));
  EXPECT_THAT(ParseTorchPickle(*WriteDcpMetadata(Sample()), "data.pkl"),
              StatusIs(StatusCode::kInvalidArgument,
                       "'torch.distributed.checkpoint.metadata.Metadata' is not allowed"));
}

// torch.save(tensor) of a contiguous f32 tensor, as DCP stores a chunk.
std::string TensorArchive(const std::vector<float>& values, const std::vector<int64_t>& shape) {
  testing::PickledTensor t;
  t.key = "0";
  t.storage_numel = static_cast<int64_t>(values.size());
  t.size = shape;
  t.stride.assign(shape.size(), 1);
  for (size_t d = shape.size(); d-- > 1;) t.stride[d - 1] = t.stride[d] * shape[d];
  PickleWriter w;
  w.Proto(2);
  testing::EmitTensor(w, t);
  w.Stop();
  std::string bytes(values.size() * 4, '\0');
  std::memcpy(bytes.data(), values.data(), bytes.size());
  return testing::ZipBytes(testing::ArchiveRecords("archive", w.str(), {{"0", bytes}}));
}

// A [4, 3] f32 tensor saved by two ranks (rows 0-1, rows 2-3) and one bytes
// entry, with an optional change to the metadata before it is written.
void WriteDcpDir(Storage& fs, const std::string& dir,
                 const std::function<void(DcpMetadata&)>& edit = {}) {
  std::vector<float> all(12);
  std::iota(all.begin(), all.end(), 0.f);
  const std::string a = TensorArchive({all.begin(), all.begin() + 6}, {2, 3});
  const std::string b = TensorArchive({all.begin() + 6, all.end()}, {2, 3});
  const std::string obj = "torch.save bytes";
  ASSERT_TRUE(fs.MakeDirs(dir).ok());
  CKPT_ASSERT_OK(WriteFileAtomically(fs, dir + "/__0_0.distcp", a + obj));
  CKPT_ASSERT_OK(WriteFileAtomically(fs, dir + "/__1_0.distcp", b));
  DcpMetadata m;
  DcpTensor& t = m.tensors["w"];
  t.size = {4, 3};
  t.chunks.push_back({{0, 0}, {2, 3}, {"__0_0.distcp", 0, a.size()}});
  t.chunks.push_back({{2, 0}, {2, 3}, {"__1_0.distcp", 0, b.size()}});
  m.bytes["obj"] = {"__0_0.distcp", a.size(), obj.size()};
  if (edit) edit(m);
  CKPT_ASSERT_OK(WriteFileAtomically(fs, dir + "/.metadata", *WriteDcpMetadata(m)));
}

TEST(DcpDir, LoadsReshardedIntoColumnsAndReturnsByteEntries) {
  auto fs = NewMemoryStorage();
  WriteDcpDir(*fs, "/d");
  auto one = NewSingleRankCommunicator();
  // Column 1..2 of every row: overlaps both saved chunks.
  std::vector<float> cols(8, -1.f);
  StateDict sd;
  sd.tensors.push_back({"w",
                        DType::kF32,
                        Shape({4, 3}),
                        {{{0, 1}, Shape({4, 2}), reinterpret_cast<std::byte*>(cols.data()), {}}}});
  sd.bytes["obj"] = {};
  CKPT_ASSERT_OK(LoadSharded(*one, *fs, "/d", sd, LoadOptions{}));
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(cols[static_cast<size_t>(r * 2)], static_cast<float>(r * 3 + 1));
    EXPECT_EQ(cols[static_cast<size_t>(r * 2 + 1)], static_cast<float>(r * 3 + 2));
  }
  const auto& obj = sd.bytes.at("obj");
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(obj.data()), obj.size()), "torch.save bytes");
}

TEST(DcpDir, ThreeRanksLoadTheTwoRankSaveBitExactly) {
  auto fs = NewMemoryStorage();
  WriteDcpDir(*fs, "/d");
  auto comms = NewThreadCommunicators(3);
  std::vector<std::vector<float>> got(3);
  std::vector<Status> st(3);
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      // Rows split 2 / 1 / 1.
      const uint64_t row0 = r == 0 ? 0 : static_cast<uint64_t>(r + 1), rows = r == 0 ? 2 : 1;
      got[static_cast<size_t>(r)].assign(rows * 3, -1.f);
      StateDict sd;
      sd.tensors.push_back({"w",
                            DType::kF32,
                            Shape({4, 3}),
                            {{{row0, 0},
                              Shape({rows, 3}),
                              reinterpret_cast<std::byte*>(got[static_cast<size_t>(r)].data()),
                              {}}}});
      st[static_cast<size_t>(r)] =
          LoadSharded(*comms[static_cast<size_t>(r)], *fs, "/d", sd, LoadOptions{});
    });
  }
  for (auto& t : threads) t.join();
  for (const Status& s : st) CKPT_EXPECT_OK(s);
  EXPECT_EQ(got[0], (std::vector<float>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(got[1], (std::vector<float>{6, 7, 8}));
  EXPECT_EQ(got[2], (std::vector<float>{9, 10, 11}));
}

TEST(DcpDir, DamagedDirectoriesAreRefusedNamingTheEntry) {
  struct Case {
    const char* name;
    std::function<void(DcpMetadata&)> edit;
    StatusCode code;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"offset past the file",
       [](DcpMetadata& m) { m.tensors.at("w").chunks[1].storage.offset = 5000; },
       StatusCode::kDataLoss, "tensor 'w' chunk at [2, 0] is stored at bytes [5000,"},
      {"bytes entry past the file", [](DcpMetadata& m) { m.bytes.at("obj").length = 1u << 20; },
       StatusCode::kDataLoss, "bytes entry 'obj' is stored at bytes"},
      {"missing data file",
       [](DcpMetadata& m) { m.tensors.at("w").chunks[1].storage.relative_path = "__7_0.distcp"; },
       StatusCode::kNotFound, "__7_0.distcp"},
      {"dtype differs from the archive",
       [](DcpMetadata& m) { m.tensors.at("w").dtype = DType::kI32; }, StatusCode::kInvalidArgument,
       "the archive holds F32 [2, 3] but .metadata says I32 [2, 3]"},
      {"chunks leave a hole",
       [](DcpMetadata& m) {
         m.tensors.at("w").size = {5, 3};
       },
       StatusCode::kDataLoss, "tensor 'w' has size [5, 3] but its chunks cover [4, 3]"},
      {"entry not at an archive",
       [](DcpMetadata& m) { m.tensors.at("w").chunks[0].storage.offset = 8; },
       StatusCode::kInvalidArgument, "(tensor 'w' chunk)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    auto fs = NewMemoryStorage();
    WriteDcpDir(*fs, "/d", c.edit);
    auto one = NewSingleRankCommunicator();
    std::vector<float> all(12);
    StateDict sd;
    sd.tensors.push_back({"w",
                          DType::kF32,
                          Shape({4, 3}),
                          {{{0, 0}, Shape({4, 3}), reinterpret_cast<std::byte*>(all.data()), {}}}});
    EXPECT_THAT(LoadSharded(*one, *fs, "/d", sd, LoadOptions{}), StatusIs(c.code, c.message));
  }
}

TEST(DcpDir, PublishWritesMetadataAndRenamesTheStagingDirectory) {
  auto fs = NewMemoryStorage();
  CKPT_ASSERT_OK(fs->MakeDirs("/p/.out.tmp-0"));
  Result<std::vector<std::pair<uint64_t, uint64_t>>> ranges =
      engine::WriteDcpDataFile(*fs, "/p/.out.tmp-0", "__0_0.distcp", {"abc", "defgh"});
  CKPT_ASSERT_OK(ranges);
  EXPECT_EQ(*ranges, (std::vector<std::pair<uint64_t, uint64_t>>{{0, 3}, {3, 5}}));
  DcpMetadata m;
  m.bytes["x"] = {"__0_0.distcp", 3, 5};
  CKPT_ASSERT_OK(engine::PublishDcpDir(*fs, "/p/.out.tmp-0", "/p/out", m));
  EXPECT_FALSE(*Exists(*fs, "/p/.out.tmp-0"));
  Result<StateDict> extra = ReadExtraState(*fs, "/p/out");
  CKPT_ASSERT_OK(extra);
  const auto& x = extra->bytes.at("x");
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(x.data()), x.size()), "defgh");
}

}  // namespace
}  // namespace ckpt
