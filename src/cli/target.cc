#include "cli/target.h"

#include <algorithm>
#include <cstdio>

#include "format/json_util.h"

namespace ckpt::cli {
namespace {

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

std::string HumanBytes(uint64_t n) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, kUnits[u]);
  return buf;
}

std::string Shown(std::string_view text) {
  if (FindInvalidUtf8(text) != std::string_view::npos) return Printable(text, text.size());
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    const size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    uint32_t cp = len == 1 ? c : c & (0x7F >> len);
    for (size_t k = 1; k < len; ++k)
      cp = cp << 6 | (static_cast<unsigned char>(text[i + k]) & 0x3F);
    const bool control = cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp < 0xA0) || cp == '\\';
    const bool bidi = (cp >= 0x202A && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069) ||
                      cp == 0x2028 || cp == 0x2029 || cp == 0x200E || cp == 0x200F;
    if (control && cp < 0x80) {
      out += "\\x";
      out.push_back(kHex[cp >> 4]);
      out.push_back(kHex[cp & 15]);
    } else if (control || bidi) {
      char buf[16];
      std::snprintf(buf, sizeof buf, "\\u{%04x}", static_cast<unsigned>(cp));
      out += buf;
    } else {
      out.append(text.substr(i, len));
    }
    i += len;
  }
  return out;
}

Result<Target> OpenTarget(Storage& storage, const std::string& path) {
  Target t;
  t.path = path;
  CKPT_ASSIGN_OR_RETURN(DirEntry st, storage.Stat(path));
  if (st.type == EntryType::kFile) {
    t.kind = "file";
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::Open(storage, path));
    t.owned.push_back(std::move(f));
  } else if (st.type == EntryType::kDirectory) {
    CKPT_ASSIGN_OR_RETURN(std::vector<DirEntry> entries, storage.List(path));
    // torch.distributed.checkpoint's own layout: .metadata + .distcp files.
    if (std::any_of(entries.begin(), entries.end(),
                    [](const DirEntry& e) { return e.name == ".metadata"; })) {
      CKPT_ASSIGN_OR_RETURN(ShardedCheckpointInfo info, ReadShardedCheckpoint(storage, path));
      t.kind = "dcp";
      t.sharded = std::move(info);
      return t;
    }
    bool is_hf = std::any_of(entries.begin(), entries.end(), [](const DirEntry& e) {
      return e.name == kHfIndexName || e.name == kDiffusersIndexName || e.name == kHfSingleFileName;
    });
    if (is_hf) {
      CKPT_ASSIGN_OR_RETURN(HfModelDir m, HfModelDir::Open(storage, path));
      t.kind = m.index() ? "hf-sharded" : "hf-single";
      t.hf = std::move(m);
      for (const auto& f : t.hf->files()) t.files.push_back(f.get());
      for (const auto& [name, loc] : t.hf->tensors())
        t.tensors.push_back({name, loc.file, loc.info});
      return t;
    }
    t.kind = "directory";
    for (const DirEntry& e : entries) {
      if (e.type != EntryType::kFile || !EndsWith(e.name, ".safetensors") || e.name[0] == '.') {
        continue;
      }
      CKPT_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f,
                            SafetensorsFile::Open(storage, JoinPath(path, e.name)));
      t.owned.push_back(std::move(f));
    }
    if (t.owned.empty()) return NotFoundError(path + ": no .safetensors files in this directory");
    bool sharded = std::any_of(entries.begin(), entries.end(),
                               [](const DirEntry& e) { return e.name == kManifestName; });
    for (const auto& f : t.owned) {
      if (f->header().metadata().count(std::string(kDcpShardingInfoKey))) sharded = true;
    }
    if (sharded) {
      CKPT_ASSIGN_OR_RETURN(ShardedCheckpointInfo info, ReadShardedCheckpoint(storage, path));
      t.kind = "sharded";
      t.sharded = std::move(info);
    }
  } else {
    return FailedPreconditionError(path + ": neither a file nor a directory");
  }
  for (size_t i = 0; i < t.owned.size(); ++i) {
    t.files.push_back(t.owned[i].get());
    for (const TensorInfo& info : t.owned[i]->header().tensors()) {
      t.tensors.push_back({info.name, i, &info});
    }
  }
  std::sort(t.tensors.begin(), t.tensors.end(), [](const Target::Entry& a, const Target::Entry& b) {
    return a.name != b.name ? a.name < b.name : a.file < b.file;
  });
  return t;
}

}  // namespace ckpt::cli
