// Helpers shared by the tests.
#ifndef CKPT_TESTS_TEST_UTIL_H_
#define CKPT_TESTS_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <cstdlib>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "ckpt/status.h"
#include "ckpt/storage.h"

#define CKPT_ASSERT_OK(expr)                                       \
  do {                                                             \
    ::ckpt::Status _s = ::ckpt::internal::AsStatus((expr));        \
    ASSERT_TRUE(_s.ok()) << #expr << " failed: " << _s.ToString(); \
  } while (0)
#define CKPT_EXPECT_OK(expr)                                       \
  do {                                                             \
    ::ckpt::Status _s = ::ckpt::internal::AsStatus((expr));        \
    EXPECT_TRUE(_s.ok()) << #expr << " failed: " << _s.ToString(); \
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

// StatusIs(code, substring) matches a Status, or a Result<T>, whose code is
// `code` and whose message contains `substring`:
//   EXPECT_THAT(Load(path), StatusIs(StatusCode::kDataLoss, "truncated"));
// A failure prints the actual code and message. IsOk() matches an OK one.
// Both are gtest polymorphic matchers (gtest-matchers.h), so they also work
// with gmock's EXPECT_THAT where gmock is linked.
class StatusIsMatcher {
 public:
  StatusIsMatcher(StatusCode code, std::string substring)
      : code_(code), substring_(std::move(substring)) {}

  template <typename T>
  bool MatchAndExplain(const T& actual, ::testing::MatchResultListener* listener) const {
    const Status s = ::ckpt::internal::AsStatus(actual);
    *listener << "whose status is " << s.ToString();
    if (s.code() != code_) return false;
    if (s.message().find(substring_) == std::string::npos) {
      *listener << ", whose message lacks \"" << substring_ << "\"";
      return false;
    }
    return true;
  }
  void DescribeTo(std::ostream* os) const {
    *os << "has code " << StatusCodeName(code_) << " and a message containing \"" << substring_
        << "\"";
  }
  void DescribeNegationTo(std::ostream* os) const {
    *os << "does not have code " << StatusCodeName(code_) << " with a message containing \""
        << substring_ << "\"";
  }

 private:
  StatusCode code_;
  std::string substring_;
};

inline ::testing::PolymorphicMatcher<StatusIsMatcher> StatusIs(StatusCode code,
                                                               std::string substring) {
  return ::testing::MakePolymorphicMatcher(StatusIsMatcher(code, std::move(substring)));
}

class IsOkMatcher {
 public:
  template <typename T>
  bool MatchAndExplain(const T& actual, ::testing::MatchResultListener* listener) const {
    const Status s = ::ckpt::internal::AsStatus(actual);
    *listener << "whose status is " << s.ToString();
    return s.ok();
  }
  void DescribeTo(std::ostream* os) const { *os << "is OK"; }
  void DescribeNegationTo(std::ostream* os) const { *os << "is not OK"; }
};

inline ::testing::PolymorphicMatcher<IsOkMatcher> IsOk() {
  return ::testing::MakePolymorphicMatcher(IsOkMatcher());
}

// EXPECT_THAT / ASSERT_THAT for the matchers above without linking gmock
// (only libgtest is a dependency). A test that includes <gmock/gmock.h>
// before this header gets gmock's own macros instead.
namespace matcher_detail {
class StreamListener : public ::testing::MatchResultListener {
 public:
  explicit StreamListener(std::ostream* os) : ::testing::MatchResultListener(os) {}
};

template <typename M>
class MatcherFormatter {
 public:
  explicit MatcherFormatter(M matcher) : matcher_(std::move(matcher)) {}
  template <typename T>
  ::testing::AssertionResult operator()(const char* expr, const T& value) const {
    const ::testing::Matcher<const T&> m = matcher_;
    std::ostringstream why;
    StreamListener listener(&why);
    if (m.MatchAndExplain(value, &listener)) return ::testing::AssertionSuccess();
    std::ostringstream msg;
    msg << "Value of: " << expr << "\nExpected: ";
    m.DescribeTo(&msg);
    msg << "\n  Actual: " << why.str();
    return ::testing::AssertionFailure() << msg.str();
  }

 private:
  M matcher_;
};
}  // namespace matcher_detail

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
  for (int i = 0; i < 8; ++i)
    out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xFF);
  out.append(header);
  out.append(data);
  return out;
}

}  // namespace ckpt::testing

#ifndef EXPECT_THAT
#define EXPECT_THAT(value, matcher) \
  EXPECT_PRED_FORMAT1(::ckpt::testing::matcher_detail::MatcherFormatter(matcher), value)
#define ASSERT_THAT(value, matcher) \
  ASSERT_PRED_FORMAT1(::ckpt::testing::matcher_detail::MatcherFormatter(matcher), value)
#endif

#endif  // CKPT_TESTS_TEST_UTIL_H_
