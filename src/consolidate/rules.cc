// Pure rules of consolidation: sizes, file division, export dtypes, the base
// model's file layout and dtypes.
#include <cctype>
#include <regex>
#include <set>

#include "ckpt/consolidate.h"
#include "ckpt/hf.h"
#include "ckpt/torch_bin.h"
#include "convert/float_cast.h"
#include "engine/torch_bin_load.h"
#include "format/json_util.h"

namespace ckpt {

Result<uint64_t> ParseByteSize(std::string_view text) {
  size_t i = 0;
  uint64_t n = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
    if (!CheckedMul(n, 10, &n) || !CheckedAdd(n, static_cast<uint64_t>(text[i] - '0'), &n)) {
      return InvalidArgumentError("size '" + std::string(text) + "' overflows 64 bits");
    }
    ++i;
  }
  if (i == 0)
    return InvalidArgumentError("size '" + std::string(text) + "' does not start with a number");
  std::string unit(text.substr(i));
  for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  static const std::pair<const char*, uint64_t> kUnits[] = {
      {"", 1},
      {"b", 1},
      {"kb", 1000},
      {"mb", 1000000},
      {"gb", 1000000000},
      {"tb", 1000000000000},
      {"kib", 1ull << 10},
      {"mib", 1ull << 20},
      {"gib", 1ull << 30},
      {"tib", 1ull << 40},
  };
  for (const auto& [name, mult] : kUnits) {
    if (unit == name) {
      uint64_t out;
      if (!CheckedMul(n, mult, &out))
        return InvalidArgumentError("size '" + std::string(text) + "' overflows 64 bits");
      if (out == 0)
        return InvalidArgumentError("size '" + std::string(text) + "' must be positive");
      return out;
    }
  }
  return InvalidArgumentError("size '" + std::string(text) + "': unknown unit '" +
                              std::string(text.substr(i)) +
                              "' (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)");
}

DType ExportDType(DType saved, std::optional<DType> original, std::optional<DType> cast,
                  std::string* warning) {
  const bool saved_float = IsOrdinaryFloat(saved);
  if (original == DType::kF32 && saved_float) return DType::kF32;
  if (cast && saved_float && IsOrdinaryFloat(*cast)) return *cast;
  if (original && saved_float && IsOrdinaryFloat(*original)) return *original;
  if (original && saved_float && !IsOrdinaryFloat(*original) && warning) {
    *warning = "originally " + std::string(DTypeName(*original)) + ", now " +
               std::string(DTypeName(saved)) + ": kept as " + std::string(DTypeName(saved));
  }
  return saved;
}

namespace {

// The <i> and <N> of "...-<i>-of-<N>.<ext>" in `file`, or nullopt when the
// name has no such numbers. Digits are read with a cap, so any length is safe.
Result<std::optional<std::pair<uint32_t, uint32_t>>> FileNumbers(const std::string& file,
                                                                 const std::regex& pattern,
                                                                 const std::string& where) {
  std::smatch match;
  if (!std::regex_search(file, match, pattern))
    return std::optional<std::pair<uint32_t, uint32_t>>();
  uint32_t v[2];
  for (int k = 0; k < 2; ++k) {
    const std::string digits = match[k + 1].str();
    uint64_t n = 0;
    for (char ch : digits) {
      n = n * 10 + static_cast<uint64_t>(ch - '0');
      if (n > kMaxOutputFiles) {
        return InvalidArgumentError(where + ": file number " + Printable(digits) + " in '" +
                                    Printable(file) + "' exceeds the limit of " +
                                    std::to_string(kMaxOutputFiles) + " files");
      }
    }
    v[k] = static_cast<uint32_t>(n);
  }
  if (v[0] == 0 || v[0] > v[1]) {
    return InvalidArgumentError(where + ": file number " + std::to_string(v[0]) + " in '" +
                                Printable(file) + "' is not between 1 and " + std::to_string(v[1]));
  }
  return std::optional<std::pair<uint32_t, uint32_t>>(std::make_pair(v[0], v[1]));
}

// Every numbered file of a base model must agree on N.
Status SameTotal(std::optional<uint32_t>* total, uint32_t n, const std::string& file,
                 const std::string& where) {
  if (*total && **total != n) {
    return InvalidArgumentError(where + ": '" + Printable(file) + "' says " + std::to_string(n) +
                                " files but another file says " + std::to_string(**total));
  }
  *total = n;
  return Status();
}

}  // namespace

Status CheckFileNumbers(const std::map<std::string, uint32_t>& mapping, const std::string& source) {
  std::set<uint32_t> distinct;
  for (const auto& [fqn, f] : mapping) distinct.insert(f);
  const uint64_t named = distinct.size();
  for (const auto& [fqn, f] : mapping) {
    if (f == 0 || f > named || f > kMaxOutputFiles) {
      return InvalidArgumentError(source + ": tensor '" + Printable(fqn) + "': file number " +
                                  std::to_string(f) + " is not between 1 and " +
                                  std::to_string(std::min<uint64_t>(named, kMaxOutputFiles)) +
                                  " (the number of distinct files the mapping names)");
    }
  }
  return Status();
}

Result<std::map<std::string, DType>> DTypesFromBase(Storage& storage, const std::string& dir) {
  std::map<std::string, DType> out;
  CKPT_ASSIGN_OR_RETURN(bool bin_only, engine::IsTorchBinOnlyDir(storage, dir));
  if (bin_only) {
    CKPT_ASSIGN_OR_RETURN(TorchBinDir b, TorchBinDir::Open(storage, dir));
    for (const auto& [name, loc] : b.tensors()) out[name] = loc.info->dtype;
  } else {
    CKPT_ASSIGN_OR_RETURN(HfModelDir m, HfModelDir::Open(storage, dir));
    for (const auto& [name, loc] : m.tensors()) out[name] = loc.info->dtype;
  }
  return out;
}

Result<std::map<std::string, uint32_t>> FileMappingFromBase(Storage& storage,
                                                            const std::string& dir) {
  std::map<std::string, uint32_t> out;
  std::optional<uint32_t> total;
  CKPT_ASSIGN_OR_RETURN(bool bin_only, engine::IsTorchBinOnlyDir(storage, dir));
  if (bin_only) {
    // pytorch_model-0000i-of-0000N.bin keeps its number in the export.
    CKPT_ASSIGN_OR_RETURN(TorchBinDir b, TorchBinDir::Open(storage, dir));
    static const std::regex kBinNumbered(R"(-(\d+)-of-(\d+)\.bin$)");
    for (const auto& [name, loc] : b.tensors()) {
      std::string file(Basename(b.files()[loc.file]->path()));
      const std::string where = dir + ": tensor '" + Printable(name) + "'";
      CKPT_ASSIGN_OR_RETURN(auto numbers, FileNumbers(file, kBinNumbered, where));
      if (numbers) CKPT_RETURN_IF_ERROR(SameTotal(&total, numbers->second, file, where));
      out[name] = numbers ? numbers->first : 1;
    }
  } else {
    CKPT_ASSIGN_OR_RETURN(HfModelDir m, HfModelDir::Open(storage, dir));
    static const std::regex kNumbered(R"(-(\d+)-of-(\d+)\.safetensors$)");
    for (const auto& [name, loc] : m.tensors()) {
      std::string file(Basename(m.files()[loc.file]->path()));
      const std::string where = dir + ": tensor '" + Printable(name) + "'";
      if (file == kHfSingleFileName) {
        out[name] = 1;
        continue;
      }
      CKPT_ASSIGN_OR_RETURN(auto numbers, FileNumbers(file, kNumbered, where));
      if (!numbers) {
        return InvalidArgumentError(dir + ": cannot tell the file number of '" + Printable(file) +
                                    "' (tensor '" + Printable(name) + "')");
      }
      CKPT_RETURN_IF_ERROR(SameTotal(&total, numbers->second, file, where));
      out[name] = numbers->first;
    }
  }
  CKPT_RETURN_IF_ERROR(CheckFileNumbers(out, dir + " (the base model's file layout)"));
  return out;
}

}  // namespace ckpt
