#include <algorithm>
#include <vector>

#include "ckpt/safetensors.h"
#include "format/json_util.h"

namespace ckpt {

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(Storage& storage,
                                                               const std::string& path) {
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> file, storage.OpenRead(path));
  uint64_t size = file->Size();
  std::vector<std::byte> prefix(std::min<uint64_t>(size, 8));
  CKPT_RETURN_IF_ERROR(file->ReadAt(0, prefix));
  if (size >= 8) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i)
      n = (n << 8) | static_cast<uint8_t>(prefix[static_cast<size_t>(i)]);
    // Only read the header when its declared length is plausible; otherwise
    // ParsePrefix reports the precise problem without a huge allocation.
    if (n <= kSafetensorsMaxHeaderSize && n <= size - 8) {
      prefix.resize(8 + n);
      CKPT_RETURN_IF_ERROR(file->ReadAt(8, std::span(prefix).subspan(8)));
    }
  }
  CKPT_ASSIGN_OR_RETURN(SafetensorsHeader header,
                        SafetensorsHeader::ParsePrefix(prefix, size, path));
  return std::unique_ptr<SafetensorsFile>(new SafetensorsFile(std::move(file), std::move(header)));
}

SafetensorsFile::SafetensorsFile(std::unique_ptr<ReadableFile> file, SafetensorsHeader header)
    : file_(std::move(file)), header_(std::move(header)) {}

Result<const TensorInfo*> SafetensorsFile::Lookup(std::string_view name) const {
  const TensorInfo* t = header_.Find(name);
  if (t == nullptr) {
    return NotFoundError(path() + ": no tensor named '" + Printable(name) + "'");
  }
  return t;
}

Result<TensorView> SafetensorsFile::View(std::string_view name) const {
  CKPT_ASSIGN_OR_RETURN(const TensorInfo* t, Lookup(name));
  MappedRegion region;
  {
    std::lock_guard<std::mutex> lock(map_mu_);
    if (!mapping_) {
      CKPT_ASSIGN_OR_RETURN(MappedRegion m, file_->Map(header_.data_offset(), header_.data_size()));
      mapping_ = std::move(m);
    }
    region = *mapping_;
  }
  return TensorView{t, region.bytes.subspan(t->begin, t->nbytes()), region.owner};
}

Status SafetensorsFile::ReadRange(std::string_view name, uint64_t offset,
                                  std::span<std::byte> dst) const {
  CKPT_ASSIGN_OR_RETURN(const TensorInfo* t, Lookup(name));
  if (offset > t->nbytes() || dst.size() > t->nbytes() - offset) {
    return InvalidArgumentError(path() + ": tensor '" + Printable(name) + "': byte range [" +
                                std::to_string(offset) + ", " +
                                std::to_string(offset + dst.size()) + ") is outside its " +
                                std::to_string(t->nbytes()) + " bytes");
  }
  return ReadAtParallel(*file_, header_.data_offset() + t->begin + offset, dst);
}

Status SafetensorsFile::ReadTensor(std::string_view name, std::span<std::byte> dst) const {
  CKPT_ASSIGN_OR_RETURN(const TensorInfo* t, Lookup(name));
  if (dst.size() != t->nbytes()) {
    return InvalidArgumentError(path() + ": tensor '" + Printable(name) + "' has " +
                                std::to_string(t->nbytes()) + " bytes, destination has " +
                                std::to_string(dst.size()));
  }
  return ReadAtParallel(*file_, header_.data_offset() + t->begin, dst);
}

Status SafetensorsFile::ReadAllData() const {
  constexpr uint64_t kChunk = 8 << 20;
  std::vector<std::byte> buf(std::min<uint64_t>(kChunk, header_.data_size()));
  for (uint64_t off = 0; off < header_.data_size(); off += kChunk) {
    uint64_t n = std::min<uint64_t>(kChunk, header_.data_size() - off);
    CKPT_RETURN_IF_ERROR(file_->ReadAt(header_.data_offset() + off, std::span(buf).first(n)));
  }
  return Status();
}

}  // namespace ckpt
