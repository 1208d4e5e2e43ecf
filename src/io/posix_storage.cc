// POSIX backend. Reads use pread (safe from many threads at once) or mmap;
// writes use write/pwrite. Every errno goes through ErrnoToStatus.
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "ckpt/storage.h"
#include "io/errno_status.h"

namespace ckpt {
namespace {

std::string Quote(const std::string& path) { return "\"" + path + "\""; }

std::string RangeString(uint64_t offset, uint64_t length) {
  return "[" + std::to_string(offset) + ", " + std::to_string(offset + length) + ")";
}

class PosixReadableFile final : public ReadableFile {
 public:
  PosixReadableFile(std::string path, int fd, uint64_t size)
      : path_(std::move(path)), fd_(fd), size_(size) {}
  ~PosixReadableFile() override { ::close(fd_); }

  uint64_t Size() const override { return size_; }
  const std::string& path() const override { return path_; }

  Status ReadAt(uint64_t offset, std::span<std::byte> dst) const override {
    CKPT_RETURN_IF_ERROR(CheckRange(offset, dst.size()));
    size_t done = 0;
    while (done < dst.size()) {
      ssize_t n = ::pread(fd_, dst.data() + done, dst.size() - done,
                          static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoToStatus(errno, "reading " + Quote(path_) + " at " +
                                        RangeString(offset + done, dst.size() - done));
      }
      if (n == 0) {
        return DataLossError("reading " + Quote(path_) + ": file ended at byte " +
                             std::to_string(offset + done) + " while reading " +
                             RangeString(offset, dst.size()) + " (it shrank after open)");
      }
      done += static_cast<size_t>(n);
    }
    return Status();
  }

  Result<MappedRegion> Map(uint64_t offset, uint64_t length) const override {
    CKPT_RETURN_IF_ERROR(CheckRange(offset, length));
    if (length == 0) return MappedRegion{};
    static const uint64_t kPage = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    uint64_t start = offset / kPage * kPage;
    uint64_t map_len = length + (offset - start);
    void* p = ::mmap(nullptr, map_len, PROT_READ, MAP_SHARED, fd_, static_cast<off_t>(start));
    if (p == MAP_FAILED) {
      return ErrnoToStatus(errno, "mapping " + Quote(path_) + " " + RangeString(offset, length));
    }
    std::shared_ptr<const void> owner(p, [map_len](const void* q) {
      ::munmap(const_cast<void*>(q), map_len);
    });
    const std::byte* base = static_cast<const std::byte*>(p) + (offset - start);
    return MappedRegion{std::span<const std::byte>(base, length), std::move(owner)};
  }

 private:
  Status CheckRange(uint64_t offset, uint64_t length) const {
    if (offset > size_ || length > size_ - offset) {
      return DataLossError("reading " + Quote(path_) + ": range " + RangeString(offset, length) +
                           " is past the end of the " + std::to_string(size_) + "-byte file");
    }
    return Status();
  }

  std::string path_;
  int fd_;
  uint64_t size_;
};

class PosixWritableFile final : public WritableFile {
 public:
  PosixWritableFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~PosixWritableFile() override { Close().IgnoreError(); }

  const std::string& path() const override { return path_; }
  uint64_t Size() const override { return size_; }

  Status Append(std::span<const std::byte> data) override { return WriteAt(size_, data); }

  Status WriteAt(uint64_t offset, std::span<const std::byte> data) override {
    if (fd_ < 0) return FailedPreconditionError("writing " + Quote(path_) + ": file is closed");
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::pwrite(fd_, data.data() + done, data.size() - done,
                           static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoToStatus(errno, "writing " + Quote(path_) + " at " +
                                        RangeString(offset + done, data.size() - done));
      }
      done += static_cast<size_t>(n);
    }
    size_ = std::max(size_, offset + data.size());
    return Status();
  }

  Status Sync() override {
    if (fd_ < 0) return FailedPreconditionError("syncing " + Quote(path_) + ": file is closed");
    if (::fsync(fd_) != 0) return ErrnoToStatus(errno, "syncing " + Quote(path_));
    return Status();
  }

  Status Close() override {
    if (fd_ < 0) return Status();
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) return ErrnoToStatus(errno, "closing " + Quote(path_));
    return Status();
  }

 private:
  std::string path_;
  int fd_;
  uint64_t size_ = 0;
};

EntryType TypeOf(mode_t mode) {
  if (S_ISREG(mode)) return EntryType::kFile;
  if (S_ISDIR(mode)) return EntryType::kDirectory;
  return EntryType::kOther;
}

class PosixStorageImpl final : public Storage {
 public:
  std::string_view name() const override { return "posix"; }

  Result<std::unique_ptr<ReadableFile>> OpenRead(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoToStatus(errno, "opening " + Quote(path));
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      Status s = ErrnoToStatus(errno, "stat of " + Quote(path));
      ::close(fd);
      return s;
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      return FailedPreconditionError("opening " + Quote(path) + ": not a regular file");
    }
    return std::unique_ptr<ReadableFile>(
        new PosixReadableFile(path, fd, static_cast<uint64_t>(st.st_size)));
  }

  Result<std::unique_ptr<WritableFile>> OpenWrite(const std::string& path,
                                                  CreateMode mode) override {
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC;
    flags |= mode == CreateMode::kExclusive ? O_EXCL : O_TRUNC;
    int fd = ::open(path.c_str(), flags, 0644);
    if (fd < 0) return ErrnoToStatus(errno, "creating " + Quote(path));
    return std::unique_ptr<WritableFile>(new PosixWritableFile(path, fd));
  }

  Result<std::vector<DirEntry>> List(const std::string& dir) override {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return ErrnoToStatus(errno, "listing " + Quote(dir));
    std::vector<DirEntry> out;
    errno = 0;
    while (struct dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n == "." || n == "..") continue;
      DirEntry entry{n, EntryType::kOther, 0};
      struct stat st;
      if (::fstatat(::dirfd(d), e->d_name, &st, 0) == 0) {
        entry.type = TypeOf(st.st_mode);
        if (entry.type == EntryType::kFile) entry.size = static_cast<uint64_t>(st.st_size);
      }
      out.push_back(std::move(entry));
      errno = 0;
    }
    int err = errno;
    ::closedir(d);
    if (err != 0) return ErrnoToStatus(err, "listing " + Quote(dir));
    std::sort(out.begin(), out.end(),
              [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
    return out;
  }

  Result<DirEntry> Stat(const std::string& path) override {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return ErrnoToStatus(errno, "stat of " + Quote(path));
    DirEntry e{std::string(Basename(path)), TypeOf(st.st_mode), 0};
    if (e.type == EntryType::kFile) e.size = static_cast<uint64_t>(st.st_size);
    return e;
  }

  Status Remove(const std::string& path) override {
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0) return ErrnoToStatus(errno, "removing " + Quote(path));
    int rc = S_ISDIR(st.st_mode) ? ::rmdir(path.c_str()) : ::unlink(path.c_str());
    if (rc != 0) return ErrnoToStatus(errno, "removing " + Quote(path));
    return Status();
  }

  Status Rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) {
      return ErrnoToStatus(errno, "renaming " + Quote(from) + " to " + Quote(to));
    }
    return Status();
  }

  Status MakeDirs(const std::string& path) override {
    if (path.empty()) return InvalidArgumentError("creating a directory: empty path");
    std::string prefix;
    size_t pos = 0;
    while (pos <= path.size()) {
      size_t next = path.find('/', pos);
      if (next == std::string::npos) next = path.size();
      prefix = path.substr(0, next);
      pos = next + 1;
      if (prefix.empty()) continue;  // leading '/'
      if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
        return ErrnoToStatus(errno, "creating directory " + Quote(prefix));
      }
    }
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return ErrnoToStatus(errno, "creating " + Quote(path));
    if (!S_ISDIR(st.st_mode)) {
      return FailedPreconditionError("creating directory " + Quote(path) +
                                     ": a non-directory exists there");
    }
    return Status();
  }

  Status Symlink(const std::string& target, const std::string& link) override {
    if (::symlink(target.c_str(), link.c_str()) != 0) {
      return ErrnoToStatus(errno, "creating link " + Quote(link) + " to " + Quote(target));
    }
    return Status();
  }

  Result<std::string> ReadLink(const std::string& path) override {
    std::string buf(256, '\0');
    for (;;) {
      ssize_t n = ::readlink(path.c_str(), buf.data(), buf.size());
      if (n < 0) {
        if (errno == EINVAL) return InvalidArgumentError(Quote(path) + " is not a symbolic link");
        return ErrnoToStatus(errno, "reading link " + Quote(path));
      }
      if (static_cast<size_t>(n) < buf.size()) {
        buf.resize(static_cast<size_t>(n));
        return buf;
      }
      buf.resize(buf.size() * 2);
    }
  }

  Status SyncDir(const std::string& dir) override {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ErrnoToStatus(errno, "opening directory " + Quote(dir) + " to sync it");
    Status s;
    if (::fsync(fd) != 0) s = ErrnoToStatus(errno, "syncing directory " + Quote(dir));
    ::close(fd);
    return s;
  }
};

}  // namespace

std::shared_ptr<Storage> PosixStorage() {
  static const std::shared_ptr<Storage> instance = std::make_shared<PosixStorageImpl>();
  return instance;
}

}  // namespace ckpt
