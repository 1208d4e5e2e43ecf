// torch.save archives: hand-built good ones read bit-exactly, hostile ones
// refused with the reason, directories converted into verified safetensors.
#include "ckpt/torch_bin.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <thread>

#include "ckpt/checkpointer.h"
#include "ckpt/comm.h"
#include "ckpt/hf.h"
#include "ckpt/safetensors.h"
#include "ckpt/sharded.h"
#include "format/torch_archive_builder.h"
#include "format/torch_pickle.h"
#include "test_util.h"

namespace ckpt {
namespace {

using testing::ArchiveRecords;
using testing::IsOk;
using testing::PickledTensor;
using testing::PickleWriter;
using testing::StateDictPickle;
using testing::StatusIs;
using testing::TempDir;
using testing::ZipBytes;
using testing::ZipOptions;
using testing::ZipRecord;

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

std::string RandomString(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

std::string Read(const TorchArchive& a, const std::string& name) {
  const TorchTensorInfo* t = a.Find(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return "";
  std::string out(t->nbytes, '\0');
  Status s = a.ReadTensor(name, std::as_writable_bytes(std::span<char>(out.data(), out.size())));
  EXPECT_TRUE(s.ok()) << s.ToString();
  return out;
}

Result<std::unique_ptr<TorchArchive>> OpenBytes(const TempDir& dir, const std::string& bytes,
                                                const TorchArchiveLimits& limits = {}) {
  const std::string path = dir / "model.bin";
  WriteFile(path, bytes);
  return TorchArchive::Open(*PosixStorage(), path, limits);
}

struct DtypeCase {
  const char* storage;
  DType dtype;
};

// Every storage class with a safetensors counterpart, contiguous, through
// plain and ZIP64 archives with and without torch's 64-byte alignment.
TEST(TorchBin, ReadsEveryDtypeBitExactly) {
  const DtypeCase cases[] = {
      {"FloatStorage", DType::kF32},        {"DoubleStorage", DType::kF64},
      {"HalfStorage", DType::kF16},         {"BFloat16Storage", DType::kBF16},
      {"LongStorage", DType::kI64},         {"IntStorage", DType::kI32},
      {"ShortStorage", DType::kI16},        {"CharStorage", DType::kI8},
      {"ByteStorage", DType::kU8},          {"BoolStorage", DType::kBool},
      {"ComplexFloatStorage", DType::kC64},
  };
  std::vector<PickledTensor> tensors;
  std::vector<std::pair<std::string, std::string>> storages;
  for (size_t i = 0; i < std::size(cases); ++i) {
    const uint64_t esz = DTypeBits(cases[i].dtype) / 8;
    const std::string key = std::to_string(i);
    tensors.push_back({"t" + std::to_string(i), cases[i].storage, "", key, 6, 0, {2, 3}, {3, 1}});
    std::string bytes = RandomString(6 * esz, i);
    if (cases[i].dtype == DType::kBool) {
      for (char& c : bytes) c = static_cast<char>(c & 1);
    }
    storages.push_back({key, bytes});
  }
  for (bool zip64 : {false, true}) {
    for (bool align : {true, false}) {
      TempDir dir;
      ZipOptions zo;
      zo.zip64 = zip64;
      zo.align64 = align;
      auto a = OpenBytes(
          dir, ZipBytes(ArchiveRecords("pytorch_model", StateDictPickle(tensors), storages), zo));
      ASSERT_TRUE(a.ok()) << a.status().ToString();
      ASSERT_EQ((*a)->tensors().size(), std::size(cases));
      EXPECT_TRUE((*a)->skipped().empty());
      for (size_t i = 0; i < std::size(cases); ++i) {
        const TorchTensorInfo* t = (*a)->Find("t" + std::to_string(i));
        ASSERT_NE(t, nullptr);
        EXPECT_EQ(t->dtype, cases[i].dtype) << cases[i].storage;
        EXPECT_EQ(t->shape, Shape({2, 3}));
        EXPECT_TRUE(t->contiguous);
        EXPECT_EQ(Read(**a, t->name), storages[i].second) << cases[i].storage << " zip64=" << zip64;
      }
      CKPT_EXPECT_OK((*a)->CheckData());
    }
  }
}

// Tied weights, views with offsets and non-contiguous strides, a scalar.
TEST(TorchBin, SharedStoragesAndViewsMaterializeCorrectly) {
  std::vector<float> values(24);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i) * 1.5f - 7.f;
  std::string storage(reinterpret_cast<const char*>(values.data()), values.size() * 4);
  std::vector<PickledTensor> tensors = {
      {"a", "FloatStorage", "", "0", 24, 0, {4, 6}, {6, 1}},
      {"a_tied", "FloatStorage", "", "0", 24, 0, {4, 6}, {6, 1}, true},
      {"transposed", "FloatStorage", "", "0", 24, 0, {6, 4}, {1, 6}},
      {"block", "FloatStorage", "", "0", 24, 7, {2, 3}, {6, 1}},
      {"column", "FloatStorage", "", "0", 24, 2, {4}, {6}},
      {"scalar", "FloatStorage", "", "0", 24, 5, {}, {}},
      {"broadcast", "FloatStorage", "", "0", 24, 3, {3, 2}, {0, 1}},
  };
  auto expect = [&](const std::vector<uint64_t>& size, const std::vector<uint64_t>& stride,
                    uint64_t offset) {
    std::vector<float> out;
    std::vector<uint64_t> idx(size.size(), 0);
    uint64_t n = 1;
    for (uint64_t s : size) n *= s;
    for (uint64_t e = 0; e < n; ++e) {
      uint64_t src = offset;
      for (size_t d = 0; d < size.size(); ++d) src += idx[d] * stride[d];
      out.push_back(values[src]);
      for (size_t d = size.size(); d-- > 0;) {
        if (++idx[d] < size[d]) break;
        idx[d] = 0;
      }
    }
    return std::string(reinterpret_cast<const char*>(out.data()), out.size() * 4);
  };
  for (bool memory : {false, true}) {
    TempDir dir;
    const std::string bytes =
        ZipBytes(ArchiveRecords("archive", StateDictPickle(tensors), {{"0", storage}}));
    std::shared_ptr<Storage> st = memory ? NewMemoryStorage() : PosixStorage();
    const std::string path = memory ? "/m.bin" : dir / "m.bin";
    CKPT_ASSERT_OK(WriteFileAtomically(*st, path, bytes));
    auto a = TorchArchive::Open(*st, path);
    ASSERT_TRUE(a.ok()) << a.status().ToString();
    for (const PickledTensor& t : tensors) {
      std::vector<uint64_t> size(t.size.begin(), t.size.end()),
          stride(t.stride.begin(), t.stride.end());
      EXPECT_EQ(Read(**a, t.name), expect(size, stride, static_cast<uint64_t>(t.offset))) << t.name;
    }
    EXPECT_FALSE((*a)->Find("transposed")->contiguous);
    EXPECT_FALSE((*a)->Find("block")->contiguous);
    EXPECT_TRUE((*a)->Find("a_tied")->contiguous);
    // A range from the middle of a strided view: elements 5..13 of the transpose.
    std::string part(9 * 4, '\0');
    CKPT_ASSERT_OK((*a)->ReadRange(
        "transposed", 5 * 4, std::as_writable_bytes(std::span<char>(part.data(), part.size()))));
    EXPECT_EQ(part, expect({6, 4}, {1, 6}, 0).substr(5 * 4, 9 * 4));
    // Ranges that are not whole elements are refused.
    EXPECT_THAT(
        (*a)->ReadRange("transposed", 2, std::as_writable_bytes(std::span<char>(part.data(), 4))),
        StatusIs(StatusCode::kInvalidArgument,
                 "tensor 'transposed': bytes [2, +4) are not whole elements"));
  }
}

// _rebuild_tensor_v3 on an untyped storage with a dtype, a parameter, a
// root built by NEWOBJ, sizes through torch.Size.
TEST(TorchBin, UntypedStorageV3ParameterAndTorchSize) {
  const std::string bf16 = RandomString(2 * 10, 7);
  PickleWriter w;
  w.Proto(2).Global("collections", "OrderedDict").EmptyTuple().NewObj().BinPut(0);
  w.Unicode("w").Global("torch._utils", "_rebuild_parameter");
  w.Global("torch._utils", "_rebuild_tensor_v3").Mark();
  w.Mark()
      .Unicode("storage")
      .Global("torch", "UntypedStorage")
      .Unicode("0")
      .Unicode("cpu")
      .Int(20)
      .Tuple()
      .PersId();
  w.Int(2);  // element offset
  w.Global("torch", "Size").Mark().Int(2).Int(4).Tuple().Tuple1().Reduce();
  w.Int(4).Int(1).Tuple2();
  w.True().OrderedDict().Global("torch", "bfloat16").Tuple().Reduce();
  w.True().OrderedDict().Tuple3().Reduce();
  w.SetItem().Stop();
  TempDir dir;
  auto a = OpenBytes(dir, ZipBytes(ArchiveRecords("x", w.str(), {{"0", bf16}})));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  const TorchTensorInfo* t = (*a)->Find("w");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, DType::kBF16);
  EXPECT_EQ(t->shape, Shape({2, 4}));
  EXPECT_EQ(Read(**a, "w"), bf16.substr(4, 16));
}

// Newer dtypes (FP8, wide unsigned) have no typed storage class: torch 2.x
// saves them with _rebuild_tensor_v3 on an untyped storage.
TEST(TorchBin, V3DtypesWithoutStorageClasses) {
  struct Case {
    const char* torch;
    DType dtype;
  };
  const Case cases[] = {{"float8_e4m3fn", DType::kF8_E4M3},
                        {"float8_e5m2", DType::kF8_E5M2},
                        {"uint16", DType::kU16},
                        {"uint32", DType::kU32},
                        {"uint64", DType::kU64},
                        {"bfloat16", DType::kBF16}};
  std::vector<PickledTensor> tensors;
  std::vector<std::pair<std::string, std::string>> storages;
  for (size_t i = 0; i < std::size(cases); ++i) {
    const uint64_t esz = DTypeBits(cases[i].dtype) / 8;
    const std::string key = std::to_string(i);
    tensors.push_back({cases[i].torch,
                       "UntypedStorage",
                       cases[i].torch,
                       key,
                       static_cast<int64_t>(esz * 12),
                       0,
                       {3, 4},
                       {4, 1}});
    storages.push_back({key, RandomString(esz * 12, 40 + i)});
  }
  TempDir dir;
  auto a = OpenBytes(dir, ZipBytes(ArchiveRecords("new", StateDictPickle(tensors), storages)));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  for (size_t i = 0; i < std::size(cases); ++i) {
    const TorchTensorInfo* t = (*a)->Find(cases[i].torch);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->dtype, cases[i].dtype) << cases[i].torch;
    EXPECT_EQ(Read(**a, t->name), storages[i].second) << cases[i].torch;
  }
  // An untyped storage whose bytes are not whole elements of the dtype.
  auto odd = OpenBytes(
      dir, ZipBytes(ArchiveRecords(
               "new", StateDictPickle({{"x", "UntypedStorage", "float32", "0", 10, 0, {2}, {1}}}),
               {{"0", std::string(10, 'a')}})));
  EXPECT_THAT(odd, StatusIs(StatusCode::kInvalidArgument, "not a whole number of F32 elements"));
}

// Every supported opcode in one pickle; non-tensor values are listed as
// skipped, tensor fields written with each integer opcode are read right.
TEST(TorchBin, EveryOpcode) {
  const std::string data = RandomString(8 * 400, 3);
  PickleWriter w;
  w.Proto(2).EmptyDict().LongBinPut(1000);
  // A tensor: storage tuple memoized with LONG_BINPUT, reused with LONG_BINGET.
  w.ShortBinString("big").Global("torch._utils", "_rebuild_tensor_v2").Mark();
  w.Mark()
      .Unicode("storage")
      .Global("torch", "LongStorage")
      .Unicode("0")
      .Unicode("cpu")
      .Int(400)
      .Tuple();
  w.LongBinPut(70000).PersId();
  w.Long1(100);          // offset (LONG1)
  w.Int(300).Tuple1();   // size (BININT2)
  w.BinInt(1).Tuple1();  // stride (BININT)
  w.False().None().Tuple().Reduce().SetItem();
  w.Unicode("small").Global("torch._utils", "_rebuild_tensor_v2").Mark();
  w.LongBinGet(70000)
      .PersId()
      .Int(0)
      .Int(2)
      .Int(3)
      .Tuple2()
      .Int(3)
      .Int(1)
      .Tuple2()
      .False()
      .EmptyDict();
  w.Tuple().Reduce().SetItem();
  // Values that are not tensors: lists, sets, floats, bools, bytes, nesting.
  w.Unicode("extra").EmptyList().BinPut(5).Float(2.5).Append();
  w.Mark()
      .True()
      .False()
      .None()
      .EmptySet()
      .Mark()
      .Int(-5)
      .Long1(-300)
      .Long1(1LL << 40)
      .Tuple()
      .Tuple3()
      .Appends();
  w.SetItem();
  w.Unicode("blob")
      .Global("_codecs", "encode")
      .Unicode("\xc3\xbf\x01")
      .Unicode("latin1")
      .Tuple2()
      .Reduce()
      .SetItem();
  w.Unicode("again").BinGet(5).SetItem();
  w.Unicode("nested")
      .EmptyDict()
      .Unicode("inner")
      .Global("torch._utils", "_rebuild_tensor_v2")
      .Mark();
  w.LongBinGet(70000)
      .PersId()
      .Int(399)
      .EmptyTuple()
      .EmptyTuple()
      .False()
      .EmptyDict()
      .Tuple()
      .Reduce()
      .SetItem();
  w.SetItem();
  w.Stop();
  TempDir dir;
  auto a = OpenBytes(dir, ZipBytes(ArchiveRecords("root", w.str(), {{"0", data}})));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ((*a)->tensors().size(), 3u);
  EXPECT_EQ(Read(**a, "big"), data.substr(800, 2400));
  EXPECT_EQ(Read(**a, "small"), data.substr(0, 48));
  EXPECT_EQ(Read(**a, "nested.inner"), data.substr(399 * 8, 8));
  EXPECT_EQ((*a)->skipped(), (std::vector<std::string>{"extra", "blob", "again"}));
  // LONG1 sign extension: a negative offset is refused.
  PickleWriter neg;
  neg.Proto(2).EmptyDict().Unicode("x").Global("torch._utils", "_rebuild_tensor_v2").Mark();
  neg.Mark()
      .Unicode("storage")
      .Global("torch", "LongStorage")
      .Unicode("0")
      .Unicode("cpu")
      .Int(400)
      .Tuple()
      .PersId();
  neg.Long1(-1).EmptyTuple().EmptyTuple().False().EmptyDict().Tuple().Reduce().SetItem().Stop();
  auto bad = OpenBytes(dir, ZipBytes(ArchiveRecords("root", neg.str(), {{"0", data}})));
  EXPECT_THAT(bad, StatusIs(StatusCode::kInvalidArgument, "storage offset"));
}

// A key set twice keeps the last value, as Python's dict does; 50 000 keys
// parse (the per-dict key index keeps this linear).
TEST(TorchBin, RepeatedKeysAndLargeDicts) {
  const std::string data = RandomString(4 * 8, 9);
  std::vector<PickledTensor> tensors = {{"a", "FloatStorage", "", "0", 8, 0, {2}, {1}},
                                        {"b", "FloatStorage", "", "0", 8, 2, {2}, {1}},
                                        {"a", "FloatStorage", "", "0", 8, 5, {3}, {1}}};
  TempDir dir;
  auto a = OpenBytes(dir, ZipBytes(ArchiveRecords("k", StateDictPickle(tensors), {{"0", data}})));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_EQ((*a)->tensors().size(), 2u);
  EXPECT_EQ(Read(**a, "a"), data.substr(20, 12));
  PickleWriter w;
  w.Proto(2).EmptyDict().Mark();
  for (int i = 0; i < 50000; ++i) w.Unicode("k" + std::to_string(i)).Int(i);
  w.SetItems().Stop();
  auto big = ParseTorchPickle(w.str(), "big");
  ASSERT_TRUE(big.ok()) << big.status().ToString();
  EXPECT_EQ(big->skipped.size(), 50000u);
}

TEST(TorchBin, BigEndianArchivesAreSwapped) {
  const float f[3] = {1.5f, -2.25f, 1e-3f};
  const int64_t l[2] = {-3, 1LL << 50};
  auto be = [](const void* p, size_t n, size_t w) {
    std::string s(static_cast<const char*>(p), n);
    for (size_t i = 0; i < n; i += w)
      std::reverse(s.begin() + static_cast<long>(i), s.begin() + static_cast<long>(i + w));
    return s;
  };
  std::vector<PickledTensor> tensors = {{"f", "FloatStorage", "", "0", 3, 0, {3}, {1}},
                                        {"l", "LongStorage", "", "1", 2, 0, {2}, {1}},
                                        {"lt", "LongStorage", "", "1", 2, 1, {1}, {1}}};
  TempDir dir;
  auto a =
      OpenBytes(dir, ZipBytes(ArchiveRecords("a", StateDictPickle(tensors),
                                             {{"0", be(f, 12, 4)}, {"1", be(l, 16, 8)}}, "big")));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_TRUE((*a)->big_endian());
  EXPECT_EQ(Read(**a, "f"), std::string(reinterpret_cast<const char*>(f), 12));
  EXPECT_EQ(Read(**a, "l"), std::string(reinterpret_cast<const char*>(l), 16));
  EXPECT_EQ(Read(**a, "lt"), std::string(reinterpret_cast<const char*>(l + 1), 8));
}

// ---------------------------------------------------------------- hostile

struct Hostile {
  const char* name;
  StatusCode code;
  std::string bytes;
  const char* message;  // part of the error
};

std::string Pkl(const std::function<void(PickleWriter&)>& body) {
  PickleWriter w;
  w.Proto(2);
  body(w);
  return w.str();
}

std::string Arch(const std::string& pickle,
                 const std::vector<std::pair<std::string, std::string>>& st = {}) {
  return ZipBytes(ArchiveRecords("archive", pickle, st));
}

std::vector<Hostile> HostileArchives() {
  const std::string storage(96, '\0');
  std::vector<Hostile> h;
  h.push_back({"os.system", StatusCode::kInvalidArgument, Arch(Pkl([](PickleWriter& w) {
                 w.Global("os", "system").Unicode("touch /tmp/pwned").Tuple1().Reduce().Stop();
               })),
               "global 'os.system' is not allowed"});
  h.push_back({"builtins.eval", StatusCode::kInvalidArgument, Arch(Pkl([](PickleWriter& w) {
                 w.Global("builtins", "eval").Unicode("1+1").Tuple1().Reduce().Stop();
               })),
               "global 'builtins.eval' is not allowed"});
  h.push_back({"posix.system via a torch-looking module", StatusCode::kInvalidArgument,
               Arch(Pkl([](PickleWriter& w) { w.Global("torch.os", "system").Stop(); })),
               "not allowed"});
  h.push_back({"REDUCE on a storage class", StatusCode::kInvalidArgument,
               Arch(Pkl([](PickleWriter& w) {
                 w.Global("torch", "FloatStorage").EmptyTuple().Reduce().Stop();
               })),
               "REDUCE on 'torch.FloatStorage' is not allowed"});
  h.push_back(
      {"REDUCE on a string", StatusCode::kInvalidArgument,
       Arch(Pkl([](PickleWriter& w) { w.Unicode("os.system").EmptyTuple().Reduce().Stop(); })),
       "REDUCE on a str"});
  h.push_back(
      {"SETITEM on a list", StatusCode::kInvalidArgument,
       Arch(Pkl([](PickleWriter& w) { w.EmptyList().Unicode("k").Unicode("v").SetItem().Stop(); })),
       "SETITEM on a list, not a dict"});
  h.push_back({"SETITEMS on a tensor-less tuple", StatusCode::kInvalidArgument,
               Arch(Pkl([](PickleWriter& w) {
                 w.EmptyTuple().Mark().Unicode("k").Unicode("v").SetItems().Stop();
               })),
               "SETITEMS on a tuple"});
  h.push_back({"APPEND on a dict", StatusCode::kInvalidArgument,
               Arch(Pkl([](PickleWriter& w) { w.EmptyDict().Int(1).Append().Stop(); })),
               "APPEND on a dict"});
  h.push_back({"BUILD on a plain dict", StatusCode::kInvalidArgument,
               Arch(Pkl([](PickleWriter& w) { w.EmptyDict().EmptyDict().Build().Stop(); })),
               "BUILD on a dict"});
  h.push_back({"numel larger than the record", StatusCode::kInvalidArgument,
               Arch(StateDictPickle({{"w", "FloatStorage", "", "0", 1000, 0, {1000}, {1}}}),
                    {{"0", storage}}),
               "declares 4000 bytes but its record holds 96"});
  h.push_back({"strides outside the storage", StatusCode::kInvalidArgument,
               Arch(StateDictPickle({{"w", "FloatStorage", "", "0", 24, 0, {4, 6}, {7, 1}}}),
                    {{"0", storage}}),
               "reaches element 26 but the storage holds 24"});
  h.push_back(
      {"offset outside the storage", StatusCode::kInvalidArgument,
       Arch(StateDictPickle({{"w", "FloatStorage", "", "0", 24, 20, {5}, {1}}}), {{"0", storage}}),
       "reaches element 24"});
  h.push_back(
      {"overflowing strides", StatusCode::kInvalidArgument,
       Arch(StateDictPickle({{"w", "FloatStorage", "", "0", 24, 0, {5, 2}, {INT64_MAX, 1}}}),
            {{"0", storage}}),
       "overflow"});
  h.push_back(
      {"missing storage record", StatusCode::kInvalidArgument,
       Arch(StateDictPickle({{"w", "FloatStorage", "", "7", 24, 0, {24}, {1}}}), {{"0", storage}}),
       "data/7 is missing"});
  h.push_back({"storage key with a slash", StatusCode::kInvalidArgument,
               Arch(StateDictPickle({{"w", "FloatStorage", "", "../0", 24, 0, {24}, {1}}}),
                    {{"0", storage}}),
               "characters outside"});
  h.push_back({"same storage, two sizes", StatusCode::kInvalidArgument,
               Arch(StateDictPickle({{"a", "FloatStorage", "", "0", 24, 0, {24}, {1}},
                                     {"b", "FloatStorage", "", "0", 12, 0, {12}, {1}}}),
                    {{"0", storage}}),
               "declared twice"});
  h.push_back({"unknown opcode (INST)", StatusCode::kInvalidArgument,
               Arch(Pkl([](PickleWriter& w) { w.Raw("ios\nsystem\n").Stop(); })),
               "opcode 0x69 ('i') is not allowed"});
  h.push_back(
      {"STACK_GLOBAL", StatusCode::kInvalidArgument,
       Arch(Pkl([](PickleWriter& w) { w.Unicode("os").Unicode("system").Op(0x93).Stop(); })),
       "opcode 0x93"});
  h.push_back({"GET of an unset memo", StatusCode::kInvalidArgument,
               Arch(Pkl([](PickleWriter& w) { w.BinGet(9).Stop(); })), "never PUT"});
  h.push_back({"stack underflow", StatusCode::kInvalidArgument,
               Arch(Pkl([](PickleWriter& w) { w.Tuple2().Stop(); })), "empty stack"});
  h.push_back({"no STOP", StatusCode::kInvalidArgument,
               Arch(Pkl([](PickleWriter& w) { w.EmptyDict(); })), "without STOP"});
  h.push_back({"bytes after STOP", StatusCode::kInvalidArgument,
               Arch(Pkl([](PickleWriter& w) { w.EmptyDict().Stop().Raw("junk"); })),
               "follow STOP"});
  h.push_back({"string past the end", StatusCode::kInvalidArgument,
               Arch(Pkl([](PickleWriter& w) { w.Op('X').Le(1u << 30, 4).Raw("abc"); })), "string"});
  h.push_back({"deep nesting", StatusCode::kInvalidArgument, Arch(Pkl([](PickleWriter& w) {
                 w.EmptyTuple();
                 for (int i = 0; i < 200; ++i) w.Tuple1();
                 w.Stop();
               })),
               "nested deeper than 64"});
  h.push_back({"a list inside itself", StatusCode::kInvalidArgument, Arch(Pkl([](PickleWriter& w) {
                 w.EmptyDict().Unicode("loop").EmptyList().BinPut(1);
                 for (int i = 0; i < 70; ++i) w.BinGet(1).Append();
                 w.SetItem().Stop();
               })),
               "nested deeper"});
  h.push_back({"LONG1 wider than 64 bits", StatusCode::kInvalidArgument,
               Arch(Pkl([](PickleWriter& w) { w.Op(0x8a).Le(9, 1).Raw(std::string(9, 'a')); })),
               "does not fit 64 bits"});
  h.push_back({"not a dict", StatusCode::kInvalidArgument,
               Arch(Pkl([](PickleWriter& w) { w.EmptyList().Stop(); })), "not a state dict"});
  h.push_back({"v2 on untyped storage", StatusCode::kInvalidArgument,
               Arch(StateDictPickle({{"w", "UntypedStorage", "float32", "0", 96, 0, {24}, {1}}})
                        .replace(StateDictPickle(
                                     {{"w", "UntypedStorage", "float32", "0", 96, 0, {24}, {1}}})
                                     .find("_v3"),
                                 3, "_v2"),
                    {{"0", storage}}),
               "_rebuild_tensor_v2"});
  h.push_back({"complex128", StatusCode::kInvalidArgument,
               Arch(StateDictPickle({{"w", "ComplexDoubleStorage", "", "0", 6, 0, {6}, {1}}}),
                    {{"0", storage}}),
               "complex128 has no safetensors dtype"});
  // Zip-level attacks.
  const std::string pkl = StateDictPickle({{"w", "FloatStorage", "", "0", 24, 0, {24}, {1}}});
  auto with = [&](const std::function<void(std::vector<ZipRecord>&)>& edit) {
    std::vector<ZipRecord> r = ArchiveRecords("archive", pkl, {{"0", storage}});
    edit(r);
    return ZipBytes(r);
  };
  h.push_back({"traversal name", StatusCode::kInvalidArgument,
               with([](auto& r) { r[2].name = "archive/../../etc/passwd"; }),
               "'..' path component"});
  h.push_back({"absolute name", StatusCode::kInvalidArgument,
               with([](auto& r) { r[2].name = "/archive/data/0"; }), "absolute name"});
  h.push_back({"backslash name", StatusCode::kInvalidArgument,
               with([](auto& r) { r[2].name = "archive\\data\\0"; }), "backslash"});
  h.push_back({"duplicate entry", StatusCode::kInvalidArgument,
               with([](auto& r) { r.push_back(r[2]); }), "appears twice"});
  h.push_back({"compressed entry", StatusCode::kInvalidArgument,
               with([](auto& r) { r[0].method = 8; }), "is compressed (method 8)"});
  h.push_back({"encrypted entry", StatusCode::kInvalidArgument,
               with([](auto& r) { r[2].flags = 1; }), "is encrypted"});
  h.push_back({"two roots", StatusCode::kInvalidArgument,
               with([](auto& r) { r[2].name = "other/data/0"; }), "two root folders"});
  h.push_back({"no root folder", StatusCode::kInvalidArgument,
               with([](auto& r) { r[1].name = "byteorder"; }), "not inside a root folder"});
  h.push_back({"data.pkl CRC mismatch", StatusCode::kDataLoss,
               with([](auto& r) { r[0].bad_crc = true; }), "CRC-32"});
  h.push_back({"TorchScript", StatusCode::kInvalidArgument, with([](auto& r) {
                 r.push_back({"archive/constants.pkl", "\x80\x02)."});
               }),
               "TorchScript"});
  h.push_back({"bad byteorder", StatusCode::kInvalidArgument,
               with([](auto& r) { r[1].data = "middle"; }), "neither 'little' nor 'big'"});
  h.push_back({"no data.pkl", StatusCode::kInvalidArgument,
               with([](auto& r) { r[0].name = "archive/data.pickle"; }), "no data.pkl"});
  h.push_back(
      {"legacy stream", StatusCode::kInvalidArgument,
       std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e", 15) + "...",
       "legacy torch.save stream"});
  h.push_back({"not an archive", StatusCode::kInvalidArgument, "hello world, this is not a zip",
               "not a torch.save archive"});
  {
    std::string truncated = Arch(pkl, {{"0", storage}});
    truncated.resize(truncated.size() - 10);
    h.push_back({"truncated end record", StatusCode::kInvalidArgument, truncated,
                 "end-of-central-directory"});
  }
  {
    // The central directory claims an entry whose data runs past it.
    std::string z = Arch(pkl, {{"0", storage}});
    const size_t cd = z.rfind(std::string("PK\x01\x02", 4));
    z[cd + 20] = '\xff';
    z[cd + 24] = '\xff';
    h.push_back({"entry larger than the file", StatusCode::kInvalidArgument, z,
                 "runs into the central directory"});
  }
  return h;
}

TEST(TorchBin, HostileArchivesAreRefusedBeforeAnythingRuns) {
  TempDir dir;
  std::remove("/tmp/pwned");
  for (const Hostile& c : HostileArchives()) {
    auto a = OpenBytes(dir, c.bytes);
    EXPECT_THAT(a, StatusIs(c.code, c.message)) << c.name;
    // Every error names the file.
    EXPECT_THAT(a, StatusIs(c.code, "model.bin")) << c.name;
  }
  EXPECT_FALSE(Exists(*PosixStorage(), "/tmp/pwned").value());
}

TEST(TorchBin, LimitsAreEnforced) {
  TempDir dir;
  const std::string storage(96, '\0');
  const std::string pkl = StateDictPickle({{"w", "FloatStorage", "", "0", 24, 0, {24}, {1}}});
  TorchArchiveLimits small;
  small.max_pickle_bytes = 64;
  auto a = OpenBytes(dir, Arch(pkl, {{"0", storage}}), small);
  EXPECT_THAT(a, StatusIs(StatusCode::kInvalidArgument, "more than the limit of 64"));
  TorchArchiveLimits few;
  few.max_objects = 10;
  a = OpenBytes(dir, Arch(pkl, {{"0", storage}}), few);
  EXPECT_THAT(a, StatusIs(StatusCode::kInvalidArgument, "more than 10 objects"));
  // The defaults read it.
  a = OpenBytes(dir, Arch(pkl, {{"0", storage}}));
  CKPT_EXPECT_OK(a.status());
  // A broadcast view: 4 GiB from 96 bytes is refused; 12 KiB is read.
  a = OpenBytes(
      dir,
      Arch(StateDictPickle({{"w", "FloatStorage", "", "0", 24, 0, {1 << 20, 1 << 10}, {0, 0}}}),
           {{"0", storage}}));
  EXPECT_THAT(a,
              StatusIs(StatusCode::kInvalidArgument, "repeats its elements more than 1024 times"));
  a = OpenBytes(dir,
                Arch(StateDictPickle({{"w", "FloatStorage", "", "0", 24, 0, {128, 24}, {0, 1}}}),
                     {{"0", storage}}));
  CKPT_EXPECT_OK(a.status());
}

// Small archives that make the machine (or a converter) do unbounded work:
// the budgets are in all, not per object.
TEST(TorchBin, AmplificationIsBoundedInAll) {
  TempDir dir;
  struct Case {
    const char* what;
    std::string pickle;
    const char* message;
  };
  std::vector<Case> cases;
  {
    // Seven levels of 1000 keys, each naming the dict one level below:
    // 1000^7 entries from a 70 KB pickle.
    PickleWriter w;
    w.Proto(2).EmptyDict().Mark().Unicode("leaf").Int(1).SetItems().BinPut(0);
    for (int level = 1; level < 7; ++level) {
      w.EmptyDict().Mark();
      for (int k = 0; k < 1000; ++k)
        w.Unicode("k" + std::to_string(k)).BinGet(static_cast<uint8_t>(level - 1));
      w.SetItems().BinPut(static_cast<uint8_t>(level));
    }
    w.Stop();
    cases.push_back({"shared nested dicts", w.str(), "the state dict expands to more than"});
  }
  const std::string big(16u << 20, 'a');
  {
    // _codecs.encode on one memoized 16 MiB string, 200 times.
    PickleWriter w;
    w.Proto(2).Unicode(big).BinPut(0).EmptyDict().Mark();
    for (int k = 0; k < 200; ++k) {
      w.Unicode("k" + std::to_string(k))
          .Global("_codecs", "encode")
          .BinGet(0)
          .Unicode("latin1")
          .Tuple2()
          .Reduce();
    }
    w.SetItems().Stop();
    cases.push_back(
        {"repeated encode", w.str(), "bytes of strings built, copied or hashed in all"});
  }
  {
    // One memoized 16 MiB key set into 200 dicts.
    PickleWriter w;
    w.Proto(2).Unicode(big).BinPut(0).EmptyDict();
    for (int k = 0; k < 200; ++k)
      w.Unicode("d" + std::to_string(k)).EmptyDict().BinGet(0).Int(1).SetItem().SetItem();
    w.Stop();
    cases.push_back(
        {"one big key in many dicts", w.str(), "bytes of strings built, copied or hashed in all"});
  }
  for (const Case& c : cases) {
    auto a = OpenBytes(dir, Arch(c.pickle));
    EXPECT_THAT(a, StatusIs(StatusCode::kInvalidArgument, c.message)) << c.what;
    EXPECT_THAT(a, StatusIs(StatusCode::kInvalidArgument, "model.bin: data.pkl")) << c.what;
  }
  // 1,000 stride-0 views of one 16-byte storage, each 1 GiB (within the
  // per-tensor bound): 1 TiB in all is refused at the second view.
  std::vector<PickledTensor> views;
  for (int k = 0; k < 1000; ++k) {
    views.push_back(
        {"v" + std::to_string(k), "FloatStorage", "", "0", 4, 0, {1 << 18, 1 << 10}, {0, 0}});
  }
  auto a = OpenBytes(dir, Arch(StateDictPickle(views), {{"0", std::string(16, 'x')}}));
  EXPECT_THAT(
      a, StatusIs(StatusCode::kInvalidArgument,
                  "tensor 'v1': the archive's tensors materialize 2147483648 bytes from 16 bytes"));
  // One such view alone is still read.
  a = OpenBytes(dir, Arch(StateDictPickle({views[0]}), {{"0", std::string(16, 'x')}}));
  CKPT_EXPECT_OK(a.status());
}

// ---------------------------------------------------------------- directories

struct BinModel {
  std::map<std::string, std::string> bytes;  // tensor → expected row-major bytes
};

// Two shards with an index, config and tokenizer beside them.
BinModel WriteShardedBin(const std::string& dir) {
  BinModel m;
  std::vector<PickledTensor> s1, s2;
  std::vector<std::pair<std::string, std::string>> st1, st2;
  for (int l = 0; l < 3; ++l) {
    const std::string name = "model.layers." + std::to_string(l) + ".mlp.weight";
    const std::string b = RandomString(2 * 64 * 32, static_cast<uint64_t>(l) + 10);
    s1.push_back({name, "BFloat16Storage", "", std::to_string(l), 64 * 32, 0, {64, 32}, {32, 1}});
    st1.push_back({std::to_string(l), b});
    m.bytes[name] = b;
  }
  const std::string emb = RandomString(4 * 100 * 16, 99);
  s2.push_back({"model.embed_tokens.weight", "FloatStorage", "", "0", 1600, 0, {100, 16}, {16, 1}});
  s2.push_back({"lm_head.weight", "FloatStorage", "", "0", 1600, 0, {100, 16}, {16, 1}});  // tied
  st2.push_back({"0", emb});
  m.bytes["model.embed_tokens.weight"] = emb;
  m.bytes["lm_head.weight"] = emb;
  const std::string mask = std::string("\x01\x00\x01\x01", 4);
  s2.push_back({"model.mask", "BoolStorage", "", "1", 4, 0, {4}, {1}});
  st2.push_back({"1", mask});
  m.bytes["model.mask"] = mask;
  WriteFile(JoinPath(dir, "pytorch_model-00001-of-00002.bin"),
            ZipBytes(ArchiveRecords("pytorch_model-00001-of-00002", StateDictPickle(s1), st1)));
  WriteFile(JoinPath(dir, "pytorch_model-00002-of-00002.bin"),
            ZipBytes(ArchiveRecords("pytorch_model-00002-of-00002", StateDictPickle(s2), st2)));
  HfIndex index;
  for (const auto& t : s1) index.weight_map[t.name] = "pytorch_model-00001-of-00002.bin";
  for (const auto& t : s2) index.weight_map[t.name] = "pytorch_model-00002-of-00002.bin";
  WriteFile(JoinPath(dir, "pytorch_model.bin.index.json"), SerializeHfIndex(index));
  WriteFile(JoinPath(dir, "config.json"), "{\"model_type\": \"llama\"}\n");
  WriteFile(JoinPath(dir, "tokenizer.json"), "{}\n");
  return m;
}

TEST(TorchBin, ConvertShardedDirectoryIntoVerifiedSafetensors) {
  TempDir dir;
  const std::string in = dir / "in";
  CKPT_ASSERT_OK(PosixStorage()->MakeDirs(in));
  const BinModel m = WriteShardedBin(in);
  TorchConvertOptions o;
  o.max_shard_size = 10000;  // several output files
  o.buffer_size = 1000;      // several pieces per tensor
  TorchConvertStats stats;
  CKPT_ASSERT_OK(ConvertTorchBinDir(*PosixStorage(), in, dir / "out", o, &stats));
  EXPECT_EQ(stats.tensors, m.bytes.size());
  EXPECT_GE(stats.files, 2u);
  EXPECT_LE(stats.peak_buffer, 1000u);
  auto hf = HfModelDir::Open(*PosixStorage(), dir / "out");
  ASSERT_TRUE(hf.ok()) << hf.status().ToString();
  ASSERT_TRUE(hf->index().has_value());
  EXPECT_EQ(hf->tensors().size(), m.bytes.size());
  for (const auto& [name, bytes] : m.bytes) {
    const auto& loc = hf->tensors().at(name);
    std::string got(loc.info->nbytes(), '\0');
    CKPT_ASSERT_OK(hf->files()[loc.file]->ReadTensor(
        name, std::as_writable_bytes(std::span<char>(got.data(), got.size()))));
    EXPECT_EQ(got, bytes) << name;
  }
  EXPECT_EQ(hf->tensors().at("model.layers.0.mlp.weight").info->dtype, DType::kBF16);
  EXPECT_EQ(hf->tensors().at("model.mask").info->dtype, DType::kBool);
  EXPECT_EQ(ReadFileToString(*PosixStorage(), dir / "out/config.json").value(),
            "{\"model_type\": \"llama\"}\n");
  EXPECT_TRUE(Exists(*PosixStorage(), dir / "out/tokenizer.json").value());
  EXPECT_FALSE(Exists(*PosixStorage(), dir / "out/pytorch_model.bin.index.json").value());
  // An existing output is never touched.
  Status again = ConvertTorchBinDir(*PosixStorage(), in, dir / "out");
  EXPECT_THAT(again,
              StatusIs(StatusCode::kAlreadyExists, "/out already exists; it is never overwritten"));
  // An index naming a tensor its shard lacks: refused, nothing left behind.
  HfIndex bad =
      ParseHfIndex(
          ReadFileToString(*PosixStorage(), JoinPath(in, "pytorch_model.bin.index.json")).value(),
          "x")
          .value();
  bad.weight_map["model.ghost"] = "pytorch_model-00001-of-00002.bin";
  WriteFile(JoinPath(in, "pytorch_model.bin.index.json"), SerializeHfIndex(bad));
  Status ghost = ConvertTorchBinDir(*PosixStorage(), in, dir / "out2");
  EXPECT_THAT(ghost, StatusIs(StatusCode::kDataLoss, "model.ghost"));
  EXPECT_EQ(PosixStorage()->List(dir.path()).value().size(), 2u);  // in, out
}

TEST(TorchBin, LoadShardedReadsBinDirectoriesInAnyLayout) {
  TempDir dir;
  const BinModel m = WriteShardedBin(dir.path());
  // Two thread ranks, each holding half of every matrix's rows; bf16 loaded
  // as f32 with casting, the embedding as f32.
  const int world = 2;
  auto comms = NewThreadCommunicators(world);
  std::vector<Status> errors(world);
  std::vector<std::vector<std::byte>> emb(world, std::vector<std::byte>(50 * 16 * 4));
  std::vector<std::vector<std::byte>> mlp(world, std::vector<std::byte>(32 * 32 * 2));
  // Columns [16r, 16r + 16) of a bf16 [64, 32] matrix, as f32, into a
  // transposed (strided) destination.
  std::vector<std::vector<float>> cols(world, std::vector<float>(64 * 16));
  std::vector<LoadStats> stats(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      StateDict sd;
      DistTensor e{
          "model.embed_tokens.weight",
          DType::kF32,
          Shape({100, 16}),
          {LocalChunk{{static_cast<uint64_t>(r) * 50, 0}, Shape({50, 16}), emb[r].data(), {}}}};
      DistTensor w{
          "model.layers.1.mlp.weight",
          DType::kBF16,
          Shape({64, 32}),
          {LocalChunk{{static_cast<uint64_t>(r) * 32, 0}, Shape({32, 32}), mlp[r].data(), {}}}};
      DistTensor c{"model.layers.2.mlp.weight",
                   DType::kF32,
                   Shape({64, 32}),
                   {LocalChunk{{0, static_cast<uint64_t>(r) * 16},
                               Shape({64, 16}),
                               reinterpret_cast<std::byte*>(cols[r].data()),
                               {1, 64}}}};
      sd.tensors = {e, w, c};
      LoadOptions o;
      o.allow_unexpected = true;
      o.cast_floats = true;
      Status s = LoadSharded(*comms[r], *PosixStorage(), dir.path(), sd, o, &stats[r]);
      errors[r] = s;
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) {
    ASSERT_THAT(errors[r], IsOk()) << r;
    EXPECT_EQ(
        std::memcmp(emb[r].data(), m.bytes.at("model.embed_tokens.weight").data() + r * 50 * 16 * 4,
                    emb[r].size()),
        0);
    EXPECT_EQ(
        std::memcmp(mlp[r].data(), m.bytes.at("model.layers.1.mlp.weight").data() + r * 32 * 32 * 2,
                    mlp[r].size()),
        0);
    const std::string& src = m.bytes.at("model.layers.2.mlp.weight");
    for (uint64_t i = 0; i < 64; ++i) {
      for (uint64_t j = 0; j < 16; ++j) {
        uint16_t b;
        std::memcpy(&b, src.data() + 2 * (i * 32 + static_cast<uint64_t>(r) * 16 + j), 2);
        const float v = cols[r][j * 64 + i];
        uint32_t u;
        std::memcpy(&u, &v, 4);
        if ((b & 0x7f80) == 0x7f80 && (b & 0x7f) != 0) {
          ASSERT_TRUE(std::isnan(v));
        } else {
          ASSERT_EQ(u, static_cast<uint32_t>(b) << 16) << i << "," << j;
        }
      }
    }
    // Only the boxes' bytes were read (source dtype).
    EXPECT_EQ(stats[r].bytes_read, 50u * 16 * 4 + 32u * 32 * 2 + 64u * 16 * 2) << r;
  }
  // A missing key is one clear error on every rank.
  threads.clear();
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      std::vector<std::byte> buf(8);
      StateDict sd;
      sd.tensors.push_back(WholeTensor("model.absent", DType::kF32, Shape({2}), buf.data()));
      errors[r] = LoadSharded(*comms[r], *PosixStorage(), dir.path(), sd, {});
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) {
    EXPECT_THAT(errors[r], StatusIs(StatusCode::kInvalidArgument, "missing keys (1): model.absent"))
        << r;
  }
}

// A directory with both formats loads from safetensors; the .bin is ignored.
TEST(TorchBin, SafetensorsBesideBinWin) {
  TempDir dir;
  WriteShardedBin(dir.path());
  std::vector<float> v(4, 3.25f);
  const TensorData t{"model.extra", DType::kF32, Shape({4}),
                     std::as_bytes(std::span<const float>(v))};
  CKPT_ASSERT_OK(WriteSafetensors(*PosixStorage(), dir / "model.safetensors",
                                  std::span<const TensorData>(&t, 1)));
  auto comms = NewThreadCommunicators(1);
  std::vector<float> got(4, 0.f);
  StateDict sd;
  sd.tensors.push_back(WholeTensor("model.extra", DType::kF32, Shape({4}),
                                   reinterpret_cast<std::byte*>(got.data())));
  CKPT_ASSERT_OK(LoadSharded(*comms[0], *PosixStorage(), dir.path(), sd));
  EXPECT_EQ(got, v);
}

// The Checkpointer imports a .bin-only base model (bf16 → f32 cast) and its
// save records the base model's dtypes for the export.
class TwoTensorModel : public Model {
 public:
  TwoTensorModel() {
    sd_.tensors.push_back(WholeTensor("model.layers.1.mlp.weight", DType::kF32, Shape({64, 32}),
                                      reinterpret_cast<std::byte*>(mlp_.data())));
    sd_.tensors.push_back(WholeTensor("model.mask", DType::kBool, Shape({4}), mask_.data()));
  }
  StateDict& state_dict() override { return sd_; }
  std::vector<float> mlp_ = std::vector<float>(64 * 32);
  std::vector<std::byte> mask_ = std::vector<std::byte>(4);

 private:
  StateDict sd_;
};

TEST(TorchBin, CheckpointerImportsBinBaseModel) {
  TempDir dir;
  CKPT_ASSERT_OK(PosixStorage()->MakeDirs(dir / "base"));
  const BinModel m = WriteShardedBin(dir / "base");
  CheckpointingConfig cfg;
  cfg.checkpoint_dir = dir / "ckpts";
  cfg.skip_task_head_prefixes_for_base_model = {"lm_head.", "model.embed_tokens.",
                                                "model.layers.0.", "model.layers.2."};
  auto comms = NewThreadCommunicators(1);
  TwoTensorModel model;
  auto c = Checkpointer::Create(cfg, {}, *comms[0]);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  CKPT_ASSERT_OK((*c)->LoadBaseModel(model, {.model_name = dir / "base"}).status());
  // bf16 → f32 is exact: the upper half of each f32 is the bf16 (NaNs come
  // back quiet).
  const std::string& bf16 = m.bytes.at("model.layers.1.mlp.weight");
  for (size_t i = 0; i < model.mlp_.size(); ++i) {
    uint32_t u;
    std::memcpy(&u, &model.mlp_[i], 4);
    uint16_t b;
    std::memcpy(&b, bf16.data() + 2 * i, 2);
    if ((b & 0x7f80) == 0x7f80 && (b & 0x7f) != 0) {
      ASSERT_TRUE(std::isnan(model.mlp_[i])) << i;
    } else {
      ASSERT_EQ(u, static_cast<uint32_t>(b) << 16) << i;
    }
  }
  EXPECT_EQ(0, std::memcmp(model.mask_.data(), m.bytes.at("model.mask").data(), 4));
  auto d = (*c)->Reserve(0, 1);
  ASSERT_TRUE(d.ok());
  CKPT_ASSERT_OK((*c)->SaveModel(model, *d));
  const std::string dtypes =
      ReadFileToString(*PosixStorage(), *d + "/model/.hf_metadata/fqn_to_dtype_mapping.json")
          .value();
  EXPECT_NE(dtypes.find("\"model.layers.1.mlp.weight\": \"torch.bfloat16\""), std::string::npos)
      << dtypes;
}

}  // namespace
}  // namespace ckpt
