// SaveSharded. Protocol, every rank:
//   1. all-gather local plans; every rank computes the same global plan;
//   2. rank 0 creates the staging directory "<parent>/.<name>.tmp-<token>";
//   3. each rank with chunks to write streams them into its shard file in
//      the staging directory (AtomicFileWriter: fsync, rename, fsync dir);
//   4. all ranks agree on the outcome; on failure rank 0 removes staging;
//   5. rank 0 writes the manifest, renames staging to `dir`, fsyncs the
//      parent (without rename, on object stores, the manifest written last
//      is the commit); all ranks agree on that outcome.
// A crash before step 5's rename leaves only a hidden staging directory.
#include "engine/sharded_save.h"

#include <xxhash.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "ckpt/safetensors.h"
#include "ckpt/sharded.h"
#include "core/encoding.h"
#include "core/strided.h"
#include "engine/shard_dir.h"
#include "io/staged_dir.h"
#include "plan/save_plan.h"

namespace ckpt {
std::string ShardFileName(int rank) { return engine::ShardFileNameImpl(rank); }

namespace engine {

using json = nlohmann::json;

Status CheckLocalState(const StateDict& sd) {
  for (const DistTensor& t : sd.tensors) {
    for (const LocalChunk& c : t.chunks) {
      std::string where = "tensor '" + t.fqn + "'";
      if (c.offsets.size() != t.global_shape.rank() || c.shape.rank() != t.global_shape.rank()) {
        return InvalidArgumentError(where + ": chunk rank differs from the global shape " +
                                    t.global_shape.ToString());
      }
      if (!c.strides.empty() && c.strides.size() != c.shape.rank()) {
        return InvalidArgumentError(where + ": " + std::to_string(c.strides.size()) +
                                    " strides for a rank-" + std::to_string(c.shape.rank()) +
                                    " chunk");
      }
      if (!c.strides.empty() && DTypeBits(t.dtype) % 8 != 0) {
        return InvalidArgumentError(where +
                                    ": strided chunks of sub-byte dtypes are not supported");
      }
      CKPT_ASSIGN_OR_RETURN(uint64_t n, c.shape.NumElements());
      if (n > 0 && c.data == nullptr)
        return InvalidArgumentError(where + ": chunk has no data pointer");
    }
  }
  return Status();
}

namespace {

constexpr uint64_t kGatherPiece = 8ull << 20;

// Calls fn(offset, bytes) over the chunk's bytes in row-major order: one
// call for a contiguous chunk, 8 MiB pieces for a strided one.
template <typename Fn>
Status ForEachPiece(const LocalChunk& c, DType dtype, uint64_t nbytes, Fn fn) {
  if (c.strides.empty()) return fn(0, std::span<const std::byte>(c.data, nbytes));
  const StridedLayout layout{c.shape.dims(), c.strides, DTypeBits(dtype) / 8};
  return ForEachGatheredPiece(layout, c.data, kGatherPiece, fn);
}

}  // namespace

Result<WrittenShard> WriteShardFile(Storage& storage, const std::string& staging,
                                    const std::string& file, const StateDict& sd,
                                    const std::vector<plan::WriteItem>* writes_in,
                                    ChunkSource* source) {
  std::vector<plan::WriteItem> all;
  if (writes_in == nullptr) {
    for (uint32_t t = 0; t < sd.tensors.size(); ++t) {
      for (uint32_t c = 0; c < sd.tensors[t].chunks.size(); ++c) all.push_back({t, c});
    }
  }
  const std::vector<plan::WriteItem>& writes = writes_in == nullptr ? all : *writes_in;
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
  const std::string path = JoinPath(staging, file);
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
          return InternalError("tensor '" + t.fqn + "': the chunk source gave " +
                               std::to_string(piece.size()) + " bytes at offset " +
                               std::to_string(off) + " of " + std::to_string(nbytes));
        }
        XXH64_update(h, piece.data(), piece.size());
        Status wrote = writer->Write(t.fqn, off, piece);
        source->Release();
        CKPT_RETURN_IF_ERROR(wrote);
        off += piece.size();
      }
    } else {
      CKPT_RETURN_IF_ERROR(
          ForEachPiece(c, t.dtype, nbytes, [&](uint64_t off, std::span<const std::byte> piece) {
            XXH64_update(h, piece.data(), piece.size());
            return writer->Write(t.fqn, off, piece);
          }));
    }
    sums[t.fqn] = Hex64(XXH64_digest(h));
  }
  md[std::string(kChunkChecksumKey)] = sums.dump();
  CKPT_RETURN_IF_ERROR(writer->ReplaceMetadata(md));
  // The manifest records a hash of every header as written: the length
  // prefix and the header are the writer's own bytes (Commit checks the
  // file as stored: read back on a filesystem, checksummed requests on an
  // object store), so nothing is read back from the store here.
  WrittenShard out{file, writer->layout().file_size(), HeaderHash(writer->layout().prefix())};
  CKPT_RETURN_IF_ERROR(writer->Commit());
  return out;
}

std::string EncodeExtraState(const StateDict& sd) {
  json j = {{"json", json::object()}, {"bytes", json::object()}};
  for (const auto& [k, v] : sd.json) j["json"][k] = json::parse(v);
  for (const auto& [k, v] : sd.bytes) j["bytes"][k] = Base64Encode(v);
  return j.dump(2) + "\n";
}

Status PublishStagingDir(Storage& storage, const std::string& staging, const std::string& dir,
                         const std::vector<WrittenShard>& shards, int world_size,
                         const StateDict* extra) {
  std::vector<std::string> names, hashes;
  std::vector<uint64_t> sizes;
  for (const WrittenShard& s : shards) {
    names.push_back(s.file);
    sizes.push_back(s.size);
    hashes.push_back(s.header_hash);
  }
  Status published;
  std::optional<std::string> extra_text;
  if (extra != nullptr && (!extra->json.empty() || !extra->bytes.empty())) {
    extra_text = EncodeExtraState(*extra);
    published = WriteFileAtomically(storage, JoinPath(staging, kExtraStateName), *extra_text);
  }
  // The manifest lists every object of the checkpoint: the shards and the
  // extra state (size and XXH64), and is written last.
  if (published.ok()) {
    published = WriteFileAtomically(storage, JoinPath(staging, kManifestName),
                                    ManifestText(names, sizes, hashes, world_size, extra_text));
  }
  // Without rename (object stores) staging is `dir` and the manifest, written
  // last, was the commit.
  if (published.ok() && staging != dir) published = CommitStagingDir(storage, staging, dir);
  if (!published.ok()) RemoveAll(storage, staging).IgnoreError();
  return published;
}

Result<plan::GlobalPlan> AgreeOnSavePlan(Communicator& comm, const StateDict& sd, Timeout timeout) {
  CKPT_ASSIGN_OR_RETURN(std::vector<std::string> compact,
                        comm.AllGather(plan::EncodeChunkPlan(sd), timeout));
  CKPT_ASSIGN_OR_RETURN(std::optional<std::vector<plan::LocalPlan>> shared,
                        plan::DecodeChunkPlans(plan::TensorTable::Of(sd), std::move(compact)));
  if (shared) return plan::BuildGlobalPlan(*shared);
  // Some rank holds other tensors (or malformed chunks): every rank takes
  // this branch, and the full plans say how they differ.
  CKPT_ASSIGN_OR_RETURN(std::vector<std::string> full,
                        comm.AllGather(plan::EncodeLocalPlan(sd), timeout));
  std::vector<plan::LocalPlan> plans;
  plans.reserve(full.size());
  for (std::string& e : full) {
    CKPT_ASSIGN_OR_RETURN(plan::LocalPlan p, plan::DecodeLocalPlan(std::move(e)));
    plans.push_back(std::move(p));
  }
  return plan::BuildGlobalPlan(plans);
}

}  // namespace engine

namespace {

Status SaveShardedImpl(Communicator& comm, Storage& storage, const std::string& dir,
                       const StateDict& sd, const SaveOptions& options) {
  const Timeout to = options.timeout;
  const std::string what = "saving " + dir;
  Status local = engine::CheckLocalState(sd);
  for (const auto& [k, v] : sd.json) {
    if (!local.ok()) break;
    if (!nlohmann::json::accept(v))
      local = InvalidArgumentError("json entry '" + k + "' is not valid JSON");
  }
  CKPT_RETURN_IF_ERROR(comm.AgreeOnStatus(local, to).WithContext(what));

  Result<plan::GlobalPlan> global = engine::AgreeOnSavePlan(comm, sd, to);
  if (!global.ok()) return global.status().WithContext(what);

  Result<std::string> staging_dir = engine::CreateStagingDir(comm, storage, dir, to);
  if (!staging_dir.ok()) return staging_dir.status().WithContext(what);
  const std::string& staging = *staging_dir;

  const std::vector<plan::WriteItem>& mine = global->writes[static_cast<size_t>(comm.rank())];
  engine::WrittenShard shard;
  Status wrote;
  if (!mine.empty()) {
    Result<engine::WrittenShard> w = engine::WriteShardFile(
        storage, staging, ShardFileName(comm.rank()), sd, &mine, options.source);
    wrote = w.status();
    if (w.ok()) shard = std::move(*w);
  }
  Status agreed = comm.AgreeOnStatus(wrote, to);
  Result<std::vector<std::string>> files =
      agreed.ok()
          ? comm.AllGather(
                shard.file + "\n" + std::to_string(shard.size) + "\n" + shard.header_hash, to)
          : agreed;
  Status published = files.status();
  if (comm.rank() == 0) {
    if (published.ok()) {
      std::vector<engine::WrittenShard> shards;
      for (const std::string& f : *files) {
        const size_t nl = f.find('\n'), nl2 = f.find('\n', nl + 1);
        if (nl == 0) continue;  // a rank that wrote nothing
        shards.push_back(
            {f.substr(0, nl), std::stoull(f.substr(nl + 1, nl2 - nl - 1)), f.substr(nl2 + 1)});
      }
      published = engine::PublishStagingDir(storage, staging, dir, shards, comm.size(), &sd);
    } else {
      RemoveAll(storage, staging).IgnoreError();
    }
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
