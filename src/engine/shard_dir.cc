#include "engine/shard_dir.h"

#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <unordered_map>
#include <unordered_set>

#include "ckpt/hf.h"
#include "ckpt/sharded.h"
#include "ckpt/version.h"
#include "core/encoding.h"
#include "format/json_util.h"
#include "io/staged_dir.h"
#include "plan/codec.h"

namespace ckpt::engine {

using json = nlohmann::json;

namespace {
bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}
}  // namespace

std::string ShardFileNameImpl(int rank) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "shard-%05d-model-00001-of-00001.safetensors", rank + 1);
  return buf;
}

namespace {
Status Uncommitted(const std::string& dir) {
  return NotFoundError(dir + ": no " + std::string(kManifestName) + " or " +
                       std::string(kHfIndexName) +
                       " (its commit object): the save that wrote it never committed");
}
bool IsCommitObject(std::string_view name) {
  return name == kManifestName || name == kHfIndexName || name == kDiffusersIndexName;
}
}  // namespace

Status CheckCommitted(Storage& storage, const std::string& dir) {
  if (storage.CanRename()) return Status();
  for (std::string_view name : {kManifestName, kHfIndexName, kDiffusersIndexName}) {
    CKPT_ASSIGN_OR_RETURN(bool there, Exists(storage, JoinPath(dir, name)));
    if (there) return Status();
  }
  return Uncommitted(dir);
}

Result<ShardListing> ListShardDir(Storage& storage, const std::string& dir) {
  CKPT_ASSIGN_OR_RETURN(std::vector<DirEntry> entries, storage.List(dir));
  if (!storage.CanRename() && std::none_of(entries.begin(), entries.end(), [](const DirEntry& e) {
        return e.type == EntryType::kFile && IsCommitObject(e.name);
      })) {
    return Uncommitted(dir);
  }
  ShardListing l;
  for (const DirEntry& e : entries) {
    if (e.type != EntryType::kFile || e.name.empty() || e.name[0] == '.') continue;
    if (EndsWith(e.name, ".safetensors")) {
      l.files.push_back(e.name);
      l.sizes.push_back(e.size);
    } else if (e.name == kManifestName) {
      CKPT_ASSIGN_OR_RETURN(std::string text, ReadFileToString(storage, JoinPath(dir, e.name)));
      l.manifest = std::move(text);
    } else if (e.name == kExtraStateName) {
      l.has_extra_state = true;
    }
  }
  if (auto meta = std::find_if(entries.begin(), entries.end(),
                               [](const DirEntry& e) { return e.name == kHfMetadataDir; });
      meta != entries.end()) {
    const std::string side = JoinPath(dir, kHfMetadataDir);
    Result<std::string> link = storage.ReadLink(side);
    if (link.ok() || meta->type != EntryType::kDirectory) {
      l.side_files[""] = UINT64_MAX;  // the directory itself is not a plain directory
    } else {
      // Unreadable: only an error when the manifest covers side files.
      Result<std::vector<DirEntry>> sides = storage.List(side);
      if (!sides.ok()) l.side_files[""] = UINT64_MAX;
      for (const DirEntry& e : sides.ok() ? *sides : std::vector<DirEntry>()) {
        const bool plain =
            e.type == EntryType::kFile && !storage.ReadLink(JoinPath(side, e.name)).ok();
        l.side_files[e.name] = plain ? e.size : UINT64_MAX;
      }
    }
  }
  // A Hugging Face directory with an index: exactly the files it names.
  for (std::string_view name : {kHfIndexName, kDiffusersIndexName}) {
    if (std::find_if(entries.begin(), entries.end(),
                     [&](const DirEntry& e) { return e.name == name; }) == entries.end()) {
      continue;
    }
    const std::string path = JoinPath(dir, name);
    CKPT_ASSIGN_OR_RETURN(std::string text, ReadFileToString(storage, path));
    CKPT_ASSIGN_OR_RETURN(HfIndex index, ParseHfIndex(text, path));
    CKPT_RETURN_IF_ERROR(CheckIndexedShards(index, path));
    std::unordered_map<std::string_view, size_t> present;
    for (size_t i = 0; i < l.files.size(); ++i) present.emplace(l.files[i], i);
    std::unordered_set<std::string_view> taken;
    std::vector<std::string> files;
    std::vector<uint64_t> sizes;
    for (const auto& [tensor, file] : index.weight_map) {
      if (!taken.insert(file).second) continue;
      auto it = present.find(file);
      if (it == present.end()) {
        return NotFoundError(path + ": shard '" + Printable(file) +
                             "' named in weight_map does not exist");
      }
      files.push_back(file);
      sizes.push_back(l.sizes[it->second]);
    }
    l.files = std::move(files);
    l.sizes = std::move(sizes);
    l.weight_map = std::move(index.weight_map);
    l.index_name = std::string(name);
    break;
  }
  if (l.files.empty()) return NotFoundError(dir + ": no .safetensors files");
  return l;
}

// Binary, not JSON: file names are bytes, and a name that is not UTF-8 must
// reach the other ranks exactly as rank 0 listed it.
std::string EncodeListing(const ShardListing& l) {
  plan::Encoder e;
  e.U64(l.files.size());
  for (size_t i = 0; i < l.files.size(); ++i) {
    e.Str(l.files[i]);
    e.U64(l.sizes[i]);
  }
  e.U64(l.manifest ? 1 : 0);
  e.Str(l.manifest.value_or(""));
  e.U64(l.has_extra_state ? 1 : 0);
  e.U64(l.weight_map.size());
  for (const auto& [tensor, file] : l.weight_map) {
    e.Str(tensor);
    e.Str(file);
  }
  e.Str(l.index_name);
  e.U64(l.side_files.size());
  for (const auto& [name, size] : l.side_files) {
    e.Str(name);
    e.U64(size);
  }
  return e.Take();
}

Result<ShardListing> DecodeListing(std::string_view text) {
  plan::Decoder d(text);
  ShardListing l;
  uint64_t n = 0, flag = 0;
  bool ok = d.U64(&n) && n <= text.size();
  for (uint64_t i = 0; ok && i < n; ++i) {
    std::string f;
    uint64_t size = 0;
    ok = d.Str(&f) && d.U64(&size);
    l.files.push_back(std::move(f));
    l.sizes.push_back(size);
  }
  std::string manifest;
  ok = ok && d.U64(&flag) && d.Str(&manifest);
  if (ok && flag) l.manifest = std::move(manifest);
  ok = ok && d.U64(&flag);
  l.has_extra_state = flag != 0;
  ok = ok && d.U64(&n) && n <= text.size();
  for (uint64_t i = 0; ok && i < n; ++i) {
    std::string tensor, file;
    ok = d.Str(&tensor) && d.Str(&file);
    l.weight_map.emplace(std::move(tensor), std::move(file));
  }
  ok = ok && d.Str(&l.index_name) && d.U64(&n) && n <= text.size();
  for (uint64_t i = 0; ok && i < n; ++i) {
    std::string name;
    uint64_t size = 0;
    ok = d.Str(&name) && d.U64(&size);
    l.side_files.emplace(std::move(name), size);
  }
  ok = ok && d.done();
  if (!ok)
    return InternalError("malformed directory listing (" + std::to_string(text.size()) + " bytes)");
  return l;
}

Status CheckManifest(const ShardListing& l, const std::string& dir) {
  if (!l.manifest) return Status();
  const std::string src = JoinPath(dir, kManifestName);
  CKPT_ASSIGN_OR_RETURN(json m, ParseStrictJson(*l.manifest, src, 8));
  auto files = m.find("files");
  if (!m.is_object() || files == m.end() || !files->is_object()) {
    return DataLossError(src + ": missing \"files\" object");
  }
  std::unordered_map<std::string_view, size_t> present;
  for (size_t i = 0; i < l.files.size(); ++i) present.emplace(l.files[i], i);
  for (const auto& [name, size] : files->items()) {
    auto it = present.find(name);
    if (it == present.end()) {
      return DataLossError(src + ": shard '" + Printable(name) + "' is missing from " + dir);
    }
    uint64_t actual = l.sizes[it->second];
    if (!size.is_number_unsigned() || size.get<uint64_t>() != actual) {
      return DataLossError(src + ": shard '" + name + "' is " + std::to_string(actual) +
                           " bytes but the manifest records " + size.dump());
    }
  }
  for (const std::string& f : l.files) {
    if (!files->contains(f)) {
      return DataLossError(dir + ": file '" + Printable(f) +
                           "' is not part of the checkpoint's manifest");
    }
  }
  if (auto extra = m.find("extra_state");
      extra != m.end()) {  // absent: written before it was covered
    const std::string path = JoinPath(dir, kExtraStateName);
    if (extra->is_null() && l.has_extra_state) {
      return DataLossError(path +
                           ": not part of the checkpoint's manifest (it records no extra state)");
    }
    if (!extra->is_null() && !l.has_extra_state) {
      return DataLossError(src + ": extra state '" + std::string(kExtraStateName) +
                           "' is missing from " + dir);
    }
  }
  auto sides = m.find("hf_metadata");
  if (sides == m.end()) return Status();  // written before side files were covered
  if (!sides->is_object()) return DataLossError(src + ": \"hf_metadata\" is not an object");
  const std::string side_dir = JoinPath(dir, kHfMetadataDir);
  for (const auto& [name, entry] : sides->items()) {
    auto it = l.side_files.find(name);
    if (it == l.side_files.end()) {
      return DataLossError(src + ": side file '" + Printable(name) + "' is missing from " +
                           side_dir);
    }
    auto size = entry.is_object() ? entry.find("size") : entry.end();
    if (it->second == UINT64_MAX) {
      return DataLossError(JoinPath(side_dir, name) +
                           ": not a regular file (a link or a special file)");
    }
    if (size == entry.end() || !size->is_number_unsigned() || size->get<uint64_t>() != it->second) {
      return DataLossError(src + ": side file '" + Printable(name) + "' is " +
                           std::to_string(it->second) + " bytes but the manifest records " +
                           entry.dump());
    }
  }
  for (const auto& [name, size] : l.side_files) {
    if (name.empty())
      return DataLossError(side_dir + ": not a plain directory (a link or a special file)");
    if (!sides->contains(name)) {
      return DataLossError(side_dir + ": file '" + Printable(name) +
                           "' is not part of the checkpoint's manifest");
    }
  }
  return Status();
}

Status CheckExtraState(const std::optional<std::string>& manifest, const std::string& dir,
                       const std::optional<std::string_view>& bytes) {
  if (!manifest) return Status();
  const std::string src = JoinPath(dir, kManifestName);
  CKPT_ASSIGN_OR_RETURN(json m, ParseStrictJson(*manifest, src, 8));
  auto entry = m.find("extra_state");
  if (entry == m.end()) return Status();  // written before the extra state was covered
  const std::string path = JoinPath(dir, kExtraStateName);
  if (entry->is_null()) {
    if (bytes)
      return DataLossError(path +
                           ": not part of the checkpoint's manifest (it records no extra state)");
    return Status();
  }
  auto size = entry->is_object() ? entry->find("size") : entry->end();
  auto hash = entry->is_object() ? entry->find("xxh64") : entry->end();
  if (size == entry->end() || !size->is_number_unsigned() || hash == entry->end() ||
      !hash->is_string()) {
    return DataLossError(src +
                         ": \"extra_state\" is not {\"size\": <bytes>, \"xxh64\": <hex>} but " +
                         entry->dump());
  }
  if (!bytes)
    return DataLossError(src + ": extra state '" + std::string(kExtraStateName) +
                         "' is missing from " + dir);
  if (bytes->size() != size->get<uint64_t>()) {
    return DataLossError(path + ": " + std::to_string(bytes->size()) +
                         " bytes but the manifest records " + size->dump());
  }
  const std::string got = HeaderHash(*bytes);
  if (got != hash->get<std::string>()) {
    return DataLossError(path + ": its bytes hash to " + got + " but the manifest records " +
                         hash->dump() + " (the file was changed after it was written)");
  }
  return Status();
}

Result<std::optional<std::string>> ManifestSideFileHash(const ShardListing& l,
                                                        const std::string& dir,
                                                        const std::string& name) {
  if (!l.manifest) return std::optional<std::string>();
  const std::string src = JoinPath(dir, kManifestName);
  CKPT_ASSIGN_OR_RETURN(json m, ParseStrictJson(*l.manifest, src, 8));
  auto sides = m.find("hf_metadata");
  if (sides == m.end() || !sides->is_object()) return std::optional<std::string>();
  auto entry = sides->find(name);
  auto hash = entry != sides->end() && entry->is_object() ? entry->find("xxh64") : sides->end();
  if (entry == sides->end() || hash == entry->end() || !hash->is_string()) {
    return DataLossError(src + ": side file '" + Printable(name) + "' has no recorded xxh64");
  }
  return std::optional<std::string>(hash->get<std::string>());
}

Status CheckSideFile(const ShardListing& l, const std::string& dir, const std::string& name,
                     std::string_view bytes) {
  CKPT_ASSIGN_OR_RETURN(std::optional<std::string> want, ManifestSideFileHash(l, dir, name));
  if (!want) return Status();
  const std::string got = HeaderHash(bytes);
  if (got != *want) {
    return DataLossError(JoinPath(JoinPath(dir, kHfMetadataDir), name) + ": " +
                         std::to_string(bytes.size()) + " bytes hash to " + got +
                         " but the manifest records " + *want +
                         " (the file was changed after it was written)");
  }
  return Status();
}

Status AddSideFilesToManifest(Storage& storage, const std::string& dir) {
  const std::string path = JoinPath(dir, kManifestName);
  CKPT_ASSIGN_OR_RETURN(std::string text, ReadFileToString(storage, path));
  CKPT_ASSIGN_OR_RETURN(json m, ParseStrictJson(text, path, 8));
  const std::string side_dir = JoinPath(dir, kHfMetadataDir);
  json sides = json::object();
  CKPT_ASSIGN_OR_RETURN(std::vector<DirEntry> entries, storage.List(side_dir));
  for (const DirEntry& e : entries) {
    if (e.type != EntryType::kFile) continue;
    CKPT_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(storage, JoinPath(side_dir, e.name)));
    sides[e.name] = {{"size", bytes.size()}, {"xxh64", HeaderHash(bytes)}};
  }
  m["hf_metadata"] = std::move(sides);
  return WriteFileAtomically(storage, path, m.dump(2) + "\n");
}

Result<std::string> ReadHeaderPrefix(Storage& storage, const std::string& path) {
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> f, storage.OpenRead(path));
  const uint64_t size = f->Size();
  std::string out(std::min<uint64_t>(size, 8), '\0');
  auto bytes = [&](size_t from) {
    return std::as_writable_bytes(std::span<char>(out.data() + from, out.size() - from));
  };
  CKPT_RETURN_IF_ERROR(f->ReadAt(0, bytes(0)));
  if (size >= 8) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(out[static_cast<size_t>(i)]);
    if (n <= kSafetensorsMaxHeaderSize && n <= size - 8) {
      out.resize(8 + n);
      CKPT_RETURN_IF_ERROR(f->ReadAt(8, bytes(8)));
    }
  }
  return out;
}

Status IndexShard(const SafetensorsHeader& header, uint32_t file, const std::string& path,
                  plan::SavedIndex* index, const ShardListing* listing) {
  json info = json::object();
  auto it = header.metadata().find(std::string(kDcpShardingInfoKey));
  if (it != header.metadata().end()) {
    CKPT_ASSIGN_OR_RETURN(
        info, ParseStrictJson(it->second, path + ": " + std::string(kDcpShardingInfoKey), 8));
    if (!info.is_object()) return DataLossError(path + ": DCP_SHARDING_INFO is not a JSON object");
  }
  json sums = json::object();
  if (auto s = header.metadata().find(std::string(kChunkChecksumKey));
      s != header.metadata().end()) {
    CKPT_ASSIGN_OR_RETURN(
        sums, ParseStrictJson(s->second, path + ": " + std::string(kChunkChecksumKey), 4));
    if (!sums.is_object())
      return DataLossError(path + ": " + std::string(kChunkChecksumKey) + " is not a JSON object");
  }
  for (const TensorInfo& t : header.tensors()) {
    if (listing != nullptr && !listing->weight_map.empty()) {
      // Through an index, a shard holds only the tensors mapped to it; any
      // other (a stale copy) is ignored, as by every Hugging Face loader.
      auto m = listing->weight_map.find(t.name);
      if (m == listing->weight_map.end() || m->second != listing->files[file]) continue;
    }
    plan::SavedChunk c;
    c.file = file;
    c.box.sizes = t.shape.dims();
    c.box.offsets.assign(t.shape.rank(), 0);
    c.data_offset = header.data_offset() + t.begin;
    if (auto e = info.find(t.name); e != info.end()) {
      auto offs = e->is_object() ? e->find("saved_offsets") : e->end();
      if (offs == e->end() || !offs->is_array() || offs->size() != t.shape.rank()) {
        return DataLossError(path + ": tensor '" + t.name + "': DCP_SHARDING_INFO needs " +
                             std::to_string(t.shape.rank()) + " saved_offsets, got " +
                             (e->is_object() && offs != e->end() ? offs->dump() : e->dump()));
      }
      for (size_t d = 0; d < t.shape.rank(); ++d) {
        if (!(*offs)[d].is_number_unsigned()) {
          return DataLossError(path + ": tensor '" + t.name + "': saved_offsets " + offs->dump() +
                               " must be non-negative integers");
        }
        c.box.offsets[d] = (*offs)[d].get<uint64_t>();
      }
    }
    if (auto h = sums.find(t.name); h != sums.end()) {
      const std::string hex = h->is_string() ? h->get<std::string>() : "";
      uint64_t v = 0;
      bool ok = hex.size() == 16;
      for (char ch : hex) {
        const int d = ch >= '0' && ch <= '9'   ? ch - '0'
                      : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                                               : -1;
        if (d < 0) ok = false;
        v = v << 4 | static_cast<uint64_t>(d < 0 ? 0 : d);
      }
      if (!ok) {
        return DataLossError(path + ": tensor '" + t.name + "': checksum " + h->dump() +
                             " is not 16 hex digits");
      }
      c.has_checksum = true;
      c.checksum = v;
    }
    CKPT_RETURN_IF_ERROR(index->Add(t.name, t.dtype, std::move(c), path));
  }
  return Status();
}

Result<SavedCheckpoint> ReadCheckpointCollective(Communicator& comm, Storage& storage,
                                                 const std::string& dir, Timeout to) {
  const std::string what = "reading " + dir;
  std::string listing_text;
  Status listed;
  if (comm.rank() == 0) {
    Result<ShardListing> l = ListShardDir(storage, dir);
    listed = l.status();
    if (l.ok()) listing_text = EncodeListing(*l);
  }
  CKPT_RETURN_IF_ERROR(comm.AgreeOnStatus(listed, to).WithContext(what));
  CKPT_RETURN_IF_ERROR(comm.Broadcast(0, &listing_text, to));
  SavedCheckpoint out;
  CKPT_ASSIGN_OR_RETURN(out.listing, DecodeListing(listing_text));
  const ShardListing& listing = out.listing;
  CKPT_RETURN_IF_ERROR(CheckManifest(listing, dir).WithContext(what));

  // Each header is read by one rank, then shared.
  plan::Encoder mine;
  Status read_ok;
  for (size_t i = static_cast<size_t>(comm.rank()); i < listing.files.size();
       i += static_cast<size_t>(comm.size())) {
    Result<std::string> prefix = ReadHeaderPrefix(storage, JoinPath(dir, listing.files[i]));
    if (!prefix.ok()) {
      read_ok = prefix.status();
      break;
    }
    mine.U64(i);
    mine.Str(*prefix);
  }
  CKPT_RETURN_IF_ERROR(comm.AgreeOnStatus(read_ok, to).WithContext(what));
  CKPT_ASSIGN_OR_RETURN(std::vector<std::string> gathered, comm.AllGather(mine.Take(), to));
  std::vector<std::string> prefixes(listing.files.size());
  for (const std::string& g : gathered) {
    plan::Decoder d(g);
    uint64_t i;
    std::string p;
    while (d.U64(&i) && d.Str(&p)) {
      if (i < prefixes.size()) prefixes[i] = std::move(p);
    }
  }
  Status indexed = CheckHeaderHashes(listing, dir, prefixes);
  for (size_t i = 0; i < listing.files.size() && indexed.ok(); ++i) {
    const std::string path = JoinPath(dir, listing.files[i]);
    Result<SafetensorsHeader> h = SafetensorsHeader::ParsePrefix(
        std::as_bytes(std::span<const char>(prefixes[i].data(), prefixes[i].size())),
        listing.sizes[i], path);
    indexed =
        h.ok() ? IndexShard(*h, static_cast<uint32_t>(i), path, &out.index, &listing) : h.status();
  }
  if (indexed.ok()) indexed = out.index.Finalize();
  // Every tensor of an HF index must be in the file it names.
  for (const auto& entry : listing.weight_map) {
    if (!indexed.ok()) break;
    const std::string& tensor = entry.first;
    const std::string& file = entry.second;
    const plan::SavedTensor* t = out.index.Find(tensor);
    const bool in_file = t != nullptr && std::any_of(t->chunks.begin(), t->chunks.end(),
                                                     [&](const plan::SavedChunk& c) {
                                                       return listing.files[c.file] == file;
                                                     });
    if (!in_file) {
      indexed = DataLossError(JoinPath(dir, listing.index_name) + ": tensor '" + tensor +
                              "' is mapped to '" + file + "' but that shard does not contain it");
    }
  }
  CKPT_RETURN_IF_ERROR(indexed.WithContext(what));
  return out;
}

Result<std::string> CreateStagingDir(Storage& storage, const std::string& dir,
                                     std::string_view given) {
  if (!storage.CanRename()) {
    // No rename: the save writes under `dir` itself and commits by writing
    // the manifest (the index, for a consolidated directory) last. Objects without a manifest are a
    // dead save's, removed by listing.
    const Status committed = CheckCommitted(storage, dir);
    if (committed.ok()) return AlreadyExistsError(dir + " already exists; it is never overwritten");
    if (committed.code() != StatusCode::kNotFound) return committed;
    CKPT_RETURN_IF_ERROR(RemoveAll(storage, dir));
    return dir;
  }
  return ckpt::CreateStagingDir(storage, dir, given);
}

Result<std::string> CreateStagingDir(Communicator& comm, Storage& storage, const std::string& dir,
                                     Timeout to) {
  std::string staging;
  Status prepared;
  if (comm.rank() == 0) {
    Result<std::string> made = engine::CreateStagingDir(storage, dir);
    prepared = made.status();
    if (made.ok()) staging = *made;
  }
  CKPT_RETURN_IF_ERROR(comm.AgreeOnStatus(prepared, to));
  CKPT_RETURN_IF_ERROR(comm.Broadcast(0, &staging, to));
  return staging;
}

std::string ManifestText(const std::vector<std::string>& files, const std::vector<uint64_t>& sizes,
                         const std::vector<std::string>& header_hashes, int world_size,
                         const std::optional<std::string>& extra_state) {
  json f = json::object(), h = json::object();
  for (size_t i = 0; i < files.size(); ++i) {
    f[files[i]] = sizes[i];
    h[files[i]] = header_hashes[i];
  }
  json m = {{"format", "ckpt-sharded"},
            {"version", 1},
            {"writer", std::string("ckpt ") + CKPT_VERSION_STRING},
            {"world_size", world_size},
            {"files", f},
            {"headers", h},
            {"extra_state",
             extra_state ? json{{"size", extra_state->size()}, {"xxh64", HeaderHash(*extra_state)}}
                         : json(nullptr)}};
  return m.dump(2) + "\n";
}

std::string HeaderHash(std::string_view prefix) {
  return Hex64(XXH64(prefix.data(), prefix.size(), 0));
}

Status CheckHeaderHashes(const ShardListing& l, const std::string& dir,
                         const std::vector<std::string>& prefixes) {
  if (!l.manifest) return Status();
  const std::string src = JoinPath(dir, kManifestName);
  CKPT_ASSIGN_OR_RETURN(json m, ParseStrictJson(*l.manifest, src, 8));
  auto headers = m.find("headers");
  if (headers == m.end()) return Status();
  if (!headers->is_object()) return DataLossError(src + ": \"headers\" is not an object");
  for (size_t i = 0; i < l.files.size() && i < prefixes.size(); ++i) {
    auto want = headers->find(l.files[i]);
    if (want == headers->end()) continue;
    const std::string got = HeaderHash(prefixes[i]);
    if (!want->is_string() || want->get<std::string>() != got) {
      return DataLossError(JoinPath(dir, l.files[i]) + ": header bytes [0, " +
                           std::to_string(prefixes[i].size()) + ") hash to " + got +
                           " but the manifest records " + want->dump() +
                           " (the header was changed after it was written)");
    }
  }
  return Status();
}

}  // namespace ckpt::engine
