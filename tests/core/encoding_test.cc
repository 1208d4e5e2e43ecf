#include "core/encoding.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <set>

namespace ckpt {
namespace {

std::vector<std::byte> Bytes(std::string_view s) {
  std::vector<std::byte> out(s.size());
  if (!s.empty()) std::memcpy(out.data(), s.data(), s.size());  // never with a null pointer
  return out;
}

TEST(EncodingTest, Hex64IsSixteenLowercaseDigitsWithLeadingZeros) {
  EXPECT_EQ(Hex64(0), "0000000000000000");
  EXPECT_EQ(Hex64(0xdeadbeef), "00000000deadbeef");
  EXPECT_EQ(Hex64(0xFEDCBA9876543210ull), "fedcba9876543210");
}

TEST(EncodingTest, RandomTokensHaveTheTokenFormAndDiffer) {
  std::set<std::string> seen;
  for (int i = 0; i < 64; ++i) {
    const std::string t = RandomToken();
    EXPECT_TRUE(IsToken(t)) << t;
    seen.insert(t);
  }
  EXPECT_EQ(seen.size(), 64u);
  EXPECT_TRUE(IsToken(Hex64(42)));
  EXPECT_FALSE(IsToken("0123456789ABCDEF")) << "uppercase";
  EXPECT_FALSE(IsToken("0123456789abcde")) << "15 digits";
  EXPECT_FALSE(IsToken("0123456789abcdef0")) << "17 digits";
  EXPECT_FALSE(IsToken("0123456789abcdeg"));
  EXPECT_FALSE(IsToken(""));
}

TEST(EncodingTest, Base64MatchesTheRfc4648TestVectors) {
  const std::pair<const char*, const char*> vectors[] = {{"", ""},
                                                         {"f", "Zg=="},
                                                         {"fo", "Zm8="},
                                                         {"foo", "Zm9v"},
                                                         {"foob", "Zm9vYg=="},
                                                         {"fooba", "Zm9vYmE="},
                                                         {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, encoded] : vectors) {
    EXPECT_EQ(Base64Encode(Bytes(plain)), encoded) << plain;
    std::optional<std::vector<std::byte>> back = Base64Decode(encoded);
    ASSERT_TRUE(back.has_value()) << encoded;
    EXPECT_EQ(*back, Bytes(plain)) << encoded;
  }
}

TEST(EncodingTest, Base64RoundTripsEveryByteValueAndRejectsForeignCharacters) {
  std::mt19937_64 rng(3);
  for (size_t n = 0; n < 300; ++n) {
    std::vector<std::byte> v(n);
    for (auto& b : v) b = static_cast<std::byte>(rng());
    std::optional<std::vector<std::byte>> back = Base64Decode(Base64Encode(v));
    ASSERT_TRUE(back.has_value()) << n;
    EXPECT_EQ(*back, v) << n;
  }
  EXPECT_FALSE(Base64Decode("Zm9v!mFy").has_value());
  EXPECT_FALSE(Base64Decode("Zm 9v").has_value());
}

}  // namespace
}  // namespace ckpt
