#include "ckpt/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <random>

#include "test_util.h"

namespace ckpt {
namespace {

using testing::RandomBytes;
using testing::StatusIs;
using testing::TempDir;
using testing::ToString;

std::string ReadAll(Storage& s, const std::string& p) { return *ReadFileToString(s, p); }

std::vector<std::byte> Bytes(std::initializer_list<uint8_t> v) {
  std::vector<std::byte> out;
  for (uint8_t b : v) out.push_back(static_cast<std::byte>(b));
  return out;
}

std::vector<std::byte> F32s(std::initializer_list<float> v) {
  std::vector<std::byte> out(v.size() * 4);
  std::memcpy(out.data(), std::data(v), out.size());
  return out;
}

// The reference implementation's own serialization vectors.
TEST(SafetensorsWriterTest, ByteIdenticalToReferenceWriter) {
  auto fs = NewMemoryStorage();
  std::vector<std::byte> data = F32s({0, 1, 2, 3, 4, 5});
  TensorData t{"attn.0", DType::kF32, Shape({1, 2, 3}), data};
  CKPT_ASSERT_OK(WriteSafetensors(*fs, "/a.safetensors", std::span(&t, 1)));
  std::string header = R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})";
  ASSERT_EQ(header.size(), 64u);  // already a multiple of 8: no padding
  EXPECT_EQ(ReadAll(*fs, "/a.safetensors"), testing::RawSafetensors(header, ToString(data)));

  // A shorter name forces 7 bytes of space padding (header length 72).
  TensorData t2{"attn0", DType::kF32, Shape({1, 1, 2, 3}), data};
  CKPT_ASSERT_OK(WriteSafetensors(*fs, "/b.safetensors", std::span(&t2, 1)));
  std::string header2 =
      R"({"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}})" + std::string(7, ' ');
  ASSERT_EQ(header2.size(), 72u);
  EXPECT_EQ(ReadAll(*fs, "/b.safetensors"), testing::RawSafetensors(header2, ToString(data)));

  // Empty file, with and without metadata.
  CKPT_ASSERT_OK(WriteSafetensors(*fs, "/e.safetensors", {}));
  EXPECT_EQ(ReadAll(*fs, "/e.safetensors"), testing::RawSafetensors("{}      ", ""));
  CKPT_ASSERT_OK(
      WriteSafetensors(*fs, "/m.safetensors", {}, SafetensorsMetadata{{"framework", "pt"}}));
  EXPECT_EQ(ReadAll(*fs, "/m.safetensors"),
            testing::RawSafetensors(R"({"__metadata__":{"framework":"pt"}}     )", ""));
}

TEST(SafetensorsWriterTest, OrdersByDtypeWidthThenNameAndAligns) {
  auto fs = NewMemoryStorage();
  std::vector<std::byte> b1(1), b4(4), b8(8), b2(2);
  std::vector<TensorData> ts = {{"z_u8", DType::kU8, Shape({1}), b1},
                                {"b_f32", DType::kF32, Shape({1}), b4},
                                {"a_f32", DType::kF32, Shape({1}), b4},
                                {"c_i64", DType::kI64, Shape({1}), b8},
                                {"d_bf16", DType::kBF16, Shape({1}), b2}};
  CKPT_ASSERT_OK(WriteSafetensors(*fs, "/o.safetensors", ts));
  auto f = SafetensorsFile::Open(*fs, "/o.safetensors");
  CKPT_ASSERT_OK(f);
  std::vector<std::string> order;
  for (const TensorInfo& t : (*f)->header().tensors()) {
    order.push_back(t.name);
    EXPECT_EQ(((*f)->header().data_offset() + t.begin) % (DTypeBits(t.dtype) / 8), 0u) << t.name;
  }
  EXPECT_EQ(order, (std::vector<std::string>{"c_i64", "a_f32", "b_f32", "d_bf16", "z_u8"}));
  EXPECT_EQ((*f)->header().data_offset() % 8, 0u);
}

// Random dtypes (sub-byte and FP8 included), shapes (rank 0, zero
// elements, high rank) and metadata survive a write/read round trip.
TEST(SafetensorsRoundTripTest, RandomFilesOnBothBackends) {
  std::mt19937_64 rng(20261128);
  TempDir tmp;
  auto dtypes = AllDTypes();
  for (int iter = 0; iter < 200; ++iter) {
    std::shared_ptr<Storage> fs = iter % 2 ? NewMemoryStorage() : PosixStorage();
    std::string path = iter % 2 ? "/f.safetensors" : tmp / "f.safetensors";
    int n = static_cast<int>(rng() % 8);
    std::vector<TensorData> ts;
    std::vector<std::vector<std::byte>> bufs;
    std::map<std::string, size_t> by_name;
    for (int i = 0; i < n; ++i) {
      DType d = dtypes[rng() % dtypes.size()].dtype;
      size_t rank = rng() % 5 == 0 ? 7 + rng() % 25 : rng() % 4;
      std::vector<uint64_t> dims;
      for (size_t r = 0; r < rank; ++r) dims.push_back(rank > 6 ? 1 + rng() % 2 : rng() % 6);
      if (rng() % 7 == 0 && rank > 0) dims[0] = 0;
      Shape shape(dims);
      Result<uint64_t> nbytes = shape.NumBytes(d);
      if (!nbytes.ok()) {  // odd bit count for a sub-byte dtype: pad the shape
        dims.push_back(8);
        shape = Shape(dims);
        nbytes = shape.NumBytes(d);
      }
      CKPT_ASSERT_OK(nbytes);
      bufs.push_back(RandomBytes(*nbytes, rng));
      std::string name = "t." + std::to_string(i) + (rng() % 3 == 0 ? "\xc3\xa9\"\\\n" : "");
      ts.push_back({name, d, shape, {}});
      by_name[name] = ts.size() - 1;
    }
    for (size_t i = 0; i < ts.size(); ++i) ts[i].data = bufs[i];
    std::optional<SafetensorsMetadata> md;
    if (rng() % 2) {
      md = SafetensorsMetadata{{"format", "pt"}, {"k" + std::to_string(rng() % 100), "v\t\"x\""}};
    }
    CKPT_ASSERT_OK(WriteSafetensors(*fs, path, ts, md));
    auto f = SafetensorsFile::Open(*fs, path);
    CKPT_ASSERT_OK(f);
    const SafetensorsHeader& h = (*f)->header();
    ASSERT_EQ(h.tensors().size(), ts.size());
    EXPECT_EQ(h.has_metadata(), md.has_value());
    if (md) {
      EXPECT_EQ(h.metadata(), *md);
    }
    for (const TensorData& t : ts) {
      const TensorInfo* info = h.Find(t.name);
      ASSERT_NE(info, nullptr) << t.name;
      EXPECT_EQ(info->dtype, t.dtype);
      EXPECT_EQ(info->shape, t.shape);
      std::vector<std::byte> got(info->nbytes());
      CKPT_ASSERT_OK((*f)->ReadTensor(t.name, got));
      EXPECT_TRUE(std::equal(got.begin(), got.end(), t.data.begin(), t.data.end())) << t.name;
      auto view = (*f)->View(t.name);
      CKPT_ASSERT_OK(view);
      EXPECT_TRUE(std::equal(view->data.begin(), view->data.end(), t.data.begin(), t.data.end()));
    }
  }
}

// 100,000 tensors in one header: parsing is linear in the header (it was
// quadratic in the tensor count: minutes for a header under the 100 MB cap).
// The strict rules still hold at that size.
TEST(SafetensorsHeaderTest, HundredThousandTensorsParseAndDuplicatesAreStillFound) {
  const int n = 100000;
  std::string h = "{";
  for (int i = 0; i < n; ++i) {
    if (i) h += ',';
    h += "\"t" + std::to_string(i) + "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[" +
         std::to_string(i) + "," + std::to_string(i + 1) + "]}";
  }
  auto parsed = SafetensorsHeader::Parse(h + "}", n, "big.safetensors");
  CKPT_ASSERT_OK(parsed);
  EXPECT_EQ(parsed->tensors().size(), static_cast<size_t>(n));
  EXPECT_EQ(parsed->Find("t99999")->begin, 99999u);
  auto dup = SafetensorsHeader::Parse(
      h + ",\"t5\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", n, "big.safetensors");
  EXPECT_THAT(dup, StatusIs(StatusCode::kDataLoss,
                            "big.safetensors: header: JSON has a duplicate top-level key 't5'"));
}

TEST(SafetensorsReaderTest, RangedReadsTouchOnlyTheirBytes) {
  auto fs = NewMemoryStorage();
  std::mt19937_64 rng(7);
  std::vector<std::byte> a = RandomBytes(4000, rng), b = RandomBytes(800, rng);
  std::vector<TensorData> ts = {{"a", DType::kF32, Shape({10, 100}), a},
                                {"b", DType::kU8, Shape({800}), b}};
  CKPT_ASSERT_OK(WriteSafetensors(*fs, "/r.safetensors", ts));
  auto f = SafetensorsFile::Open(*fs, "/r.safetensors");
  CKPT_ASSERT_OK(f);
  std::vector<std::byte> part(400);
  CKPT_ASSERT_OK((*f)->ReadRange("a", 1200, part));  // row 3
  EXPECT_TRUE(std::equal(part.begin(), part.end(), a.begin() + 1200));
  Status s = (*f)->ReadRange("a", 3800, part);
  EXPECT_THAT(s, StatusIs(StatusCode::kInvalidArgument, "[3800, 4200) is outside its 4000 bytes"));
  EXPECT_THAT((*f)->ReadRange("nope", 0, part),
              StatusIs(StatusCode::kNotFound, "no tensor named 'nope'"));
  std::vector<std::byte> wrong(3);
  EXPECT_THAT(
      (*f)->ReadTensor("b", wrong),
      StatusIs(StatusCode::kInvalidArgument, "tensor 'b' has 800 bytes, destination has 3"));
  CKPT_EXPECT_OK((*f)->ReadAllData());
}

TEST(SafetensorsReaderTest, ViewsAreZeroCopyOverOneMapping) {
  TempDir tmp;
  std::vector<std::byte> a = Bytes({1, 2, 3, 4}), b = Bytes({5, 6});
  std::vector<TensorData> ts = {{"a", DType::kU8, Shape({4}), a},
                                {"b", DType::kI16, Shape({1}), b}};
  CKPT_ASSERT_OK(WriteSafetensors(*PosixStorage(), tmp / "v.safetensors", ts));
  auto f = SafetensorsFile::Open(*PosixStorage(), tmp / "v.safetensors");
  CKPT_ASSERT_OK(f);
  auto va = (*f)->View("a");
  auto vb = (*f)->View("b");
  CKPT_ASSERT_OK(va);
  CKPT_ASSERT_OK(vb);
  EXPECT_EQ(va->owner, vb->owner);                  // one mapping shared by all views
  EXPECT_EQ(vb->data.data() + 2, va->data.data());  // I16 sorts first
  EXPECT_EQ(ToString(va->data), ToString(a));
  f->reset();  // views keep the mapping alive
  EXPECT_EQ(ToString(vb->data), ToString(b));
}

TEST(SafetensorsWriterTest, PiecesInAnyOrderAndCoverageChecked) {
  auto fs = NewMemoryStorage();
  std::vector<TensorSpec> specs = {{"w", DType::kU8, Shape({10})}, {"s", DType::kU8, Shape({})}};
  auto w = SafetensorsWriter::Create(*fs, "/p.safetensors", specs, std::nullopt);
  CKPT_ASSERT_OK(w);
  CKPT_ASSERT_OK((*w)->Write("w", 6, AsBytes("6789")));
  CKPT_ASSERT_OK((*w)->Write("w", 0, AsBytes("012")));
  Status overlap = (*w)->Write("w", 2, AsBytes("XY"));
  EXPECT_THAT(overlap, StatusIs(StatusCode::kInvalidArgument, "[2, 4) were already written"));
  EXPECT_THAT(
      (*w)->Write("w", 9, AsBytes("XY")),
      StatusIs(StatusCode::kInvalidArgument, "tensor 'w': bytes [9, 11) are outside its 10 bytes"));
  EXPECT_THAT((*w)->Write("q", 0, AsBytes("X")),
              StatusIs(StatusCode::kInvalidArgument, "tensor 'q': not in the file's layout"));
  Status incomplete = (*w)->Commit();
  EXPECT_THAT(incomplete,
              StatusIs(StatusCode::kFailedPrecondition, "tensor 's' has 0 of 1 bytes written"));
  EXPECT_FALSE(*Exists(*fs, "/p.safetensors"));

  auto w2 = SafetensorsWriter::Create(*fs, "/p.safetensors", specs, std::nullopt);
  CKPT_ASSERT_OK(w2);
  CKPT_ASSERT_OK((*w2)->Write("w", 3, AsBytes("345")));
  CKPT_ASSERT_OK((*w2)->Write("w", 0, AsBytes("012")));
  CKPT_ASSERT_OK((*w2)->Write("w", 6, AsBytes("6789")));
  CKPT_ASSERT_OK((*w2)->Write("s", 0, AsBytes("S")));
  CKPT_ASSERT_OK((*w2)->Commit());
  auto f = SafetensorsFile::Open(*fs, "/p.safetensors");
  CKPT_ASSERT_OK(f);
  std::string got(10, '\0');
  CKPT_ASSERT_OK((*f)->ReadTensor("w", std::as_writable_bytes(std::span(got))));
  EXPECT_EQ(got, "0123456789");
}

TEST(SafetensorsWriterTest, RejectsBadInputsWithoutPublishing) {
  auto fs = NewMemoryStorage();
  std::vector<std::byte> four(4);
  struct Case {
    std::vector<TensorData> tensors;
    StatusCode code;
    std::string want;
  };
  std::vector<Case> cases = {
      {{{"a", DType::kU8, Shape({4}), four}, {"a", DType::kU8, Shape({4}), four}},
       StatusCode::kInvalidArgument,
       "duplicate tensor name 'a'"},
      {{{"__metadata__", DType::kU8, Shape({4}), four}},
       StatusCode::kInvalidArgument,
       "'__metadata__' is reserved"},
      {{{"a", DType::kF32, Shape({2}), four}},
       StatusCode::kInvalidArgument,
       "needs 8 bytes, caller gave 4"},
      {{{"a", DType::kF4, Shape({3}), four}},
       StatusCode::kInvalidArgument,
       "12 bits is not a whole number of bytes"},
      {{{"bad\xff", DType::kU8, Shape({4}), four}},
       StatusCode::kInvalidArgument,
       "not valid UTF-8"},
  };
  for (const Case& c : cases) {
    Status s = WriteSafetensors(*fs, "/x.safetensors", c.tensors);
    EXPECT_THAT(s, StatusIs(c.code, c.want));
    EXPECT_THAT(s, StatusIs(c.code, "/x.safetensors"));
    EXPECT_FALSE(*Exists(*fs, "/x.safetensors"));
    EXPECT_TRUE(fs->List("/")->empty());
  }
}

TEST(SafetensorsWriterTest, ReplacingAFileIsAtomic) {
  auto fs = NewMemoryStorage();
  std::vector<std::byte> one = Bytes({1}), two = Bytes({2, 2});
  TensorData t1{"x", DType::kU8, Shape({1}), one};
  CKPT_ASSERT_OK(WriteSafetensors(*fs, "/x.safetensors", std::span(&t1, 1)));
  std::string before = ReadAll(*fs, "/x.safetensors");
  TensorData bad{"x", DType::kU8, Shape({3}), two};
  EXPECT_THAT(WriteSafetensors(*fs, "/x.safetensors", std::span(&bad, 1)),
              StatusIs(StatusCode::kInvalidArgument, "needs 3 bytes, caller gave 2"));
  EXPECT_EQ(ReadAll(*fs, "/x.safetensors"), before);
}

}  // namespace
}  // namespace ckpt
