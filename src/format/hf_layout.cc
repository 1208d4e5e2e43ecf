// Hugging Face export layouts: which names are side files, the key order of
// exported files and how keys are divided among them. Pure functions.
#include <cctype>

#include "ckpt/hf.h"
#include "format/json_util.h"

namespace ckpt {

bool IsHfArtifactName(std::string_view name) {
  if (!CheckShardFileName(name).ok() || name.front() == '.' ||
      FindInvalidUtf8(name) != std::string_view::npos) {
    return false;
  }
  auto ends = [&](std::string_view suffix) {
    return name.size() > suffix.size() && name.substr(name.size() - suffix.size()) == suffix;
  };
  // Indexes (of any weight format) and ckpt's own files are never artifacts.
  if (ends(".index.json") || name == kFileMappingName || name == kDtypeMappingName ||
      name.starts_with("ckpt_")) {
    return false;
  }
  for (std::string_view kind : {".json", ".txt", ".model", ".jinja", ".py", ".tiktoken", ".md"}) {
    if (ends(kind)) return true;
  }
  return false;
}

bool NaturalLess(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (std::isdigit(static_cast<unsigned char>(a[i])) &&
        std::isdigit(static_cast<unsigned char>(b[j]))) {
      size_t i2 = i, j2 = j;
      while (i2 < a.size() && std::isdigit(static_cast<unsigned char>(a[i2]))) ++i2;
      while (j2 < b.size() && std::isdigit(static_cast<unsigned char>(b[j2]))) ++j2;
      std::string_view x(a.data() + i, i2 - i), y(b.data() + j, j2 - j);
      while (x.size() > 1 && x[0] == '0') x.remove_prefix(1);
      while (y.size() > 1 && y[0] == '0') y.remove_prefix(1);
      if (x.size() != y.size()) return x.size() < y.size();
      if (x != y) return x < y;
      i = i2;
      j = j2;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i;
      ++j;
    }
  }
  return a.size() - i < b.size() - j;
}

std::vector<uint32_t> DivideBySize(const std::vector<uint64_t>& bytes, uint64_t target) {
  std::vector<uint32_t> out;
  out.reserve(bytes.size());
  uint32_t file = 1;
  uint64_t current = 0;
  for (uint64_t b : bytes) {
    if (current > 0 && current + b > target) {
      ++file;
      current = 0;
    }
    current += b;
    out.push_back(file);
  }
  return out;
}

std::vector<uint32_t> DivideEqually(size_t keys, uint32_t files) {
  std::vector<uint32_t> out;
  if (files == 0) return out;
  const size_t per = keys / files, extra = keys % files;
  for (uint32_t f = 1; f <= files; ++f) {
    size_t n = per + (f - 1 < extra ? 1 : 0);
    out.insert(out.end(), n, f);
  }
  return out;
}

}  // namespace ckpt
