// Reading the structure of a sharded checkpoint directory: which files it
// has, their headers, the chunks they hold, the manifest. Shared by load,
// verify and the CLI.
#ifndef CKPT_ENGINE_SHARD_DIR_H_
#define CKPT_ENGINE_SHARD_DIR_H_

#include <map>
#include <optional>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "ckpt/comm.h"
#include "ckpt/safetensors.h"
#include "ckpt/storage.h"
#include "plan/load_plan.h"

namespace ckpt::engine {

struct ShardListing {
  std::vector<std::string> files;  // visible *.safetensors, sorted
  std::vector<uint64_t> sizes;
  std::optional<std::string> manifest;  // text of ckpt_manifest.json
  bool has_extra_state = false;
  // For a Hugging Face directory with an index: its weight map (tensor →
  // file). Only the files it names are read, and each must hold its tensors.
  std::map<std::string, std::string> weight_map;
  std::string index_name;
  // Entries of <dir>/.hf_metadata (the export's side files): name → size,
  // UINT64_MAX for anything that is not a regular file (a link, a FIFO).
  std::map<std::string, uint64_t> side_files;
};

Result<ShardListing> ListShardDir(Storage& storage, const std::string& dir);
// On an object store (no rename) a directory is a checkpoint only once its
// commit object exists: the manifest (sharded) or the index (a Hugging Face
// directory), written last. NotFound ("never committed") otherwise; always OK
// on a storage that can rename. ListShardDir applies it too.
Status CheckCommitted(Storage& storage, const std::string& dir);
std::string EncodeListing(const ShardListing& l);
Result<ShardListing> DecodeListing(std::string_view text);

// Checks the manifest against the listing: every file it names exists with
// its recorded size, and no other shard file is present. When the manifest
// has "hf_metadata", the same for the side files in .hf_metadata/.
Status CheckManifest(const ShardListing& l, const std::string& dir);

// The manifest's "extra_state": {"size", "xxh64"} of ckpt_extra_state.json,
// or null when the save wrote none. `bytes` is the file as read (nullopt:
// absent). DataLoss when they disagree; OK for a manifest without the key
// (written before the extra state was covered) or no manifest.
Status CheckExtraState(const std::optional<std::string>& manifest, const std::string& dir,
                       const std::optional<std::string_view>& bytes);

// Side files: the XXH64 the manifest records for .hf_metadata/<name>, or
// nullopt when the manifest does not cover side files.
Result<std::optional<std::string>> ManifestSideFileHash(const ShardListing& l,
                                                        const std::string& dir,
                                                        const std::string& name);
// Compares `bytes`, read from .hf_metadata/<name>, with the manifest.
Status CheckSideFile(const ShardListing& l, const std::string& dir, const std::string& name,
                     std::string_view bytes);
// Rank 0, after writing .hf_metadata/: records every side file's size and
// XXH64 in <dir>/ckpt_manifest.json (replaced atomically).
Status AddSideFilesToManifest(Storage& storage, const std::string& dir);

// The 8-byte length and the header of a safetensors file.
Result<std::string> ReadHeaderPrefix(Storage& storage, const std::string& path);

// Adds the chunks a file holds (its DCP_SHARDING_INFO, or zero offsets when
// it has none) to `index`. With a `listing` that has a weight map, only the
// tensors the map assigns to this file (`listing->files[file]`).
Status IndexShard(const SafetensorsHeader& header, uint32_t file, const std::string& path,
                  plan::SavedIndex* index, const ShardListing* listing = nullptr);

// LoadOptions::key_mapping with every pattern compiled once, for a load
// that renames many keys. Compile names a bad pattern (InvalidArgument).
class KeyMapper {
 public:
  static Result<KeyMapper> Compile(const std::vector<std::pair<std::string, std::string>>& mapping);
  // The first rule that changes `key` decides; unchanged when none does.
  Result<std::string> Apply(const std::string& key) const;

 private:
  struct Rule {
    std::string source;
    std::regex pattern;
    std::string format;  // "\\1" rewritten as "$1"
  };
  std::vector<Rule> rules_;
};

// "shard-00003-model-00001-of-00001.safetensors" for rank 2.
std::string ShardFileNameImpl(int rank);

// A DCP byte entry: `length` bytes at `offset` of listing.files[file].
struct SavedBytesEntry {
  uint32_t file = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
};

// Steps shared by every collective reader of a checkpoint: rank 0 lists the
// directory and broadcasts the listing; each header is read by one rank and
// all-gathered; every rank indexes all chunks and checks that they tile.
struct SavedCheckpoint {
  ShardListing listing;
  plan::SavedIndex index;
  bool dcp = false;                                     // a DCP directory (engine/dcp_dir.h)
  std::map<std::string, SavedBytesEntry> byte_entries;  // DCP only
};
Result<SavedCheckpoint> ReadCheckpointCollective(Communicator& comm, Storage& storage,
                                                 const std::string& dir, Timeout timeout);

// Refuses an existing `dir` and creates the hidden staging directory
// "<parent>/.<name>.tmp-<16 hex digits>" where a new `dir` is assembled
// before being renamed into place, after removing staging directories that
// earlier runs for the same `dir` left behind (one writer per output
// directory). Returns the staging path.
// `token` (16 lowercase hex digits) names it instead of a random one, for
// callers whose ranks must derive the same name without talking.
// On a storage that cannot rename, `dir` itself is returned (after removing
// what an uncommitted save left there) and the manifest, written last, is
// the commit; a `dir` whose manifest exists is AlreadyExists.
Result<std::string> CreateStagingDir(Storage& storage, const std::string& dir,
                                     std::string_view token = {});
// Collective: rank 0 creates it; every rank gets its path or rank 0's error.
Result<std::string> CreateStagingDir(Communicator& comm, Storage& storage, const std::string& dir,
                                     Timeout timeout);

// `header_hashes`: XXH64 of each file's 8-byte length and header, as stored.
// `extra_state`: the bytes of ckpt_extra_state.json, nullopt when none.
std::string ManifestText(const std::vector<std::string>& files, const std::vector<uint64_t>& sizes,
                         const std::vector<std::string>& header_hashes, int world_size,
                         const std::optional<std::string>& extra_state);

// XXH64 (seed 0) of a file's length prefix and header, 16 hex digits.
std::string HeaderHash(std::string_view prefix);

// Compares each file's header with the hash the manifest records for it
// (manifests without "headers" are not checked). `prefixes` by file index.
Status CheckHeaderHashes(const ShardListing& l, const std::string& dir,
                         const std::vector<std::string>& prefixes);

}  // namespace ckpt::engine

#endif  // CKPT_ENGINE_SHARD_DIR_H_
