#include "ckpt/torch_bin.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <set>

#include "ckpt/hf.h"
#include "ckpt/safetensors.h"
#include "format/model_dir_writer.h"
#include "format/torch_pickle.h"
#include "format/zip_reader.h"
#include "io/staged_dir.h"

namespace ckpt {
namespace {

// The pickled magic number that opens a legacy (pre-1.6) torch.save stream.
constexpr unsigned char kLegacyMagic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46,
                                          0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e};

void SwapElements(std::span<std::byte> bytes, DType dtype) {
  uint32_t width = DTypeBits(dtype) / 8;
  if (dtype == DType::kC64) width = 4;  // two f32 halves
  if (width <= 1) return;
  for (size_t i = 0; i + width <= bytes.size(); i += width)
    std::reverse(bytes.begin() + i, bytes.begin() + i + width);
}

// Copies `n` elements of `esz` bytes, `step` bytes apart, to `out`.
template <typename T>
void GatherTyped(std::byte* out, const std::byte* src, uint64_t n, uint64_t step) {
  for (uint64_t k = 0; k < n; ++k) {
    T v;
    std::memcpy(&v, src + k * step, sizeof(T));
    std::memcpy(out + k * sizeof(T), &v, sizeof(T));
  }
}

void GatherRun(std::byte* out, const std::byte* src, uint64_t n, uint64_t step, uint64_t esz) {
  switch (esz) {
    case 1:
      return GatherTyped<uint8_t>(out, src, n, step);
    case 2:
      return GatherTyped<uint16_t>(out, src, n, step);
    case 4:
      return GatherTyped<uint32_t>(out, src, n, step);
    case 8:
      return GatherTyped<uint64_t>(out, src, n, step);
    default:
      for (uint64_t k = 0; k < n; ++k) std::memcpy(out + k * esz, src + k * step, esz);
  }
}

}  // namespace

struct TorchArchive::Impl {
  std::unique_ptr<ZipArchive> zip;
  std::map<std::string, size_t, std::less<>> by_name;
  std::map<std::string, const ZipEntry*> records;  // storage key → entry
  mutable std::mutex map_mu;
  mutable std::optional<MappedRegion> mapping;
  mutable bool tried_map = false;

  // The whole file mapped, or null when the backend cannot map.
  const std::byte* Mapped() const {
    std::lock_guard<std::mutex> lock(map_mu);
    if (!tried_map) {
      tried_map = true;
      Result<MappedRegion> m = zip->file().Map(0, zip->file().Size());
      if (m.ok()) mapping = std::move(*m);
    }
    return mapping ? mapping->bytes.data() : nullptr;
  }
};

TorchArchive::TorchArchive(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TorchArchive::~TorchArchive() = default;

const std::string& TorchArchive::path() const { return impl_->zip->path(); }

// Kept whole past the function-size limit: the archive checks in the order a reader meets them
// (zip, records, byteorder, pickle).
//
// NOLINTNEXTLINE(readability-function-size)
Result<std::unique_ptr<TorchArchive>> TorchArchive::Open(Storage& storage, const std::string& path,
                                                         const TorchArchiveLimits& limits) {
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> file, storage.OpenRead(path));
  // Recognize the formats that are not zip archives before parsing.
  std::byte head[512] = {};
  const uint64_t head_len = std::min<uint64_t>(sizeof head, file->Size());
  CKPT_RETURN_IF_ERROR(file->ReadAt(0, std::span<std::byte>(head, head_len)));
  if (head_len >= sizeof kLegacyMagic &&
      std::memcmp(head, kLegacyMagic, sizeof kLegacyMagic) == 0) {
    return InvalidArgumentError(
        path +
        ": a legacy torch.save stream (written by torch < 1.6, not a zip archive); ckpt reads "
        "only zip archives: load and re-save it with a current torch, then convert");
  }
  if (head_len >= 262 && std::memcmp(head + 257, "ustar", 5) == 0) {
    return InvalidArgumentError(
        path + ": a tar-format torch.save file (torch < 0.4); ckpt reads only zip archives");
  }
  if (head_len < 4 || std::memcmp(head, "PK\x03\x04", 4) != 0) {
    return InvalidArgumentError(
        path + ": not a torch.save archive (no zip local-header signature at byte 0)");
  }
  auto impl = std::make_unique<Impl>();
  CKPT_ASSIGN_OR_RETURN(impl->zip, ZipArchive::Open(std::move(file)));
  const ZipArchive& zip = *impl->zip;
  if (zip.Find("constants.pkl") != nullptr || zip.Find("code/__torch__.py") != nullptr) {
    return InvalidArgumentError(
        path +
        ": a TorchScript archive (it holds constants.pkl); ckpt reads state dicts "
        "written by torch.save, not scripted modules");
  }
  CKPT_RETURN_IF_ERROR(zip.CheckStored());
  bool big = false;
  if (const ZipEntry* bo = zip.Find("byteorder")) {
    CKPT_ASSIGN_OR_RETURN(std::string order, zip.ReadEntry(*bo, 16));
    if (order == "big") {
      big = true;
    } else if (order != "little") {
      return InvalidArgumentError(path + ": record 'byteorder' holds '" + order.substr(0, 16) +
                                  "', neither 'little' nor 'big'");
    }
  }
  const ZipEntry* pkl = zip.Find("data.pkl");
  if (pkl == nullptr)
    return InvalidArgumentError(path + ": archive '" + zip.root() + "' has no data.pkl record");
  CKPT_ASSIGN_OR_RETURN(std::string pickle, zip.ReadEntry(*pkl, limits.max_pickle_bytes));
  PickleLimits pl;
  pl.max_pickle_bytes = limits.max_pickle_bytes;
  pl.max_objects = limits.max_objects;
  CKPT_ASSIGN_OR_RETURN(TorchPickle parsed, ParseTorchPickle(pickle, path + ": data.pkl", pl));

  // Views may repeat elements (stride 0), so the data an archive expands to
  // is bounded in all, not only per tensor: many views of one small storage
  // would otherwise declare terabytes.
  std::map<std::string, uint64_t> record_sizes;
  for (const TorchTensorRecord& r : parsed.tensors) {
    if (const ZipEntry* rec = zip.Find("data/" + r.storage_key))
      record_sizes[r.storage_key] = rec->size;
  }
  uint64_t stored = 0;
  for (const auto& [key, size] : record_sizes) stored += size;
  const uint64_t total_allowed = std::max<uint64_t>(stored, 1u << 20);
  uint64_t materialized = 0;
  std::vector<TorchTensorInfo> tensors;
  for (TorchTensorRecord& r : parsed.tensors) {
    const std::string label = path + ": tensor '" + r.name + "'";
    const ZipEntry* rec = zip.Find("data/" + r.storage_key);
    if (rec == nullptr)
      return InvalidArgumentError(label + ": storage record data/" + r.storage_key + " is missing");
    if (rec->size < r.storage_bytes) {
      return InvalidArgumentError(label + ": storage data/" + r.storage_key + " declares " +
                                  std::to_string(r.storage_bytes) + " bytes but its record holds " +
                                  std::to_string(rec->size));
    }
    const uint64_t allowed = std::max<uint64_t>(rec->size, 1u << 20);
    if (r.nbytes() / limits.max_expansion > allowed) {
      return InvalidArgumentError(label + ": a view of " + std::to_string(r.nbytes()) +
                                  " bytes over a storage of " + std::to_string(rec->size) +
                                  " bytes repeats its elements more than " +
                                  std::to_string(limits.max_expansion) + " times (refused)");
    }
    // No overflow: each term is bounded by the check above and the sum stops at the first excess.
    materialized += r.nbytes();
    if (materialized / limits.max_expansion > total_allowed) {
      return InvalidArgumentError(label + ": the archive's tensors materialize " +
                                  std::to_string(materialized) + " bytes from " +
                                  std::to_string(stored) + " bytes of storage records, more than " +
                                  std::to_string(limits.max_expansion) + " times (refused)");
    }
    impl->records[r.storage_key] = rec;
    TorchTensorInfo t;
    t.contiguous = r.contiguous();
    t.nbytes = r.nbytes();
    t.name = std::move(r.name);
    t.dtype = r.dtype;
    t.shape = Shape(std::move(r.size));
    t.stride = std::move(r.stride);
    t.storage_offset = r.offset;
    t.storage_key = r.storage_key;
    tensors.push_back(std::move(t));
  }
  std::sort(tensors.begin(), tensors.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  for (size_t i = 0; i < tensors.size(); ++i) impl->by_name.emplace(tensors[i].name, i);
  std::unique_ptr<TorchArchive> a(new TorchArchive(std::move(impl)));
  a->big_endian_ = big;
  a->tensors_ = std::move(tensors);
  a->skipped_ = std::move(parsed.skipped);
  return a;
}

const TorchTensorInfo* TorchArchive::Find(std::string_view name) const {
  auto it = impl_->by_name.find(name);
  return it == impl_->by_name.end() ? nullptr : &tensors_[it->second];
}

Status TorchArchive::ReadRange(std::string_view name, uint64_t offset,
                               std::span<std::byte> dst) const {
  const TorchTensorInfo* t = Find(name);
  if (t == nullptr) return NotFoundError(path() + ": no tensor '" + std::string(name) + "'");
  const uint64_t esz = DTypeBits(t->dtype) / 8;
  if (offset > t->nbytes || dst.size() > t->nbytes - offset || offset % esz != 0 ||
      dst.size() % esz != 0) {
    return InvalidArgumentError(path() + ": tensor '" + t->name + "': bytes [" +
                                std::to_string(offset) + ", +" + std::to_string(dst.size()) +
                                ") are not whole elements inside its " + std::to_string(t->nbytes) +
                                " bytes");
  }
  if (dst.empty()) return Status();
  const ZipEntry& rec = *impl_->records.at(t->storage_key);
  if (t->contiguous) {
    CKPT_RETURN_IF_ERROR(impl_->zip->ReadEntryRange(rec, t->storage_offset * esz + offset, dst));
  } else {
    // Gather through the strides. Source bytes come from a mapping of the
    // file, or from the span of the storage the view touches.
    const std::vector<uint64_t>& size = t->shape.dims();
    const size_t rank = size.size();
    uint64_t lo = t->storage_offset, hi = t->storage_offset;
    for (size_t d = 0; d < rank; ++d) hi += (size[d] - 1) * t->stride[d];
    std::vector<std::byte> span;
    const std::byte* base = impl_->Mapped();
    if (base != nullptr) {
      base += rec.data_offset;
    } else {
      span.resize((hi - lo + 1) * esz);
      CKPT_RETURN_IF_ERROR(impl_->zip->ReadEntryRange(rec, lo * esz, span));
      base = span.data() - lo * esz;
    }
    // Multi-index of the first element wanted.
    std::vector<uint64_t> idx(rank, 0);
    uint64_t e = offset / esz;
    for (size_t d = rank; d-- > 0;) {
      idx[d] = e % size[d];
      e /= size[d];
    }
    const uint64_t count = dst.size() / esz;
    const uint64_t inner = rank == 0 ? 1 : size[rank - 1];
    const uint64_t inner_stride = rank == 0 ? 0 : t->stride[rank - 1];
    uint64_t done = 0;
    while (done < count) {
      uint64_t src = t->storage_offset;
      for (size_t d = 0; d < rank; ++d) src += idx[d] * t->stride[d];
      const uint64_t start = rank == 0 ? 0 : idx[rank - 1];
      const uint64_t run = std::min(count - done, inner - start);
      std::byte* out = dst.data() + done * esz;
      if (inner_stride == 1) {
        std::memcpy(out, base + src * esz, run * esz);
      } else {
        GatherRun(out, base + src * esz, run, inner_stride * esz, esz);
      }
      done += run;
      if (rank == 0) break;
      idx[rank - 1] = 0;
      for (size_t d = rank - 1; d-- > 0;) {
        if (++idx[d] < size[d]) break;
        idx[d] = 0;
      }
    }
  }
  if (big_endian_) SwapElements(dst, t->dtype);
  return Status();
}

Status TorchArchive::ReadTensor(std::string_view name, std::span<std::byte> dst) const {
  const TorchTensorInfo* t = Find(name);
  if (t == nullptr) return NotFoundError(path() + ": no tensor '" + std::string(name) + "'");
  if (dst.size() != t->nbytes) {
    return InvalidArgumentError(path() + ": tensor '" + t->name + "' has " +
                                std::to_string(t->nbytes) + " bytes, the destination " +
                                std::to_string(dst.size()));
  }
  return ReadRange(name, 0, dst);
}

Status TorchArchive::CheckData() const {
  for (const auto& [key, rec] : impl_->records) CKPT_RETURN_IF_ERROR(impl_->zip->CheckCrc(*rec));
  return Status();
}

// ---------------------------------------------------------------- directories

Result<bool> HasTorchBinWeights(Storage& storage, const std::string& dir) {
  CKPT_ASSIGN_OR_RETURN(bool single, Exists(storage, JoinPath(dir, kTorchBinSingleName)));
  if (single) return true;
  return Exists(storage, JoinPath(dir, kTorchBinIndexName));
}

Result<bool> HasSafetensorsWeights(Storage& storage, const std::string& dir) {
  CKPT_ASSIGN_OR_RETURN(std::vector<DirEntry> entries, storage.List(dir));
  for (const DirEntry& e : entries) {
    if (e.type == EntryType::kFile && e.name.size() > 12 && e.name.ends_with(".safetensors"))
      return true;
    if (e.name == kHfIndexName || e.name == kDiffusersIndexName) return true;
  }
  return false;
}

Result<TorchBinDir> TorchBinDir::Open(Storage& storage, const std::string& dir,
                                      const TorchArchiveLimits& limits) {
  TorchBinDir out;
  out.dir_ = dir;
  const std::string index_path = JoinPath(dir, kTorchBinIndexName);
  CKPT_ASSIGN_OR_RETURN(bool has_index, Exists(storage, index_path));
  std::vector<std::string> names;
  if (has_index) {
    CKPT_ASSIGN_OR_RETURN(std::string text, ReadFileToString(storage, index_path));
    CKPT_ASSIGN_OR_RETURN(HfIndex index, ParseHfIndex(text, index_path));
    std::set<std::string> files;
    for (const auto& [tensor, file] : index.weight_map) files.insert(file);
    names.assign(files.begin(), files.end());
    std::sort(names.begin(), names.end(), NaturalLess);
    out.index_ = std::move(index);
  } else {
    names.push_back(std::string(kTorchBinSingleName));
  }
  for (const std::string& n : names) {
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<TorchArchive> a,
                          TorchArchive::Open(storage, JoinPath(dir, n), limits));
    out.files_.push_back(std::move(a));
  }
  for (size_t f = 0; f < out.files_.size(); ++f) {
    for (const TorchTensorInfo& t : out.files_[f]->tensors()) {
      if (out.index_) {
        auto it = out.index_->weight_map.find(t.name);
        if (it == out.index_->weight_map.end() || it->second != names[f])
          continue;  // not indexed here
      }
      out.tensors_[t.name] = Location{f, &t};
    }
  }
  if (out.index_) {
    for (const auto& [tensor, file] : out.index_->weight_map) {
      if (!out.tensors_.count(tensor)) {
        return DataLossError(index_path + ": tensor '" + tensor + "' is mapped to " + file +
                             ", which does not hold it");
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------- convert

Status ConvertTorchBinDir(Storage& storage, const std::string& in_dir, const std::string& out_dir,
                          const TorchConvertOptions& o, TorchConvertStats* stats_out) {
  const std::string what = "converting " + in_dir + " into " + out_dir;
  CKPT_ASSIGN_OR_RETURN(TorchBinDir bin, TorchBinDir::Open(storage, in_dir));
  if (bin.tensors().empty())
    return InvalidArgumentError(what + ": the checkpoint holds no tensors");
  std::vector<TensorSpec> specs;
  for (const auto& [name, loc] : bin.tensors())
    specs.push_back(TensorSpec{name, loc.info->dtype, loc.info->shape});
  TorchConvertStats stats;
  std::vector<std::byte> buf;
  const uint64_t buf_size = std::max<uint64_t>(o.buffer_size, 64);
  auto fill = [&](const TensorSpec& s, SafetensorsWriter& w) -> Status {
    const TorchBinDir::Location& loc = bin.tensors().at(s.name);
    const TorchTensorInfo& t = *loc.info;
    const uint64_t esz = DTypeBits(t.dtype) / 8;
    const uint64_t piece_max = std::max<uint64_t>(esz, buf_size / esz * esz);
    for (uint64_t off = 0; off < t.nbytes; off += piece_max) {
      const uint64_t n = std::min(piece_max, t.nbytes - off);
      if (buf.size() < n) buf.resize(n);
      std::span<std::byte> piece(buf.data(), n);
      CKPT_RETURN_IF_ERROR(bin.files()[loc.file]->ReadRange(t.name, off, piece));
      CKPT_RETURN_IF_ERROR(w.Write(t.name, off, piece));
    }
    ++stats.tensors;
    stats.bytes += t.nbytes;
    return Status();
  };
  auto build = [&](const std::string& staging) -> Status {
    HfIndex index;
    CKPT_RETURN_IF_ERROR(
        WriteModelFiles(storage, staging, specs, o.max_shard_size, fill, &index, &stats.files));
    stats.peak_buffer = buf.size();
    std::set<std::string> weights{std::string(kTorchBinIndexName),
                                  std::string(kTorchBinSingleName)};
    for (const auto& f : bin.files()) weights.insert(std::string(Basename(f->path())));
    return FinishConvertedDir(storage, in_dir, weights, staging, index);
  };
  CKPT_RETURN_IF_ERROR(BuildDirAtomically(storage, out_dir, build).WithContext(what));
  if (stats_out) *stats_out = stats;
  return Status();
}

}  // namespace ckpt
