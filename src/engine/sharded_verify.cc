#include <xxhash.h>

#include <algorithm>
#include <unordered_map>

#include "ckpt/hf.h"
#include "ckpt/sharded.h"
#include "core/encoding.h"
#include "engine/dcp_dir.h"
#include "engine/shard_dir.h"
#include "format/json_util.h"

namespace ckpt {

Result<ShardedCheckpointInfo> ReadShardedCheckpoint(Storage& storage, const std::string& dir) {
  CKPT_ASSIGN_OR_RETURN(bool dcp, engine::IsDcpDir(storage, dir));
  if (dcp) {
    CKPT_ASSIGN_OR_RETURN(engine::SavedCheckpoint c, engine::ReadDcpCheckpoint(storage, dir));
    ShardedCheckpointInfo info;
    info.files = c.listing.files;
    for (const auto& [fqn, t] : c.index.tensors()) {
      ShardedTensorInfo ti{fqn, t.dtype, t.global, {}};
      for (const plan::SavedChunk& ch : t.chunks)
        ti.chunks.push_back({c.listing.files[ch.file], ch.box.offsets, ch.box.sizes, ""});
      info.tensors.push_back(std::move(ti));
    }
    return info;
  }
  CKPT_ASSIGN_OR_RETURN(engine::ShardListing listing, engine::ListShardDir(storage, dir));
  CKPT_RETURN_IF_ERROR(engine::CheckManifest(listing, dir));
  ShardedCheckpointInfo info;
  info.files = listing.files;
  info.has_manifest = listing.manifest.has_value();
  plan::SavedIndex index;
  // fqn → file → checksum
  std::map<std::pair<std::string, uint32_t>, std::string> sums;
  std::vector<std::string> prefixes;
  for (const std::string& f : listing.files) {
    CKPT_ASSIGN_OR_RETURN(std::string prefix, engine::ReadHeaderPrefix(storage, JoinPath(dir, f)));
    prefixes.push_back(std::move(prefix));
  }
  CKPT_RETURN_IF_ERROR(engine::CheckHeaderHashes(listing, dir, prefixes));
  for (size_t i = 0; i < listing.files.size(); ++i) {
    const std::string path = JoinPath(dir, listing.files[i]);
    const std::string& prefix = prefixes[i];
    CKPT_ASSIGN_OR_RETURN(SafetensorsHeader h,
                          SafetensorsHeader::ParsePrefix(
                              std::as_bytes(std::span<const char>(prefix.data(), prefix.size())),
                              listing.sizes[i], path));
    if (h.metadata().count(std::string(kDcpShardingInfoKey))) info.has_sharding_info = true;
    CKPT_RETURN_IF_ERROR(engine::IndexShard(h, static_cast<uint32_t>(i), path, &index, &listing));
    auto it = h.metadata().find(std::string(kChunkChecksumKey));
    if (it != h.metadata().end()) {
      CKPT_ASSIGN_OR_RETURN(
          nlohmann::json j,
          ParseStrictJson(it->second, path + ": " + std::string(kChunkChecksumKey), 4));
      for (const TensorInfo& t : h.tensors()) {
        auto s = j.find(t.name);
        if (s == j.end() || !s->is_string() || s->get<std::string>().size() != 16) {
          return DataLossError(path + ": tensor '" + t.name + "' has no valid checksum in " +
                               std::string(kChunkChecksumKey));
        }
        sums[{t.name, static_cast<uint32_t>(i)}] = s->get<std::string>();
      }
    }
  }
  CKPT_RETURN_IF_ERROR(index.Finalize());
  for (const auto& [fqn, t] : index.tensors()) {
    ShardedTensorInfo ti{fqn, t.dtype, t.global, {}};
    for (const plan::SavedChunk& c : t.chunks) {
      auto s = sums.find({fqn, c.file});
      ti.chunks.push_back(
          {listing.files[c.file], c.box.offsets, c.box.sizes, s == sums.end() ? "" : s->second});
    }
    info.tensors.push_back(std::move(ti));
  }
  return info;
}

Status VerifyShardedCheckpoint(Storage& storage, const std::string& dir) {
  CKPT_ASSIGN_OR_RETURN(bool dcp, engine::IsDcpDir(storage, dir));
  if (dcp) return engine::VerifyDcpDir(storage, dir);
  CKPT_ASSIGN_OR_RETURN(ShardedCheckpointInfo info, ReadShardedCheckpoint(storage, dir));
  // The side files the manifest covers: what consolidation will read.
  CKPT_ASSIGN_OR_RETURN(engine::ShardListing listing, engine::ListShardDir(storage, dir));
  for (const auto& [name, size] : listing.side_files) {
    CKPT_ASSIGN_OR_RETURN(std::optional<std::string> want,
                          engine::ManifestSideFileHash(listing, dir, name));
    if (!want) break;
    CKPT_ASSIGN_OR_RETURN(std::string bytes,
                          ReadFileToString(storage, JoinPath(JoinPath(dir, kHfMetadataDir), name)));
    CKPT_RETURN_IF_ERROR(engine::CheckSideFile(listing, dir, name, bytes));
  }
  // The chunks of each file, gathered once: the work is files + chunks.
  std::unordered_map<std::string_view,
                     std::vector<std::pair<const ShardedTensorInfo*, const ShardedChunkInfo*>>>
      by_file;
  for (const ShardedTensorInfo& t : info.tensors) {
    for (const ShardedChunkInfo& c : t.chunks) {
      if (!c.checksum.empty()) by_file[c.file].emplace_back(&t, &c);
    }
  }
  std::vector<std::byte> buf;
  for (size_t i = 0; i < info.files.size(); ++i) {
    const std::string path = JoinPath(dir, info.files[i]);
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::Open(storage, path));
    CKPT_RETURN_IF_ERROR(f->ReadAllData());
    auto chunks = by_file.find(info.files[i]);
    if (chunks == by_file.end()) continue;
    for (const auto& [t, c] : chunks->second) {
      const TensorInfo* ti = f->header().Find(t->fqn);
      if (ti == nullptr)
        return InternalError(path + ": tensor '" + t->fqn + "' vanished from the header");
      XXH64_state_t* h = XXH64_createState();
      std::unique_ptr<XXH64_state_t, decltype(&XXH64_freeState)> guard(h, &XXH64_freeState);
      XXH64_reset(h, 0);
      buf.resize(std::min<uint64_t>(ti->nbytes(), 8ull << 20));
      for (uint64_t off = 0; off < ti->nbytes(); off += buf.size()) {
        uint64_t n = std::min<uint64_t>(buf.size(), ti->nbytes() - off);
        CKPT_RETURN_IF_ERROR(f->ReadRange(t->fqn, off, std::span(buf).first(n)));
        XXH64_update(h, buf.data(), n);
      }
      const std::string hex = Hex64(XXH64_digest(h));
      if (c->checksum != hex) {
        return DataLossError(path + ": tensor '" + t->fqn + "' bytes [" +
                             std::to_string(f->header().data_offset() + ti->begin) + ", " +
                             std::to_string(f->header().data_offset() + ti->end) + "): checksum " +
                             hex + " does not match the recorded " + c->checksum);
      }
    }
  }
  return Status();
}

}  // namespace ckpt
