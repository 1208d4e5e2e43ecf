#include "core/encoding.h"

#include <cstdio>
#include <random>

namespace ckpt {

std::string Hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string RandomToken() {
  std::random_device rd;
  return Hex64(static_cast<uint64_t>(rd()) << 32 | static_cast<uint32_t>(rd()));
}

bool IsToken(std::string_view s) {
  return s.size() == 16 && s.find_first_not_of("0123456789abcdef") == std::string_view::npos;
}

namespace {
constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int Sextet(char ch) {
  if (ch >= 'A' && ch <= 'Z') return ch - 'A';
  if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
  if (ch >= '0' && ch <= '9') return ch - '0' + 52;
  if (ch == '+') return 62;
  if (ch == '/') return 63;
  return -1;
}
}  // namespace

std::string Base64Encode(std::span<const std::byte> v) {
  std::string out;
  out.reserve((v.size() + 2) / 3 * 4);
  for (size_t i = 0; i < v.size(); i += 3) {
    uint32_t n = static_cast<uint32_t>(v[i]) << 16;
    if (i + 1 < v.size()) n |= static_cast<uint32_t>(v[i + 1]) << 8;
    if (i + 2 < v.size()) n |= static_cast<uint32_t>(v[i + 2]);
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += i + 1 < v.size() ? kAlphabet[(n >> 6) & 63] : '=';
    out += i + 2 < v.size() ? kAlphabet[n & 63] : '=';
  }
  return out;
}

std::optional<std::vector<std::byte>> Base64Decode(std::string_view text) {
  std::vector<std::byte> out;
  out.reserve(text.size() / 4 * 3);
  uint32_t acc = 0;
  int bits = 0;
  for (char ch : text) {
    if (ch == '=') break;
    const int val = Sextet(ch);
    if (val < 0) return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(val);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<std::byte>((acc >> bits) & 0xFF));
    }
  }
  return out;
}

}  // namespace ckpt
