// AWS Signature Version 4 (SigV4) for the S3 backend: canonical request,
// string to sign, signing key and the Authorization header, with SHA-256 and
// HMAC from OpenSSL's libcrypto. Checked against AWS's published test suite
// (tests/io/sigv4_test.cc).
#ifndef CKPT_IO_SIGV4_H_
#define CKPT_IO_SIGV4_H_

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ckpt {

struct SigV4Credentials {
  std::string access_key;
  std::string secret_key;
  std::string session_token;  // empty when there is none
};

struct SigV4Request {
  std::string method;  // "GET", "PUT", ...
  // The path as sent on the wire, already percent-encoded ("/bucket/a%20b").
  std::string encoded_path;
  // Query parameters as decoded name/value pairs, in any order.
  std::vector<std::pair<std::string, std::string>> query;
  // Headers to sign (must include "host"); names in any case, values as sent.
  std::vector<std::pair<std::string, std::string>> headers;
  // Lower-case hex SHA-256 of the body, or "UNSIGNED-PAYLOAD".
  std::string payload_hash;
};

struct SigV4Signature {
  std::string canonical_request;
  std::string string_to_sign;
  std::string signed_headers;  // "host;x-amz-date"
  std::string signature;       // lower-case hex
  std::string authorization;   // the Authorization header's value
  // Headers the signer added and the request must carry: x-amz-date and,
  // with a session token, x-amz-security-token.
  std::vector<std::pair<std::string, std::string>> added_headers;
};

// Signs `request` at `amz_date` ("20150830T123600Z") for `region` and
// `service` ("s3").
SigV4Signature SignV4(const SigV4Request& request, const SigV4Credentials& credentials,
                      std::string_view region, std::string_view service, std::string_view amz_date);

// RFC 3986 percent-encoding as SigV4 wants it: unreserved characters
// (A-Z a-z 0-9 - . _ ~) stay, every other byte is %XX (upper-case hex); '/'
// stays only when `keep_slash`.
std::string UriEncode(std::string_view s, bool keep_slash);
// Lower-case hex SHA-256 of `data`.
std::string Sha256Hex(std::string_view data);
// The current UTC time as "YYYYMMDDTHHMMSSZ".
std::string AmzDateNow();

}  // namespace ckpt

#endif  // CKPT_IO_SIGV4_H_
