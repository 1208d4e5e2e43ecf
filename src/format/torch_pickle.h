// A restricted pickle machine for the `data.pkl` record of torch.save
// archives. It knows the protocol-2 opcodes torch emits and a fixed list of
// globals, none of which is ever imported or called: each is interpreted by
// ckpt (an OrderedDict becomes a dict, _rebuild_tensor_v2 becomes a tensor
// record, ...). Any other opcode or global is refused when it is read,
// before the machine acts on anything it names. Stack, memo, object count,
// nesting and string sizes are bounded, and so are the total bytes built
// and the entries the state dict expands to.
#ifndef CKPT_FORMAT_TORCH_PICKLE_H_
#define CKPT_FORMAT_TORCH_PICKLE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/dtype.h"
#include "ckpt/status.h"

namespace ckpt {

// Which globals the machine may name: a torch.save state dict's, or the
// DCP `.metadata` dataclasses' (see format/dcp_metadata.h).
enum class PickleDialect : uint8_t { kStateDict, kDcpMetadata };

struct PickleLimits {
  uint64_t max_pickle_bytes = 256ull << 20;
  uint64_t max_stack = 1u << 20;
  uint64_t max_memo = 1u << 22;
  uint64_t max_objects = 1u << 24;
  uint64_t max_string = 16u << 20;
  uint32_t max_depth = 64;  // nesting of containers
  uint32_t max_rank = 64;   // dimensions of a tensor
  // Work and memory in all, not per object: bytes of strings the machine
  // builds, copies or hashes (a memoized string can be reused without
  // bound), and bytes of names and records the state dict expands to
  // (shared sub-dicts are walked once per reference).
  uint64_t max_total_bytes = 512ull << 20;
  // Entries walked to read the state dict out of its (possibly shared) dicts.
  uint64_t max_entries = 1u << 24;
};

// A tensor as the pickle describes it: a view of storage `storage_key`
// (record `data/<key>`), offset and strides in elements of `dtype`.
struct TorchTensorRecord {
  std::string name;  // state-dict key; nested dicts joined with '.'
  DType dtype = DType::kU8;
  std::string storage_key;
  uint64_t storage_bytes = 0;  // numel × element size the persistent id declares
  uint64_t offset = 0;
  std::vector<uint64_t> size;
  std::vector<uint64_t> stride;

  bool contiguous() const;
  // Bytes of the materialized row-major tensor.
  uint64_t nbytes() const;
};

struct TorchPickle {
  std::vector<TorchTensorRecord> tensors;  // in pickle order
  std::vector<std::string> skipped;        // keys whose values are not tensors
};

// Runs `data` and reads the state dict it builds: a dict (or OrderedDict) of
// tensors, possibly nested. `source` names the record in errors. Validates
// every view against its storage's declared size with checked arithmetic.
Result<TorchPickle> ParseTorchPickle(std::string_view data, std::string_view source,
                                     const PickleLimits& limits = {});

// Runs the `data.pkl` of `torch.save(tensor)` (a bare tensor, as DCP's
// FileSystemWriter stores each chunk) and returns its view, validated like
// the state dict's; the record's name is empty.
Result<TorchTensorRecord> ParseTorchTensorPickle(std::string_view data, std::string_view source,
                                                 const PickleLimits& limits = {});

}  // namespace ckpt

#endif  // CKPT_FORMAT_TORCH_PICKLE_H_
