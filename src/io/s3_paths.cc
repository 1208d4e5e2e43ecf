// S3 settings from the environment and the AWS shared files, the MSC YAML
// config, and the one path → Storage factory.
#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

#include "ckpt/s3.h"

namespace ckpt {
namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

std::string Home() { return Env("HOME"); }

std::string Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return std::string(s);
}

// One section of an INI-style AWS file: "[name]" or "[profile name]".
std::map<std::string, std::string> IniSection(const std::string& file, const std::string& profile) {
  std::map<std::string, std::string> out;
  std::ifstream in(file);
  if (!in) return out;
  std::string line;
  bool inside = false;
  while (std::getline(in, line)) {
    std::string t = Trim(line);
    if (t.empty() || t[0] == '#' || t[0] == ';') continue;
    if (t.front() == '[' && t.back() == ']') {
      std::string name = Trim(std::string_view(t).substr(1, t.size() - 2));
      if (name.starts_with("profile ")) name = Trim(std::string_view(name).substr(8));
      inside = name == profile;
      continue;
    }
    size_t eq = t.find('=');
    if (inside && eq != std::string::npos)
      out[Trim(std::string_view(t).substr(0, eq))] = Trim(std::string_view(t).substr(eq + 1));
  }
  return out;
}

Result<uint64_t> EnvBytes(const char* name, uint64_t fallback) {
  std::string v = Env(name);
  if (v.empty()) return fallback;
  char* end = nullptr;
  unsigned long long n = std::strtoull(v.c_str(), &end, 10);
  if (end == v.c_str() || *end != '\0' || n == 0) {
    return InvalidArgumentError(std::string(name) + "=\"" + v +
                                "\": expected a positive whole number");
  }
  return static_cast<uint64_t>(n);
}

// ---- The MSC YAML config: nested maps of scalars, indented by spaces. ----

struct Yaml {
  std::map<std::string, std::string> values;  // "a.b.c" → scalar
};

Result<Yaml> ParseYaml(const std::string& file, const std::string& text) {
  Yaml y;
  std::vector<std::pair<size_t, std::string>> stack;  // indent, key
  std::istringstream in(text);
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    size_t hash = line.find(" #");
    if (hash != std::string::npos) line.resize(hash);
    std::string t = Trim(line);
    if (t.empty() || t[0] == '#' || t == "---") continue;
    const size_t indent = line.find_first_not_of(' ');
    size_t colon = t.find(':');
    if (colon == std::string::npos) {
      return InvalidArgumentError(file + ":" + std::to_string(lineno) +
                                  ": expected 'key: value', got \"" + t + "\"");
    }
    std::string key = Trim(std::string_view(t).substr(0, colon));
    std::string value = Trim(std::string_view(t).substr(colon + 1));
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') &&
        value.back() == value.front()) {
      value = value.substr(1, value.size() - 2);
    }
    while (!stack.empty() && stack.back().first >= indent) stack.pop_back();
    std::string full;
    for (const auto& [_, k] : stack) full += k + ".";
    full += key;
    if (value.empty()) {
      stack.emplace_back(indent, key);
    } else {
      y.values[full] = value;
    }
  }
  return y;
}

std::mutex cache_mu;
std::map<std::string, std::shared_ptr<Storage>> cache;  // by bucket and settings

Result<std::shared_ptr<Storage>> Cached(const S3Options& o) {
  const std::string id = o.bucket + "|" + o.endpoint + "|" + o.region + "|" + o.access_key + "|" +
                         o.secret_key + "|" + std::to_string(o.part_size) + "|" +
                         std::to_string(o.memory_budget) + "|" + std::to_string(o.parallel) + "|" +
                         std::to_string(o.max_retries) + "|" +
                         std::to_string(o.low_speed_timeout_s);
  std::lock_guard<std::mutex> lock(cache_mu);
  auto it = cache.find(id);
  if (it != cache.end()) return it->second;
  CKPT_ASSIGN_OR_RETURN(std::shared_ptr<Storage> s, NewS3Storage(o));
  cache.emplace(id, s);
  return s;
}

Status ApplyTransferEnv(S3Options& o) {
  CKPT_ASSIGN_OR_RETURN(o.part_size, EnvBytes("CKPT_S3_PART_SIZE", o.part_size));
  CKPT_ASSIGN_OR_RETURN(o.memory_budget, EnvBytes("CKPT_S3_MEMORY_BUDGET", o.memory_budget));
  CKPT_ASSIGN_OR_RETURN(uint64_t parallel, EnvBytes("CKPT_S3_PARALLEL", o.parallel));
  o.parallel = static_cast<unsigned>(std::min<uint64_t>(parallel, 64));
  CKPT_ASSIGN_OR_RETURN(uint64_t attempts, EnvBytes("CKPT_S3_MAX_ATTEMPTS", o.max_retries + 1));
  o.max_retries = static_cast<unsigned>(std::min<uint64_t>(attempts, 100) - 1);
  CKPT_ASSIGN_OR_RETURN(uint64_t stall,
                        EnvBytes("CKPT_S3_LOW_SPEED_TIMEOUT", o.low_speed_timeout_s));
  o.low_speed_timeout_s = static_cast<long>(std::clamp<uint64_t>(stall, 1, 3600));
  if (Env("CKPT_S3_ALLOW_HTTP") == "1") o.allow_http = true;
  return Status();
}

Result<StoragePath> ResolveMsc(const std::string& path) {
  const std::string rest = path.substr(6);
  const size_t slash = rest.find('/');
  const std::string profile = rest.substr(0, slash);
  const std::string key = slash == std::string::npos ? "" : rest.substr(slash + 1);
  std::string file = Env("MSC_CONFIG");
  if (file.empty()) file = Home() + "/.msc_config.yaml";
  std::ifstream in(file);
  if (!in) {
    return NotFoundError(path + ": no MSC config at \"" + file +
                         "\" (set MSC_CONFIG or write ~/.msc_config.yaml)");
  }
  std::stringstream text;
  text << in.rdbuf();
  CKPT_ASSIGN_OR_RETURN(Yaml y, ParseYaml(file, text.str()));
  const std::string p = "profiles." + profile + ".";
  auto get = [&](const std::string& k) {
    auto it = y.values.find(p + k);
    return it == y.values.end() ? std::string() : it->second;
  };
  const std::string type = get("storage_provider.type");
  if (type.empty())
    return NotFoundError(path + ": profile '" + profile + "' is not in the MSC config \"" + file +
                         "\"");
  if (type != "s3") {
    return InvalidArgumentError(path + ": profile '" + profile + "' in \"" + file +
                                "\" has storage_provider type '" + type +
                                "'; only s3 is supported");
  }
  std::string base = get("storage_provider.options.base_path");
  while (!base.empty() && base.front() == '/') base.erase(0, 1);
  if (base.empty())
    return InvalidArgumentError(path + ": profile '" + profile + "' has no base_path in \"" + file +
                                "\"");
  const size_t bslash = base.find('/');
  const std::string bucket = base.substr(0, bslash);
  const std::string prefix = bslash == std::string::npos ? "" : base.substr(bslash + 1);
  CKPT_ASSIGN_OR_RETURN(S3Options o, S3OptionsFromEnvironment(bucket));
  if (std::string ep = get("storage_provider.options.endpoint_url"); !ep.empty()) o.endpoint = ep;
  if (std::string r = get("storage_provider.options.region_name"); !r.empty()) o.region = r;
  if (std::string ak = get("credentials_provider.options.access_key"); !ak.empty()) {
    o.access_key = ak;
    o.secret_key = get("credentials_provider.options.secret_key");
    o.session_token = get("credentials_provider.options.session_token");
  }
  CKPT_ASSIGN_OR_RETURN(std::shared_ptr<Storage> s, Cached(o));
  return StoragePath{s, "/" + JoinPath(prefix, key)};
}

}  // namespace

Result<S3Options> S3OptionsFromEnvironment(const std::string& bucket) {
  S3Options o;
  o.bucket = bucket;
  std::string profile = Env("AWS_PROFILE");
  if (profile.empty()) profile = "default";
  std::string config = Env("AWS_CONFIG_FILE");
  if (config.empty()) config = Home() + "/.aws/config";
  std::string creds = Env("AWS_SHARED_CREDENTIALS_FILE");
  if (creds.empty()) creds = Home() + "/.aws/credentials";
  auto cfg = IniSection(config, profile);
  auto crd = IniSection(creds, profile);
  auto pick = [&](const char* env, const std::string& key) {
    std::string v = Env(env);
    if (!v.empty()) return v;
    if (crd.count(key)) return crd[key];
    return cfg.count(key) ? cfg[key] : std::string();
  };
  o.access_key = pick("AWS_ACCESS_KEY_ID", "aws_access_key_id");
  o.secret_key = pick("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key");
  o.session_token = pick("AWS_SESSION_TOKEN", "aws_session_token");
  std::string region = pick("AWS_REGION", "region");
  if (region.empty()) region = Env("AWS_DEFAULT_REGION");
  if (!region.empty()) o.region = region;
  o.endpoint = pick("AWS_ENDPOINT_URL", "endpoint_url");
  CKPT_RETURN_IF_ERROR(ApplyTransferEnv(o));
  return o;
}

bool IsObjectStoragePath(const std::string& path) {
  return path.starts_with("s3://") || path.starts_with("msc://");
}

Result<StoragePath> ResolveStoragePath(const std::string& path) {
  if (path.starts_with("msc://")) return ResolveMsc(path);
  if (!path.starts_with("s3://")) return StoragePath{PosixStorage(), path};
  const std::string rest = path.substr(5);
  const size_t slash = rest.find('/');
  const std::string bucket = rest.substr(0, slash);
  if (bucket.empty())
    return InvalidArgumentError("\"" + path + "\": no bucket (expected s3://bucket/prefix)");
  CKPT_ASSIGN_OR_RETURN(S3Options o, S3OptionsFromEnvironment(bucket));
  CKPT_ASSIGN_OR_RETURN(std::shared_ptr<Storage> s, Cached(o));
  return StoragePath{s,
                     "/" + (slash == std::string::npos ? std::string() : rest.substr(slash + 1))};
}

}  // namespace ckpt
