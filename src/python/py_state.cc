// State dicts from Python descriptions, and the steps of a sharded save that
// the torch.distributed.checkpoint plugin runs under DCP's own coordination.

#include "engine/dcp_dir.h"
#include "engine/shard_dir.h"
#include "engine/sharded_save.h"
#include "python/common.h"

namespace ckpt::python {

Owned BuildStateDict(const TensorList& tensors, const JsonMap& json, const nb::dict& bytes) {
  Owned out;
  out.sd.tensors.reserve(tensors.size());
  for (const auto& [fqn, dtype_name, global, chunks] : tensors) {
    Result<DType> dtype = ParseDType(dtype_name);
    if (!dtype.ok()) throw StatusException{dtype.status().WithContext("tensor '" + fqn + "'")};
    DistTensor t{fqn, *dtype, Shape(global), {}};
    t.chunks.reserve(chunks.size());
    for (const auto& [offsets, shape, ptr, strides] : chunks) {
      t.chunks.push_back(LocalChunk{offsets, Shape(shape), reinterpret_cast<std::byte*>(ptr),
                                    strides ? *strides : std::vector<int64_t>{}});
    }
    out.sd.tensors.push_back(std::move(t));
  }
  out.sd.json = json;
  for (auto [k, v] : bytes) {
    nb::bytes b = nb::cast<nb::bytes>(v);
    const auto* p = reinterpret_cast<const std::byte*>(b.c_str());
    out.sd.bytes[nb::cast<std::string>(k)] = std::vector<std::byte>(p, p + b.size());
  }
  return out;
}

void BindDcpSteps(nb::module_& m) {
  m.def(
      "create_staging_dir",
      [](const std::string& dir, const std::string& token) {
        std::string staging;
        Released([&]() -> Status {
          CKPT_ASSIGN_OR_RETURN(staging, engine::CreateStagingDir(*PosixStorage(), dir, token));
          return Status();
        });
        return staging;
      },
      nb::arg("dir"), nb::arg("token") = "",
      "Refuses an existing `dir`; removes staging left by earlier saves to it; creates and returns "
      "the hidden "
      "staging directory beside it (named by `token`, 16 hex digits, when given).");
  m.def(
      "write_shard_file",
      [](const std::string& staging, const std::string& file, const TensorList& tensors) {
        Owned owned = BuildStateDict(tensors, {}, nb::dict());
        engine::WrittenShard shard;
        Released([&]() -> Status {
          CKPT_RETURN_IF_ERROR(engine::CheckLocalState(owned.sd));
          CKPT_ASSIGN_OR_RETURN(shard, engine::WriteShardFile(*PosixStorage(), staging, file,
                                                              owned.sd, nullptr, nullptr));
          return Status();
        });
        return std::make_tuple(shard.file, shard.size, shard.header_hash);
      },
      nb::arg("staging"), nb::arg("file"), nb::arg("tensors"),
      "Writes every described chunk into one shard file, durably; returns (file, size, header "
      "hash).");
  m.def(
      "publish_staging_dir",
      [](const std::string& staging, const std::string& dir,
         const std::vector<std::tuple<std::string, uint64_t, std::string>>& shards, int world_size,
         const JsonMap& json, const nb::dict& bytes) {
        Owned extra = BuildStateDict({}, json, bytes);
        std::vector<engine::WrittenShard> written;
        for (const auto& [file, size, hash] : shards) written.push_back({file, size, hash});
        Released([&] {
          return engine::PublishStagingDir(*PosixStorage(), staging, dir, written, world_size,
                                           &extra.sd);
        });
      },
      nb::arg("staging"), nb::arg("dir"), nb::arg("shards"), nb::arg("world_size"), nb::arg("json"),
      nb::arg("bytes"),
      "Writes the manifest and extra state, then renames the staging directory to `dir`.");
  // DCP's own format (FileSystemWriter layout): each rank writes its
  // torch.save'd chunks and objects into one data file; the coordinator
  // writes .metadata and publishes.
  m.def(
      "write_dcp_data_file",
      [](const std::string& staging, const std::string& file, const std::vector<nb::bytes>& blobs) {
        std::vector<std::string_view> views;
        for (const nb::bytes& b : blobs) views.emplace_back(b.c_str(), b.size());
        std::vector<std::pair<uint64_t, uint64_t>> ranges;
        Released([&]() -> Status {
          CKPT_ASSIGN_OR_RETURN(ranges,
                                engine::WriteDcpDataFile(*PosixStorage(), staging, file, views));
          return Status();
        });
        return ranges;
      },
      nb::arg("staging"), nb::arg("file"), nb::arg("blobs"),
      "Writes the blobs back to back into a new file, durably; returns each one's (offset, "
      "length).");
  using DcpChunkDesc =
      std::tuple<std::vector<uint64_t>, std::vector<uint64_t>, std::string, uint64_t, uint64_t>;
  using DcpTensorDesc =
      std::tuple<std::string, std::string, std::vector<uint64_t>, std::vector<DcpChunkDesc>>;
  using DcpBytesDesc = std::tuple<std::string, std::string, uint64_t, uint64_t>;
  m.def(
      "publish_dcp_dir",
      [](const std::string& staging, const std::string& dir,
         const std::vector<DcpTensorDesc>& tensors, const std::vector<DcpBytesDesc>& bytes) {
        DcpMetadata meta;
        for (const auto& [fqn, dtype_name, size, chunks] : tensors) {
          Result<DType> dtype = ParseDType(dtype_name);
          if (!dtype.ok())
            throw StatusException{dtype.status().WithContext("tensor '" + fqn + "'")};
          DcpTensor& t = meta.tensors[fqn];
          t.dtype = *dtype;
          t.size = size;
          for (const auto& [offsets, sizes, file, offset, length] : chunks) {
            t.chunks.push_back(DcpChunk{offsets, sizes, DcpStorageInfo{file, offset, length}});
          }
        }
        for (const auto& [fqn, file, offset, length] : bytes)
          meta.bytes[fqn] = DcpStorageInfo{file, offset, length};
        Released([&] { return engine::PublishDcpDir(*PosixStorage(), staging, dir, meta); });
      },
      nb::arg("staging"), nb::arg("dir"), nb::arg("tensors"), nb::arg("bytes"),
      "Writes .metadata for (fqn, dtype, size, [(offsets, sizes, file, offset, length)]) tensors "
      "and (fqn, file, "
      "offset, length) byte entries, then renames the staging directory to `dir`.");
  m.def(
      "remove_all",
      [](const std::string& path) { Released([&] { return RemoveAll(*PosixStorage(), path); }); },
      nb::arg("path"));
}

}  // namespace ckpt::python
