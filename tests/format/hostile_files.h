// Hand-crafted corrupt or hostile safetensors files, each with the error it
// must produce. Shared by the reader tests and the CLI tests.
#ifndef CKPT_TESTS_FORMAT_HOSTILE_FILES_H_
#define CKPT_TESTS_FORMAT_HOSTILE_FILES_H_

#include <ostream>
#include <string>
#include <vector>

#include "ckpt/status.h"
#include "test_util.h"

namespace ckpt::testing {

inline std::string LengthOnly(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out;
}

inline std::string T(std::string_view name, std::string_view dtype, std::string_view shape,
                     uint64_t begin, uint64_t end) {
  return "\"" + std::string(name) + "\":{\"dtype\":\"" + std::string(dtype) +
         "\",\"shape\":" + std::string(shape) + ",\"data_offsets\":[" + std::to_string(begin) +
         "," + std::to_string(end) + "]}";
}

struct HostileCase {
  const char* label;
  std::string bytes;
  StatusCode code;
  std::string want;  // substring of the message
};

inline void PrintTo(const HostileCase& c, std::ostream* os) { *os << c.label; }

inline std::vector<HostileCase> HostileFiles() {
  const std::string d16(16, 'x'), d8(8, 'x');
  return {
      {"empty_file", "", StatusCode::kDataLoss, "file is 0 bytes, shorter than the 8-byte"},
      {"seven_bytes", std::string(7, '\0'), StatusCode::kDataLoss, "file is 7 bytes"},
      {"header_cap", LengthOnly(100'000'001) + "{}", StatusCode::kDataLoss,
       "header length 100000001 exceeds the limit of 100000000 bytes"},
      {"header_len_u64_max", LengthOnly(~0ull), StatusCode::kDataLoss,
       "header length 18446744073709551615 exceeds the limit"},
      {"header_past_eof", LengthOnly(64) + "{}", StatusCode::kDataLoss,
       "header length 64 runs past the end of the 10-byte file"},
      {"not_utf8", RawSafetensors("{\"a\xff\":1}", ""), StatusCode::kDataLoss,
       "header is not valid UTF-8 (byte 3 of the header)"},
      {"overlong_utf8", RawSafetensors("{\"\xc0\xaf\":{}}", ""), StatusCode::kDataLoss,
       "header is not valid UTF-8 (byte 2"},
      {"utf16_surrogate", RawSafetensors("{\"\xed\xa0\x80\":{}}", ""), StatusCode::kDataLoss,
       "not valid UTF-8"},
      {"utf8_bom", RawSafetensors("\xEF\xBB\xBF{}", ""), StatusCode::kDataLoss,
       "header starts with a UTF-8 byte-order mark"},
      {"not_json", RawSafetensors("{\"a\":", ""), StatusCode::kDataLoss, "header: not valid JSON"},
      {"nul_padding", RawSafetensors(std::string("{}") + std::string(6, '\0'), ""),
       StatusCode::kDataLoss, "header contains a NUL byte at byte 2 of the header"},
      {"deep_nesting",
       RawSafetensors("{\"w\":" + std::string(100000, '[') + std::string(100000, ']') + "}", ""),
       StatusCode::kDataLoss, "header: JSON nests objects and arrays deeper than 4 levels"},
      {"duplicate_metadata_key", RawSafetensors(R"({"__metadata__":{"a":"1","a":"2"}})", ""),
       StatusCode::kDataLoss, "header: JSON has a duplicate key in a nested object 'a'"},
      {"json_array", RawSafetensors("[1,2]   ", ""), StatusCode::kDataLoss,
       "header must be a JSON object, got array"},
      {"unknown_dtype", RawSafetensors("{" + T("w", "F128", "[1]", 0, 16) + "}", d16),
       StatusCode::kDataLoss, "tensor 'w': unknown dtype \"F128\""},
      {"lowercase_dtype", RawSafetensors("{" + T("w", "f32", "[4]", 0, 16) + "}", d16),
       StatusCode::kDataLoss, "tensor 'w': unknown dtype \"f32\""},
      {"dtype_not_string",
       RawSafetensors(R"({"w":{"dtype":3,"shape":[4],"data_offsets":[0,4]}})", "xxxx"),
       StatusCode::kDataLoss, "tensor 'w': dtype must be a string"},
      {"negative_dim", RawSafetensors("{" + T("w", "U8", "[-1]", 0, 0) + "}", ""),
       StatusCode::kDataLoss,
       "tensor 'w': shape must hold non-negative integers below 2^64, got -1"},
      {"float_dim", RawSafetensors("{" + T("w", "U8", "[2.5]", 0, 2) + "}", "xx"),
       StatusCode::kDataLoss,
       "tensor 'w': shape must hold non-negative integers below 2^64, got 2.5"},
      {"negative_offset",
       RawSafetensors(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}})", ""),
       StatusCode::kDataLoss, "tensor 'w': data_offsets must hold non-negative integers"},
      {"offset_above_u64",
       RawSafetensors(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,18446744073709551616]}})",
                      ""),
       StatusCode::kDataLoss, "tensor 'w': data_offsets must hold non-negative integers"},
      {"three_offsets",
       RawSafetensors(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}})", "x"),
       StatusCode::kDataLoss, "tensor 'w': data_offsets must be an array [begin, end]"},
      {"missing_dtype", RawSafetensors(R"({"w":{"shape":[1],"data_offsets":[0,1]}})", "x"),
       StatusCode::kDataLoss, "tensor 'w': missing \"dtype\""},
      {"entry_not_object", RawSafetensors(R"({"w":[1,2,3]})", ""), StatusCode::kDataLoss,
       "tensor 'w': entry must be an object"},
      {"unknown_field",
       RawSafetensors(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":1}})", "x"),
       StatusCode::kDataLoss, "tensor 'w': unknown field 'extra'"},
      {"metadata_not_object", RawSafetensors(R"({"__metadata__":["a"]})", ""),
       StatusCode::kDataLoss, "__metadata__ must be an object of strings, got array"},
      {"metadata_non_string", RawSafetensors(R"({"__metadata__":{"step":10}})", ""),
       StatusCode::kDataLoss, "__metadata__ value of 'step' must be a string, got number"},
      {"metadata_nested", RawSafetensors(R"({"__metadata__":{"m":{"a":"b"}}})", ""),
       StatusCode::kDataLoss, "__metadata__ value of 'm' must be a string, got object"},
      {"duplicate_tensor",
       RawSafetensors("{" + T("a", "U8", "[8]", 0, 8) + "," + T("a", "U8", "[8]", 8, 16) + "}",
                      d16),
       StatusCode::kDataLoss, "header: JSON has a duplicate top-level key 'a'"},
      {"duplicate_field",
       RawSafetensors(R"({"w":{"dtype":"U8","dtype":"I8","shape":[1],"data_offsets":[0,1]}})", "x"),
       StatusCode::kDataLoss, "header: JSON has a duplicate key in a nested object 'dtype'"},
      {"truncated_data", RawSafetensors("{" + T("w", "F32", "[4]", 0, 16) + "}", d8),
       StatusCode::kDataLoss, "file is truncated: tensors need 16 data bytes but only 8"},
      {"trailing_bytes", RawSafetensors("{" + T("w", "F32", "[2]", 0, 8) + "}", d8 + "PK\3\4"),
       StatusCode::kDataLoss, "4 trailing bytes after the last tensor"},
      {"overlap",
       RawSafetensors("{" + T("a", "U8", "[8]", 0, 8) + "," + T("b", "U8", "[8]", 4, 12) + "}",
                      std::string(12, 'x')),
       StatusCode::kDataLoss,
       "tensor 'b' begins at 4 but tensor 'a' ends at 8 (overlaps of 4 bytes)"},
      {"hole",
       RawSafetensors("{" + T("a", "U8", "[4]", 0, 4) + "," + T("b", "U8", "[4]", 8, 12) + "}",
                      std::string(12, 'x')),
       StatusCode::kDataLoss,
       "tensor 'b' begins at 8 but tensor 'a' ends at 4 (leaves a hole of 4 bytes)"},
      {"not_from_zero", RawSafetensors("{" + T("a", "U8", "[4]", 4, 8) + "}", d8),
       StatusCode::kDataLoss,
       "tensor 'a' begins at 4 but the data buffer starts at 0 (leaves a hole of 4 bytes)"},
      {"end_before_begin", RawSafetensors("{" + T("a", "U8", "[0]", 8, 4) + "}", d8),
       StatusCode::kDataLoss, "tensor 'a': data_offsets [8, 4) end before they begin"},
      {"size_mismatch", RawSafetensors("{" + T("w", "F32", "[4]", 0, 8) + "}", d8),
       StatusCode::kDataLoss, "tensor 'w': data_offsets [0, 8) span 8 bytes but F32 [4] needs 16"},
      {"shape_overflow",
       RawSafetensors("{" + T("w", "U8", "[4294967296,4294967296]", 0, 0) + "}", ""),
       StatusCode::kDataLoss,
       "tensor 'w': shape [4294967296, 4294967296]: element count overflows"},
      {"bits_overflow",
       RawSafetensors("{" + T("w", "F64", "[2305843009213693952]", 0, 0) + "}", ""),
       StatusCode::kDataLoss,
       "tensor 'w': shape [2305843009213693952] of F64: bit count overflows"},
      {"sub_byte_bits", RawSafetensors("{" + T("w", "F4", "[3]", 0, 2) + "}", "xx"),
       StatusCode::kDataLoss,
       "tensor 'w': shape [3] of F4: 12 bits is not a whole number of bytes"},
      {"f6_bits", RawSafetensors("{" + T("w", "F6_E2M3", "[5]", 0, 4) + "}", "xxxx"),
       StatusCode::kDataLoss, "30 bits is not a whole number of bytes"},
      {"polyglot_zip_tail", RawSafetensors("{}", "PK\x05\x06" + std::string(18, '\0')),
       StatusCode::kDataLoss, "22 trailing bytes after the last tensor"},
  };
}

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_FORMAT_HOSTILE_FILES_H_
