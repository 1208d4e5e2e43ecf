// Hand-built torch.save archives for tests and fuzz seeds: a pickle writer
// that emits opcodes one by one, a state-dict emitter shaped like torch's
// own output, and a zip writer with switches for every malformation.
#ifndef CKPT_TESTS_FORMAT_TORCH_ARCHIVE_BUILDER_H_
#define CKPT_TESTS_FORMAT_TORCH_ARCHIVE_BUILDER_H_

#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace ckpt::testing {

class PickleWriter {
 public:
  PickleWriter& Op(unsigned char op) {
    out_ += static_cast<char>(op);
    return *this;
  }
  PickleWriter& Raw(const std::string& bytes) {
    out_ += bytes;
    return *this;
  }
  PickleWriter& Le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_ += static_cast<char>((v >> (8 * i)) & 0xff);
    return *this;
  }
  PickleWriter& Proto(int v = 2) { return Op(0x80).Le(static_cast<uint64_t>(v), 1); }
  PickleWriter& Global(const std::string& module, const std::string& name) {
    return Op('c').Raw(module + "\n" + name + "\n");
  }
  PickleWriter& Mark() { return Op('('); }
  PickleWriter& Tuple() { return Op('t'); }
  PickleWriter& Tuple1() { return Op(0x85); }
  PickleWriter& Tuple2() { return Op(0x86); }
  PickleWriter& Tuple3() { return Op(0x87); }
  PickleWriter& EmptyTuple() { return Op(')'); }
  PickleWriter& EmptyDict() { return Op('}'); }
  PickleWriter& EmptyList() { return Op(']'); }
  PickleWriter& EmptySet() { return Op(0x8f); }
  PickleWriter& SetItem() { return Op('s'); }
  PickleWriter& SetItems() { return Op('u'); }
  PickleWriter& Append() { return Op('a'); }
  PickleWriter& Appends() { return Op('e'); }
  PickleWriter& Unicode(const std::string& s) { return Op('X').Le(s.size(), 4).Raw(s); }
  PickleWriter& ShortBinString(const std::string& s) { return Op('U').Le(s.size(), 1).Raw(s); }
  // The smallest integer opcode, as pickle chooses it.
  PickleWriter& Int(int64_t v) {
    if (v >= 0 && v < 256) return Op('K').Le(static_cast<uint64_t>(v), 1);
    if (v >= 0 && v < 65536) return Op('M').Le(static_cast<uint64_t>(v), 2);
    if (v >= INT32_MIN && v <= INT32_MAX)
      return Op('J').Le(static_cast<uint64_t>(static_cast<uint32_t>(v)), 4);
    return Long1(v);
  }
  PickleWriter& BinInt(int32_t v) { return Op('J').Le(static_cast<uint32_t>(v), 4); }
  PickleWriter& Long1(int64_t v) {
    // Minimal two's complement little-endian bytes.
    std::string b;
    auto u = static_cast<uint64_t>(v);
    for (int i = 0; i < 8; ++i) b += static_cast<char>((u >> (8 * i)) & 0xff);
    while (b.size() > 1) {
      const auto last = static_cast<unsigned char>(b.back());
      const auto prev = static_cast<unsigned char>(b[b.size() - 2]);
      if ((last == 0 && !(prev & 0x80)) || (last == 0xff && (prev & 0x80))) {
        b.pop_back();
      } else {
        break;
      }
    }
    return Op(0x8a).Le(b.size(), 1).Raw(b);
  }
  PickleWriter& Float(double d) {
    uint64_t bits;
    std::memcpy(&bits, &d, 8);
    Op('G');
    for (int i = 7; i >= 0; --i) out_ += static_cast<char>((bits >> (8 * i)) & 0xff);
    return *this;
  }
  PickleWriter& True() { return Op(0x88); }
  PickleWriter& False() { return Op(0x89); }
  PickleWriter& None() { return Op('N'); }
  PickleWriter& Reduce() { return Op('R'); }
  PickleWriter& Build() { return Op('b'); }
  PickleWriter& NewObj() { return Op(0x81); }
  PickleWriter& PersId() { return Op('Q'); }
  PickleWriter& BinPut(uint8_t i) { return Op('q').Le(i, 1); }
  PickleWriter& LongBinPut(uint32_t i) { return Op('r').Le(i, 4); }
  PickleWriter& BinGet(uint8_t i) { return Op('h').Le(i, 1); }
  PickleWriter& LongBinGet(uint32_t i) { return Op('j').Le(i, 4); }
  PickleWriter& Stop() { return Op('.'); }
  PickleWriter& OrderedDict() { return Global("collections", "OrderedDict").EmptyTuple().Reduce(); }

  const std::string& str() const { return out_; }

 private:
  std::string out_;
};

// One tensor of a state dict, as torch pickles it.
struct PickledTensor {
  std::string name;
  std::string storage_type = "FloatStorage";  // "UntypedStorage" → v3 with `dtype`
  std::string dtype;                          // for v3: "float32", "bfloat16", ...
  std::string key;
  int64_t storage_numel = 0;
  int64_t offset = 0;
  std::vector<int64_t> size;
  std::vector<int64_t> stride;
  bool parameter = false;  // wrapped in _rebuild_parameter
};

// Emits the tensor's rebuild call onto `w` (leaves the tensor on the stack).
inline void EmitTensor(PickleWriter& w, const PickledTensor& t) {
  const bool v3 = t.storage_type == "UntypedStorage";
  if (t.parameter) w.Global("torch._utils", "_rebuild_parameter");
  w.Global("torch._utils", v3 ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2");
  w.Mark();
  w.Mark()
      .Unicode("storage")
      .Global("torch", t.storage_type)
      .Unicode(t.key)
      .Unicode("cpu")
      .Int(t.storage_numel)
      .Tuple();
  w.PersId();
  w.Int(t.offset);
  w.Mark();
  for (int64_t s : t.size) w.Int(s);
  w.Tuple();
  w.Mark();
  for (int64_t s : t.stride) w.Int(s);
  w.Tuple();
  w.False();
  w.OrderedDict();
  if (v3) w.Global("torch", t.dtype);
  w.Tuple().Reduce();
  if (t.parameter) w.True().OrderedDict().Tuple3().Reduce();
}

// A state dict pickle the way torch.save writes one: an OrderedDict filled
// by SETITEMS, and the `_metadata` attribute set by BUILD.
inline std::string StateDictPickle(const std::vector<PickledTensor>& tensors,
                                   bool with_metadata = true) {
  PickleWriter w;
  w.Proto(2).OrderedDict().BinPut(0).Mark();
  for (const PickledTensor& t : tensors) {
    w.Unicode(t.name);
    EmitTensor(w, t);
  }
  w.SetItems();
  if (with_metadata) {
    w.EmptyDict()
        .Unicode("_metadata")
        .OrderedDict()
        .Mark()
        .Unicode("")
        .EmptyDict()
        .Unicode("version")
        .Int(1)
        .SetItem()
        .SetItems()
        .SetItem()
        .Build();
  }
  w.Stop();
  return w.str();
}

struct ZipRecord {
  std::string name;  // full name inside the zip
  std::string data;
  uint16_t method = 0;
  uint16_t flags = 0;
  bool bad_crc = false;
};

struct ZipOptions {
  bool zip64 = false;   // ZIP64 extra fields and end records
  bool align64 = true;  // pad each entry's data to 64 bytes, as torch does
  std::string prefix;   // bytes before the first entry
};

inline uint32_t Crc(const std::string& s) {
  return static_cast<uint32_t>(
      crc32(0, reinterpret_cast<const Bytef*>(s.data()), static_cast<uInt>(s.size())));
}

inline std::string ZipBytes(const std::vector<ZipRecord>& records, const ZipOptions& o = {}) {
  auto le = [](std::string& s, uint64_t v, int n) {
    for (int i = 0; i < n; ++i) s += static_cast<char>((v >> (8 * i)) & 0xff);
  };
  std::string out = o.prefix;
  std::string cd;
  for (const ZipRecord& r : records) {
    const uint64_t local = out.size();
    const uint32_t crc = Crc(r.data) ^ (r.bad_crc ? 1u : 0u);
    std::string extra;
    if (o.align64) {
      const uint64_t base = out.size() + 30 + r.name.size() + 4;
      const uint64_t pad = (64 - base % 64) % 64;
      le(extra, 0x4246, 2);  // torch's "FB" padding field
      le(extra, pad, 2);
      extra.append(pad, 'Z');
    }
    le(out, 0x04034b50, 4);
    le(out, 20, 2);
    le(out, r.flags, 2);
    le(out, r.method, 2);
    le(out, 0, 4);
    le(out, crc, 4);
    le(out, r.data.size(), 4);
    le(out, r.data.size(), 4);
    le(out, r.name.size(), 2);
    le(out, extra.size(), 2);
    out += r.name;
    out += extra;
    out += r.data;
    std::string cx;
    if (o.zip64) {
      le(cx, 0x0001, 2);
      le(cx, 24, 2);
      le(cx, r.data.size(), 8);
      le(cx, r.data.size(), 8);
      le(cx, local, 8);
    }
    le(cd, 0x02014b50, 4);
    le(cd, 45, 2);
    le(cd, 45, 2);
    le(cd, r.flags, 2);
    le(cd, r.method, 2);
    le(cd, 0, 4);
    le(cd, crc, 4);
    le(cd, o.zip64 ? 0xffffffffu : r.data.size(), 4);
    le(cd, o.zip64 ? 0xffffffffu : r.data.size(), 4);
    le(cd, r.name.size(), 2);
    le(cd, cx.size(), 2);
    le(cd, 0, 2);
    le(cd, 0, 2);
    le(cd, 0, 2);
    le(cd, 0, 4);
    le(cd, o.zip64 ? 0xffffffffu : local, 4);
    cd += r.name;
    cd += cx;
  }
  const uint64_t cd_offset = out.size();
  out += cd;
  if (o.zip64) {
    const uint64_t z64 = out.size();
    le(out, 0x06064b50, 4);
    le(out, 44, 8);
    le(out, 45, 2);
    le(out, 45, 2);
    le(out, 0, 4);
    le(out, 0, 4);
    le(out, records.size(), 8);
    le(out, records.size(), 8);
    le(out, cd.size(), 8);
    le(out, cd_offset, 8);
    le(out, 0x07064b50, 4);
    le(out, 0, 4);
    le(out, z64, 8);
    le(out, 1, 4);
  }
  le(out, 0x06054b50, 4);
  le(out, 0, 2);
  le(out, 0, 2);
  le(out, o.zip64 ? 0xffff : records.size(), 2);
  le(out, o.zip64 ? 0xffff : records.size(), 2);
  le(out, o.zip64 ? 0xffffffffu : cd.size(), 4);
  le(out, o.zip64 ? 0xffffffffu : cd_offset, 4);
  le(out, 0, 2);
  return out;
}

// A complete archive under root folder `root`: data.pkl, byteorder,
// data/<key> for each storage, version and serialization id.
inline std::vector<ZipRecord> ArchiveRecords(
    const std::string& root, const std::string& pickle,
    const std::vector<std::pair<std::string, std::string>>& storages,
    const std::string& byteorder = "little") {
  std::vector<ZipRecord> r;
  r.push_back({root + "/data.pkl", pickle});
  if (!byteorder.empty()) r.push_back({root + "/byteorder", byteorder});
  for (const auto& [key, bytes] : storages) r.push_back({root + "/data/" + key, bytes});
  r.push_back({root + "/version", "3\n"});
  r.push_back({root + "/.data/serialization_id", "1234567890123456789012345678901234567890"});
  return r;
}

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_FORMAT_TORCH_ARCHIVE_BUILDER_H_
