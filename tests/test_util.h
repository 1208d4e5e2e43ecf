// Helpers shared by the tests.
#ifndef CKPT_TESTS_TEST_UTIL_H_
#define CKPT_TESTS_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "ckpt/status.h"
#include "ckpt/storage.h"

#define CKPT_ASSERT_OK(expr)                                         \
  do {                                                               \
    ::ckpt::Status _s = ::ckpt::internal::AsStatus((expr));          \
    ASSERT_TRUE(_s.ok()) << #expr << " failed: " << _s.ToString();   \
  } while (0)
#define CKPT_EXPECT_OK(expr)                                         \
  do {                                                               \
    ::ckpt::Status _s = ::ckpt::internal::AsStatus((expr));          \
    EXPECT_TRUE(_s.ok()) << #expr << " failed: " << _s.ToString();   \
  } while (0)

namespace ckpt::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/ckpt_test_XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (::mkdtemp(buf.data()) == nullptr) std::abort();
    path_ = buf.data();
  }
  ~TempDir() { RemoveAll(*PosixStorage(), path_).IgnoreError(); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(std::string_view name) const { return JoinPath(path_, name); }

 private:
  std::string path_;
};

inline std::vector<std::byte> RandomBytes(size_t n, std::mt19937_64& rng) {
  std::vector<std::byte> out(n);
  for (auto& b : out) b = static_cast<std::byte>(rng() & 0xFF);
  return out;
}

inline std::string ToString(std::span<const std::byte> b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

// A safetensors file from a header text and data bytes, length prefix
// included, exactly as given (no padding, no validation).
inline std::string RawSafetensors(std::string_view header, std::string_view data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xFF);
  out.append(header);
  out.append(data);
  return out;
}

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_TEST_UTIL_H_
