// The SigV4 signer against AWS's published Signature Version 4 test suite
// (credentials AKIDEXAMPLE, 2015-08-30T12:36:00Z, us-east-1, service
// "service", host example.amazonaws.com): each case's request and the
// signature AWS publishes for it.
#include "io/sigv4.h"

#include <gtest/gtest.h>

namespace ckpt {
namespace {

constexpr char kDate[] = "20150830T123600Z";
constexpr char kEmptyHash[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

SigV4Credentials Example() {
  return {"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""};
}

struct Vector {
  const char* name;
  const char* method;
  const char* path;
  std::vector<std::pair<std::string, std::string>> query;
  std::vector<std::pair<std::string, std::string>> headers;  // besides host
  const char* body;
  const char* signed_headers;
  const char* signature;
};

void PrintTo(const Vector& v, std::ostream* os) { *os << v.name; }

class SigV4VectorTest : public ::testing::TestWithParam<Vector> {};

TEST_P(SigV4VectorTest, SignsToThePublishedSignature) {
  const Vector& v = GetParam();
  SigV4Request r;
  r.method = v.method;
  r.encoded_path = v.path;
  r.query = v.query;
  r.headers = v.headers;
  r.headers.emplace_back("Host", "example.amazonaws.com");
  r.payload_hash = Sha256Hex(v.body);
  SigV4Signature s = SignV4(r, Example(), "us-east-1", "service", kDate);
  EXPECT_EQ(s.signed_headers, v.signed_headers);
  EXPECT_EQ(s.signature, v.signature) << s.canonical_request;
  EXPECT_EQ(s.authorization,
            std::string(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
                "SignedHeaders=") +
                v.signed_headers + ", Signature=" + v.signature);
}

INSTANTIATE_TEST_SUITE_P(
    AwsSuite, SigV4VectorTest,
    ::testing::Values(
        Vector{"get_vanilla",
               "GET",
               "/",
               {},
               {},
               "",
               "host;x-amz-date",
               "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
        Vector{"get_unreserved",
               "GET",
               "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
               {},
               {},
               "",
               "host;x-amz-date",
               "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"},
        Vector{"get_vanilla_query_order_key_case",
               "GET",
               "/",
               {{"Param2", "value2"}, {"Param1", "value1"}},
               {},
               "",
               "host;x-amz-date",
               "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"},
        Vector{"get_vanilla_query_order_value",
               "GET",
               "/",
               {{"Param1", "value2"}, {"Param1", "value1"}},
               {},
               "",
               "host;x-amz-date",
               "5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694"},
        Vector{"get_vanilla_utf8_query",
               "GET",
               "/",
               {{"\xE1\x88\xB4", "bar"}},
               {},
               "",
               "host;x-amz-date",
               "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"},
        Vector{"get_header_value_order",
               "GET",
               "/",
               {},
               {{"My-Header1", "value4"},
                {"My-Header1", "value1"},
                {"My-Header1", "value3"},
                {"My-Header1", "value2"}},
               "",
               "host;my-header1;x-amz-date",
               "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01"},
        Vector{"get_header_key_duplicate",
               "GET",
               "/",
               {},
               {{"My-Header1", "value2"}, {"My-Header1", "value2"}, {"My-Header1", "value1"}},
               "",
               "host;my-header1;x-amz-date",
               "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"},
        Vector{"get_header_value_trim",
               "GET",
               "/",
               {},
               {{"My-Header1", " value1"}, {"My-Header2", "\"a   b   c\""}},
               "",
               "host;my-header1;my-header2;x-amz-date",
               "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"},
        Vector{"post_x_www_form_urlencoded",
               "POST",
               "/",
               {},
               {{"Content-Type", "application/x-www-form-urlencoded"}},
               "Param1=value1",
               "content-type;host;x-amz-date",
               "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"}),
    [](const ::testing::TestParamInfo<Vector>& p) { return std::string(p.param.name); });

TEST(SigV4Test, CanonicalRequestOfGetVanilla) {
  SigV4Request r{"GET", "/", {}, {{"Host", "example.amazonaws.com"}}, kEmptyHash};
  SigV4Signature s = SignV4(r, Example(), "us-east-1", "service", kDate);
  EXPECT_EQ(s.canonical_request,
            std::string("GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
                        "host;x-amz-date\n") +
                kEmptyHash);
  EXPECT_EQ(s.string_to_sign,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
            "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63");
  ASSERT_EQ(s.added_headers.size(), 1u);
  EXPECT_EQ(s.added_headers[0].second, kDate);
}

// The suite's post-sts-token case: the token is signed as
// x-amz-security-token and travels with the request.
TEST(SigV4Test, SessionTokenIsSignedAndSent) {
  SigV4Credentials c = Example();
  c.session_token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
  SigV4Request r{"GET", "/", {}, {{"Host", "example.amazonaws.com"}}, kEmptyHash};
  SigV4Signature s = SignV4(r, c, "us-east-1", "service", kDate);
  EXPECT_EQ(s.signed_headers, "host;x-amz-date;x-amz-security-token");
  EXPECT_EQ(s.signature, "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8");
  ASSERT_EQ(s.added_headers.size(), 2u);
  EXPECT_EQ(s.added_headers[1].second, c.session_token);
}

TEST(SigV4Test, UriEncodeKeepsOnlyUnreservedAndOptionallySlash) {
  EXPECT_EQ(UriEncode("a b/c+d~e", true), "a%20b/c%2Bd~e");
  EXPECT_EQ(UriEncode("a b/c", false), "a%20b%2Fc");
  EXPECT_EQ(UriEncode("\xE1\x88\xB4", false), "%E1%88%B4");
}

}  // namespace
}  // namespace ckpt
