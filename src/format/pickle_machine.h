// The restricted pickle machine shared by the torch.save reader
// (torch_pickle.cc) and the DCP metadata reader (dcp_metadata.cc). Private
// to src/format: objects are arena nodes owned by the Machine that built
// them. See torch_pickle.h for the promises.
#ifndef CKPT_FORMAT_PICKLE_MACHINE_H_
#define CKPT_FORMAT_PICKLE_MACHINE_H_

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "format/json_util.h"
#include "format/torch_pickle.h"

namespace ckpt::pickle {

enum class Kind : uint8_t {
  kNone,
  kBool,
  kInt,
  kFloat,
  kStr,
  kBytes,
  kTuple,
  kList,
  kDict,
  kSet,
  kGlobal,
  kStorage,
  kTensor,
  kObject,  // an instance of an allowed class (DCP dialect), state in `state`
};

inline const char* KindName(Kind k) {
  switch (k) {
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kStr:
      return "str";
    case Kind::kBytes:
      return "bytes";
    case Kind::kTuple:
      return "tuple";
    case Kind::kList:
      return "list";
    case Kind::kDict:
      return "dict";
    case Kind::kSet:
      return "set";
    case Kind::kGlobal:
      return "global";
    case Kind::kStorage:
      return "storage";
    case Kind::kTensor:
      return "tensor";
    case Kind::kObject:
      return "object";
  }
  return "?";
}

// The globals the machine interprets. Nothing else may be named.
enum class Callable : uint8_t {
  kNone,
  kOrderedDict,
  kRebuildV2,
  kRebuildV3,
  kRebuildParameter,
  kCodecsEncode,
  kTorchSize,
  kStorageType,  // a storage class: only a persistent-id field
  kDtype,        // a torch.<dtype>: only an argument
  // DCP dialect: classes instantiated by NEWOBJ and filled by BUILD, and
  // the helpers their pickles call.
  kDcpMetadata,
  kDcpTensorStorage,
  kDcpChunk,
  kDcpBytesStorage,
  kDcpTensorProperties,
  kDcpStorageMeta,
  kDcpMetadataIndex,
  kDcpStorageInfo,
  kDcpMemFormat,  // _MEM_FORMAT_ENCODING(int): an int
  kGetLayout,     // torch.serialization._get_layout(str): a str
  kPosixPath,     // pathlib.PosixPath(*parts): a str
};

// Objects live in an arena owned by the machine, so reference cycles built
// through the memo cannot leak; nothing walks them without a depth bound.
struct Node {
  Kind kind = Kind::kNone;
  bool ordered = false;  // an OrderedDict (BUILD accepted and ignored)
  Callable callable = Callable::kNone;
  DType dtype = DType::kU8;  // kGlobal storage type / dtype; kStorage, kTensor
  bool untyped = false;      // kGlobal/kStorage: torch.UntypedStorage
  uint32_t depth = 0;
  int64_t i = 0;
  double f = 0;
  std::string s;             // str, bytes, the global's "module.name", storage key
  std::vector<Node*> items;  // tuple/list/set; dict as key, value, key, value...
  uint64_t numel = 0;        // kStorage: elements of its type
  uint64_t offset = 0;       // kTensor
  std::vector<uint64_t> size, stride;
  Node* state = nullptr;  // kObject: what BUILD gave it
};

struct StorageType {
  const char* name;
  DType dtype;
};
inline constexpr StorageType kStorageTypes[] = {
    {"DoubleStorage", DType::kF64},       {"FloatStorage", DType::kF32},
    {"HalfStorage", DType::kF16},         {"BFloat16Storage", DType::kBF16},
    {"LongStorage", DType::kI64},         {"IntStorage", DType::kI32},
    {"ShortStorage", DType::kI16},        {"CharStorage", DType::kI8},
    {"ByteStorage", DType::kU8},          {"BoolStorage", DType::kBool},
    {"ComplexFloatStorage", DType::kC64},
};

inline bool ValidUtf8(std::string_view s) { return FindInvalidUtf8(s) == std::string_view::npos; }

inline std::string Quote(std::string_view s) { return "'" + Printable(s, 120) + "'"; }

class Machine {
 public:
  Machine(std::string_view data, std::string_view source, const PickleLimits& limits,
          PickleDialect dialect = PickleDialect::kStateDict)
      : data_(data), source_(source), limits_(limits), dialect_(dialect) {}

  Result<Node*> Run();

 private:
  Status Fail(const std::string& what) const {
    return InvalidArgumentError(std::string(source_) + ": pickle byte " + std::to_string(op_pos_) +
                                ": " + what);
  }
  Status BadOpcode(unsigned char op) const {
    static const char* kHex = "0123456789abcdef";
    std::string hex = "0x";
    hex += kHex[op >> 4];
    hex += kHex[op & 15];
    return Fail(
        "opcode " + hex +
        (op >= 0x20 && op < 0x7f ? " ('" + std::string(1, static_cast<char>(op)) + "')" : "") +
        " is not allowed in " +
        (dialect_ == PickleDialect::kDcpMetadata ? "DCP metadata" : "a torch state dict"));
  }
  Result<Node*> New(Kind k) {
    if (arena_.size() >= limits_.max_objects) {
      return Fail("more than " + std::to_string(limits_.max_objects) + " objects");
    }
    Node& n = arena_.emplace_back();
    n.kind = k;
    return &n;
  }
  // Counts `bytes` of strings built, copied or hashed against the budget.
  Status Charge(uint64_t bytes) {
    spent_ += bytes;
    if (spent_ > limits_.max_total_bytes) {
      return Fail(
          "more than " + std::to_string(limits_.max_total_bytes) +
          " bytes of strings built, copied or hashed in all (a memoized string reused too often)");
    }
    return Status();
  }
  Status Push(Node* n) {
    if (stack_.size() >= limits_.max_stack)
      return Fail("stack deeper than " + std::to_string(limits_.max_stack));
    stack_.push_back(n);
    return Status();
  }
  Result<Node*> Pop(const char* op) {
    const size_t floor = marks_.empty() ? 0 : marks_.back();
    if (stack_.size() <= floor) return Fail(std::string(op) + " on an empty stack");
    Node* n = stack_.back();
    stack_.pop_back();
    return n;
  }
  Result<Node*> Top(const char* op) {
    const size_t floor = marks_.empty() ? 0 : marks_.back();
    if (stack_.size() <= floor) return Fail(std::string(op) + " on an empty stack");
    return stack_.back();
  }
  // Items above the innermost mark, removing them and the mark.
  Result<std::vector<Node*>> PopMark(const char* op) {
    if (marks_.empty()) return Fail(std::string(op) + " without a MARK");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<Node*> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  Result<std::string_view> Take(uint64_t n, const char* what) {
    if (n > data_.size() - pos_) {
      return Fail(std::string(what) + " of " + std::to_string(n) +
                  " bytes runs past the end of the pickle");
    }
    std::string_view v = data_.substr(pos_, n);
    pos_ += n;
    return v;
  }
  Result<uint64_t> TakeLe(uint64_t n, const char* what) {
    CKPT_ASSIGN_OR_RETURN(std::string_view b, Take(n, what));
    uint64_t v = 0;
    for (uint64_t k = 0; k < n; ++k)
      v |= static_cast<uint64_t>(static_cast<unsigned char>(b[k])) << (8 * k);
    return v;
  }
  Result<std::string_view> Line(const char* what) {
    const size_t nl = data_.find('\n', pos_);
    if (nl == std::string_view::npos || nl - pos_ > 256)
      return Fail(std::string(what) + " is not a short line");
    std::string_view v = data_.substr(pos_, nl - pos_);
    pos_ = nl + 1;
    return v;
  }
  Result<Node*> Container(Kind k, std::vector<Node*> items) {
    uint32_t depth = 0;
    for (Node* it : items) depth = std::max(depth, it->depth);
    if (depth + 1 > limits_.max_depth)
      return Fail("containers nested deeper than " + std::to_string(limits_.max_depth));
    CKPT_ASSIGN_OR_RETURN(Node * n, New(k));
    n->items = std::move(items);
    n->depth = depth + 1;
    return n;
  }
  Status Insert(Node* container, Node* value) {
    if (value->depth + 1 > limits_.max_depth) {
      return Fail("containers nested deeper than " + std::to_string(limits_.max_depth));
    }
    container->depth = std::max(container->depth, value->depth + 1);
    return Status();
  }
  Status Memo(uint64_t index) {
    CKPT_ASSIGN_OR_RETURN(Node * top, Top("PUT"));
    if (!memo_.count(index) && memo_.size() >= limits_.max_memo) {
      return Fail("memo larger than " + std::to_string(limits_.max_memo));
    }
    memo_[index] = top;
    return Status();
  }
  Status Get(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end())
      return Fail("GET of memo entry " + std::to_string(index) + ", which was never PUT");
    return Push(it->second);
  }
  Result<Node*> Global(std::string_view module, std::string_view name);
  Callable DcpGlobal(std::string_view module, std::string_view name) const;
  Result<Node*> Call(Node* callable, Node* args, bool newobj);
  Result<Node*> PersistentLoad(Node* pid);
  Result<Node*> RebuildTensor(const std::vector<Node*>& a, bool v3);
  Status SetItems(Node* dict, const std::vector<Node*>& kv, const char* op);

  std::string_view data_;
  std::string_view source_;
  const PickleLimits& limits_;
  PickleDialect dialect_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;
  std::deque<Node> arena_;
  std::vector<Node*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Node*> memo_;
  std::map<std::string, Node*> storages_;
  // dict → key → item index; keys view the key nodes' strings, which never change.
  std::unordered_map<const Node*, std::unordered_map<std::string_view, size_t>> str_keys_;
  uint64_t spent_ = 0;  // see Charge
};
// The non-negative ints of tuple `t`, at most `max_rank` of them; errors
// start with `prefix`.
Result<std::vector<uint64_t>> IntTuple(Node* t, const char* what, uint32_t max_rank,
                                       const std::string& prefix);

}  // namespace ckpt::pickle

#endif  // CKPT_FORMAT_PICKLE_MACHINE_H_
