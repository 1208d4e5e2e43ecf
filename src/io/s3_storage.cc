// The S3-protocol backend: libcurl easy handles kept in a pool (connections
// are reused), requests signed with SigV4, retried with backoff and jitter.
#include <curl/curl.h>
#include <openssl/evp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "ckpt/s3.h"
#include "core/encoding.h"
#include "io/sigv4.h"

namespace ckpt {
namespace {

std::string Quote(const std::string& p) { return "\"" + p + "\""; }

// "a/b" from "/a/b", "a//b/", "/a/./b".
std::string KeyOf(std::string_view path) {
  std::string out;
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t next = path.find('/', pos);
    if (next == std::string_view::npos) next = path.size();
    std::string_view part = path.substr(pos, next - pos);
    pos = next + 1;
    if (part.empty() || part == ".") continue;
    if (!out.empty()) out += '/';
    out.append(part);
  }
  return out;
}

// ---- A little XML: the S3 responses are flat enough for tag scanning. ----

std::string XmlUnescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      out += s[i];
      continue;
    }
    size_t semi = s.find(';', i);
    if (semi == std::string_view::npos) {
      out += s[i];
      continue;
    }
    std::string_view ent = s.substr(i + 1, semi - i - 1);
    if (ent == "amp")
      out += '&';
    else if (ent == "lt")
      out += '<';
    else if (ent == "gt")
      out += '>';
    else if (ent == "quot")
      out += '"';
    else if (ent == "apos")
      out += '\'';
    else if (!ent.empty() && ent[0] == '#') {
      unsigned long cp = ent.size() > 1 && (ent[1] == 'x' || ent[1] == 'X')
                             ? std::stoul(std::string(ent.substr(2)), nullptr, 16)
                             : std::stoul(std::string(ent.substr(1)));
      if (cp < 0x80) {
        out += static_cast<char>(cp);
      } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
      } else {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
      }
    } else {
      out.append(s.substr(i, semi - i + 1));
    }
    i = semi;
  }
  return out;
}

std::string XmlEscape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// The raw contents of each <tag>...</tag> in `xml`, in order.
std::vector<std::string_view> XmlAll(std::string_view xml, std::string_view tag) {
  std::vector<std::string_view> out;
  const std::string open = "<" + std::string(tag) + ">", close = "</" + std::string(tag) + ">";
  size_t pos = 0;
  while ((pos = xml.find(open, pos)) != std::string_view::npos) {
    size_t begin = pos + open.size();
    size_t end = xml.find(close, begin);
    if (end == std::string_view::npos) break;
    out.push_back(xml.substr(begin, end - begin));
    pos = end + close.size();
  }
  return out;
}

std::string XmlFirst(std::string_view xml, std::string_view tag) {
  std::vector<std::string_view> all = XmlAll(xml, tag);
  return all.empty() ? std::string() : XmlUnescape(all.front());
}

std::string Base64Md5(std::span<const std::byte> data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), digest, &len, EVP_md5(), nullptr);
  return Base64Encode(std::as_bytes(std::span<const unsigned char>(digest, len)));
}

bool IsLoopbackHost(std::string_view host) {
  return host == "localhost" || host.starts_with("127.") || host == "[::1]" || host == "::1";
}

// ---- HTTP ----

struct Request {
  std::string method;
  std::string key;  // object key; empty for bucket-level requests
  std::vector<std::pair<std::string, std::string>> query;
  std::vector<std::pair<std::string, std::string>> headers;
  std::span<const std::byte> body;
  std::span<std::byte> into;  // a GET's destination: must receive exactly its size
  bool head = false;
};

struct Response {
  long status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  uint64_t received = 0;  // bytes written to Request::into
  bool overflow = false;
};

struct Transfer {
  const Request* req;
  Response* resp;
  uint64_t sent = 0;
};

size_t OnBody(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t bytes = size * n;
  if (!t->req->into.empty() && t->resp->status / 100 == 2) {
    if (t->resp->received + bytes > t->req->into.size()) {
      t->resp->overflow = true;
      return 0;
    }
    std::memcpy(t->req->into.data() + t->resp->received, data, bytes);
    t->resp->received += bytes;
  } else if (t->resp->body.size() < (1u << 26)) {
    t->resp->body.append(data, bytes);
  }
  return bytes;
}

size_t OnHeader(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  std::string_view line(data, size * n);
  if (line.starts_with("HTTP/")) {
    t->resp->headers.clear();
    size_t sp = line.find(' ');
    if (sp != std::string_view::npos)
      t->resp->status = std::atol(std::string(line.substr(sp + 1, 3)).c_str());
    return size * n;
  }
  size_t colon = line.find(':');
  if (colon != std::string_view::npos) {
    std::string name(line.substr(0, colon));
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string_view v = line.substr(colon + 1);
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
    while (!v.empty() && (v.back() == '\r' || v.back() == '\n' || v.back() == ' '))
      v.remove_suffix(1);
    t->resp->headers[name] = std::string(v);
  }
  return size * n;
}

size_t OnRead(char* buffer, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t left = t->req->body.size() - t->sent;
  const size_t take = std::min(left, size * n);
  std::memcpy(buffer, t->req->body.data() + t->sent, take);
  t->sent += take;
  return take;
}

int OnSeek(void* user, curl_off_t offset, int origin) {
  auto* t = static_cast<Transfer*>(user);
  if (origin != SEEK_SET || offset < 0 || static_cast<uint64_t>(offset) > t->req->body.size()) {
    return CURL_SEEKFUNC_FAIL;
  }
  t->sent = static_cast<uint64_t>(offset);
  return CURL_SEEKFUNC_OK;
}

// Failures worth another try: the connection was refused, reset or cut, or
// timed out. A certificate that fails verification (or a bad URL) is not.
bool IsTransient(CURLcode rc) {
  switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
      return true;
    default:
      return false;
  }
}

struct CurlGlobal {
  CurlGlobal() { curl_global_init(CURL_GLOBAL_DEFAULT); }
};

class Client {
 public:
  explicit Client(S3Options o) : o_(std::move(o)) {
    static CurlGlobal global;
    std::string ep = o_.endpoint;
    while (!ep.empty() && ep.back() == '/') ep.pop_back();
    size_t scheme_end = ep.find("://");
    scheme_ = ep.substr(0, scheme_end);
    host_ = ep.substr(scheme_end + 3);
    std::string hostname = host_.substr(
        0, host_.rfind(':') == std::string::npos || host_.back() == ']' ? host_.size()
                                                                        : host_.rfind(':'));
    loopback_ = IsLoopbackHost(hostname);
    if (o_.path_style < 0)
      o_.path_style = o_.endpoint.find("amazonaws.com") == std::string::npos ? 1 : 0;
  }
  ~Client() {
    for (CURL* h : idle_) curl_easy_cleanup(h);
  }

  const S3Options& options() const { return o_; }
  const std::string& scheme() const { return scheme_; }
  bool loopback() const { return loopback_; }

  // One request, retried on 5xx, 429, timeouts and broken connections.
  // `what` names the operation and object for error messages.
  Result<Response> Send(const Request& req, const std::string& what) {
    std::mt19937_64 rng(std::random_device{}());
    std::string last;
    for (unsigned attempt = 0;; ++attempt) {
      Response resp;
      CURLcode rc = Perform(req, resp);
      bool retry = false;
      if (rc != CURLE_OK) {
        last = std::string("connection failed: ") + curl_easy_strerror(rc);
        if (resp.overflow) {
          return DataLossError(what + ": the server sent more bytes than the " +
                               std::to_string(req.into.size()) + " requested");
        }
        retry = IsTransient(rc);
      } else if (resp.status >= 500 || resp.status == 429) {
        last = Describe(resp);
        retry = true;
      } else {
        return resp;
      }
      if (!retry || attempt >= o_.max_retries) {
        return UnavailableError(what + ": " + last + " (after " + std::to_string(attempt + 1) +
                                " attempts)");
      }
      const uint64_t cap =
          std::min<uint64_t>(5000, uint64_t{o_.backoff_ms} << std::min(attempt, 16u));
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % (cap + 1)));
    }
  }

  static std::string Describe(const Response& r) {
    std::string code = XmlFirst(r.body, "Code"), message = XmlFirst(r.body, "Message");
    std::string s = "HTTP " + std::to_string(r.status);
    if (!code.empty()) s += " " + code;
    if (code.empty() && !r.body.empty() && r.body.find("<Error>") == std::string::npos) {
      std::string text = r.body.substr(0, 200);
      for (char& c : text) c = (c < 32 || c > 126) ? ' ' : c;
      s += ": " + text;
    }
    // A HEAD answer has no body to say why.
    if (code.empty() && r.status == 403)
      s += " Forbidden (the server refused the credentials or the signature)";
    if (!message.empty()) s += ": " + message;
    return s;
  }

 private:
  CURL* Acquire() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!idle_.empty()) {
        CURL* h = idle_.back();
        idle_.pop_back();
        return h;
      }
    }
    return curl_easy_init();
  }
  void Release(CURL* h) {
    std::lock_guard<std::mutex> lock(mu_);
    idle_.push_back(h);
  }

  // Kept whole past the function-size limit: one request with its retries: attempt, classify the
  // answer, back off; the loop shares the attempt state.
  //
  // NOLINTNEXTLINE(readability-function-size)
  CURLcode Perform(const Request& req, Response& resp) {
    std::string path = o_.path_style ? "/" + UriEncode(o_.bucket, false) : "";
    path += "/" + UriEncode(req.key, true);
    if (!o_.path_style && req.key.empty()) path = "/";
    const std::string host = o_.path_style ? host_ : o_.bucket + "." + host_;
    std::string url = scheme_ + "://" + host + path;
    std::vector<std::pair<std::string, std::string>> query = req.query;
    std::sort(query.begin(), query.end());
    for (size_t i = 0; i < query.size(); ++i) {
      url += i ? '&' : '?';
      url += UriEncode(query[i].first, false);
      if (!query[i].second.empty() || (query[i].first != "uploads" && query[i].first != "delete")) {
        url += "=" + UriEncode(query[i].second, false);
      }
    }
    SigV4Request sr;
    sr.method = req.method;
    sr.encoded_path = path;
    sr.query = query;
    sr.headers = req.headers;
    sr.headers.emplace_back("host", host);
    sr.payload_hash = Sha256Hex(
        std::string_view(reinterpret_cast<const char*>(req.body.data()), req.body.size()));
    sr.headers.emplace_back("x-amz-content-sha256", sr.payload_hash);
    SigV4Signature sig =
        SignV4(sr, {o_.access_key, o_.secret_key, o_.session_token}, o_.region, "s3", AmzDateNow());

    curl_slist* list = nullptr;
    for (const auto& [k, v] : sr.headers) {
      if (k != "host") list = curl_slist_append(list, (k + ": " + v).c_str());
    }
    for (const auto& [k, v] : sig.added_headers)
      list = curl_slist_append(list, (k + ": " + v).c_str());
    list = curl_slist_append(list, ("Authorization: " + sig.authorization).c_str());
    list = curl_slist_append(list, "Expect:");

    CURL* h = Acquire();
    curl_easy_reset(h);
    Transfer t{&req, &resp};
    curl_easy_setopt(h, CURLOPT_URL, url.c_str());
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, OnBody);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, OnHeader);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, o_.connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1024L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, o_.low_speed_timeout_s);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, o_.verify_tls ? 1L : 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, o_.verify_tls ? 2L : 0L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    // Large socket buffers: parts and ranges are megabytes.
    curl_easy_setopt(h, CURLOPT_UPLOAD_BUFFERSIZE, 2L << 20);
    curl_easy_setopt(h, CURLOPT_BUFFERSIZE, 1L << 20);
    if (req.head) {
      curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (req.method == "PUT") {
      curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(h, CURLOPT_READFUNCTION, OnRead);
      curl_easy_setopt(h, CURLOPT_READDATA, &t);
      curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, OnSeek);
      curl_easy_setopt(h, CURLOPT_SEEKDATA, &t);
      curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
    } else if (req.method == "POST") {
      // Without a type curl would send a form's, and servers parse forms.
      list = curl_slist_append(list, "Content-Type: application/xml");
      curl_easy_setopt(h, CURLOPT_HTTPHEADER, list);
      curl_easy_setopt(h, CURLOPT_POST, 1L);
      curl_easy_setopt(h, CURLOPT_POSTFIELDS, req.body.data());
      curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
    } else if (req.method != "GET") {
      curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, req.method.c_str());
    }
    CURLcode rc = curl_easy_perform(h);
    curl_slist_free_all(list);
    if (rc == CURLE_OK) {
      Release(h);
    } else {
      curl_easy_cleanup(h);  // a broken connection is not reused
    }
    return rc;
  }

  S3Options o_;
  std::string scheme_, host_;
  bool loopback_ = false;
  std::mutex mu_;
  std::vector<CURL*> idle_;
};

// Bytes of buffered parts across all open files.
class Budget {
 public:
  explicit Budget(uint64_t limit) : limit_(limit) {}
  // Takes n bytes, waiting while the budget is spent. Uploads in flight
  // free memory when they finish; when none is in flight, the budget is
  // held by parts still being filled, and another file's writer may yet
  // complete one, so this waits up to kStuck for that before it fails
  // (writes scattered over more parts than the budget holds).
  Status Acquire(uint64_t n, const std::string& what) {
    static constexpr auto kStuck = std::chrono::seconds(2);
    std::unique_lock<std::mutex> lock(mu_);
    auto stuck_since = std::chrono::steady_clock::now();
    while (used_ + n > limit_) {
      if (in_flight_ > 0) {
        cv_.wait(lock);
        stuck_since = std::chrono::steady_clock::now();
        continue;
      }
      if (cv_.wait_until(lock, stuck_since + kStuck) == std::cv_status::timeout &&
          used_ + n > limit_ && in_flight_ == 0) {
        return FailedPreconditionError(
            what + ": the memory budget of " + std::to_string(limit_) +
            " bytes (CKPT_S3_MEMORY_BUDGET) is held by " + std::to_string(used_) +
            " bytes of partly written parts and no upload is in flight; write the file in order, "
            "or raise the budget");
      }
    }
    used_ += n;
    return Status();
  }
  void Release(uint64_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    used_ -= n;
    cv_.notify_all();
  }
  void StartUpload() {
    std::lock_guard<std::mutex> lock(mu_);
    ++in_flight_;
  }
  void EndUpload(uint64_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    --in_flight_;
    used_ -= n;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t limit_, used_ = 0;
  int in_flight_ = 0;
};

// A fixed set of threads running part uploads.
class Pool {
 public:
  explicit Pool(unsigned n) {
    for (unsigned i = 0; i < n; ++i) threads_.emplace_back([this] { Run(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  void Submit(std::function<void()> f) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      tasks_.push_back(std::move(f));
    }
    cv_.notify_one();
  }

 private:
  void Run() {
    for (;;) {
      std::function<void()> f;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !tasks_.empty(); });
        if (tasks_.empty()) return;
        f = std::move(tasks_.front());
        tasks_.pop_front();
      }
      f();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::thread> threads_;
  bool stop_ = false;
};

struct Shared {
  explicit Shared(S3Options o)
      : client(o), budget(o.memory_budget), pool(std::max(1u, o.parallel)) {}
  Client client;
  Budget budget;
  Pool pool;
};

Status HttpError(const std::string& what, const Response& r) {
  std::string d = Client::Describe(r);
  if (r.status == 404) return NotFoundError(what + ": " + d);
  if (r.status == 412) return DataLossError(what + ": " + d);
  if (r.status == 403 || r.status == 400 || r.status == 409)
    return FailedPreconditionError(what + ": " + d);
  return IOError(what + ": " + d);
}

class S3ReadableFile final : public ReadableFile {
 public:
  S3ReadableFile(std::shared_ptr<Shared> s, std::string path, std::string key, uint64_t size,
                 std::string etag)
      : s_(std::move(s)),
        path_(std::move(path)),
        key_(std::move(key)),
        size_(size),
        etag_(std::move(etag)) {}
  uint64_t Size() const override { return size_; }
  const std::string& path() const override { return path_; }

  Status ReadAt(uint64_t offset, std::span<std::byte> dst) const override {
    CKPT_RETURN_IF_ERROR(CheckRange(offset, dst.size()));
    if (dst.empty()) return Status();
    const S3Options& o = s_->client.options();
    const uint64_t piece = std::max<uint64_t>(o.read_piece, 1 << 20);
    if (dst.size() <= 2 * piece || o.parallel <= 1) return Get(offset, dst);
    const uint64_t pieces = (dst.size() + piece - 1) / piece;
    std::atomic<uint64_t> next{0};
    std::mutex mu;
    Status first;
    auto work = [&] {
      for (uint64_t i; (i = next.fetch_add(1)) < pieces;) {
        const uint64_t begin = i * piece, n = std::min<uint64_t>(piece, dst.size() - begin);
        Status st = Get(offset + begin, dst.subspan(begin, n));
        if (!st.ok()) {
          std::lock_guard<std::mutex> lock(mu);
          if (first.ok()) first = st;
          next.store(pieces);
        }
      }
    };
    std::vector<std::thread> helpers;
    const uint64_t n_threads = std::min<uint64_t>(o.parallel, pieces);
    for (uint64_t i = 1; i < n_threads; ++i) helpers.emplace_back(work);
    work();
    for (auto& t : helpers) t.join();
    return first;
  }

  // No mappings: a caller that would map a whole file to pick pieces from
  // it falls back to ranged reads of just those pieces.
  Result<MappedRegion> Map(uint64_t offset, uint64_t length) const override {
    CKPT_RETURN_IF_ERROR(CheckRange(offset, length));
    return FailedPreconditionError("mapping " + Quote(path_) +
                                   ": the s3 storage cannot map (use ranged reads)");
  }

 private:
  Status Get(uint64_t offset, std::span<std::byte> dst) const {
    Request r;
    r.method = "GET";
    r.key = key_;
    r.headers.emplace_back(
        "range", "bytes=" + std::to_string(offset) + "-" + std::to_string(offset + dst.size() - 1));
    if (!etag_.empty()) r.headers.emplace_back("if-match", etag_);
    r.into = dst;
    const std::string what = "reading " + Quote(path_) + " bytes [" + std::to_string(offset) +
                             ", " + std::to_string(offset + dst.size()) + ")";
    CKPT_ASSIGN_OR_RETURN(Response resp, s_->client.Send(r, what));
    if (resp.status == 412) {
      return DataLossError(what + ": the object was replaced since it was opened (ETag " + etag_ +
                           ")");
    }
    if (resp.status / 100 != 2) return HttpError(what, resp);
    if (resp.received != dst.size()) {
      return DataLossError(what + ": got " + std::to_string(resp.received) + " bytes");
    }
    return Status();
  }

  Status CheckRange(uint64_t offset, uint64_t length) const {
    if (offset > size_ || length > size_ - offset) {
      return DataLossError("reading " + Quote(path_) + ": range [" + std::to_string(offset) + ", " +
                           std::to_string(offset + length) + ") is past the end of the " +
                           std::to_string(size_) + "-byte file");
    }
    return Status();
  }

  std::shared_ptr<Shared> s_;
  std::string path_, key_;
  uint64_t size_;
  std::string etag_;
};

// Buffers the file in parts of part_size bytes. A part whose bytes are all
// written is uploaded at once (in the background); the first part stays in
// memory until Close, so a header rewritten in place still lands; Close
// uploads what is left and completes the upload (or PUTs a file of one part).
class S3WritableFile final : public WritableFile {
 public:
  S3WritableFile(std::shared_ptr<Shared> s, std::string path, std::string key, bool exclusive)
      : s_(std::move(s)),
        path_(std::move(path)),
        key_(std::move(key)),
        exclusive_(exclusive),
        part_size_(std::max<uint64_t>(s_->client.options().part_size, 5ull << 20)) {}

  ~S3WritableFile() override {
    if (!closed_) Discard();
  }

  Status Append(std::span<const std::byte> data) override { return WriteAt(Size(), data); }

  Status WriteAt(uint64_t offset, std::span<const std::byte> data) override {
    std::lock_guard<std::mutex> lock(write_mu_);
    if (closed_) return FailedPreconditionError("writing " + Quote(path_) + ": file is closed");
    CKPT_RETURN_IF_ERROR(FirstError());
    uint64_t done = 0;
    while (done < data.size()) {
      const uint64_t at = offset + done;
      const uint64_t k = at / part_size_, in = at % part_size_;
      const uint64_t n = std::min<uint64_t>(part_size_ - in, data.size() - done);
      if (sent_.count(k)) {
        return FailedPreconditionError("writing " + Quote(path_) + ": bytes [" +
                                       std::to_string(at) + ", " + std::to_string(at + n) +
                                       ") were already uploaded in part " + std::to_string(k + 1));
      }
      auto it = parts_.find(k);
      if (it == parts_.end()) {
        Status room = s_->budget.Acquire(
            part_size_, "writing " + Quote(path_) + " bytes [" + std::to_string(at) + ", " +
                            std::to_string(at + n) + ") into part " + std::to_string(k + 1));
        if (!room.ok()) {
          // The file misses these bytes: Close must not publish it.
          std::lock_guard<std::mutex> guard(mu_);
          if (error_.ok()) error_ = room;
          return room;
        }
        it = parts_.emplace(k, NewPart()).first;
      }
      Part& p = it->second;
      std::memcpy(p.data.get() + in, data.data() + done, n);
      Cover(p, in, in + n);
      size_ = std::max(size_, at + n);
      done += n;
      if (k != 0 && p.covered == part_size_) CKPT_RETURN_IF_ERROR(Send(k, part_size_));
    }
    return Status();
  }

  Status Sync() override {
    if (closed_) return FailedPreconditionError("syncing " + Quote(path_) + ": file is closed");
    return FirstError();
  }

  Status Close() override {
    std::lock_guard<std::mutex> lock(write_mu_);
    if (closed_) return Status();
    closed_ = true;
    Status s = Finish();
    if (!s.ok()) Discard();
    return s;
  }

  uint64_t Size() const override {
    std::lock_guard<std::mutex> lock(write_mu_);
    return size_;
  }
  const std::string& path() const override { return path_; }

 private:
  struct Part {
    // Not zeroed when allocated: Send zeroes the bytes never written.
    std::unique_ptr<std::byte[]> data;
    std::map<uint64_t, uint64_t> ranges;  // written [begin, end) within the part
    uint64_t covered = 0;
  };

  Part NewPart() const {
    Part p;
    p.data = std::make_unique_for_overwrite<std::byte[]>(part_size_);
    return p;
  }

  // Zeroes the bytes of [0, length) that were never written (holes read
  // as zeros, as in a sparse file).
  static void ZeroHoles(Part& p, uint64_t length) {
    uint64_t at = 0;
    for (const auto& [begin, end] : p.ranges) {
      if (begin >= length) break;
      if (begin > at) std::memset(p.data.get() + at, 0, begin - at);
      at = std::max(at, end);
    }
    if (at < length) std::memset(p.data.get() + at, 0, length - at);
  }

  static void Cover(Part& p, uint64_t begin, uint64_t end) {
    auto it = p.ranges.upper_bound(begin);
    if (it != p.ranges.begin() && std::prev(it)->second >= begin) {
      --it;
      begin = it->first;
    }
    while (it != p.ranges.end() && it->first <= end) {
      end = std::max(end, it->second);
      p.covered -= it->second - it->first;
      it = p.ranges.erase(it);
    }
    p.ranges.emplace(begin, end);
    p.covered += end - begin;
  }

  Status FirstError() {
    std::lock_guard<std::mutex> lock(mu_);
    return error_;
  }

  Status Start() {
    if (!upload_id_.empty()) return Status();
    Request r;
    r.method = "POST";
    r.key = key_;
    r.query.emplace_back("uploads", "");
    const std::string what = "starting the multipart upload of " + Quote(path_);
    CKPT_ASSIGN_OR_RETURN(Response resp, s_->client.Send(r, what));
    if (resp.status / 100 != 2) return HttpError(what, resp);
    upload_id_ = XmlFirst(resp.body, "UploadId");
    if (upload_id_.empty()) return IOError(what + ": the response names no UploadId");
    return Status();
  }

  // Uploads part k (its first `length` bytes) in the background.
  Status Send(uint64_t k, uint64_t length) {
    CKPT_RETURN_IF_ERROR(Start());
    auto node = parts_.extract(k);
    sent_.insert(k);
    ZeroHoles(node.mapped(), length);
    std::shared_ptr<std::byte[]> data = std::move(node.mapped().data);
    s_->budget.StartUpload();
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++pending_;
    }
    s_->pool.Submit([this, k, length, data]() mutable {
      Request r;
      r.method = "PUT";
      r.key = key_;
      r.query = {{"partNumber", std::to_string(k + 1)}, {"uploadId", upload_id_}};
      // No Content-MD5: the payload's SHA-256 is signed, and the store
      // refuses a body that does not match it.
      r.body = std::span<const std::byte>(data.get(), length);
      const std::string what = "uploading part " + std::to_string(k + 1) + " of " + Quote(path_);
      Result<Response> resp = s_->client.Send(r, what);
      Status st;
      std::string etag;
      if (!resp.ok()) {
        st = resp.status();
      } else if (resp->status / 100 != 2) {
        st = HttpError(what, *resp);
      } else {
        etag = resp->headers["etag"];
      }
      data.reset();
      s_->budget.EndUpload(part_size_);
      std::lock_guard<std::mutex> lock(mu_);
      if (!st.ok() && error_.ok()) error_ = st;
      etags_[k + 1] = etag;
      if (--pending_ == 0) done_cv_.notify_all();
    });
    return Status();
  }

  void WaitForUploads() {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return pending_ == 0; });
  }

  void ReleaseBuffers() {
    s_->budget.Release(part_size_ * parts_.size());
    parts_.clear();
  }

  Status Finish() {
    CKPT_RETURN_IF_ERROR(FirstError());
    if (upload_id_.empty() && size_ <= part_size_) {
      Request r;
      r.method = "PUT";
      r.key = key_;
      auto it = parts_.find(0);
      if (it != parts_.end()) ZeroHoles(it->second, size_);
      r.body = it == parts_.end() ? std::span<const std::byte>()
                                  : std::span<const std::byte>(it->second.data.get(), size_);
      r.headers.emplace_back("content-md5", Base64Md5(r.body));
      if (exclusive_) r.headers.emplace_back("if-none-match", "*");
      const std::string what = "writing " + Quote(path_);
      Result<Response> resp = s_->client.Send(r, what);
      ReleaseBuffers();
      if (!resp.ok()) return resp.status();
      if (resp->status == 412)
        return AlreadyExistsError("creating " + Quote(path_) + ": the object exists");
      if (resp->status / 100 != 2) return HttpError(what, *resp);
      return Status();
    }
    const uint64_t last = (size_ - 1) / part_size_;
    for (uint64_t k = 0; k <= last; ++k) {
      if (sent_.count(k)) continue;
      Status st = FirstError();
      if (st.ok() && !parts_.count(k)) {
        st = s_->budget.Acquire(part_size_, "closing " + Quote(path_) + ": part " +
                                                std::to_string(k + 1) + " (never written)");
        if (st.ok()) parts_.emplace(k, NewPart());
      }
      if (st.ok()) st = Send(k, k == last ? size_ - k * part_size_ : part_size_);
      if (!st.ok()) {
        ReleaseBuffers();
        WaitForUploads();
        return st;
      }
    }
    WaitForUploads();
    CKPT_RETURN_IF_ERROR(FirstError());
    std::string xml = "<CompleteMultipartUpload>";
    for (const auto& [n, etag] : etags_) {
      xml += "<Part><PartNumber>" + std::to_string(n) + "</PartNumber><ETag>" + XmlEscape(etag) +
             "</ETag></Part>";
    }
    xml += "</CompleteMultipartUpload>";
    Request r;
    r.method = "POST";
    r.key = key_;
    r.query.emplace_back("uploadId", upload_id_);
    r.body = AsBytes(xml);
    if (exclusive_) r.headers.emplace_back("if-none-match", "*");
    const std::string what = "completing the multipart upload of " + Quote(path_);
    CKPT_ASSIGN_OR_RETURN(Response resp, s_->client.Send(r, what));
    if (resp.status == 412)
      return AlreadyExistsError("creating " + Quote(path_) + ": the object exists");
    // S3 can answer 200 with an <Error> body on a failed completion.
    if (resp.status / 100 != 2 || resp.body.find("<Error>") != std::string::npos)
      return HttpError(what, resp);
    upload_id_.clear();
    return Status();
  }

  // Drops buffered parts and aborts an open multipart upload: nothing is
  // published.
  void Discard() {
    closed_ = true;
    WaitForUploads();
    ReleaseBuffers();
    if (upload_id_.empty()) return;
    Request r;
    r.method = "DELETE";
    r.key = key_;
    r.query.emplace_back("uploadId", upload_id_);
    s_->client.Send(r, "aborting the multipart upload of " + Quote(path_)).status().IgnoreError();
    upload_id_.clear();
  }

  std::shared_ptr<Shared> s_;
  std::string path_, key_;
  bool exclusive_;
  const uint64_t part_size_;
  mutable std::mutex write_mu_;     // guards the writer's state against concurrent WriteAt
  std::map<uint64_t, Part> parts_;  // buffered, by part index
  std::set<uint64_t> sent_;
  uint64_t size_ = 0;
  bool closed_ = false;
  std::string upload_id_;
  std::mutex mu_;  // guards what upload tasks touch
  std::condition_variable done_cv_;
  int pending_ = 0;
  std::map<uint64_t, std::string> etags_;  // by part number
  Status error_;
};

class S3Storage final : public Storage {
 public:
  explicit S3Storage(S3Options o) : s_(std::make_shared<Shared>(std::move(o))) {}

  std::string_view name() const override { return "s3"; }
  bool CanRename() const override { return false; }

  Result<std::unique_ptr<ReadableFile>> OpenRead(const std::string& path) override {
    const std::string key = KeyOf(path);
    const std::string what = "opening " + Quote(path);
    CKPT_ASSIGN_OR_RETURN(Response resp, Head(key, what));
    if (resp.status == 404) {
      CKPT_ASSIGN_OR_RETURN(bool dir, IsDir(key, what));
      if (dir) return FailedPreconditionError(what + ": not a regular file (a key prefix)");
      return NotFoundError(what + ": no such object in bucket " + s_->client.options().bucket);
    }
    if (resp.status / 100 != 2) return HttpError(what, resp);
    return std::unique_ptr<ReadableFile>(new S3ReadableFile(
        s_, path, key, std::strtoull(resp.headers["content-length"].c_str(), nullptr, 10),
        resp.headers["etag"]));
  }

  Result<std::unique_ptr<WritableFile>> OpenWrite(const std::string& path,
                                                  CreateMode mode) override {
    const std::string key = KeyOf(path);
    if (key.empty()) return InvalidArgumentError("creating " + Quote(path) + ": no object key");
    if (mode == CreateMode::kExclusive) {
      const std::string what = "creating " + Quote(path);
      CKPT_ASSIGN_OR_RETURN(Response resp, Head(key, what));
      if (resp.status / 100 == 2) return AlreadyExistsError(what + ": the object exists");
      if (resp.status != 404) return HttpError(what, resp);
    }
    return std::unique_ptr<WritableFile>(
        new S3WritableFile(s_, path, key, mode == CreateMode::kExclusive));
  }

  Result<std::vector<DirEntry>> List(const std::string& dir) override {
    const std::string key = KeyOf(dir);
    const std::string prefix = key.empty() ? "" : key + "/";
    const std::string what = "listing " + Quote(dir);
    std::vector<DirEntry> out;
    bool any = false;
    std::string token;
    do {
      Request r;
      r.method = "GET";
      r.query = {{"list-type", "2"}, {"prefix", prefix}, {"delimiter", "/"}};
      if (!token.empty()) r.query.emplace_back("continuation-token", token);
      CKPT_ASSIGN_OR_RETURN(Response resp, s_->client.Send(r, what));
      if (resp.status / 100 != 2) return HttpError(what, resp);
      for (std::string_view c : XmlAll(resp.body, "Contents")) {
        any = true;
        std::string name = XmlFirst(c, "Key").substr(prefix.size());
        if (name.empty()) continue;  // the directory's own marker
        out.push_back(
            {name, EntryType::kFile, std::strtoull(XmlFirst(c, "Size").c_str(), nullptr, 10)});
      }
      for (std::string_view c : XmlAll(resp.body, "CommonPrefixes")) {
        any = true;
        std::string name = XmlFirst(c, "Prefix").substr(prefix.size());
        if (!name.empty() && name.back() == '/') name.pop_back();
        out.push_back({name, EntryType::kDirectory, 0});
      }
      token = XmlFirst(resp.body, "IsTruncated") == "true"
                  ? XmlFirst(resp.body, "NextContinuationToken")
                  : "";
    } while (!token.empty());
    if (!any && !key.empty()) return NotFoundError(what + ": no such key prefix");
    std::sort(out.begin(), out.end(),
              [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
    return out;
  }

  Result<DirEntry> Stat(const std::string& path) override {
    const std::string key = KeyOf(path);
    const std::string what = "stat of " + Quote(path);
    if (!key.empty()) {
      CKPT_ASSIGN_OR_RETURN(Response resp, Head(key, what));
      if (resp.status / 100 == 2) {
        return DirEntry{std::string(Basename(key)), EntryType::kFile,
                        std::strtoull(resp.headers["content-length"].c_str(), nullptr, 10)};
      }
      if (resp.status != 404) return HttpError(what, resp);
    }
    CKPT_ASSIGN_OR_RETURN(bool dir, IsDir(key, what));
    if (!dir) return NotFoundError(what + ": no such object or key prefix");
    return DirEntry{std::string(Basename(key)), EntryType::kDirectory, 0};
  }

  Status Remove(const std::string& path) override {
    const std::string key = KeyOf(path);
    const std::string what = "removing " + Quote(path);
    CKPT_ASSIGN_OR_RETURN(Response head, Head(key, what));
    if (head.status / 100 == 2) return Delete(key, what);
    if (head.status != 404) return HttpError(what, head);
    Result<std::vector<DirEntry>> entries = List(path);
    if (!entries.ok()) {
      if (entries.status().code() == StatusCode::kNotFound)
        return NotFoundError(what + ": no such object");
      return entries.status();
    }
    if (!entries->empty()) return FailedPreconditionError(what + ": the key prefix is not empty");
    return Delete(key + "/", what);
  }

  Status Rename(const std::string& from, const std::string& to) override {
    return FailedPreconditionError(
        "renaming " + Quote(from) + " to " + Quote(to) +
        ": object storage has no rename (the s3 backend publishes by upload)");
  }

  Status MakeDirs(const std::string& path) override {
    const std::string key = KeyOf(path);
    const std::string what = "creating directory " + Quote(path);
    if (key.empty()) return Status();
    // No object may sit where a directory is asked for.
    std::string sofar;
    for (std::string_view part : Split(key)) {
      sofar += sofar.empty() ? std::string(part) : "/" + std::string(part);
      CKPT_ASSIGN_OR_RETURN(Response resp, Head(sofar, what));
      if (resp.status / 100 == 2)
        return FailedPreconditionError(what + ": " + Quote(sofar) + " is a file");
    }
    Request r;
    r.method = "PUT";
    r.key = key + "/";
    CKPT_ASSIGN_OR_RETURN(Response resp, s_->client.Send(r, what));
    if (resp.status / 100 != 2) return HttpError(what, resp);
    return Status();
  }

  Status SyncDir(const std::string&) override { return Status(); }

  // Deletes every object under `dir` in DeleteObjects batches of 1000.
  // Directory markers ("a/b/") go first: a removal cut short never leaves an
  // empty directory behind (one that would look like a complete, empty
  // checkpoint once its other objects are gone).
  Status DeletePrefix(const std::string& dir) {
    const std::string key = KeyOf(dir);
    const std::string prefix = key.empty() ? "" : key + "/";
    const std::string what = "removing everything under " + Quote(dir);
    std::vector<std::string> markers, objects;
    std::string token;
    do {
      Request r;
      r.method = "GET";
      r.query = {{"list-type", "2"}, {"prefix", prefix}};
      if (!token.empty()) r.query.emplace_back("continuation-token", token);
      CKPT_ASSIGN_OR_RETURN(Response resp, s_->client.Send(r, what));
      if (resp.status / 100 != 2) return HttpError(what, resp);
      for (std::string_view c : XmlAll(resp.body, "Contents")) {
        std::string k = XmlFirst(c, "Key");
        (k.ends_with('/') ? markers : objects).push_back(std::move(k));
      }
      token = XmlFirst(resp.body, "IsTruncated") == "true"
                  ? XmlFirst(resp.body, "NextContinuationToken")
                  : "";
    } while (!token.empty());
    for (const std::vector<std::string>* keys : {&markers, &objects}) {
      for (size_t begin = 0; begin < keys->size(); begin += 1000) {
        std::string xml = "<Delete><Quiet>true</Quiet>";
        for (size_t i = begin; i < std::min(keys->size(), begin + 1000); ++i) {
          xml += "<Object><Key>" + XmlEscape((*keys)[i]) + "</Key></Object>";
        }
        xml += "</Delete>";
        Request d;
        d.method = "POST";
        d.query.emplace_back("delete", "");
        d.body = AsBytes(xml);
        d.headers.emplace_back("content-md5", Base64Md5(d.body));
        CKPT_ASSIGN_OR_RETURN(Response dr, s_->client.Send(d, what));
        if (dr.status / 100 != 2) return HttpError(what, dr);
        if (!XmlAll(dr.body, "Error").empty()) {
          return IOError(what + ": " + XmlFirst(dr.body, "Key") + ": " + XmlFirst(dr.body, "Code") +
                         " " + XmlFirst(dr.body, "Message"));
        }
      }
    }
    return Status();
  }

  Status RemoveTree(const std::string& path) override {
    const std::string key = KeyOf(path);
    if (key.empty()) return InvalidArgumentError("refusing to remove the whole bucket");
    CKPT_RETURN_IF_ERROR(DeletePrefix(path));
    Result<Response> head = Head(key, "removing " + Quote(path));
    if (!head.ok()) return head.status();
    if (head->status / 100 == 2) return Delete(key, "removing " + Quote(path));
    return Status();
  }

 private:
  static std::vector<std::string_view> Split(std::string_view key) {
    std::vector<std::string_view> out;
    size_t pos = 0;
    while (pos <= key.size()) {
      size_t next = key.find('/', pos);
      if (next == std::string_view::npos) next = key.size();
      if (next > pos) out.push_back(key.substr(pos, next - pos));
      pos = next + 1;
    }
    return out;
  }

  Result<Response> Head(const std::string& key, const std::string& what) {
    Request r;
    r.method = "HEAD";
    r.head = true;
    r.key = key;
    return s_->client.Send(r, what);
  }

  Result<bool> IsDir(const std::string& key, const std::string& what) {
    Request r;
    r.method = "GET";
    r.query = {{"list-type", "2"}, {"prefix", key.empty() ? "" : key + "/"}, {"max-keys", "1"}};
    CKPT_ASSIGN_OR_RETURN(Response resp, s_->client.Send(r, what));
    if (resp.status / 100 != 2) return HttpError(what, resp);
    return key.empty() || XmlFirst(resp.body, "KeyCount") != "0";
  }

  Status Delete(const std::string& key, const std::string& what) {
    Request r;
    r.method = "DELETE";
    r.key = key;
    CKPT_ASSIGN_OR_RETURN(Response resp, s_->client.Send(r, what));
    if (resp.status / 100 != 2) return HttpError(what, resp);
    return Status();
  }

  std::shared_ptr<Shared> s_;
};

}  // namespace

Result<std::shared_ptr<Storage>> NewS3Storage(S3Options options) {
  if (options.bucket.empty()) return InvalidArgumentError("S3 storage: no bucket given");
  // A writer holds its first part until Close and fills the next: two parts.
  const uint64_t part = std::max<uint64_t>(options.part_size, 5ull << 20);
  if (options.memory_budget < 2 * part) {
    return InvalidArgumentError("S3 storage: the memory budget of " +
                                std::to_string(options.memory_budget) +
                                " bytes (CKPT_S3_MEMORY_BUDGET) is less than two parts of " +
                                std::to_string(part) + " bytes (CKPT_S3_PART_SIZE)");
  }
  if (options.endpoint.empty())
    options.endpoint = "https://s3." + options.region + ".amazonaws.com";
  const size_t scheme_end = options.endpoint.find("://");
  if (scheme_end == std::string::npos) {
    return InvalidArgumentError("S3 endpoint \"" + options.endpoint +
                                "\": expected http:// or https://");
  }
  const std::string scheme = options.endpoint.substr(0, scheme_end);
  if (scheme != "http" && scheme != "https") {
    return InvalidArgumentError("S3 endpoint \"" + options.endpoint +
                                "\": expected http:// or https://");
  }
  std::string host = options.endpoint.substr(scheme_end + 3);
  host = host.substr(0, host.find('/'));
  if (host.starts_with("[")) {
    host = host.substr(0, host.find(']') + 1);
  } else {
    host = host.substr(0, host.find(':'));
  }
  if (scheme == "http" && !IsLoopbackHost(host) && !options.allow_http) {
    return FailedPreconditionError(
        "S3 endpoint \"" + options.endpoint +
        "\": plain HTTP is only used for loopback endpoints (set CKPT_S3_ALLOW_HTTP=1 to "
        "allow it)");
  }
  if (options.access_key.empty() || options.secret_key.empty()) {
    return FailedPreconditionError(
        "S3 storage for bucket " + options.bucket +
        ": no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or a "
        "profile in ~/.aws/credentials)");
  }
  auto storage = std::make_shared<S3Storage>(options);
  return std::shared_ptr<Storage>(storage);
}

}  // namespace ckpt
