// DCP directories as a chunk source. `.metadata` says where each chunk's
// torch.save archive lies in a `.distcp` file; the archive's own zip
// directory and `data.pkl` say where the raw bytes are inside it. Once
// located, a chunk is a plain byte range, read by the sharded load like a
// safetensors chunk (only the overlapping ranges, any target layout).
#include "engine/dcp_dir.h"

#include <set>

#include "format/dcp_metadata.h"
#include "format/torch_pickle.h"
#include "format/zip_reader.h"
#include "plan/codec.h"

namespace ckpt::engine {
namespace {

// Bytes [offset, offset + length) of another file, as a file of its own.
class SliceFile : public ReadableFile {
 public:
  SliceFile(const ReadableFile& base, uint64_t offset, uint64_t length, std::string name)
      : base_(base), offset_(offset), length_(length), name_(std::move(name)) {}
  uint64_t Size() const override { return length_; }
  Status ReadAt(uint64_t offset, std::span<std::byte> dst) const override {
    if (offset > length_ || dst.size() > length_ - offset) {
      return DataLossError(name_ + ": read [" + std::to_string(offset) + ", " +
                           std::to_string(offset + dst.size()) + ") past the end of the " +
                           std::to_string(length_) + "-byte entry");
    }
    return base_.ReadAt(offset_ + offset, dst);
  }
  Result<MappedRegion> Map(uint64_t offset, uint64_t length) const override {
    if (offset > length_ || length > length_ - offset)
      return DataLossError(name_ + ": map past the end of the entry");
    return base_.Map(offset_ + offset, length);
  }
  const std::string& path() const override { return name_; }

 private:
  const ReadableFile& base_;
  uint64_t offset_, length_;
  std::string name_;
};

// The absolute offset in the .distcp file of the chunk's first byte.
Result<uint64_t> LocateChunk(const ReadableFile& file, const DcpStorageInfo& at,
                             const std::string& fqn, DType dtype,
                             const std::vector<uint64_t>& sizes) {
  const std::string where = file.path() + " bytes [" + std::to_string(at.offset) + ", " +
                            std::to_string(at.offset + at.length) + ") (tensor '" + fqn +
                            "' chunk)";
  auto slice = std::make_unique<SliceFile>(file, at.offset, at.length, where);
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<ZipArchive> zip, ZipArchive::Open(std::move(slice)));
  CKPT_RETURN_IF_ERROR(zip->CheckStored());
  const ZipEntry* pkl = zip->Find("data.pkl");
  if (pkl == nullptr)
    return InvalidArgumentError(where + ": not a torch.save archive (no data.pkl)");
  if (const ZipEntry* order = zip->Find("byteorder")) {
    CKPT_ASSIGN_OR_RETURN(std::string bo, zip->ReadEntry(*order, 16));
    if (bo != "little")
      return InvalidArgumentError(where + ": byteorder '" + bo + "' is not little");
  }
  CKPT_ASSIGN_OR_RETURN(std::string pickle, zip->ReadEntry(*pkl, 1u << 20));
  CKPT_ASSIGN_OR_RETURN(TorchTensorRecord r, ParseTorchTensorPickle(pickle, where + " data.pkl"));
  if (r.dtype != dtype || r.size != sizes) {
    return InvalidArgumentError(where + ": the archive holds " + std::string(DTypeName(r.dtype)) +
                                " " + Shape(r.size).ToString() + " but .metadata says " +
                                std::string(DTypeName(dtype)) + " " + Shape(sizes).ToString());
  }
  if (!r.contiguous()) return InvalidArgumentError(where + ": the stored view is not contiguous");
  const ZipEntry* data = zip->Find("data/" + r.storage_key);
  if (data == nullptr)
    return InvalidArgumentError(where + ": storage record data/" + r.storage_key + " is missing");
  const uint64_t esz = DTypeBits(dtype) / 8;
  if (data->size != r.storage_bytes || r.offset > data->size / esz ||
      r.nbytes() > data->size - r.offset * esz) {
    return InvalidArgumentError(where + ": storage record data/" + r.storage_key + " of " +
                                std::to_string(data->size) + " bytes does not hold the " +
                                std::to_string(r.nbytes()) + "-byte view at element " +
                                std::to_string(r.offset));
  }
  return at.offset + data->data_offset + r.offset * esz;
}

std::string Encode(const SavedCheckpoint& c) {
  plan::Encoder e;
  e.U64(c.listing.files.size());
  for (size_t i = 0; i < c.listing.files.size(); ++i) {
    e.Str(c.listing.files[i]);
    e.U64(c.listing.sizes[i]);
  }
  e.U64(c.index.tensors().size());
  for (const auto& [fqn, t] : c.index.tensors()) {
    e.Str(fqn);
    e.Str(DTypeName(t.dtype));
    e.U64(t.chunks.size());
    for (const plan::SavedChunk& ch : t.chunks) {
      e.U64(ch.file);
      e.U64(ch.data_offset);
      e.U64(ch.box.offsets.size());
      for (size_t d = 0; d < ch.box.offsets.size(); ++d) {
        e.U64(ch.box.offsets[d]);
        e.U64(ch.box.sizes[d]);
      }
    }
  }
  e.U64(c.byte_entries.size());
  for (const auto& [fqn, b] : c.byte_entries) {
    e.Str(fqn);
    e.U64(b.file);
    e.U64(b.offset);
    e.U64(b.length);
  }
  return e.Take();
}

Result<SavedCheckpoint> Decode(std::string_view text) {
  plan::Decoder d(text);
  SavedCheckpoint c;
  c.dcp = true;
  const Status bad = InternalError("malformed DCP index from rank 0");
  uint64_t n = 0;
  if (!d.U64(&n)) return bad;
  for (uint64_t i = 0; i < n; ++i) {
    std::string name;
    uint64_t size;
    if (!d.Str(&name) || !d.U64(&size)) return bad;
    c.listing.files.push_back(std::move(name));
    c.listing.sizes.push_back(size);
  }
  if (!d.U64(&n)) return bad;
  for (uint64_t i = 0; i < n; ++i) {
    std::string fqn, dtype_name;
    uint64_t chunks;
    if (!d.Str(&fqn) || !d.Str(&dtype_name) || !d.U64(&chunks)) return bad;
    CKPT_ASSIGN_OR_RETURN(DType dtype, ParseDType(dtype_name));
    for (uint64_t k = 0; k < chunks; ++k) {
      plan::SavedChunk ch;
      uint64_t file, rank;
      if (!d.U64(&file) || !d.U64(&ch.data_offset) || !d.U64(&rank)) return bad;
      ch.file = static_cast<uint32_t>(file);
      for (uint64_t r = 0; r < rank; ++r) {
        uint64_t o, s;
        if (!d.U64(&o) || !d.U64(&s)) return bad;
        ch.box.offsets.push_back(o);
        ch.box.sizes.push_back(s);
      }
      CKPT_RETURN_IF_ERROR(c.index.Add(fqn, dtype, std::move(ch), c.listing.files[file]));
    }
  }
  if (!d.U64(&n)) return bad;
  for (uint64_t i = 0; i < n; ++i) {
    std::string fqn;
    uint64_t file;
    SavedBytesEntry b;
    if (!d.Str(&fqn) || !d.U64(&file) || !d.U64(&b.offset) || !d.U64(&b.length)) return bad;
    b.file = static_cast<uint32_t>(file);
    c.byte_entries[fqn] = b;
  }
  CKPT_RETURN_IF_ERROR(c.index.Finalize());
  return c;
}

}  // namespace

Result<bool> IsDcpDir(Storage& storage, const std::string& dir) {
  return Exists(storage, JoinPath(dir, kDcpMetadataName));
}

Result<SavedCheckpoint> ReadDcpCheckpoint(Storage& storage, const std::string& dir) {
  const std::string meta_path = JoinPath(dir, kDcpMetadataName);
  CKPT_ASSIGN_OR_RETURN(std::string text, ReadFileToString(storage, meta_path));
  CKPT_ASSIGN_OR_RETURN(DcpMetadata meta, ParseDcpMetadata(text, meta_path));

  SavedCheckpoint out;
  out.dcp = true;
  std::map<std::string, uint32_t> file_index;
  std::set<std::string> names;
  for (const auto& [fqn, t] : meta.tensors) {
    for (const DcpChunk& c : t.chunks) names.insert(c.storage.relative_path);
  }
  for (const auto& [fqn, b] : meta.bytes) names.insert(b.relative_path);
  std::vector<std::unique_ptr<ReadableFile>> files;
  for (const std::string& name : names) {
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> f, storage.OpenRead(JoinPath(dir, name)));
    file_index[name] = static_cast<uint32_t>(out.listing.files.size());
    out.listing.files.push_back(name);
    out.listing.sizes.push_back(f->Size());
    files.push_back(std::move(f));
  }
  auto inside = [&](const DcpStorageInfo& s, const std::string& what) -> Result<uint32_t> {
    const uint32_t i = file_index.at(s.relative_path);
    if (s.offset > out.listing.sizes[i] || s.length > out.listing.sizes[i] - s.offset) {
      return DataLossError(meta_path + ": " + what + " is stored at bytes [" +
                           std::to_string(s.offset) + ", " + std::to_string(s.offset + s.length) +
                           ") of " + s.relative_path + ", which has " +
                           std::to_string(out.listing.sizes[i]) + " bytes");
    }
    return i;
  };
  for (const auto& [fqn, t] : meta.tensors) {
    for (const DcpChunk& c : t.chunks) {
      CKPT_ASSIGN_OR_RETURN(uint32_t i, inside(c.storage, "tensor '" + fqn + "' chunk at " +
                                                              Shape(c.offsets).ToString()));
      plan::SavedChunk ch;
      ch.file = i;
      ch.box = plan::Box{c.offsets, c.sizes};
      CKPT_ASSIGN_OR_RETURN(ch.data_offset,
                            LocateChunk(*files[i], c.storage, fqn, t.dtype, c.sizes));
      CKPT_RETURN_IF_ERROR(
          out.index.Add(fqn, t.dtype, std::move(ch), JoinPath(dir, c.storage.relative_path)));
    }
  }
  for (const auto& [fqn, b] : meta.bytes) {
    CKPT_ASSIGN_OR_RETURN(uint32_t i, inside(b, "bytes entry '" + fqn + "'"));
    out.byte_entries[fqn] = SavedBytesEntry{i, b.offset, b.length};
  }
  CKPT_RETURN_IF_ERROR(out.index.Finalize().WithContext(meta_path));
  // A tensor whose chunks do not reach its declared size is incomplete.
  for (const auto& [fqn, t] : meta.tensors) {
    const plan::SavedTensor* s = out.index.Find(fqn);
    if (s == nullptr) continue;  // no chunks: nothing to read
    if (!(s->global == Shape(t.size))) {
      return DataLossError(meta_path + ": tensor '" + fqn + "' has size " +
                           Shape(t.size).ToString() + " but its chunks cover " +
                           s->global.ToString());
    }
  }
  return out;
}

Result<SavedCheckpoint> ReadDcpCheckpointCollective(Communicator& comm, Storage& storage,
                                                    const std::string& dir, Timeout timeout) {
  const std::string what = "reading " + dir;
  std::string text;
  Status read;
  if (comm.rank() == 0) {
    Result<SavedCheckpoint> c = ReadDcpCheckpoint(storage, dir);
    read = c.status();
    if (c.ok()) text = Encode(*c);
  }
  CKPT_RETURN_IF_ERROR(comm.AgreeOnStatus(read, timeout).WithContext(what));
  CKPT_RETURN_IF_ERROR(comm.Broadcast(0, &text, timeout));
  return Decode(text);
}

Result<SavedCheckpoint> ReadAnyCheckpointCollective(Communicator& comm, Storage& storage,
                                                    const std::string& dir, Timeout timeout) {
  Result<bool> dcp = IsDcpDir(storage, dir);
  CKPT_RETURN_IF_ERROR(comm.AgreeOnStatus(dcp.status(), timeout).WithContext("reading " + dir));
  return *dcp ? ReadDcpCheckpointCollective(comm, storage, dir, timeout)
              : ReadCheckpointCollective(comm, storage, dir, timeout);
}

Result<std::map<std::string, std::vector<std::byte>>> ReadDcpBytes(
    Storage& storage, const std::string& dir, const SavedCheckpoint& checkpoint) {
  std::map<std::string, std::vector<std::byte>> out;
  for (const auto& [fqn, b] : checkpoint.byte_entries) {
    if (b.length > kMaxSideFileBytes) {
      return FailedPreconditionError(dir + ": bytes entry '" + fqn + "' of " +
                                     std::to_string(b.length) + " bytes is larger than " +
                                     std::to_string(kMaxSideFileBytes));
    }
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> f,
                          storage.OpenRead(JoinPath(dir, checkpoint.listing.files[b.file])));
    std::vector<std::byte> v(b.length);
    CKPT_RETURN_IF_ERROR(f->ReadAt(b.offset, v));
    out[fqn] = std::move(v);
  }
  return out;
}

Status VerifyDcpDir(Storage& storage, const std::string& dir) {
  CKPT_RETURN_IF_ERROR(ReadDcpCheckpoint(storage, dir).status());
  const std::string meta_path = JoinPath(dir, kDcpMetadataName);
  CKPT_ASSIGN_OR_RETURN(std::string text, ReadFileToString(storage, meta_path));
  CKPT_ASSIGN_OR_RETURN(DcpMetadata meta, ParseDcpMetadata(text, meta_path));
  std::vector<std::pair<std::string, DcpStorageInfo>> entries;
  for (const auto& [fqn, t] : meta.tensors) {
    for (const DcpChunk& c : t.chunks)
      entries.emplace_back("tensor '" + fqn + "' chunk at " + Shape(c.offsets).ToString(),
                           c.storage);
  }
  for (const auto& [fqn, b] : meta.bytes) entries.emplace_back("bytes entry '" + fqn + "'", b);
  std::map<std::string, std::unique_ptr<ReadableFile>> files;
  for (const auto& [what, at] : entries) {
    std::unique_ptr<ReadableFile>& f = files[at.relative_path];
    if (!f) {
      CKPT_ASSIGN_OR_RETURN(f, storage.OpenRead(JoinPath(dir, at.relative_path)));
    }
    const std::string where = f->path() + " bytes [" + std::to_string(at.offset) + ", " +
                              std::to_string(at.offset + at.length) + ") (" + what + ")";
    CKPT_ASSIGN_OR_RETURN(
        std::unique_ptr<ZipArchive> zip,
        ZipArchive::Open(std::make_unique<SliceFile>(*f, at.offset, at.length, where)));
    CKPT_RETURN_IF_ERROR(zip->CheckStored());
    for (const auto& [name, e] : zip->entries()) CKPT_RETURN_IF_ERROR(zip->CheckCrc(e));
  }
  return Status();
}

Result<std::vector<std::pair<uint64_t, uint64_t>>> WriteDcpDataFile(
    Storage& storage, const std::string& staging, const std::string& file,
    const std::vector<std::string_view>& blobs) {
  const std::string path = JoinPath(staging, file);
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> f,
                        storage.OpenWrite(path, CreateMode::kExclusive));
  std::vector<std::pair<uint64_t, uint64_t>> out;
  uint64_t at = 0;
  for (std::string_view b : blobs) {
    CKPT_RETURN_IF_ERROR(f->Append(std::as_bytes(std::span<const char>(b.data(), b.size()))));
    out.emplace_back(at, b.size());
    at += b.size();
  }
  CKPT_RETURN_IF_ERROR(f->Sync());
  CKPT_RETURN_IF_ERROR(f->Close());
  return out;
}

Status PublishDcpDir(Storage& storage, const std::string& staging, const std::string& dir,
                     const DcpMetadata& meta) {
  Result<std::string> pickle = WriteDcpMetadata(meta);
  Status published = pickle.status();
  if (published.ok())
    published = WriteFileAtomically(storage, JoinPath(staging, kDcpMetadataName), *pickle);
  if (published.ok()) published = storage.SyncDir(staging);
  if (published.ok()) published = storage.Rename(staging, dir);
  if (published.ok()) published = storage.SyncDir(std::string(Dirname(dir)));
  if (!published.ok()) RemoveAll(storage, staging).IgnoreError();
  return published.WithContext("publishing " + dir);
}

}  // namespace ckpt::engine
