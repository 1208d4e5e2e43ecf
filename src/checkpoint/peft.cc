// PEFT adapters: saved as one Hugging Face PEFT directory
// (adapter_model.safetensors + adapter_config.json) written by rank 0 from
// every rank's chunks, loaded back through the sharded reader.
#include <algorithm>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "checkpoint/checkpointer_impl.h"
#include "ckpt/safetensors.h"
#include "core/strided.h"
#include "plan/codec.h"

namespace ckpt {
namespace {

using json = nlohmann::json;

constexpr std::string_view kAdapterFile = "adapter_model.safetensors";
constexpr std::string_view kAdapterConfig = "adapter_config.json";
constexpr std::string_view kAdapterPrefix = "base_model.model.";

// Appends the elements of `c` in row-major order (making strided chunks
// contiguous). Whole bytes only.
void AppendChunkBytes(const LocalChunk& c, uint64_t esz, std::string* out) {
  const StridedLayout l{c.shape.dims(), c.strides, esz};
  const size_t at = out->size();
  uint64_t n = 1;
  for (uint64_t d : c.shape.dims()) n *= d;
  out->resize(at + n * esz);
  GatherAll(l, c.data, reinterpret_cast<std::byte*>(out->data() + at));
}

// Copies a contiguous chunk (offsets, shape) into the row-major global
// buffer of shape `g`, marking the elements it covers.
void PlaceChunk(const std::vector<uint64_t>& offsets, const std::vector<uint64_t>& shape,
                const char* src, const std::vector<uint64_t>& g, uint64_t esz, std::byte* dst,
                std::vector<bool>* covered) {
  const std::vector<int64_t> strides = RowMajorStrides(g);
  uint64_t first = 0, n = 1;
  for (size_t d = 0; d < g.size(); ++d) {
    first += offsets[d] * static_cast<uint64_t>(strides[d]);
    n *= shape[d];
  }
  // The chunk is a strided view of the global buffer starting at `first`.
  ForEachRunInRange(StridedLayout{shape, strides, esz}, 0, n, [&](int64_t off, uint64_t bytes) {
    const uint64_t at = first * esz + static_cast<uint64_t>(off);
    std::memcpy(dst + at, src, bytes);
    src += bytes;
    std::fill_n(covered->begin() + static_cast<int64_t>(at / esz), bytes / esz, true);
  });
}

// An adapter tensor assembled on rank 0 from every rank's chunks.
struct AssembledTensor {
  DType dtype;
  std::vector<uint64_t> shape;
  std::vector<std::byte> data;
  std::vector<bool> covered;  // per element
};

// This rank's adapter chunks, row-major, for the all-gather.
Result<std::string> EncodeAdapterChunks(const StateDict& adapter) {
  plan::Encoder enc;
  enc.U64(adapter.tensors.size());
  for (const DistTensor& t : adapter.tensors) {
    const uint32_t bits = DTypeBits(t.dtype);
    if (bits % 8 != 0) {
      return InvalidArgumentError("adapter tensor '" + t.fqn + "' has dtype " +
                                  std::string(DTypeName(t.dtype)) + ", which is not whole bytes");
    }
    enc.Str(t.fqn);
    enc.U64(static_cast<uint64_t>(t.dtype));
    enc.U64(t.global_shape.rank());
    for (uint64_t d : t.global_shape.dims()) enc.U64(d);
    enc.U64(t.chunks.size());
    for (const LocalChunk& c : t.chunks) {
      for (uint64_t o : c.offsets) enc.U64(o);
      for (uint64_t d : c.shape.dims()) enc.U64(d);
      std::string bytes;
      AppendChunkBytes(c, bits / 8, &bytes);
      enc.Str(bytes);
    }
  }
  return enc.Take();
}

// Places one encoded chunk of rank `r` into `w`, after checking it lies
// inside the global shape `g`.
Status PlaceEncodedChunk(plan::Decoder& dec, const std::string& fqn, const std::vector<uint64_t>& g,
                         size_t r, AssembledTensor& w, const Status& bad) {
  const size_t rank = g.size();
  std::vector<uint64_t> off(rank), shape(rank);
  for (uint64_t& v : off) {
    if (!dec.U64(&v)) return bad;
  }
  for (uint64_t& v : shape) {
    if (!dec.U64(&v)) return bad;
  }
  std::string bytes;
  if (!dec.Str(&bytes)) return bad;
  uint64_t cn = 1;
  for (size_t d = 0; d < rank; ++d) {
    if (off[d] > g[d] || shape[d] > g[d] - off[d]) {
      return InvalidArgumentError("adapter tensor '" + fqn + "': a chunk of rank " +
                                  std::to_string(r) + " reaches outside its global shape");
    }
    cn *= shape[d];
  }
  if (cn == 0) return Status();
  if (bytes.size() != cn * (DTypeBits(w.dtype) / 8)) return bad;
  PlaceChunk(off, shape, bytes.data(), g, DTypeBits(w.dtype) / 8, w.data.data(), &w.covered);
  return Status();
}

// Rank 0: every rank's chunks (EncodeAdapterChunks) into whole tensors.
Status AssembleAdapter(const std::vector<std::string>& all,
                       std::map<std::string, AssembledTensor>* tensors) {
  for (size_t r = 0; r < all.size(); ++r) {
    plan::Decoder dec(all[r]);
    const Status bad =
        InternalError("adapter chunks from rank " + std::to_string(r) + " are malformed");
    uint64_t n;
    if (!dec.U64(&n)) return bad;
    for (uint64_t i = 0; i < n; ++i) {
      std::string fqn;
      uint64_t dtype, rank, chunks;
      if (!dec.Str(&fqn) || !dec.U64(&dtype) || !dec.U64(&rank) || rank > 64) return bad;
      std::vector<uint64_t> g(rank);
      for (uint64_t& d : g) {
        if (!dec.U64(&d)) return bad;
      }
      Shape gs(g);
      CKPT_ASSIGN_OR_RETURN(uint64_t nbytes, gs.NumBytes(static_cast<DType>(dtype)));
      CKPT_ASSIGN_OR_RETURN(uint64_t numel, gs.NumElements());
      auto [it, fresh] = tensors->try_emplace(fqn);
      AssembledTensor& w = it->second;
      if (fresh) {
        w.dtype = static_cast<DType>(dtype);
        w.shape = g;
        w.data.resize(nbytes);
        w.covered.assign(numel == 0 ? 1 : numel, numel == 0);
      } else if (w.dtype != static_cast<DType>(dtype) || w.shape != g) {
        return InvalidArgumentError("adapter tensor '" + fqn + "': rank " + std::to_string(r) +
                                    " disagrees on its dtype or global shape");
      }
      if (!dec.U64(&chunks)) return bad;
      for (uint64_t c = 0; c < chunks; ++c)
        CKPT_RETURN_IF_ERROR(PlaceEncodedChunk(dec, fqn, g, r, w, bad));
    }
  }
  return Status();
}

// Rank 0: adapter_model.safetensors and adapter_config.json in a new
// `model_dir`.
Status WriteAdapterDir(Storage& st, const std::string& model_dir,
                       const std::map<std::string, AssembledTensor>& tensors,
                       const PeftConfig& peft) {
  std::vector<TensorData> out;
  for (const auto& [fqn, w] : tensors) {
    if (std::find(w.covered.begin(), w.covered.end(), false) != w.covered.end()) {
      return InvalidArgumentError("adapter tensor '" + fqn +
                                  "': the ranks' chunks do not cover it");
    }
    const std::string key =
        fqn.rfind(kAdapterPrefix, 0) == 0 ? fqn : std::string(kAdapterPrefix) + fqn;
    out.push_back(TensorData{key, w.dtype, Shape(w.shape), std::span<const std::byte>(w.data)});
  }
  CKPT_ASSIGN_OR_RETURN(bool exists, Exists(st, model_dir));
  if (exists) return AlreadyExistsError(model_dir + " already exists; it is never overwritten");
  CKPT_RETURN_IF_ERROR(st.MakeDirs(model_dir));
  CKPT_RETURN_IF_ERROR(WriteSafetensors(st, JoinPath(model_dir, kAdapterFile), out,
                                        SafetensorsMetadata{{"format", "pt"}}));
  std::vector<std::string> targets = peft.target_modules;
  std::sort(targets.begin(), targets.end());
  targets.erase(std::unique(targets.begin(), targets.end()), targets.end());
  json cfg = {{"task_type", peft.task_type},
              {"peft_type", "LORA"},
              {"r", peft.r},
              {"lora_alpha", peft.lora_alpha},
              {"use_dora", peft.use_dora},
              {"target_modules", targets},
              {"bias", "none"},
              {"base_model_name_or_path", peft.base_model_name_or_path}};
  CKPT_RETURN_IF_ERROR(
      WriteFileAtomically(st, JoinPath(model_dir, kAdapterConfig), cfg.dump(2) + "\n"));
  return st.SyncDir(model_dir);
}

}  // namespace

// Every rank sends its chunks of the adapter tensors to rank 0, which writes
// the whole adapter as one safetensors file.
Status Checkpointer::SaveAdapter(Model& model, const std::string& model_dir,
                                 const PeftConfig& peft) {
  const std::string what = "saving the PEFT adapter in " + model_dir;
  StateDict adapter = FilterTensors(model.state_dict(),
                                    [&](const std::string& f) { return model.IsAdapterTensor(f); });
  Result<std::string> mine = EncodeAdapterChunks(adapter);
  CKPT_RETURN_IF_ERROR(Agree(mine.status(), what));
  CKPT_ASSIGN_OR_RETURN(std::vector<std::string> all,
                        impl_->comm.AllGather(*mine, impl_->config.timeout));
  if (impl_->comm.rank() != 0) return Agree(Status(), what);
  std::map<std::string, AssembledTensor> tensors;
  Status local = AssembleAdapter(all, &tensors);
  if (local.ok()) local = WriteAdapterDir(*impl_->storage, model_dir, tensors, peft);
  return Agree(local, what);
}

Status Checkpointer::LoadAdapter(Model& model, const std::string& model_dir) {
  StateDict adapter = FilterTensors(model.state_dict(),
                                    [&](const std::string& f) { return model.IsAdapterTensor(f); });
  LoadOptions o;
  o.timeout = impl_->config.timeout;
  o.key_mapping = {{"^base_model\\.model\\.(.*)$", "$1"}};
  return LoadSharded(impl_->comm, *impl_->storage, model_dir, adapter, o)
      .WithContext("loading the PEFT adapter");
}

}  // namespace ckpt
