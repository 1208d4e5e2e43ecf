#include "format/torch_pickle.h"

#include <cstring>
#include <map>
#include <optional>

#include "format/json_util.h"
#include "format/pickle_machine.h"

namespace ckpt {
namespace pickle {

Callable Machine::DcpGlobal(std::string_view module, std::string_view name) const {
  struct Allowed {
    std::string_view module, name;
    Callable callable;
  };
  static constexpr std::string_view kMeta = "torch.distributed.checkpoint.metadata";
  static constexpr Allowed kAllowed[] = {
      {kMeta, "Metadata", Callable::kDcpMetadata},
      {kMeta, "TensorStorageMetadata", Callable::kDcpTensorStorage},
      {kMeta, "ChunkStorageMetadata", Callable::kDcpChunk},
      {kMeta, "BytesStorageMetadata", Callable::kDcpBytesStorage},
      {kMeta, "TensorProperties", Callable::kDcpTensorProperties},
      {kMeta, "StorageMeta", Callable::kDcpStorageMeta},
      {kMeta, "MetadataIndex", Callable::kDcpMetadataIndex},
      {kMeta, "_MEM_FORMAT_ENCODING", Callable::kDcpMemFormat},
      {"torch.distributed.checkpoint.filesystem", "_StorageInfo", Callable::kDcpStorageInfo},
      {"torch.serialization", "_get_layout", Callable::kGetLayout},
      {"pathlib", "PosixPath", Callable::kPosixPath},
  };
  for (const Allowed& a : kAllowed) {
    if (module == a.module && name == a.name) return a.callable;
  }
  return Callable::kNone;
}

Result<Node*> Machine::Global(std::string_view module, std::string_view name) {
  const std::string full = std::string(module) + "." + std::string(name);
  CKPT_ASSIGN_OR_RETURN(Node * g, New(Kind::kGlobal));
  g->s = full;
  if (dialect_ == PickleDialect::kDcpMetadata) {
    g->callable = DcpGlobal(module, name);
    if (g->callable == Callable::kNone && module == "torch" && name == "Size")
      g->callable = Callable::kTorchSize;
    if (g->callable == Callable::kNone && module == "torch" && !name.empty() &&
        std::islower(static_cast<unsigned char>(name[0]))) {
      Result<DType> d = ParseTorchDType(name);
      if (d.ok()) {
        g->callable = Callable::kDtype;
        g->dtype = *d;
      }
    }
    if (g->callable == Callable::kNone) {
      return Fail("global " + Quote(full) +
                  " is not allowed in DCP metadata (only the classes of "
                  "torch.distributed.checkpoint.metadata, "
                  "_StorageInfo, torch.Size, torch dtypes, _get_layout and pathlib.PosixPath); "
                  "nothing it names was "
                  "run");
    }
    return g;
  }
  if (module == "collections" && name == "OrderedDict") {
    g->callable = Callable::kOrderedDict;
  } else if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
    g->callable = Callable::kRebuildV2;
  } else if (module == "torch._utils" && name == "_rebuild_tensor_v3") {
    g->callable = Callable::kRebuildV3;
  } else if (module == "torch._utils" && name == "_rebuild_parameter") {
    g->callable = Callable::kRebuildParameter;
  } else if (module == "_codecs" && name == "encode") {
    g->callable = Callable::kCodecsEncode;
  } else if (module == "torch" && name == "Size") {
    g->callable = Callable::kTorchSize;
  } else if (module == "torch" && name == "UntypedStorage") {
    g->callable = Callable::kStorageType;
    g->untyped = true;
  } else if (module == "torch") {
    for (const StorageType& t : kStorageTypes) {
      if (name == t.name) {
        g->callable = Callable::kStorageType;
        g->dtype = t.dtype;
      }
    }
    if (g->callable == Callable::kNone && !name.empty() &&
        std::islower(static_cast<unsigned char>(name[0]))) {
      Result<DType> d = ParseTorchDType(name);
      if (d.ok()) {
        g->callable = Callable::kDtype;
        g->dtype = *d;
      }
    }
    if (name == "ComplexDoubleStorage" || name == "complex128" || name == "cdouble") {
      return Fail("global " + Quote(full) + ": complex128 has no safetensors dtype");
    }
  }
  if (g->callable == Callable::kNone) {
    return Fail("global " + Quote(full) +
                " is not allowed (only OrderedDict, torch tensor/parameter rebuilders, storage "
                "types, dtypes, "
                "torch.Size and _codecs.encode); nothing it names was run");
  }
  return g;
}

Result<Node*> Machine::PersistentLoad(Node* pid) {
  if (pid->kind != Kind::kTuple || pid->items.size() != 5) {
    return Fail("persistent id is a " + std::string(KindName(pid->kind)) +
                " (expected the tuple ('storage', type, key, location, numel))");
  }
  Node* tag = pid->items[0];
  Node* type = pid->items[1];
  Node* key = pid->items[2];
  Node* loc = pid->items[3];
  Node* numel = pid->items[4];
  if (tag->kind != Kind::kStr || tag->s != "storage")
    return Fail("persistent id does not start with 'storage'");
  if (type->kind != Kind::kGlobal || type->callable != Callable::kStorageType) {
    return Fail("persistent id names a storage type that is not a torch storage class");
  }
  if (key->kind != Kind::kStr || key->s.empty() || key->s.size() > 64)
    return Fail("persistent id has a bad storage key");
  for (char c : key->s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.') {
      return Fail("storage key " + Quote(key->s) + " has characters outside [A-Za-z0-9_.-]");
    }
  }
  if (key->s == "." || key->s == "..")
    return Fail("storage key " + Quote(key->s) + " is not a record name");
  if (loc->kind != Kind::kStr) return Fail("persistent id location is not a string");
  if (numel->kind != Kind::kInt || numel->i < 0)
    return Fail("storage " + Quote(key->s) + " has a bad numel");
  const uint64_t elem = type->untyped ? 1 : DTypeBits(type->dtype) / 8;
  const auto n = static_cast<uint64_t>(numel->i);
  if (n > UINT64_MAX / elem)
    return Fail("storage " + Quote(key->s) + " numel " + std::to_string(n) + " overflows");
  auto it = storages_.find(key->s);
  if (it != storages_.end()) {
    Node* prev = it->second;
    if (prev->untyped != type->untyped || prev->dtype != type->dtype || prev->numel != n) {
      return Fail("storage " + Quote(key->s) + " is declared twice with different types or sizes");
    }
    return prev;
  }
  CKPT_ASSIGN_OR_RETURN(Node * s, New(Kind::kStorage));
  s->s = key->s;
  s->dtype = type->dtype;
  s->untyped = type->untyped;
  s->numel = n;
  storages_[key->s] = s;
  return s;
}

Result<std::vector<uint64_t>> IntTuple(Node* t, const char* what, uint32_t max_rank,
                                       const std::string& prefix) {
  if (t->kind != Kind::kTuple) {
    return InvalidArgumentError(prefix + std::string(what) + " is a " + KindName(t->kind) +
                                ", not a tuple");
  }
  if (t->items.size() > max_rank) {
    return InvalidArgumentError(prefix + std::string(what) + " has " +
                                std::to_string(t->items.size()) + " dimensions, more than " +
                                std::to_string(max_rank));
  }
  std::vector<uint64_t> out;
  for (Node* v : t->items) {
    if (v->kind != Kind::kInt || v->i < 0) {
      return InvalidArgumentError(prefix + std::string(what) +
                                  " holds a value that is not a non-negative int");
    }
    out.push_back(static_cast<uint64_t>(v->i));
  }
  return out;
}

Result<Node*> Machine::RebuildTensor(const std::vector<Node*>& a, bool v3) {
  const size_t min = v3 ? 7 : 6;
  const char* fn = v3 ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2";
  if (a.size() < min || a.size() > min + 1) {
    return Fail(std::string(fn) + " takes " + std::to_string(min) + " or " +
                std::to_string(min + 1) + " arguments, got " + std::to_string(a.size()));
  }
  Node* storage = a[0];
  if (storage->kind != Kind::kStorage)
    return Fail(std::string(fn) + ": first argument is not a storage");
  if (a[1]->kind != Kind::kInt || a[1]->i < 0)
    return Fail(std::string(fn) + ": storage offset is not a non-negative int");
  const std::string prefix =
      std::string(source_) + ": tensor on storage " + Quote(storage->s) + ": ";
  CKPT_ASSIGN_OR_RETURN(std::vector<uint64_t> size,
                        IntTuple(a[2], "size", limits_.max_rank, prefix));
  CKPT_ASSIGN_OR_RETURN(std::vector<uint64_t> stride,
                        IntTuple(a[3], "stride", limits_.max_rank, prefix));
  if (size.size() != stride.size()) {
    return Fail("tensor on storage " + Quote(storage->s) + ": size has " +
                std::to_string(size.size()) + " dimensions but stride has " +
                std::to_string(stride.size()));
  }
  DType dtype = storage->dtype;
  if (v3) {
    if (a[6]->kind != Kind::kGlobal || a[6]->callable != Callable::kDtype) {
      return Fail(std::string(fn) + ": seventh argument is not a torch dtype");
    }
    dtype = a[6]->dtype;
  } else if (storage->untyped) {
    return Fail("_rebuild_tensor_v2 on an untyped storage (no dtype)");
  }
  if (!storage->untyped && dtype != storage->dtype) {
    return Fail("tensor of dtype " + std::string(DTypeName(dtype)) + " on storage " +
                Quote(storage->s) + " of type " + std::string(DTypeName(storage->dtype)));
  }
  if (TorchDTypeName(dtype).empty()) {
    return Fail("tensor on storage " + Quote(storage->s) + " has dtype " +
                std::string(DTypeName(dtype)) + ", which torch archives cannot hold");
  }
  const uint64_t elem = DTypeBits(dtype) / 8;
  if (elem == 0)
    return Fail("sub-byte dtype " + std::string(DTypeName(dtype)) + " in a torch archive");
  const uint64_t storage_bytes =
      storage->untyped ? storage->numel : storage->numel * (DTypeBits(storage->dtype) / 8);
  if (storage->untyped && storage_bytes % elem != 0) {
    return Fail("untyped storage " + Quote(storage->s) + " of " + std::to_string(storage_bytes) +
                " bytes is not a whole number of " + std::string(DTypeName(dtype)) + " elements");
  }
  const uint64_t capacity = storage_bytes / elem;  // elements of `dtype`
  const auto offset = static_cast<uint64_t>(a[1]->i);
  // Every element the view touches must lie inside the storage.
  uint64_t numel = 1;
  uint64_t last = offset;
  bool empty = false;
  for (size_t d = 0; d < size.size(); ++d) {
    if (size[d] == 0) empty = true;
    if (size[d] != 0 && numel > UINT64_MAX / size[d])
      return Fail("tensor on storage " + Quote(storage->s) + ": numel overflows");
    numel *= size[d];
  }
  if (!empty) {
    for (size_t d = 0; d < size.size(); ++d) {
      const uint64_t span = size[d] - 1;
      if (span != 0 && stride[d] > (UINT64_MAX - last) / span) {
        return Fail("tensor on storage " + Quote(storage->s) + ": strides overflow");
      }
      last += span * stride[d];
    }
    if (numel > UINT64_MAX / elem)
      return Fail("tensor on storage " + Quote(storage->s) + ": byte size overflows");
    if (last >= capacity) {
      return Fail("tensor on storage " + Quote(storage->s) + " (offset " + std::to_string(offset) +
                  ", size " + std::to_string(size.size()) + "-d) reaches element " +
                  std::to_string(last) + " but the storage holds " + std::to_string(capacity) +
                  " " + std::string(DTypeName(dtype)) + " elements");
    }
  } else if (offset > capacity) {
    return Fail("empty tensor on storage " + Quote(storage->s) + " starts past its end");
  }
  CKPT_ASSIGN_OR_RETURN(Node * t, New(Kind::kTensor));
  t->s = storage->s;
  t->numel = storage_bytes;
  t->dtype = dtype;
  t->offset = offset;
  t->size = std::move(size);
  t->stride = std::move(stride);
  return t;
}

// Kept whole past the function-size limit: one case per allowed callable, side by side so the
// allow-list reads as one table.
//
// NOLINTNEXTLINE(readability-function-size)
Result<Node*> Machine::Call(Node* callable, Node* args, bool newobj) {
  const char* op = newobj ? "NEWOBJ" : "REDUCE";
  if (callable->kind != Kind::kGlobal) {
    return Fail(std::string(op) + " on a " + KindName(callable->kind) +
                " (only allowed globals can be called)");
  }
  if (args->kind != Kind::kTuple)
    return Fail(std::string(op) + " arguments are a " + KindName(args->kind) + ", not a tuple");
  const std::vector<Node*>& a = args->items;
  switch (callable->callable) {
    case Callable::kOrderedDict: {
      if (!a.empty()) return Fail("OrderedDict called with arguments");
      CKPT_ASSIGN_OR_RETURN(Node * d, Container(Kind::kDict, {}));
      d->ordered = true;
      return d;
    }
    case Callable::kTorchSize:
      if (a.size() != 1 || a[0]->kind != Kind::kTuple) return Fail("torch.Size takes one tuple");
      return a[0];
    case Callable::kRebuildV2:
    case Callable::kRebuildV3:
      if (newobj) break;
      return RebuildTensor(a, callable->callable == Callable::kRebuildV3);
    case Callable::kRebuildParameter:
      if (newobj) break;
      if (a.size() != 3 || a[0]->kind != Kind::kTensor)
        return Fail("_rebuild_parameter takes (tensor, requires_grad, hooks)");
      return a[0];
    case Callable::kCodecsEncode: {
      if (newobj) break;
      if (a.size() != 2 || a[0]->kind != Kind::kStr || a[1]->kind != Kind::kStr ||
          (a[1]->s != "latin1" && a[1]->s != "latin-1")) {
        return Fail("_codecs.encode takes (str, 'latin1')");
      }
      // Code points below 256, one byte each.
      const std::string& s = a[0]->s;
      CKPT_RETURN_IF_ERROR(Charge(s.size()));
      CKPT_ASSIGN_OR_RETURN(Node * b, New(Kind::kBytes));
      for (size_t i = 0; i < s.size(); ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
          b->s += static_cast<char>(c);
        } else if ((c == 0xc2 || c == 0xc3) && i + 1 < s.size()) {
          b->s +=
              static_cast<char>(((c & 0x03) << 6) | (static_cast<unsigned char>(s[++i]) & 0x3f));
        } else {
          return Fail("_codecs.encode: a code point above 255 cannot be latin1");
        }
      }
      return b;
    }
    case Callable::kDcpMetadata:
    case Callable::kDcpTensorStorage:
    case Callable::kDcpChunk:
    case Callable::kDcpBytesStorage:
    case Callable::kDcpTensorProperties:
    case Callable::kDcpStorageMeta:
    case Callable::kDcpMetadataIndex:
    case Callable::kDcpStorageInfo: {
      // copyreg.__newobj__: an empty instance that BUILD fills.
      if (!newobj || !a.empty())
        return Fail(std::string(op) + " on " + Quote(callable->s) +
                    " (expected NEWOBJ with no arguments)");
      CKPT_ASSIGN_OR_RETURN(Node * o, New(Kind::kObject));
      o->callable = callable->callable;
      o->s = callable->s;
      return o;
    }
    case Callable::kDcpMemFormat:
      if (newobj || a.size() != 1 || a[0]->kind != Kind::kInt)
        return Fail("_MEM_FORMAT_ENCODING takes one int");
      return a[0];
    case Callable::kGetLayout:
      if (newobj || a.size() != 1 || a[0]->kind != Kind::kStr)
        return Fail("_get_layout takes one str");
      return a[0];
    case Callable::kPosixPath: {
      if (newobj) break;
      CKPT_ASSIGN_OR_RETURN(Node * path, New(Kind::kStr));
      for (Node* part : a) {
        if (part->kind != Kind::kStr) return Fail("pathlib.PosixPath takes strs");
        CKPT_RETURN_IF_ERROR(Charge(part->s.size() + 1));
        path->s += (path->s.empty() ? "" : "/") + part->s;
      }
      return path;
    }
    case Callable::kStorageType:
    case Callable::kDtype:
    case Callable::kNone:
      break;
  }
  return Fail(std::string(op) + " on " + Quote(callable->s) + " is not allowed");
}

Status Machine::SetItems(Node* dict, const std::vector<Node*>& kv, const char* op) {
  if (dict->kind != Kind::kDict)
    return Fail(std::string(op) + " on a " + KindName(dict->kind) + ", not a dict");
  if (kv.size() % 2 != 0) return Fail(std::string(op) + " with an odd number of items");
  for (size_t i = 0; i < kv.size(); i += 2) {
    Node* key = kv[i];
    if (key->kind == Kind::kList || key->kind == Kind::kDict || key->kind == Kind::kSet) {
      return Fail(std::string(op) + " with an unhashable " + KindName(key->kind) + " key");
    }
    CKPT_RETURN_IF_ERROR(Insert(dict, kv[i + 1]));
    // A repeated string key replaces the value, as in Python (found through
    // a per-dict index: a linear scan would make big dicts quadratic).
    if (key->kind == Kind::kStr) {
      CKPT_RETURN_IF_ERROR(Charge(key->s.size()));  // hashed
      auto [it, fresh] = str_keys_[dict].emplace(std::string_view(key->s), dict->items.size());
      if (!fresh) {
        dict->items[it->second + 1] = kv[i + 1];
        continue;
      }
    }
    if (dict->items.size() / 2 >= limits_.max_objects) return Fail("dict too large");
    dict->items.push_back(key);
    dict->items.push_back(kv[i + 1]);
  }
  return Status();
}

// Kept whole past the function-size limit: the interpreter: one switch with one case per allowed
// opcode.
//
// NOLINTNEXTLINE(readability-function-size)
Result<Node*> Machine::Run() {
  if (data_.size() > limits_.max_pickle_bytes) {
    return InvalidArgumentError(std::string(source_) + ": pickle of " +
                                std::to_string(data_.size()) + " bytes exceeds the limit of " +
                                std::to_string(limits_.max_pickle_bytes));
  }
  while (pos_ < data_.size()) {
    op_pos_ = pos_;
    const auto op = static_cast<unsigned char>(data_[pos_++]);
    // Protocol-4 framing, memo and global opcodes: DCP's pickle.dump uses
    // them, torch.save's protocol-2 state dicts never do.
    const bool proto4 = op == 0x95 || op == 0x93 || op == 0x94 || op == 0x8c || op == 0x8d;
    if (proto4 && dialect_ != PickleDialect::kDcpMetadata) return BadOpcode(op);
    switch (op) {
      case 0x80: {  // PROTO
        CKPT_ASSIGN_OR_RETURN(uint64_t v, TakeLe(1, "PROTO"));
        if (v > 5) return Fail("pickle protocol " + std::to_string(v) + " is not supported");
        break;
      }
      case 'c': {  // GLOBAL
        CKPT_ASSIGN_OR_RETURN(std::string_view module, Line("GLOBAL module"));
        CKPT_ASSIGN_OR_RETURN(std::string_view name, Line("GLOBAL name"));
        CKPT_ASSIGN_OR_RETURN(Node * g, Global(module, name));
        CKPT_RETURN_IF_ERROR(Push(g));
        break;
      }
      case 0x95: {  // FRAME: a length hint only
        CKPT_ASSIGN_OR_RETURN(uint64_t n, TakeLe(8, "FRAME"));
        (void)n;
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        CKPT_ASSIGN_OR_RETURN(Node * name, Pop("STACK_GLOBAL"));
        CKPT_ASSIGN_OR_RETURN(Node * module, Pop("STACK_GLOBAL"));
        if (name->kind != Kind::kStr || module->kind != Kind::kStr)
          return Fail("STACK_GLOBAL on values that are not strs");
        CKPT_ASSIGN_OR_RETURN(Node * g, Global(module->s, name->s));
        CKPT_RETURN_IF_ERROR(Push(g));
        break;
      }
      case 0x94:  // MEMOIZE
        CKPT_RETURN_IF_ERROR(Memo(memo_.size()));
        break;
      case 'q': {  // BINPUT
        CKPT_ASSIGN_OR_RETURN(uint64_t i, TakeLe(1, "BINPUT"));
        CKPT_RETURN_IF_ERROR(Memo(i));
        break;
      }
      case 'r': {  // LONG_BINPUT
        CKPT_ASSIGN_OR_RETURN(uint64_t i, TakeLe(4, "LONG_BINPUT"));
        CKPT_RETURN_IF_ERROR(Memo(i));
        break;
      }
      case 'h': {  // BINGET
        CKPT_ASSIGN_OR_RETURN(uint64_t i, TakeLe(1, "BINGET"));
        CKPT_RETURN_IF_ERROR(Get(i));
        break;
      }
      case 'j': {  // LONG_BINGET
        CKPT_ASSIGN_OR_RETURN(uint64_t i, TakeLe(4, "LONG_BINGET"));
        CKPT_RETURN_IF_ERROR(Get(i));
        break;
      }
      case '(':  // MARK
        if (marks_.size() >= limits_.max_stack) return Fail("too many MARKs");
        marks_.push_back(stack_.size());
        break;
      case 't': {  // TUPLE
        CKPT_ASSIGN_OR_RETURN(std::vector<Node*> items, PopMark("TUPLE"));
        CKPT_ASSIGN_OR_RETURN(Node * t, Container(Kind::kTuple, std::move(items)));
        CKPT_RETURN_IF_ERROR(Push(t));
        break;
      }
      case ')': {  // EMPTY_TUPLE
        CKPT_ASSIGN_OR_RETURN(Node * t, Container(Kind::kTuple, {}));
        CKPT_RETURN_IF_ERROR(Push(t));
        break;
      }
      case 0x85:
      case 0x86:
      case 0x87: {  // TUPLE1..3
        const size_t n = op - 0x84;
        std::vector<Node*> items(n);
        for (size_t k = n; k-- > 0;) {
          CKPT_ASSIGN_OR_RETURN(items[k], Pop("TUPLEn"));
        }
        CKPT_ASSIGN_OR_RETURN(Node * t, Container(Kind::kTuple, std::move(items)));
        CKPT_RETURN_IF_ERROR(Push(t));
        break;
      }
      case '}':
      case ']':
      case 0x8f: {  // EMPTY_DICT, EMPTY_LIST, EMPTY_SET
        const Kind k = op == '}' ? Kind::kDict : op == ']' ? Kind::kList : Kind::kSet;
        CKPT_ASSIGN_OR_RETURN(Node * c, Container(k, {}));
        CKPT_RETURN_IF_ERROR(Push(c));
        break;
      }
      case 's': {  // SETITEM
        CKPT_ASSIGN_OR_RETURN(Node * value, Pop("SETITEM"));
        CKPT_ASSIGN_OR_RETURN(Node * key, Pop("SETITEM"));
        CKPT_ASSIGN_OR_RETURN(Node * dict, Top("SETITEM"));
        CKPT_RETURN_IF_ERROR(SetItems(dict, {key, value}, "SETITEM"));
        break;
      }
      case 'u': {  // SETITEMS
        CKPT_ASSIGN_OR_RETURN(std::vector<Node*> kv, PopMark("SETITEMS"));
        CKPT_ASSIGN_OR_RETURN(Node * dict, Top("SETITEMS"));
        CKPT_RETURN_IF_ERROR(SetItems(dict, kv, "SETITEMS"));
        break;
      }
      case 'a':
      case 'e': {  // APPEND, APPENDS
        std::vector<Node*> values;
        if (op == 'a') {
          CKPT_ASSIGN_OR_RETURN(Node * v, Pop("APPEND"));
          values.push_back(v);
        } else {
          CKPT_ASSIGN_OR_RETURN(values, PopMark("APPENDS"));
        }
        CKPT_ASSIGN_OR_RETURN(Node * list, Top("APPEND"));
        if (list->kind != Kind::kList)
          return Fail(std::string("APPEND on a ") + KindName(list->kind) + ", not a list");
        for (Node* v : values) {
          CKPT_RETURN_IF_ERROR(Insert(list, v));
          if (list->items.size() >= limits_.max_objects) return Fail("list too large");
          list->items.push_back(v);
        }
        break;
      }
      case 'X':
      case 0x8c:
      case 0x8d:
      case 'U': {  // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8, SHORT_BINSTRING
        const uint64_t width = op == 'X' ? 4 : op == 0x8d ? 8 : 1;
        CKPT_ASSIGN_OR_RETURN(uint64_t n, TakeLe(width, "string length"));
        if (n > limits_.max_string)
          return Fail("string of " + std::to_string(n) + " bytes exceeds the limit");
        CKPT_ASSIGN_OR_RETURN(std::string_view v, Take(n, "string"));
        if (op != 'U' && !ValidUtf8(v)) return Fail("unicode string is not valid UTF-8");
        CKPT_RETURN_IF_ERROR(Charge(n));
        CKPT_ASSIGN_OR_RETURN(Node * s, New(Kind::kStr));
        s->s = std::string(v);
        CKPT_RETURN_IF_ERROR(Push(s));
        break;
      }
      case 'J':
      case 'K':
      case 'M': {  // BININT, BININT1, BININT2
        const uint64_t width = op == 'J' ? 4 : op == 'K' ? 1 : 2;
        CKPT_ASSIGN_OR_RETURN(uint64_t v, TakeLe(width, "integer"));
        CKPT_ASSIGN_OR_RETURN(Node * n, New(Kind::kInt));
        n->i = op == 'J' ? static_cast<int64_t>(static_cast<int32_t>(static_cast<uint32_t>(v)))
                         : static_cast<int64_t>(v);
        CKPT_RETURN_IF_ERROR(Push(n));
        break;
      }
      case 0x8a: {  // LONG1
        CKPT_ASSIGN_OR_RETURN(uint64_t len, TakeLe(1, "LONG1 length"));
        if (len > 8)
          return Fail("LONG1 integer of " + std::to_string(len) + " bytes does not fit 64 bits");
        CKPT_ASSIGN_OR_RETURN(uint64_t v, TakeLe(len, "LONG1"));
        if (len > 0 && len < 8 && (v >> (8 * len - 1)) & 1)
          v |= ~uint64_t{0} << (8 * len);  // sign-extend
        CKPT_ASSIGN_OR_RETURN(Node * n, New(Kind::kInt));
        n->i = static_cast<int64_t>(v);
        CKPT_RETURN_IF_ERROR(Push(n));
        break;
      }
      case 'G': {  // BINFLOAT, big-endian
        CKPT_ASSIGN_OR_RETURN(std::string_view b, Take(8, "BINFLOAT"));
        uint64_t bits = 0;
        for (char c : b) bits = bits << 8 | static_cast<unsigned char>(c);
        CKPT_ASSIGN_OR_RETURN(Node * n, New(Kind::kFloat));
        std::memcpy(&n->f, &bits, 8);
        CKPT_RETURN_IF_ERROR(Push(n));
        break;
      }
      case 0x88:
      case 0x89: {  // NEWTRUE, NEWFALSE
        CKPT_ASSIGN_OR_RETURN(Node * n, New(Kind::kBool));
        n->i = op == 0x88;
        CKPT_RETURN_IF_ERROR(Push(n));
        break;
      }
      case 'N': {
        CKPT_ASSIGN_OR_RETURN(Node * n, New(Kind::kNone));
        CKPT_RETURN_IF_ERROR(Push(n));
        break;
      }
      case 'R':
      case 0x81: {  // REDUCE, NEWOBJ
        CKPT_ASSIGN_OR_RETURN(Node * args, Pop("REDUCE"));
        CKPT_ASSIGN_OR_RETURN(Node * fn, Pop("REDUCE"));
        CKPT_ASSIGN_OR_RETURN(Node * out, Call(fn, args, op == 0x81));
        CKPT_RETURN_IF_ERROR(Push(out));
        break;
      }
      case 'b': {  // BUILD
        CKPT_ASSIGN_OR_RETURN(Node * state, Pop("BUILD"));
        CKPT_ASSIGN_OR_RETURN(Node * target, Top("BUILD"));
        if (target->kind == Kind::kObject) {
          if (target->state != nullptr) return Fail("BUILD twice on one " + Quote(target->s));
          CKPT_RETURN_IF_ERROR(Insert(target, state));
          target->state = state;
        } else if (target->kind != Kind::kDict || !target->ordered) {
          return Fail(std::string("BUILD on a ") + KindName(target->kind) +
                      " (only an OrderedDict's attributes are accepted)");
        }
        break;
      }
      case 'Q': {  // BINPERSID
        CKPT_ASSIGN_OR_RETURN(Node * pid, Pop("BINPERSID"));
        CKPT_ASSIGN_OR_RETURN(Node * storage, PersistentLoad(pid));
        CKPT_RETURN_IF_ERROR(Push(storage));
        break;
      }
      case '.': {  // STOP
        CKPT_ASSIGN_OR_RETURN(Node * result, Pop("STOP"));
        if (pos_ != data_.size()) {
          return Fail(std::to_string(data_.size() - pos_) + " bytes follow STOP");
        }
        return result;
      }
      default:
        return BadOpcode(op);
    }
  }
  return Fail("the pickle ends without STOP");
}

}  // namespace pickle
namespace {

using pickle::Kind;
using pickle::KindName;
using pickle::Node;
using pickle::Quote;
using pickle::ValidUtf8;

// What reading the state dict out may cost: a dict referenced from many
// places (through the memo) is walked once per reference, so the entries and
// the bytes of names and records are bounded in all.
struct WalkBudget {
  uint64_t entries = 0;
  uint64_t bytes = 0;
  const PickleLimits& limits;

  Status Spend(std::string_view source, uint64_t name_bytes) {
    ++entries;
    bytes += name_bytes + sizeof(TorchTensorRecord);
    if (entries > limits.max_entries) {
      return InvalidArgumentError(std::string(source) + ": the state dict expands to more than " +
                                  std::to_string(limits.max_entries) +
                                  " entries (dicts shared through the memo)");
    }
    if (bytes > limits.max_total_bytes) {
      return InvalidArgumentError(std::string(source) + ": the state dict expands to more than " +
                                  std::to_string(limits.max_total_bytes) +
                                  " bytes of names and records (dicts shared through the memo)");
    }
    return Status();
  }
};

Status Collect(const Node* dict, const std::string& prefix, uint32_t depth, std::string_view source,
               std::map<std::string, size_t>& seen, WalkBudget& budget, TorchPickle& out) {
  if (depth > 8)
    return InvalidArgumentError(std::string(source) + ": dicts nested more than 8 deep under " +
                                Quote(prefix));
  for (size_t i = 0; i + 1 < dict->items.size(); i += 2) {
    const Node* k = dict->items[i];
    const Node* v = dict->items[i + 1];
    if (k->kind == Kind::kStr)
      CKPT_RETURN_IF_ERROR(budget.Spend(source, prefix.size() + 1 + k->s.size()));
    if (k->kind != Kind::kStr) {
      return InvalidArgumentError(
          std::string(source) + ": a state-dict key is a " + KindName(k->kind) +
          (prefix.empty() ? "" : " under " + Quote(prefix)) + ", not a string");
    }
    if (!ValidUtf8(k->s))
      return InvalidArgumentError(std::string(source) + ": a state-dict key is not valid UTF-8");
    const std::string name = prefix.empty() ? k->s : prefix + "." + k->s;
    if (v->kind == Kind::kDict) {
      CKPT_RETURN_IF_ERROR(Collect(v, name, depth + 1, source, seen, budget, out));
      continue;
    }
    if (v->kind != Kind::kTensor) {
      out.skipped.push_back(name);
      continue;
    }
    if (!seen.emplace(name, out.tensors.size()).second) {
      return InvalidArgumentError(std::string(source) + ": tensor name " + Quote(name) +
                                  " appears twice");
    }
    TorchTensorRecord r;
    r.name = name;
    r.dtype = v->dtype;
    r.storage_key = v->s;
    r.storage_bytes = v->numel;
    r.offset = v->offset;
    r.size = v->size;
    r.stride = v->stride;
    out.tensors.push_back(std::move(r));
  }
  return Status();
}

}  // namespace

bool TorchTensorRecord::contiguous() const {
  uint64_t expect = 1;
  for (size_t d = size.size(); d-- > 0;) {
    if (size[d] != 1 && stride[d] != expect) return false;
    expect *= size[d];
  }
  return true;
}

uint64_t TorchTensorRecord::nbytes() const {
  uint64_t n = DTypeBits(dtype) / 8;
  for (uint64_t s : size) n *= s;
  return n;
}

Result<TorchPickle> ParseTorchPickle(std::string_view data, std::string_view source,
                                     const PickleLimits& limits) {
  pickle::Machine m(data, source, limits);
  CKPT_ASSIGN_OR_RETURN(Node * root, m.Run());
  if (root->kind != Kind::kDict) {
    return InvalidArgumentError(std::string(source) + ": the pickle holds a " +
                                KindName(root->kind) + ", not a state dict");
  }
  TorchPickle out;
  std::map<std::string, size_t> seen;
  WalkBudget budget{0, 0, limits};
  CKPT_RETURN_IF_ERROR(Collect(root, "", 0, source, seen, budget, out));
  return out;
}

Result<TorchTensorRecord> ParseTorchTensorPickle(std::string_view data, std::string_view source,
                                                 const PickleLimits& limits) {
  pickle::Machine m(data, source, limits);
  CKPT_ASSIGN_OR_RETURN(Node * root, m.Run());
  if (root->kind != Kind::kTensor) {
    return InvalidArgumentError(std::string(source) + ": the pickle holds a " +
                                KindName(root->kind) + ", not a tensor");
  }
  TorchTensorRecord r;
  r.dtype = root->dtype;
  r.storage_key = root->s;
  r.storage_bytes = root->numel;
  r.offset = root->offset;
  r.size = root->size;
  r.stride = root->stride;
  return r;
}

}  // namespace ckpt
