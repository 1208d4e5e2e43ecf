// Parsing and validation of safetensors headers. Every rule of
// docs/format.md §1 has its own message naming the file, the tensor and the
// numbers. Files are untrusted: all size arithmetic is checked.
#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "ckpt/safetensors.h"
#include "format/json_util.h"

namespace ckpt {
namespace {

using json = nlohmann::json;

std::string Q(std::string_view name) { return "'" + Printable(name) + "'"; }

Result<uint64_t> AsU64(const json& v, std::string_view source, std::string_view tensor,
                       std::string_view field) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  std::string got = v.dump();
  if (got.size() > 40) got = got.substr(0, 40) + "...";
  return DataLossError(std::string(source) + ": tensor " + Q(tensor) + ": " + std::string(field) +
                       " must hold non-negative integers below 2^64, got " + got);
}

Result<TensorInfo> ParseTensor(const std::string& name, const json& entry,
                               std::string_view source) {
  std::string where = std::string(source) + ": tensor " + Q(name);
  if (!entry.is_object()) {
    return DataLossError(where + ": entry must be an object with dtype, shape and data_offsets");
  }
  for (const auto& [k, v] : entry.items()) {
    if (k != "dtype" && k != "shape" && k != "data_offsets") {
      return DataLossError(where + ": unknown field " + Q(k));
    }
  }
  auto dtype_it = entry.find("dtype");
  auto shape_it = entry.find("shape");
  auto offsets_it = entry.find("data_offsets");
  if (dtype_it == entry.end()) return DataLossError(where + ": missing \"dtype\"");
  if (shape_it == entry.end()) return DataLossError(where + ": missing \"shape\"");
  if (offsets_it == entry.end()) return DataLossError(where + ": missing \"data_offsets\"");

  TensorInfo t;
  t.name = name;
  if (!dtype_it->is_string()) return DataLossError(where + ": dtype must be a string");
  Result<DType> dtype = ParseDType(dtype_it->get<std::string>());
  if (!dtype.ok()) return DataLossError(where + ": " + dtype.status().message());
  t.dtype = *dtype;

  if (!shape_it->is_array()) return DataLossError(where + ": shape must be an array");
  std::vector<uint64_t> dims;
  dims.reserve(shape_it->size());
  for (const json& d : *shape_it) {
    CKPT_ASSIGN_OR_RETURN(uint64_t v, AsU64(d, source, name, "shape"));
    dims.push_back(v);
  }
  t.shape = Shape(std::move(dims));

  if (!offsets_it->is_array() || offsets_it->size() != 2) {
    return DataLossError(where + ": data_offsets must be an array [begin, end]");
  }
  CKPT_ASSIGN_OR_RETURN(t.begin, AsU64((*offsets_it)[0], source, name, "data_offsets"));
  CKPT_ASSIGN_OR_RETURN(t.end, AsU64((*offsets_it)[1], source, name, "data_offsets"));
  if (t.end < t.begin) {
    return DataLossError(where + ": data_offsets [" + std::to_string(t.begin) + ", " +
                         std::to_string(t.end) + ") end before they begin");
  }
  Result<uint64_t> nbytes = t.shape.NumBytes(t.dtype);
  if (!nbytes.ok()) return DataLossError(where + ": " + nbytes.status().message());
  if (t.end - t.begin != *nbytes) {
    return DataLossError(where + ": data_offsets [" + std::to_string(t.begin) + ", " +
                         std::to_string(t.end) + ") span " + std::to_string(t.end - t.begin) +
                         " bytes but " + std::string(DTypeName(t.dtype)) + " " +
                         t.shape.ToString() + " needs " + std::to_string(*nbytes));
  }
  return t;
}

// The tensors, sorted by offsets, must cover the data buffer exactly: no
// hole, no overlap, no trailing bytes, nothing past its end.
Status CheckTiling(const std::vector<TensorInfo>& sorted, uint64_t data_size,
                   const std::string& src) {
  uint64_t expected = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : sorted) {
    if (t.begin != expected) {
      std::string what = t.begin > expected ? "leaves a hole" : "overlaps";
      std::string prev_desc =
          prev ? "tensor " + Q(prev->name) + " ends at " + std::to_string(expected)
               : "the data buffer starts at 0";
      return DataLossError(
          src + ": tensor " + Q(t.name) + " begins at " + std::to_string(t.begin) + " but " +
          prev_desc + " (" + what + " of " +
          std::to_string(t.begin > expected ? t.begin - expected : expected - t.begin) + " bytes)");
    }
    expected = t.end;
    prev = &t;
  }
  if (expected != data_size) {
    if (expected < data_size) {
      return DataLossError(src + ": " + std::to_string(data_size - expected) +
                           " trailing bytes after the last tensor (tensors cover " +
                           std::to_string(expected) + " of " + std::to_string(data_size) +
                           " data bytes)");
    }
    return DataLossError(src + ": file is truncated: tensors need " + std::to_string(expected) +
                         " data bytes but only " + std::to_string(data_size) + " are present");
  }
  return Status();
}

}  // namespace

Result<SafetensorsHeader> SafetensorsHeader::Parse(std::string_view text, uint64_t data_size,
                                                   std::string_view source) {
  std::string src(source);
  if (size_t bad = FindInvalidUtf8(text); bad != std::string_view::npos) {
    return DataLossError(src + ": header is not valid UTF-8 (byte " + std::to_string(bad) +
                         " of the header)");
  }
  // JSON text has no byte-order mark (RFC 8259 §8.1); the JSON parser would
  // skip one, the reference reader refuses it.
  if (text.starts_with("\xEF\xBB\xBF")) {
    return DataLossError(src + ": header starts with a UTF-8 byte-order mark (JSON text has none)");
  }
  // JSON text never contains a raw NUL, and the JSON parser would take one
  // for the end of input, accepting whatever follows.
  if (size_t nul = text.find('\0'); nul != std::string_view::npos) {
    return DataLossError(src + ": header contains a NUL byte at byte " + std::to_string(nul) +
                         " of the header");
  }
  // Padding after the JSON is spaces; the JSON parser accepts all JSON
  // whitespace, which the reference reader does too.
  CKPT_ASSIGN_OR_RETURN(json root, ParseStrictJson(text, src + ": header", /*max_depth=*/4));
  if (!root.is_object()) {
    return DataLossError(src + ": header must be a JSON object, got " +
                         std::string(root.type_name()));
  }

  SafetensorsHeader h;
  h.header_size_ = text.size();
  h.data_size_ = data_size;
  for (auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      if (value.is_null()) continue;
      if (!value.is_object()) {
        return DataLossError(src + ": __metadata__ must be an object of strings, got " +
                             std::string(value.type_name()));
      }
      h.has_metadata_ = true;
      for (auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) {
          return DataLossError(src + ": __metadata__ value of " + Q(mk) +
                               " must be a string, got " + std::string(mv.type_name()));
        }
        h.metadata_.emplace(mk, mv.get<std::string>());
      }
      continue;
    }
    CKPT_ASSIGN_OR_RETURN(TensorInfo t, ParseTensor(key, value, source));
    h.tensors_.push_back(std::move(t));
  }

  std::sort(h.tensors_.begin(), h.tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  CKPT_RETURN_IF_ERROR(CheckTiling(h.tensors_, data_size, src));
  h.by_name_.reserve(h.tensors_.size());
  for (size_t i = 0; i < h.tensors_.size(); ++i) h.by_name_.emplace(h.tensors_[i].name, i);
  return h;
}

Result<SafetensorsHeader> SafetensorsHeader::ParsePrefix(std::span<const std::byte> prefix,
                                                         uint64_t file_size,
                                                         std::string_view source) {
  std::string src(source);
  if (file_size < 8) {
    return DataLossError(src + ": file is " + std::to_string(file_size) +
                         " bytes, shorter than the 8-byte header length");
  }
  if (prefix.size() < 8) return InternalError(src + ": header prefix shorter than 8 bytes");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(prefix[static_cast<size_t>(i)]);
  if (n > kSafetensorsMaxHeaderSize) {
    return DataLossError(src + ": header length " + std::to_string(n) + " exceeds the limit of " +
                         std::to_string(kSafetensorsMaxHeaderSize) + " bytes");
  }
  if (n > file_size - 8) {
    return DataLossError(src + ": header length " + std::to_string(n) +
                         " runs past the end of the " + std::to_string(file_size) + "-byte file");
  }
  if (prefix.size() < 8 + n) return InternalError(src + ": header prefix shorter than the header");
  std::string_view text(reinterpret_cast<const char*>(prefix.data()) + 8, n);
  return Parse(text, file_size - 8 - n, source);
}

const TensorInfo* SafetensorsHeader::Find(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace ckpt
