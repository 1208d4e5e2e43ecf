// SaveSharded. Protocol, every rank:
//   1. all-gather local plans; every rank computes the same global plan;
//   2. rank 0 creates the staging directory "<parent>/.<name>.tmp-<token>";
//   3. each rank with chunks to write streams them into its shard file in
//      the staging directory (AtomicFileWriter: fsync, rename, fsync dir);
//   4. all ranks agree on the outcome; on failure rank 0 removes staging;
//   5. rank 0 writes the manifest, renames staging to `dir`, fsyncs the
//      parent; all ranks agree on that outcome.
// A crash before step 5's rename leaves only a hidden staging directory.
#include <xxhash.h>

#include <cstring>

#include <nlohmann/json.hpp>

#include "ckpt/safetensors.h"
#include "ckpt/sharded.h"
#include "engine/shard_dir.h"
#include "plan/save_plan.h"

namespace ckpt {
std::string ShardFileName(int rank) { return engine::ShardFileNameImpl(rank); }

namespace {

using json = nlohmann::json;

std::string Hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

Status CheckLocal(const StateDict& sd) {
  for (const DistTensor& t : sd.tensors) {
    for (const LocalChunk& c : t.chunks) {
      std::string where = "tensor '" + t.fqn + "'";
      if (c.offsets.size() != t.global_shape.rank() || c.shape.rank() != t.global_shape.rank()) {
        return InvalidArgumentError(where + ": chunk rank differs from the global shape " +
                                    t.global_shape.ToString());
      }
      if (!c.strides.empty() && c.strides.size() != c.shape.rank()) {
        return InvalidArgumentError(where + ": " + std::to_string(c.strides.size()) +
                                    " strides for a rank-" + std::to_string(c.shape.rank()) + " chunk");
      }
      if (!c.strides.empty() && DTypeBits(t.dtype) % 8 != 0) {
        return InvalidArgumentError(where + ": strided chunks of sub-byte dtypes are not supported");
      }
      CKPT_ASSIGN_OR_RETURN(uint64_t n, c.shape.NumElements());
      if (n > 0 && c.data == nullptr) return InvalidArgumentError(where + ": chunk has no data pointer");
    }
  }
  return Status();
}

// Calls fn(offset, bytes) over the chunk's bytes in row-major order: one
// call for a contiguous chunk, 8 MiB gathered pieces for a strided one.
template <typename Fn>
Status ForEachPiece(const LocalChunk& c, DType dtype, uint64_t nbytes, Fn fn) {
  if (c.strides.empty()) return fn(0, std::span<const std::byte>(c.data, nbytes));
  const uint64_t esz = DTypeBits(dtype) / 8;
  const size_t rank = c.shape.rank();
  std::vector<std::byte> buf;
  buf.reserve(std::min<uint64_t>(nbytes, 8ull << 20));
  std::vector<uint64_t> idx(rank, 0);
  uint64_t written = 0;
  for (uint64_t e = 0; e < nbytes / esz; ++e) {
    int64_t off = 0;
    for (size_t d = 0; d < rank; ++d) off += static_cast<int64_t>(idx[d]) * c.strides[d];
    const std::byte* src = c.data + off * static_cast<int64_t>(esz);
    buf.insert(buf.end(), src, src + esz);
    for (size_t d = rank; d-- > 0;) {
      if (++idx[d] < c.shape[d]) break;
      idx[d] = 0;
    }
    if (buf.size() >= (8ull << 20)) {
      CKPT_RETURN_IF_ERROR(fn(written, buf));
      written += buf.size();
      buf.clear();
    }
  }
  if (!buf.empty()) CKPT_RETURN_IF_ERROR(fn(written, buf));
  return Status();
}

// Writes this rank's share of the global plan. Returns the file name and
// size, or an empty name when the rank writes nothing.
Status WriteShard(Storage& storage, const std::string& staging, int rank, const StateDict& sd,
                  const std::vector<plan::WriteItem>& writes, ChunkSource* source,
                  std::string* file, uint64_t* size, std::string* header_hash) {
  file->clear();
  if (writes.empty()) return Status();
  std::vector<TensorSpec> specs;
  json sharding = json::object();
  SafetensorsMetadata md{{std::string(kDcpVersionKey), std::string(kDcpVersion)}, {"format", "pt"}};
  json sums = json::object();
  for (const plan::WriteItem& w : writes) {
    const DistTensor& t = sd.tensors[w.tensor];
    const LocalChunk& c = t.chunks[w.chunk];
    specs.push_back({t.fqn, t.dtype, c.shape});
    sharding[t.fqn] = {{"saved_offsets", c.offsets}};
    sums[t.fqn] = Hex64(0);  // placeholder of the final width
  }
  md[std::string(kDcpShardingInfoKey)] = sharding.dump();
  md[std::string(kChunkChecksumKey)] = sums.dump();
  *file = ShardFileName(rank);
  const std::string path = JoinPath(staging, *file);
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> writer,
                        SafetensorsWriter::Create(storage, path, std::move(specs), md));
  XXH64_state_t* h = XXH64_createState();
  std::unique_ptr<XXH64_state_t, decltype(&XXH64_freeState)> guard(h, &XXH64_freeState);
  for (const plan::WriteItem& w : writes) {
    const DistTensor& t = sd.tensors[w.tensor];
    const LocalChunk& c = t.chunks[w.chunk];
    CKPT_ASSIGN_OR_RETURN(uint64_t nbytes, c.shape.NumBytes(t.dtype));
    XXH64_reset(h, 0);
    if (source != nullptr) {
      for (uint64_t off = 0; off < nbytes;) {
        CKPT_ASSIGN_OR_RETURN(std::span<const std::byte> piece, source->Next({w.tensor, w.chunk}));
        if (piece.empty() || piece.size() > nbytes - off) {
          return InternalError("tensor '" + t.fqn + "': the chunk source gave " + std::to_string(piece.size()) +
                               " bytes at offset " + std::to_string(off) + " of " + std::to_string(nbytes));
        }
        XXH64_update(h, piece.data(), piece.size());
        Status wrote = writer->Write(t.fqn, off, piece);
        source->Release();
        CKPT_RETURN_IF_ERROR(wrote);
        off += piece.size();
      }
    } else {
      CKPT_RETURN_IF_ERROR(ForEachPiece(c, t.dtype, nbytes, [&](uint64_t off, std::span<const std::byte> piece) {
        XXH64_update(h, piece.data(), piece.size());
        return writer->Write(t.fqn, off, piece);
      }));
    }
    sums[t.fqn] = Hex64(XXH64_digest(h));
  }
  md[std::string(kChunkChecksumKey)] = sums.dump();
  CKPT_RETURN_IF_ERROR(writer->ReplaceMetadata(md));
  *size = writer->layout().file_size();
  CKPT_RETURN_IF_ERROR(writer->Commit());
  // The manifest records a hash of every header as written.
  CKPT_ASSIGN_OR_RETURN(std::string prefix, engine::ReadHeaderPrefix(storage, path));
  *header_hash = engine::HeaderHash(prefix);
  return Status();
}

std::string EncodeExtra(const StateDict& sd) {
  static const char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  json j = {{"json", json::object()}, {"bytes", json::object()}};
  for (const auto& [k, v] : sd.json) j["json"][k] = json::parse(v);
  for (const auto& [k, v] : sd.bytes) {
    std::string out;
    for (size_t i = 0; i < v.size(); i += 3) {
      uint32_t n = static_cast<uint32_t>(v[i]) << 16;
      if (i + 1 < v.size()) n |= static_cast<uint32_t>(v[i + 1]) << 8;
      if (i + 2 < v.size()) n |= static_cast<uint32_t>(v[i + 2]);
      out += kB64[(n >> 18) & 63];
      out += kB64[(n >> 12) & 63];
      out += i + 1 < v.size() ? kB64[(n >> 6) & 63] : '=';
      out += i + 2 < v.size() ? kB64[n & 63] : '=';
    }
    j["bytes"][k] = out;
  }
  return j.dump(2) + "\n";
}

}  // namespace

namespace {

Status SaveShardedImpl(Communicator& comm, Storage& storage, const std::string& dir,
                       const StateDict& sd, const SaveOptions& options) {
  const Timeout to = options.timeout;
  const std::string what = "saving " + dir;
  Status local = CheckLocal(sd);
  for (const auto& [k, v] : sd.json) {
    if (!local.ok()) break;
    if (!nlohmann::json::accept(v)) local = InvalidArgumentError("json entry '" + k + "' is not valid JSON");
  }
  CKPT_RETURN_IF_ERROR(comm.AgreeOnStatus(local, to).WithContext(what));

  CKPT_ASSIGN_OR_RETURN(std::vector<std::string> encoded, comm.AllGather(plan::EncodeLocalPlan(sd), to));
  std::vector<plan::LocalPlan> plans;
  for (std::string& e : encoded) {
    Result<plan::LocalPlan> p = plan::DecodeLocalPlan(std::move(e));
    if (!p.ok()) return p.status().WithContext(what);
    plans.push_back(std::move(*p));
  }
  Result<plan::GlobalPlan> global = plan::BuildGlobalPlan(plans);
  if (!global.ok()) return global.status().WithContext(what);

  Result<std::string> staging_dir = engine::CreateStagingDir(comm, storage, dir, to);
  if (!staging_dir.ok()) return staging_dir.status().WithContext(what);
  const std::string& staging = *staging_dir;

  std::string file, header_hash;
  uint64_t size = 0;
  Status wrote = WriteShard(storage, staging, comm.rank(), sd, global->writes[static_cast<size_t>(comm.rank())],
                            options.source, &file, &size, &header_hash);
  if (wrote.ok() && comm.rank() == 0 && (!sd.json.empty() || !sd.bytes.empty())) {
    wrote = WriteFileAtomically(storage, JoinPath(staging, kExtraStateName), EncodeExtra(sd));
  }
  Status agreed = comm.AgreeOnStatus(wrote, to);
  Result<std::vector<std::string>> files =
      agreed.ok() ? comm.AllGather(file + "\n" + std::to_string(size) + "\n" + header_hash, to) : agreed;
  Status published = files.status();
  if (comm.rank() == 0) {
    if (published.ok()) {
      std::vector<std::string> names, hashes;
      std::vector<uint64_t> sizes;
      for (const std::string& f : *files) {
        const size_t nl = f.find('\n'), nl2 = f.find('\n', nl + 1);
        if (nl == 0) continue;  // a rank that wrote nothing
        names.push_back(f.substr(0, nl));
        sizes.push_back(std::stoull(f.substr(nl + 1, nl2 - nl - 1)));
        hashes.push_back(f.substr(nl2 + 1));
      }
      published = WriteFileAtomically(storage, JoinPath(staging, kManifestName),
                                       engine::ManifestText(names, sizes, hashes, comm.size()));
      if (published.ok()) published = storage.Rename(staging, dir);
      if (published.ok()) published = storage.SyncDir(std::string(Dirname(dir)));
    }
    if (!published.ok()) RemoveAll(storage, staging).IgnoreError();
  }
  if (!agreed.ok()) return agreed.WithContext(what);
  if (!files.ok()) return files.status().WithContext(what);
  return comm.AgreeOnStatus(published, to).WithContext(what);
}

}  // namespace

Status SaveSharded(Communicator& comm, Storage& storage, const std::string& dir,
                   const StateDict& sd, const SaveOptions& options) {
  Status s = SaveShardedImpl(comm, storage, dir, sd, options);
  if (options.source != nullptr) options.source->Finish(s);
  return s;
}

}  // namespace ckpt
