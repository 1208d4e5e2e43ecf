// Text encodings of binary values, one home for each: XXH64 digests as 16
// lowercase hex digits, and standard base64 (RFC 4648, '=' padding) for raw
// bytes kept in JSON files.
#ifndef CKPT_CORE_ENCODING_H_
#define CKPT_CORE_ENCODING_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ckpt {

// "00000000deadbeef": 16 lowercase hex digits.
std::string Hex64(uint64_t v);

std::string Base64Encode(std::span<const std::byte> data);
// Nullopt when `text` holds a character outside the base64 alphabet
// (padding ends the data).
std::optional<std::vector<std::byte>> Base64Decode(std::string_view text);

}  // namespace ckpt

#endif  // CKPT_CORE_ENCODING_H_
