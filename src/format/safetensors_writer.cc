// Writing safetensors files. The header is laid out exactly as the reference
// writer lays it out, so files written here are byte-identical to theirs for
// the same tensors and metadata (with metadata keys sorted).
#include <algorithm>
#include <unordered_set>

#include "ckpt/safetensors.h"
#include "format/json_util.h"

namespace ckpt {

Result<SafetensorsLayout> PlanSafetensors(std::vector<TensorSpec> specs,
                                          const std::optional<SafetensorsMetadata>& metadata) {
  std::unordered_set<std::string_view> seen;
  for (const TensorSpec& s : specs) {
    if (s.name == "__metadata__") {
      return InvalidArgumentError("tensor name '__metadata__' is reserved");
    }
    if (FindInvalidUtf8(s.name) != std::string::npos) {
      return InvalidArgumentError("tensor name '" + Printable(s.name) + "' is not valid UTF-8");
    }
    if (!seen.insert(s.name).second) {
      return InvalidArgumentError("duplicate tensor name '" + Printable(s.name) + "'");
    }
  }
  for (const auto& [k, v] : metadata.value_or(SafetensorsMetadata{})) {
    if (FindInvalidUtf8(k) != std::string::npos || FindInvalidUtf8(v) != std::string::npos) {
      return InvalidArgumentError("metadata entry '" + Printable(k) + "' is not valid UTF-8");
    }
  }
  // Widest dtype first so every tensor's data is aligned to its element
  // size when the data buffer is; ties by name.
  std::sort(specs.begin(), specs.end(), [](const TensorSpec& a, const TensorSpec& b) {
    if (a.dtype != b.dtype) return a.dtype > b.dtype;
    return a.name < b.name;
  });

  SafetensorsLayout layout;
  std::string& h = layout.header;
  h = "{";
  bool first = true;
  if (metadata) {
    h += "\"__metadata__\":{";
    bool first_kv = true;
    for (const auto& [k, v] : *metadata) {
      if (!first_kv) h += ',';
      first_kv = false;
      AppendJsonString(&h, k);
      h += ':';
      AppendJsonString(&h, v);
    }
    h += '}';
    first = false;
  }
  uint64_t offset = 0;
  layout.tensors.reserve(specs.size());
  for (TensorSpec& s : specs) {
    Result<uint64_t> nbytes = s.shape.NumBytes(s.dtype);
    if (!nbytes.ok()) return nbytes.status().WithContext("tensor '" + Printable(s.name) + "'");
    uint64_t end;
    if (!CheckedAdd(offset, *nbytes, &end)) {
      return InvalidArgumentError("tensor '" + Printable(s.name) + "': data size overflows");
    }
    if (!first) h += ',';
    first = false;
    AppendJsonString(&h, s.name);
    h += ":{\"dtype\":\"";
    h += DTypeName(s.dtype);
    h += "\",\"shape\":[";
    for (size_t i = 0; i < s.shape.rank(); ++i) {
      if (i) h += ',';
      h += std::to_string(s.shape[i]);
    }
    h += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(end) + "]}";
    layout.tensors.push_back(
        TensorInfo{std::move(s.name), s.dtype, std::move(s.shape), offset, end});
    offset = end;
  }
  h += '}';
  h.append((8 - h.size() % 8) % 8, ' ');
  if (h.size() > kSafetensorsMaxHeaderSize) {
    return InvalidArgumentError("header of " + std::to_string(h.size()) +
                                " bytes exceeds the safetensors limit of " +
                                std::to_string(kSafetensorsMaxHeaderSize));
  }
  layout.data_size = offset;
  return layout;
}

std::string SafetensorsLayout::prefix() const {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[static_cast<size_t>(i)] = static_cast<char>((header.size() >> (8 * i)) & 0xFF);
  return out + header;
}

Result<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    Storage& storage, const std::string& path, std::vector<TensorSpec> specs,
    const std::optional<SafetensorsMetadata>& metadata) {
  std::vector<TensorSpec> kept = specs;
  Result<SafetensorsLayout> layout = PlanSafetensors(std::move(specs), metadata);
  if (!layout.ok()) return layout.status().WithContext("writing \"" + path + "\"");
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> out,
                        AtomicFileWriter::Create(storage, path));
  CKPT_RETURN_IF_ERROR(out->Append(AsBytes(layout->prefix())));
  auto w =
      std::unique_ptr<SafetensorsWriter>(new SafetensorsWriter(std::move(*layout), std::move(out)));
  w->specs_ = std::move(kept);
  return w;
}

Status SafetensorsWriter::ReplaceMetadata(const SafetensorsMetadata& metadata) {
  CKPT_ASSIGN_OR_RETURN(SafetensorsLayout again, PlanSafetensors(specs_, metadata));
  if (again.header.size() != layout_.header.size()) {
    return InvalidArgumentError("writing \"" + out_->path() +
                                "\": new metadata changes the header length from " +
                                std::to_string(layout_.header.size()) + " to " +
                                std::to_string(again.header.size()) + " bytes");
  }
  CKPT_RETURN_IF_ERROR(out_->WriteAt(8, AsBytes(again.header)));
  layout_.header = std::move(again.header);
  return Status();
}

SafetensorsWriter::SafetensorsWriter(SafetensorsLayout layout,
                                     std::unique_ptr<AtomicFileWriter> out)
    : layout_(std::move(layout)), out_(std::move(out)), written_(layout_.tensors.size()) {
  for (size_t i = 0; i < layout_.tensors.size(); ++i) by_name_.emplace(layout_.tensors[i].name, i);
}

Status SafetensorsWriter::Write(std::string_view name, uint64_t offset,
                                std::span<const std::byte> data) {
  auto it = by_name_.find(std::string(name));
  std::string where = "writing \"" + out_->path() + "\": tensor '" + Printable(name) + "'";
  if (it == by_name_.end()) return InvalidArgumentError(where + ": not in the file's layout");
  const TensorInfo& t = layout_.tensors[it->second];
  uint64_t end = offset + data.size();
  if (offset > t.nbytes() || data.size() > t.nbytes() - offset) {
    return InvalidArgumentError(where + ": bytes [" + std::to_string(offset) + ", " +
                                std::to_string(end) + ") are outside its " +
                                std::to_string(t.nbytes()) + " bytes");
  }
  if (data.empty()) return Status();
  // Record [offset, end), refusing overlap with anything written before.
  std::map<uint64_t, uint64_t>& ranges = written_[it->second];
  auto next = ranges.lower_bound(offset);
  if (next != ranges.end() && next->first < end) {
    return InvalidArgumentError(where + ": bytes [" + std::to_string(offset) + ", " +
                                std::to_string(end) + ") were already written");
  }
  if (next != ranges.begin() && std::prev(next)->second > offset) {
    return InvalidArgumentError(where + ": bytes [" + std::to_string(offset) + ", " +
                                std::to_string(end) + ") were already written");
  }
  CKPT_RETURN_IF_ERROR(out_->WriteAt(8 + layout_.header.size() + t.begin + offset, data));
  uint64_t begin = offset;
  if (next != ranges.begin() && std::prev(next)->second == offset) {
    auto prev = std::prev(next);
    begin = prev->first;
    ranges.erase(prev);
  }
  if (next != ranges.end() && next->first == end) {
    end = next->second;
    ranges.erase(next);
  }
  ranges[begin] = end;
  return Status();
}

Status SafetensorsWriter::Commit() {
  for (size_t i = 0; i < layout_.tensors.size(); ++i) {
    const TensorInfo& t = layout_.tensors[i];
    if (t.nbytes() == 0) continue;
    const auto& r = written_[i];
    if (r.size() != 1 || r.begin()->first != 0 || r.begin()->second != t.nbytes()) {
      uint64_t covered = 0;
      for (const auto& [b, e] : r) covered += e - b;
      return FailedPreconditionError("writing \"" + out_->path() + "\": tensor '" +
                                     Printable(t.name) + "' has " + std::to_string(covered) +
                                     " of " + std::to_string(t.nbytes()) + " bytes written");
    }
  }
  return out_->Commit();
}

Status WriteSafetensors(Storage& storage, const std::string& path,
                        std::span<const TensorData> tensors,
                        const std::optional<SafetensorsMetadata>& metadata) {
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const TensorData& t : tensors) specs.push_back({t.name, t.dtype, t.shape});
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> w,
                        SafetensorsWriter::Create(storage, path, std::move(specs), metadata));
  std::unordered_map<std::string_view, const TensorData*> by_name;
  for (const TensorData& t : tensors) by_name.emplace(t.name, &t);
  // Stream in file order so the writes are sequential.
  for (const TensorInfo& info : w->layout().tensors) {
    const TensorData& t = *by_name.at(info.name);
    if (t.data.size() != info.nbytes()) {
      return InvalidArgumentError("writing \"" + path + "\": tensor '" + Printable(t.name) +
                                  "': " + std::string(DTypeName(t.dtype)) + " " +
                                  t.shape.ToString() + " needs " + std::to_string(info.nbytes()) +
                                  " bytes, caller gave " + std::to_string(t.data.size()));
    }
    CKPT_RETURN_IF_ERROR(w->Write(info.name, 0, t.data));
  }
  return w->Commit();
}

}  // namespace ckpt
