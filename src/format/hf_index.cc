#include <nlohmann/json.hpp>

#include "ckpt/hf.h"
#include "format/json_util.h"

namespace ckpt {

using json = nlohmann::json;

Status CheckShardFileName(std::string_view name) {
  std::string q = "'" + Printable(name) + "'";
  if (name.empty()) return InvalidArgumentError("shard file name is empty");
  if (name.front() == '/') return InvalidArgumentError("shard file name " + q + " is absolute");
  if (name.find('/') != std::string_view::npos || name.find('\\') != std::string_view::npos) {
    return InvalidArgumentError("shard file name " + q + " contains a path separator");
  }
  if (name == "." || name == ".." || name.find("..") != std::string_view::npos) {
    return InvalidArgumentError("shard file name " + q + " contains '..'");
  }
  if (name.find('\0') != std::string_view::npos) {
    return InvalidArgumentError("shard file name " + q + " contains a NUL byte");
  }
  return Status();
}

Status CheckIndexedShards(const HfIndex& index, std::string_view source) {
  if (index.weight_map.empty()) return DataLossError(std::string(source) + ": weight_map is empty");
  constexpr std::string_view kExt = ".safetensors";
  for (const auto& [tensor, file] : index.weight_map) {
    const bool hidden = !file.empty() && file[0] == '.';
    const bool safetensors = file.size() > kExt.size() &&
                             file.compare(file.size() - kExt.size(), kExt.size(), kExt) == 0;
    if (hidden || !safetensors) {
      return DataLossError(std::string(source) + ": weight_map['" + Printable(tensor) +
                           "'] names '" + Printable(file) + "', " +
                           (hidden ? "a hidden file" : "not a .safetensors file"));
    }
  }
  return Status();
}

Result<HfIndex> ParseHfIndex(std::string_view text, std::string_view source) {
  std::string src(source);
  CKPT_ASSIGN_OR_RETURN(json root, ParseStrictJson(text, source, /*max_depth=*/16));
  if (!root.is_object()) return DataLossError(src + ": index must be a JSON object");
  HfIndex index;
  if (auto md = root.find("metadata"); md != root.end() && !md->is_null()) {
    if (!md->is_object()) return DataLossError(src + ": \"metadata\" must be an object");
    for (const auto& [k, v] : md->items()) {
      if (k == "total_size") {
        if (v.is_number_unsigned()) {
          index.total_size = v.get<uint64_t>();
        } else if (v.is_number_float() && v.get<double>() >= 0 && v.get<double>() < 1.8e19) {
          index.total_size = static_cast<uint64_t>(v.get<double>());
        } else {
          return DataLossError(src + ": metadata.total_size must be a non-negative number, got " +
                               v.dump());
        }
      } else {
        index.extra_metadata[k] = v.dump();
      }
    }
  }
  auto wm = root.find("weight_map");
  if (wm == root.end()) return DataLossError(src + ": missing \"weight_map\"");
  if (!wm->is_object()) return DataLossError(src + ": \"weight_map\" must be an object");
  for (const auto& [tensor, file] : wm->items()) {
    if (!file.is_string()) {
      return DataLossError(src + ": weight_map['" + Printable(tensor) +
                           "'] must be a file name string, got " + file.dump());
    }
    std::string name = file.get<std::string>();
    Status ok = CheckShardFileName(name);
    if (!ok.ok()) {
      return DataLossError(src + ": weight_map['" + Printable(tensor) + "']: " + ok.message());
    }
    index.weight_map.emplace(tensor, std::move(name));
  }
  return index;
}

std::string SerializeHfIndex(const HfIndex& index) {
  json md = json::object();
  for (const auto& [k, v] : index.extra_metadata) md[k] = json::parse(v);
  if (index.total_size) md["total_size"] = *index.total_size;
  json wm = json::object();
  for (const auto& [k, v] : index.weight_map) wm[k] = v;
  json root = json::object();
  root["metadata"] = std::move(md);
  root["weight_map"] = std::move(wm);
  return root.dump(2, ' ', /*ensure_ascii=*/true, json::error_handler_t::replace) + "\n";
}

}  // namespace ckpt
