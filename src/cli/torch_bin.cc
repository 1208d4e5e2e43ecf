// `.bin` (torch.save) support in the CLI: inspect, verify and convert.
#include "ckpt/torch_bin.h"

#include <cstdio>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>

#include "ckpt/consolidate.h"
#include "cli/commands.h"
#include "cli/target.h"

namespace ckpt::cli {
namespace {

using json = nlohmann::json;

std::string StrideText(const std::vector<uint64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

// "0", "0+6" (element offset), "0 stride (1, 4)" for a non-contiguous view.
std::string StorageText(const TorchTensorInfo& t) {
  std::string s = t.storage_key;
  if (t.storage_offset != 0) s += "+" + std::to_string(t.storage_offset);
  if (!t.contiguous) s += " stride " + StrideText(t.stride);
  return s;
}

}  // namespace

bool IsTorchBinTarget(Storage& storage, const std::string& path) {
  Result<DirEntry> st = storage.Stat(path);
  if (!st.ok()) return false;
  if (st->type == EntryType::kDirectory) {
    Result<bool> bin = HasTorchBinWeights(storage, path);
    Result<bool> safe = HasSafetensorsWeights(storage, path);
    return bin.ok() && *bin && safe.ok() && !*safe;
  }
  if (st->type != EntryType::kFile) return false;
  for (std::string_view ext : {".bin", ".pt", ".pth"}) {
    if (path.size() >= ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0)
      return true;
  }
  Result<std::unique_ptr<ReadableFile>> f = storage.OpenRead(path);
  if (!f.ok() || (*f)->Size() < 4) return false;
  char head[4];
  if (!(*f)->ReadAt(0, std::as_writable_bytes(std::span<char>(head, 4))).ok()) return false;
  return std::memcmp(head, "PK\x03\x04", 4) == 0;
}

// The archives of a .bin file or directory, and which tensor lives where.
Result<TorchBinDir> OpenTorchBin(Storage& storage, const std::string& path,
                                 std::unique_ptr<TorchArchive>* single) {
  CKPT_ASSIGN_OR_RETURN(DirEntry st, storage.Stat(path));
  if (st.type == EntryType::kDirectory) return TorchBinDir::Open(storage, path);
  CKPT_ASSIGN_OR_RETURN(*single, TorchArchive::Open(storage, path));
  return TorchBinDir();
}

int InspectTorchBin(const InspectOptions& opts) {
  Storage& storage = *PosixStorage();
  std::unique_ptr<TorchArchive> single;
  Result<TorchBinDir> dir = OpenTorchBin(storage, opts.path, &single);
  if (!dir.ok()) {
    std::fprintf(stderr, "ckpt inspect: %s\n", dir.status().ToString().c_str());
    return 1;
  }
  std::vector<const TorchArchive*> files;
  if (single) {
    files.push_back(single.get());
  } else {
    for (const auto& f : dir->files()) files.push_back(f.get());
  }
  json out = {{"path", opts.path}, {"kind", single ? "torch-bin" : "torch-bin-dir"}};
  json jt = json::array();
  uint64_t total = 0;
  size_t count = 0;
  size_t name_w = 4;
  for (const TorchArchive* f : files) {
    for (const TorchTensorInfo& t : f->tensors()) name_w = std::max(name_w, t.name.size());
  }
  name_w = std::min<size_t>(name_w, 60);
  size_t storage_w = 7;
  for (const TorchArchive* f : files) {
    for (const TorchTensorInfo& t : f->tensors())
      storage_w = std::max(storage_w, StorageText(t).size());
  }
  if (!opts.json) {
    std::printf("%s (torch.save archive%s, %zu file%s)\n", opts.path.c_str(),
                single ? "" : " directory", files.size(), files.size() == 1 ? "" : "s");
    std::printf("  %-*s  %-11s  %-20s  %12s  %-*s  %s\n", static_cast<int>(name_w), "NAME", "DTYPE",
                "SHAPE", "BYTES", static_cast<int>(storage_w), "STORAGE", "FILE");
  }
  json jf = json::array();
  for (const TorchArchive* f : files) {
    const std::string base(Basename(f->path()));
    jf.push_back({{"path", f->path()},
                  {"byteorder", f->big_endian() ? "big" : "little"},
                  {"num_tensors", f->tensors().size()},
                  {"skipped", f->skipped()}});
    for (const TorchTensorInfo& t : f->tensors()) {
      if (!single && (dir->tensors().count(t.name) == 0 ||
                      dir->files()[dir->tensors().at(t.name).file].get() != f)) {
        continue;
      }
      ++count;
      total += t.nbytes;
      jt.push_back({{"name", t.name},
                    {"dtype", std::string(DTypeName(t.dtype))},
                    {"shape", t.shape.dims()},
                    {"bytes", t.nbytes},
                    {"storage", t.storage_key},
                    {"storage_offset", t.storage_offset},
                    {"stride", t.stride},
                    {"contiguous", t.contiguous},
                    {"file", base}});
      if (!opts.json) {
        std::printf("  %-*s  %-11s  %-20s  %12llu  %-*s  %s\n", static_cast<int>(name_w),
                    Shown(t.name).c_str(), std::string(DTypeName(t.dtype)).c_str(),
                    t.shape.ToString().c_str(), static_cast<unsigned long long>(t.nbytes),
                    static_cast<int>(storage_w), StorageText(t).c_str(), Shown(base).c_str());
      }
    }
    if (!opts.json && !f->skipped().empty()) {
      std::printf("not tensors (ignored) in %s:", Shown(base).c_str());
      for (const std::string& s : f->skipped()) std::printf(" %s", Shown(s).c_str());
      std::printf("\n");
    }
  }
  if (opts.json) {
    out["files"] = std::move(jf);
    out["tensors"] = std::move(jt);
    out["num_tensors"] = count;
    out["num_files"] = files.size();
    out["total_bytes"] = total;
    std::cout << out.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
  } else {
    std::printf("total: %zu tensors, %s (%llu bytes) in %zu file%s\n", count,
                HumanBytes(total).c_str(), static_cast<unsigned long long>(total), files.size(),
                files.size() == 1 ? "" : "s");
  }
  return 0;
}

int VerifyTorchBin(const VerifyOptions& opts) {
  Storage& storage = *PosixStorage();
  std::unique_ptr<TorchArchive> single;
  Result<TorchBinDir> dir = OpenTorchBin(storage, opts.path, &single);
  Status s = dir.status();
  size_t tensors = 0;
  uint64_t bytes = 0;
  if (s.ok()) {
    std::vector<const TorchArchive*> files;
    if (single) files.push_back(single.get());
    for (const auto& f : dir->files()) files.push_back(f.get());
    for (const TorchArchive* f : files) {
      if (!opts.quick && s.ok()) s = f->CheckData();
      tensors += f->tensors().size();
      for (const TorchTensorInfo& t : f->tensors()) bytes += t.nbytes;
    }
  }
  if (opts.json) {
    json j = {{"path", opts.path},
              {"valid", s.ok()},
              {"error", s.ok() ? json(nullptr) : json(s.ToString())},
              {"num_tensors", tensors},
              {"total_bytes", bytes}};
    std::cout << j.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
    return s.ok() ? 0 : 1;
  }
  if (!s.ok()) {
    std::fprintf(stderr, "ckpt verify: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("OK %s: %zu tensors, %s (torch.save archive%s)\n", opts.path.c_str(), tensors,
              HumanBytes(bytes).c_str(),
              opts.quick ? ", structure only" : ", CRC-32 of every storage checked");
  return 0;
}

int RunConvertBin(const ConvertOptions& opts) {
  TorchConvertOptions o;
  Result<uint64_t> size = ParseByteSize(opts.max_shard_size);
  if (!size.ok()) {
    std::fprintf(stderr, "ckpt convert: --max-shard-size: %s\n", size.status().ToString().c_str());
    return 1;
  }
  o.max_shard_size = *size;
  TorchConvertStats stats;
  Status s = ConvertTorchBinDir(*PosixStorage(), opts.in, opts.out, o, &stats);
  if (!s.ok()) {
    std::fprintf(stderr, "ckpt convert: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("converted %llu tensors (%s) into %u safetensors file%s in %s; largest buffer %s\n",
              static_cast<unsigned long long>(stats.tensors), HumanBytes(stats.bytes).c_str(),
              stats.files, stats.files == 1 ? "" : "s", opts.out.c_str(),
              HumanBytes(stats.peak_buffer).c_str());
  return 0;
}

}  // namespace ckpt::cli
