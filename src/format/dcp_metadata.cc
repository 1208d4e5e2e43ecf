#include "format/dcp_metadata.h"

#include <cstring>
#include <set>

#include "ckpt/shape.h"
#include "format/pickle_machine.h"

namespace ckpt {
namespace {

using pickle::Callable;
using pickle::Kind;
using pickle::KindName;
using pickle::Node;
using pickle::Quote;

constexpr std::string_view kMetaModule = "torch.distributed.checkpoint.metadata";
constexpr std::string_view kFsModule = "torch.distributed.checkpoint.filesystem";

// Reads the objects the machine built: each error names the file and where
// in the Metadata the offending value sits.
class Walker {
 public:
  explicit Walker(std::string_view source) : source_(source) {}

  Status Fail(const std::string& where, const std::string& what) const {
    return InvalidArgumentError(std::string(source_) + ": " + where + ": " + what);
  }
  // The object's attribute `name` (from the dict BUILD gave it), or null.
  static const Node* Attr(const Node* obj, std::string_view name) {
    const Node* st = obj->state;
    if (st == nullptr || st->kind != Kind::kDict) return nullptr;
    for (size_t i = 0; i + 1 < st->items.size(); i += 2) {
      if (st->items[i]->kind == Kind::kStr && st->items[i]->s == name) return st->items[i + 1];
    }
    return nullptr;
  }
  Result<const Node*> Object(const Node* n, Callable c, const char* cls,
                             const std::string& where) const {
    if (n == nullptr) return Fail(where, "missing (expected a " + std::string(cls) + ")");
    if (n->kind != Kind::kObject || n->callable != c) {
      return Fail(where,
                  "is a " +
                      (n->kind == Kind::kObject ? Quote(n->s) : std::string(KindName(n->kind))) +
                      ", not a " + cls);
    }
    if (n->state == nullptr || n->state->kind != Kind::kDict) {
      return Fail(where, std::string(cls) + " has no attribute dict (BUILD missing or not a dict)");
    }
    return n;
  }
  Result<std::vector<uint64_t>> Ints(const Node* n, const std::string& where) const {
    if (n == nullptr) return Fail(where, "missing (expected a torch.Size)");
    return pickle::IntTuple(const_cast<Node*>(n), "", 64,
                            std::string(source_) + ": " + where + ": the value");
  }
  Result<uint64_t> Int(const Node* n, const std::string& where) const {
    if (n == nullptr || n->kind != Kind::kInt || n->i < 0) {
      return Fail(where, n == nullptr ? "missing (expected a non-negative int)"
                                      : std::string("is a ") + KindName(n->kind) +
                                            (n->kind == Kind::kInt ? " below zero"
                                                                   : ", not a non-negative int"));
    }
    return static_cast<uint64_t>(n->i);
  }
  Result<std::string> Str(const Node* n, const std::string& where) const {
    if (n == nullptr || n->kind != Kind::kStr) {
      return Fail(where, n == nullptr ? "missing (expected a str)"
                                      : std::string("is a ") + KindName(n->kind) + ", not a str");
    }
    return n->s;
  }

  Result<DType> Dtype(const Node* props, const std::string& where) const {
    if (props == nullptr || props->kind != Kind::kObject ||
        props->callable != Callable::kDcpTensorProperties) {
      return Fail(where + ".properties", "is not a TensorProperties");
    }
    // torch 2.x pickles TensorProperties through __getstate__ as a tuple
    // (dtype, layout, requires_grad, memory format, pin_memory); a plain
    // dataclass would give a dict.
    const Node* st = props->state;
    const Node* dtype = nullptr;
    if (st != nullptr && st->kind == Kind::kTuple && !st->items.empty()) dtype = st->items[0];
    if (st != nullptr && st->kind == Kind::kDict) dtype = Attr(props, "dtype");
    if (dtype == nullptr || dtype->kind != Kind::kGlobal || dtype->callable != Callable::kDtype) {
      return Fail(where + ".properties.dtype",
                  "is not a torch dtype with a safetensors counterpart");
    }
    return dtype->dtype;
  }

  Result<DcpStorageInfo> Storage(const Node* n, const std::string& where) const {
    CKPT_ASSIGN_OR_RETURN(const Node* o,
                          Object(n, Callable::kDcpStorageInfo, "_StorageInfo", where));
    DcpStorageInfo s;
    CKPT_ASSIGN_OR_RETURN(s.relative_path, Str(Attr(o, "relative_path"), where + ".relative_path"));
    CKPT_ASSIGN_OR_RETURN(s.offset, Int(Attr(o, "offset"), where + ".offset"));
    CKPT_ASSIGN_OR_RETURN(s.length, Int(Attr(o, "length"), where + ".length"));
    if (s.offset > UINT64_MAX - s.length) return Fail(where, "offset + length overflows");
    const std::string& p = s.relative_path;
    if (p.empty() || p.size() > 255 || p == "." || p == ".." || p.find('/') != std::string::npos ||
        p.find('\\') != std::string::npos || p.find('\0') != std::string::npos ||
        p == kDcpMetadataName) {
      return Fail(where + ".relative_path",
                  Quote(p) + " is not a plain file name in the checkpoint directory");
    }
    if (const Node* t = Attr(o, "transform_descriptors"); t != nullptr && t->kind != Kind::kNone) {
      if (t->kind != Kind::kList || !t->items.empty()) {
        return Fail(where + ".transform_descriptors",
                    "is set: transformed (e.g. compressed) entries are not supported");
      }
    }
    return s;
  }

  std::string_view source_;
};

std::string Key(const std::string& fqn, const std::vector<uint64_t>& offsets) {
  std::string k = fqn;
  k += '\0';
  for (uint64_t o : offsets) k += std::to_string(o) + ",";
  return k;
}

// A minimal protocol-2 pickle writer: no memo, every global spelled out.
class Writer {
 public:
  Writer& Op(unsigned char op) {
    out_ += static_cast<char>(op);
    return *this;
  }
  Writer& Global(std::string_view module, std::string_view name) {
    Op('c');
    out_.append(module).append("\n").append(name).append("\n");
    return *this;
  }
  Writer& Str(std::string_view s) {
    Op('X');
    Le(s.size(), 4);
    out_.append(s);
    return *this;
  }
  Writer& Int(uint64_t v) {
    if (v < 256) return Op('K').Le(v, 1);
    if (v < 65536) return Op('M').Le(v, 2);
    if (v <= INT32_MAX) return Op('J').Le(v, 4);
    // LONG1: little-endian two's complement, a zero byte keeps it positive.
    std::string b;
    for (uint64_t u = v; u != 0; u >>= 8) b += static_cast<char>(u & 0xff);
    if (static_cast<unsigned char>(b.back()) & 0x80) b += '\0';
    Op(0x8a).Le(b.size(), 1);
    out_ += b;
    return *this;
  }
  Writer& Size(const std::vector<uint64_t>& dims) {
    Global("torch", "Size").Op('(');
    for (uint64_t d : dims) Int(d);
    return Op('t').Op(0x85).Op('R');  // torch.Size((d0, d1, ...))
  }
  // cls() filled by BUILD with the attribute dict that follows.
  Writer& NewObject(std::string_view module, std::string_view cls) {
    return Global(module, cls).Op(')').Op(0x81);
  }
  std::string Take() { return std::move(out_); }

 private:
  Writer& Le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_ += static_cast<char>((v >> (8 * i)) & 0xff);
    return *this;
  }
  std::string out_;
};

}  // namespace

// Kept whole past the function-size limit: one pass over the metadata records, each checked against
// the entries read so far.
//
// NOLINTNEXTLINE(readability-function-size)
Result<DcpMetadata> ParseDcpMetadata(std::string_view data, std::string_view source,
                                     const PickleLimits& limits) {
  pickle::Machine m(data, source, limits, PickleDialect::kDcpMetadata);
  CKPT_ASSIGN_OR_RETURN(Node * root, m.Run());
  Walker w(source);
  CKPT_ASSIGN_OR_RETURN(const Node* meta,
                        w.Object(root, Callable::kDcpMetadata, "Metadata", "the pickle"));
  DcpMetadata out;
  if (const Node* v = Walker::Attr(meta, "version"); v != nullptr && v->kind != Kind::kNone) {
    CKPT_ASSIGN_OR_RETURN(out.version, w.Str(v, "Metadata.version"));
  }

  // Storage entries by (fqn, chunk offsets); bytes entries have no offsets.
  const Node* sdata = Walker::Attr(meta, "storage_data");
  if (sdata == nullptr || sdata->kind != Kind::kDict) {
    return w.Fail("Metadata.storage_data",
                  sdata == nullptr ? "missing"
                                   : std::string("is a ") + KindName(sdata->kind) + ", not a dict");
  }
  std::map<std::string, DcpStorageInfo> storage;
  for (size_t i = 0; i + 1 < sdata->items.size(); i += 2) {
    const std::string where = "Metadata.storage_data entry " + std::to_string(i / 2);
    CKPT_ASSIGN_OR_RETURN(const Node* idx, w.Object(sdata->items[i], Callable::kDcpMetadataIndex,
                                                    "MetadataIndex", where + " key"));
    CKPT_ASSIGN_OR_RETURN(std::string fqn, w.Str(Walker::Attr(idx, "fqn"), where + " key .fqn"));
    std::vector<uint64_t> offsets;
    if (const Node* off = Walker::Attr(idx, "offset"); off != nullptr && off->kind != Kind::kNone) {
      CKPT_ASSIGN_OR_RETURN(offsets, w.Ints(off, where + " key .offset of " + Quote(fqn)));
    }
    CKPT_ASSIGN_OR_RETURN(DcpStorageInfo info,
                          w.Storage(sdata->items[i + 1], "storage of " + Quote(fqn)));
    if (!storage.emplace(Key(fqn, offsets), std::move(info)).second) {
      return w.Fail(where, "a second storage entry for " + Quote(fqn) + " at offsets " +
                               Shape(offsets).ToString());
    }
  }

  const Node* sdm = Walker::Attr(meta, "state_dict_metadata");
  if (sdm == nullptr || sdm->kind != Kind::kDict) {
    return w.Fail(
        "Metadata.state_dict_metadata",
        sdm == nullptr ? "missing" : std::string("is a ") + KindName(sdm->kind) + ", not a dict");
  }
  size_t used = 0;
  for (size_t i = 0; i + 1 < sdm->items.size(); i += 2) {
    CKPT_ASSIGN_OR_RETURN(std::string fqn,
                          w.Str(sdm->items[i], "a Metadata.state_dict_metadata key"));
    const std::string where = "entry " + Quote(fqn);
    const Node* v = sdm->items[i + 1];
    if (v->kind == Kind::kObject && v->callable == Callable::kDcpBytesStorage) {
      auto it = storage.find(Key(fqn, {}));
      if (it == storage.end()) return w.Fail(where, "a bytes entry without a storage_data entry");
      out.bytes[fqn] = it->second;
      ++used;
      continue;
    }
    CKPT_ASSIGN_OR_RETURN(const Node* t,
                          w.Object(v, Callable::kDcpTensorStorage,
                                   "TensorStorageMetadata or BytesStorageMetadata", where));
    DcpTensor tensor;
    CKPT_ASSIGN_OR_RETURN(tensor.dtype, w.Dtype(Walker::Attr(t, "properties"), where));
    CKPT_ASSIGN_OR_RETURN(tensor.size, w.Ints(Walker::Attr(t, "size"), where + ".size"));
    const Node* chunks = Walker::Attr(t, "chunks");
    if (chunks == nullptr || chunks->kind != Kind::kList)
      return w.Fail(where + ".chunks", "is not a list");
    for (size_t c = 0; c < chunks->items.size(); ++c) {
      const std::string cw = where + " chunk " + std::to_string(c);
      CKPT_ASSIGN_OR_RETURN(const Node* ch, w.Object(chunks->items[c], Callable::kDcpChunk,
                                                     "ChunkStorageMetadata", cw));
      DcpChunk chunk;
      CKPT_ASSIGN_OR_RETURN(chunk.offsets, w.Ints(Walker::Attr(ch, "offsets"), cw + ".offsets"));
      CKPT_ASSIGN_OR_RETURN(chunk.sizes, w.Ints(Walker::Attr(ch, "sizes"), cw + ".sizes"));
      if (chunk.offsets.size() != tensor.size.size() || chunk.sizes.size() != tensor.size.size()) {
        return w.Fail(cw, "offsets " + Shape(chunk.offsets).ToString() + " and sizes " +
                              Shape(chunk.sizes).ToString() +
                              " do not have the rank of the tensor's size " +
                              Shape(tensor.size).ToString());
      }
      for (size_t d = 0; d < tensor.size.size(); ++d) {
        if (chunk.offsets[d] > tensor.size[d] ||
            chunk.sizes[d] > tensor.size[d] - chunk.offsets[d]) {
          return w.Fail(cw, "offsets " + Shape(chunk.offsets).ToString() + " + sizes " +
                                Shape(chunk.sizes).ToString() + " reach past the tensor's size " +
                                Shape(tensor.size).ToString() + " in dimension " +
                                std::to_string(d));
        }
      }
      auto it = storage.find(Key(fqn, chunk.offsets));
      if (it == storage.end())
        return w.Fail(cw, "no storage_data entry for offsets " + Shape(chunk.offsets).ToString());
      chunk.storage = it->second;
      ++used;
      tensor.chunks.push_back(std::move(chunk));
    }
    out.tensors[fqn] = std::move(tensor);
  }
  if (used != storage.size()) {
    for (const auto& [key, info] : storage) {
      const std::string fqn = key.substr(0, key.find('\0'));
      if (!out.tensors.count(fqn) && !out.bytes.count(fqn)) {
        return w.Fail("Metadata.storage_data",
                      "an entry for " + Quote(fqn) + " that state_dict_metadata does not list");
      }
    }
    return w.Fail("Metadata.storage_data",
                  std::to_string(storage.size() - used) +
                      " entries name chunk offsets that no state_dict_metadata chunk has");
  }
  return out;
}

Result<std::string> WriteDcpMetadata(const DcpMetadata& m) {
  Writer w;
  w.Op(0x80).Op(2);
  w.NewObject(kMetaModule, "Metadata").Op('}').Op('(');
  w.Str("state_dict_metadata").Op('}').Op('(');
  for (const auto& [fqn, t] : m.tensors) {
    const std::string_view torch_name = TorchDTypeName(t.dtype);
    if (torch_name.empty()) {
      return InvalidArgumentError("tensor '" + fqn + "' has dtype " +
                                  std::string(DTypeName(t.dtype)) + ", which torch cannot name");
    }
    w.Str(fqn).NewObject(kMetaModule, "TensorStorageMetadata").Op('}').Op('(');
    // TensorProperties.__setstate__ takes (dtype, layout, requires_grad,
    // memory-format encoding, pin_memory).
    w.Str("properties").NewObject(kMetaModule, "TensorProperties").Op('(');
    w.Global("torch", torch_name);
    w.Global("torch.serialization", "_get_layout").Str("torch.strided").Op(0x85).Op('R');
    w.Op(0x89);
    w.Global(kMetaModule, "_MEM_FORMAT_ENCODING").Int(0).Op(0x85).Op('R');
    w.Op(0x89).Op('t').Op('b');
    w.Str("size").Size(t.size);
    w.Str("chunks").Op(']').Op('(');
    for (const DcpChunk& c : t.chunks) {
      w.NewObject(kMetaModule, "ChunkStorageMetadata").Op('}').Op('(');
      w.Str("offsets").Size(c.offsets).Str("sizes").Size(c.sizes);
      w.Op('u').Op('b');
    }
    w.Op('e');          // APPENDS
    w.Op('u').Op('b');  // the TensorStorageMetadata's attributes
  }
  for (const auto& [fqn, info] : m.bytes) {
    w.Str(fqn).NewObject(kMetaModule, "BytesStorageMetadata").Op('}').Op('b');
  }
  w.Op('u');
  w.Str("planner_data").Op('N');
  w.Str("storage_data").Op('}').Op('(');
  auto entry = [&w](const std::string& fqn, const std::vector<uint64_t>* offsets, uint64_t index,
                    const DcpStorageInfo& s) {
    w.NewObject(kMetaModule, "MetadataIndex").Op('}').Op('(');
    w.Str("fqn").Str(fqn).Str("offset");
    if (offsets) {
      w.Size(*offsets);
    } else {
      w.Op('N');
    }
    w.Str("index");
    if (offsets) {
      w.Int(index);
    } else {
      w.Op('N');
    }
    w.Op('u').Op('b');
    w.NewObject(kFsModule, "_StorageInfo").Op('}').Op('(');
    w.Str("relative_path")
        .Str(s.relative_path)
        .Str("offset")
        .Int(s.offset)
        .Str("length")
        .Int(s.length);
    w.Op('u').Op('b');
  };
  for (const auto& [fqn, t] : m.tensors) {
    for (size_t c = 0; c < t.chunks.size(); ++c)
      entry(fqn, &t.chunks[c].offsets, c, t.chunks[c].storage);
  }
  for (const auto& [fqn, info] : m.bytes) entry(fqn, nullptr, 0, info);
  w.Op('u');
  w.Str("storage_meta").Op('N');
  w.Str("version").Str(m.version.empty() ? "1.0.0" : m.version);
  w.Op('u').Op('b').Op('.');
  return w.Take();
}

std::string DcpDataFileName(int rank) { return "__" + std::to_string(rank) + "_0.distcp"; }

}  // namespace ckpt
