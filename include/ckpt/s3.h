// Object storage: an S3-protocol Storage backend (libcurl + our SigV4
// signer) and the one place that turns a path string into a Storage and a
// path inside it ("s3://bucket/prefix", "msc://profile/key", or a POSIX
// path).
//
// The S3 backend maps paths to keys ("/a/b" and "a/b" are key "a/b");
// directories are key prefixes ("a/" lists what is under it; MakeDirs writes
// an empty "a/" marker so an empty directory exists). It cannot rename
// (CanRename() is false): a file is published by the PUT or the
// CompleteMultipartUpload that ends its upload, so AtomicFileWriter writes
// straight to the final key and an aborted writer uploads nothing (an open
// multipart upload is aborted). Readers see the object as it was when opened
// (GETs carry If-Match with the ETag from open): a reader of an object
// replaced since is DataLoss.
#ifndef CKPT_S3_H_
#define CKPT_S3_H_

#include <cstdint>
#include <memory>
#include <string>

#include "ckpt/status.h"
#include "ckpt/storage.h"

namespace ckpt {

struct S3Options {
  std::string bucket;
  // "https://host[:port]" or "http://127.0.0.1:port". Empty: AWS's regional
  // endpoint https://s3.<region>.amazonaws.com.
  std::string endpoint;
  std::string region = "us-east-1";
  std::string access_key;
  std::string secret_key;
  std::string session_token;
  // Path-style ("endpoint/bucket/key") or virtual-host ("bucket.host/key").
  // Unset (-1): path-style for a custom endpoint, virtual-host for AWS.
  int path_style = -1;
  // Plain HTTP is refused unless the endpoint is a loopback address or this
  // is set.
  bool allow_http = false;
  bool verify_tls = true;
  // Multipart: a file larger than one part is uploaded in parts of this
  // size (at least 5 MiB), up to `parallel` at once; buffered parts of all
  // open files together stay within `memory_budget` bytes (at least two
  // parts): a writer waits for uploads to finish before it buffers more, and
  // a write that would buffer past the budget with no upload in flight
  // (writes scattered over too many parts) fails with FailedPrecondition.
  uint64_t part_size = 16ull << 20;
  uint64_t memory_budget = 256ull << 20;
  unsigned parallel = 8;
  // Ranged reads longer than 2 * read_piece are split into pieces of this
  // size fetched by up to `parallel` connections.
  uint64_t read_piece = 8ull << 20;
  // Retries of one request on 5xx, 429, timeouts and reset connections, with
  // exponential backoff from `backoff_ms` (full jitter, at most 5 s a wait).
  unsigned max_retries = 6;
  unsigned backoff_ms = 100;
  long connect_timeout_ms = 10000;
  // A request is abandoned (and retried) when it moves fewer than 1 KiB/s
  // for this long.
  long low_speed_timeout_s = 30;
};

// Options for `bucket` from the environment (AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION,
// AWS_ENDPOINT_URL, AWS_PROFILE) and the shared files (AWS_CONFIG_FILE,
// AWS_SHARED_CREDENTIALS_FILE, default ~/.aws/config and ~/.aws/credentials);
// the environment wins. CKPT_S3_PART_SIZE, CKPT_S3_MEMORY_BUDGET and
// CKPT_S3_PARALLEL override the transfer settings, CKPT_S3_MAX_ATTEMPTS the
// attempts per request (retries + 1), CKPT_S3_LOW_SPEED_TIMEOUT the seconds
// of a stalled transfer before it is abandoned and retried, and CKPT_S3_ALLOW_HTTP=1 allows plain
// HTTP to any host. FailedPrecondition when no
// credentials are found.
Result<S3Options> S3OptionsFromEnvironment(const std::string& bucket);
Result<std::shared_ptr<Storage>> NewS3Storage(S3Options options);

// A path resolved to the storage that holds it.
struct StoragePath {
  std::shared_ptr<Storage> storage;
  std::string path;  // inside `storage`
};

bool IsObjectStoragePath(const std::string& path);
// "s3://bucket/prefix" → the S3 backend for bucket, path "/prefix";
// "msc://profile/key" → the profile's S3 backend (MSC YAML config:
// $MSC_CONFIG, else ~/.msc_config.yaml), path "/<base prefix>/key";
// anything else → PosixStorage() and the path unchanged. Backends are cached
// per bucket and settings, so repeated calls share connections.
Result<StoragePath> ResolveStoragePath(const std::string& path);

}  // namespace ckpt

#endif  // CKPT_S3_H_
