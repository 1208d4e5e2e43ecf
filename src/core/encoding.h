// Text encodings of binary values, one home for each: XXH64 digests as 16
// lowercase hex digits, the random tokens in staging names (the same form), and standard base64
// (RFC 4648, '=' padding) for raw bytes kept in JSON files.
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

// A fresh random token for naming staging directories: 16 lowercase hex
// digits, from std::random_device.
std::string RandomToken();
// Whether `s` has the token's form (16 lowercase hex digits).
bool IsToken(std::string_view s);

std::string Base64Encode(std::span<const std::byte> data);
// Nullopt when `text` holds a character outside the base64 alphabet
// (padding ends the data).
std::optional<std::vector<std::byte>> Base64Decode(std::string_view text);

}  // namespace ckpt

#endif  // CKPT_CORE_ENCODING_H_
