// In-memory backend for tests. One mutex guards the namespace; file contents
// are immutable snapshots (shared_ptr<const Bytes>) so readers and mappings
// stay valid and unchanged while a writer keeps writing. A writer publishes
// its bytes on Sync and Close, as a kernel page cache would make them visible.
#include <algorithm>
#include <map>
#include <mutex>
#include <set>

#include "ckpt/storage.h"

namespace ckpt {
namespace {

using Bytes = std::vector<std::byte>;
using Snapshot = std::shared_ptr<const Bytes>;

std::string Quote(const std::string& p) { return "\"" + p + "\""; }

// "/a/b" from "a//b/", "/a/./b", "/x/../a/b".
std::string Normalize(std::string_view path) {
  std::vector<std::string_view> parts;
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t next = path.find('/', pos);
    if (next == std::string_view::npos) next = path.size();
    std::string_view part = path.substr(pos, next - pos);
    pos = next + 1;
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      if (!parts.empty()) parts.pop_back();
      continue;
    }
    parts.push_back(part);
  }
  std::string out;
  for (std::string_view p : parts) {
    out += '/';
    out += p;
  }
  return out.empty() ? "/" : out;
}

std::string Parent(const std::string& norm) {
  size_t slash = norm.rfind('/');
  return slash == 0 ? "/" : norm.substr(0, slash);
}

class MemoryReadableFile final : public ReadableFile {
 public:
  MemoryReadableFile(std::string path, Snapshot data)
      : path_(std::move(path)), data_(std::move(data)) {}
  uint64_t Size() const override { return data_->size(); }
  const std::string& path() const override { return path_; }

  Status ReadAt(uint64_t offset, std::span<std::byte> dst) const override {
    CKPT_RETURN_IF_ERROR(CheckRange(offset, dst.size()));
    std::copy_n(data_->data() + offset, dst.size(), dst.data());
    return Status();
  }

  Result<MappedRegion> Map(uint64_t offset, uint64_t length) const override {
    CKPT_RETURN_IF_ERROR(CheckRange(offset, length));
    return MappedRegion{std::span<const std::byte>(data_->data() + offset, length), data_};
  }

 private:
  Status CheckRange(uint64_t offset, uint64_t length) const {
    if (offset > data_->size() || length > data_->size() - offset) {
      return DataLossError("reading " + Quote(path_) + ": range [" + std::to_string(offset) + ", " +
                           std::to_string(offset + length) + ") is past the end of the " +
                           std::to_string(data_->size()) + "-byte file");
    }
    return Status();
  }
  std::string path_;
  Snapshot data_;
};

class MemoryStorageImpl;

class MemoryWritableFile final : public WritableFile {
 public:
  MemoryWritableFile(std::shared_ptr<MemoryStorageImpl> fs, std::string path, std::string key)
      : fs_(std::move(fs)), path_(std::move(path)), key_(std::move(key)) {}
  ~MemoryWritableFile() override { Close().IgnoreError(); }
  const std::string& path() const override { return path_; }
  uint64_t Size() const override { return closed_ ? closed_size_ : buf_.size(); }

  Status Append(std::span<const std::byte> data) override { return WriteAt(buf_.size(), data); }
  Status WriteAt(uint64_t offset, std::span<const std::byte> data) override {
    if (closed_) return FailedPreconditionError("writing " + Quote(path_) + ": file is closed");
    uint64_t end = offset + data.size();
    if (end < offset) return InvalidArgumentError("writing " + Quote(path_) + ": offset overflow");
    if (end > buf_.size()) buf_.resize(end);
    std::copy(data.begin(), data.end(), buf_.begin() + static_cast<ptrdiff_t>(offset));
    return Status();
  }
  Status Sync() override;
  Status Close() override;

 private:
  std::shared_ptr<MemoryStorageImpl> fs_;
  std::string path_;
  std::string key_;
  Bytes buf_;
  bool closed_ = false;
  uint64_t closed_size_ = 0;
};

class MemoryStorageImpl final : public Storage,
                                public std::enable_shared_from_this<MemoryStorageImpl> {
 public:
  MemoryStorageImpl() { dirs_.insert("/"); }
  std::string_view name() const override { return "memory"; }

  Result<std::unique_ptr<ReadableFile>> OpenRead(const std::string& path) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::string key = Normalize(path);
    auto it = files_.find(key);
    if (it == files_.end()) {
      if (dirs_.count(key)) {
        return FailedPreconditionError("opening " + Quote(path) + ": not a regular file");
      }
      return NotFoundError("opening " + Quote(path) + ": no such file");
    }
    return std::unique_ptr<ReadableFile>(new MemoryReadableFile(path, it->second));
  }

  Result<std::unique_ptr<WritableFile>> OpenWrite(const std::string& path,
                                                  CreateMode mode) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::string key = Normalize(path);
    if (!dirs_.count(Parent(key))) {
      return NotFoundError("creating " + Quote(path) + ": parent directory does not exist");
    }
    if (dirs_.count(key)) {
      return FailedPreconditionError("creating " + Quote(path) + ": is a directory");
    }
    if (mode == CreateMode::kExclusive && files_.count(key)) {
      return AlreadyExistsError("creating " + Quote(path) + ": file exists");
    }
    files_[key] = std::make_shared<const Bytes>();
    return std::unique_ptr<WritableFile>(new MemoryWritableFile(shared_from_this(), path, key));
  }

  Result<std::vector<DirEntry>> List(const std::string& dir) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::string key = Normalize(dir);
    if (!dirs_.count(key)) {
      if (files_.count(key))
        return FailedPreconditionError("listing " + Quote(dir) + ": not a directory");
      return NotFoundError("listing " + Quote(dir) + ": no such directory");
    }
    std::string prefix = key == "/" ? "/" : key + "/";
    std::vector<DirEntry> out;
    auto direct_child = [&](const std::string& k) -> std::string {
      if (k.size() <= prefix.size() || k.compare(0, prefix.size(), prefix) != 0) return "";
      std::string rest = k.substr(prefix.size());
      return rest.find('/') == std::string::npos ? rest : "";
    };
    for (const auto& [k, data] : files_) {
      std::string child = direct_child(k);
      if (!child.empty()) out.push_back({child, EntryType::kFile, data->size()});
    }
    for (const std::string& k : dirs_) {
      std::string child = direct_child(k);
      if (!child.empty()) out.push_back({child, EntryType::kDirectory, 0});
    }
    std::sort(out.begin(), out.end(),
              [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
    return out;
  }

  Result<DirEntry> Stat(const std::string& path) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::string key = Normalize(path);
    std::string base(Basename(key));
    if (auto it = files_.find(key); it != files_.end()) {
      return DirEntry{base, EntryType::kFile, it->second->size()};
    }
    if (dirs_.count(key)) return DirEntry{base, EntryType::kDirectory, 0};
    return NotFoundError("stat of " + Quote(path) + ": no such file or directory");
  }

  Status Remove(const std::string& path) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::string key = Normalize(path);
    if (files_.erase(key)) return Status();
    if (!dirs_.count(key)) return NotFoundError("removing " + Quote(path) + ": no such file");
    if (key == "/") return FailedPreconditionError("removing the root directory");
    if (HasChildren(key)) {
      return FailedPreconditionError("removing " + Quote(path) + ": directory not empty");
    }
    dirs_.erase(key);
    return Status();
  }

  Status Rename(const std::string& from, const std::string& to) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::string src = Normalize(from), dst = Normalize(to);
    std::string what = "renaming " + Quote(from) + " to " + Quote(to);
    if (!dirs_.count(Parent(dst))) return NotFoundError(what + ": target directory does not exist");
    if (auto it = files_.find(src); it != files_.end()) {
      if (dirs_.count(dst)) return FailedPreconditionError(what + ": target is a directory");
      Snapshot data = it->second;
      files_.erase(it);
      files_[dst] = std::move(data);
      return Status();
    }
    if (!dirs_.count(src)) return NotFoundError(what + ": no such file or directory");
    if (src == dst) return Status();
    if (dst.compare(0, src.size() + 1, src + "/") == 0) {
      return InvalidArgumentError(what + ": target is inside the source");
    }
    if (files_.count(dst)) return FailedPreconditionError(what + ": target is a file");
    if (dirs_.count(dst))
      return AlreadyExistsError(what + ": the target exists (a directory never replaces one)");
    MoveTree(src, dst);
    return Status();
  }

  Status MakeDirs(const std::string& path) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::string key = Normalize(path);
    std::vector<std::string> chain;
    for (std::string k = key; k != "/"; k = Parent(k)) chain.push_back(k);
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
      if (files_.count(*it)) {
        return FailedPreconditionError("creating directory " + Quote(path) + ": " + Quote(*it) +
                                       " is a file");
      }
      dirs_.insert(*it);
    }
    return Status();
  }

  Status SyncDir(const std::string& dir) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!dirs_.count(Normalize(dir))) {
      return NotFoundError("syncing directory " + Quote(dir) + ": no such directory");
    }
    return Status();
  }

  // Called by writers: replaces the file's contents if the file still exists
  // under the name it was created with.
  void Publish(const std::string& key, Snapshot data) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = files_.find(key);
    if (it != files_.end()) it->second = std::move(data);
  }

 private:
  bool HasChildren(const std::string& dir) const {
    std::string prefix = dir + "/";
    auto f = files_.lower_bound(prefix);
    if (f != files_.end() && f->first.compare(0, prefix.size(), prefix) == 0) return true;
    auto d = dirs_.lower_bound(prefix);
    return d != dirs_.end() && d->compare(0, prefix.size(), prefix) == 0;
  }

  void MoveTree(const std::string& src, const std::string& dst) {
    std::string prefix = src + "/";
    std::map<std::string, Snapshot> files;
    for (auto& [k, v] : files_) {
      if (k.compare(0, prefix.size(), prefix) == 0)
        files[dst + k.substr(src.size())] = v;
      else
        files[k] = v;
    }
    std::set<std::string> dirs;
    for (const std::string& k : dirs_) {
      if (k == src)
        dirs.insert(dst);
      else if (k.compare(0, prefix.size(), prefix) == 0)
        dirs.insert(dst + k.substr(src.size()));
      else
        dirs.insert(k);
    }
    files_ = std::move(files);
    dirs_ = std::move(dirs);
  }

  std::mutex mu_;
  std::map<std::string, Snapshot> files_;
  std::set<std::string> dirs_;
};

Status MemoryWritableFile::Sync() {
  if (closed_) return FailedPreconditionError("syncing " + Quote(path_) + ": file is closed");
  fs_->Publish(key_, std::make_shared<const Bytes>(buf_));
  return Status();
}

Status MemoryWritableFile::Close() {
  if (closed_) return Status();
  closed_ = true;
  closed_size_ = buf_.size();
  fs_->Publish(key_, std::make_shared<const Bytes>(std::move(buf_)));
  buf_.clear();
  return Status();
}

}  // namespace

std::shared_ptr<Storage> NewMemoryStorage() { return std::make_shared<MemoryStorageImpl>(); }

}  // namespace ckpt
