#ifndef CKPT_FORMAT_JSON_UTIL_H_
#define CKPT_FORMAT_JSON_UTIL_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "ckpt/status.h"

namespace ckpt {

// Returns the byte offset of the first invalid UTF-8 sequence in `s`
// (overlong forms, surrogates and code points above U+10FFFF are invalid),
// or std::string_view::npos when all of `s` is valid.
size_t FindInvalidUtf8(std::string_view s);

// Appends `s` as a JSON string literal (quotes included). Escapes '"', '\\'
// and control characters; leaves other UTF-8 as is.
void AppendJsonString(std::string* out, std::string_view s);

// A short, printable rendering of possibly hostile text for error messages:
// at most `max` bytes, non-printable bytes as \xNN.
std::string Printable(std::string_view s, size_t max = 80);

// Parses untrusted JSON text into a DOM. DataLoss, naming `source`, when the
// text is not JSON, repeats a key within one object, or nests objects and
// arrays deeper than `max_depth` (which bounds the memory a hostile file can
// make the parser allocate).
Result<nlohmann::json> ParseStrictJson(std::string_view text, std::string_view source,
                                       int max_depth);

}  // namespace ckpt

#endif  // CKPT_FORMAT_JSON_UTIL_H_
