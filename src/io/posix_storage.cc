// POSIX backend. Reads use pread (safe from many threads at once) or mmap;
// writes use write/pwrite. Every errno goes through ErrnoToStatus.
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <list>
#include <mutex>

#include "ckpt/storage.h"
#include "io/errno_status.h"

namespace ckpt {
namespace {

std::string Quote(const std::string& path) { return "\"" + path + "\""; }

std::string RangeString(uint64_t offset, uint64_t length) {
  return "[" + std::to_string(offset) + ", " + std::to_string(offset + length) + ")";
}

// Opens `path` for reading without ever blocking: a FIFO or a device at a
// name ckpt reads would block open() (or the first read) until a writer
// appears, so the type is checked on a non-blocking descriptor first and
// anything but a regular file is refused.
Result<int> OpenRegularFile(const std::string& path, struct stat* st) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) return ErrnoToStatus(errno, "opening " + Quote(path));
  if (::fstat(fd, st) != 0) {
    Status s = ErrnoToStatus(errno, "stat of " + Quote(path));
    ::close(fd);
    return s;
  }
  if (!S_ISREG(st->st_mode)) {
    ::close(fd);
    const char* kind = S_ISFIFO(st->st_mode)                          ? "a FIFO"
                       : S_ISDIR(st->st_mode)                         ? "a directory"
                       : S_ISSOCK(st->st_mode)                        ? "a socket"
                       : S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode) ? "a device"
                                                                      : "not a regular file";
    return FailedPreconditionError("opening " + Quote(path) + ": not a regular file (" + kind +
                                   ")");
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
    Status s = ErrnoToStatus(errno, "opening " + Quote(path));
    ::close(fd);
    return s;
  }
  return fd;
}

class PosixReadableFile;

// Bounds the descriptors that open ReadableFiles hold, process-wide: a
// checkpoint of thousands of rank files read by several threads would
// otherwise run out of descriptors (EMFILE). A file's descriptor is pinned
// while a read or map uses it; idle ones beyond the budget are closed, least
// recently used first, and reopened on the next read. A reopened file must
// be the same file (device and inode): one replaced or removed meanwhile is
// DataLoss, never other bytes. All state below is guarded by `mu`.
class ReadFdPool {
 public:
  static ReadFdPool& Get() {
    static ReadFdPool* pool = new ReadFdPool();  // never destroyed: files may outlive statics
    return *pool;
  }
  size_t budget() const { return budget_; }
  // Takes ownership of a freshly opened descriptor of `f` (idle).
  void Adopt(PosixReadableFile* f);
  // The descriptor of `f`, pinned until Release.
  Result<int> Acquire(PosixReadableFile* f);
  void Release(PosixReadableFile* f);
  void Forget(PosixReadableFile* f);

 private:
  ReadFdPool() {
    struct rlimit rl;
    uint64_t soft = kMaxOpenReadFiles * 4;
    if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) soft = rl.rlim_cur;
    budget_ =
        static_cast<size_t>(std::clamp<uint64_t>(soft / 4, kMinOpenReadFiles, kMaxOpenReadFiles));
  }
  void MakeRoom(size_t keep);  // closes idle descriptors while more than `keep` are open

  std::mutex mu_;
  std::list<PosixReadableFile*> idle_;  // front: least recently used
  size_t open_ = 0;
  size_t budget_;
};

class PosixReadableFile final : public ReadableFile {
 public:
  PosixReadableFile(std::string path, int fd, const struct stat& st)
      : path_(std::move(path)),
        size_(static_cast<uint64_t>(st.st_size)),
        dev_(st.st_dev),
        ino_(st.st_ino),
        fd_(fd) {
    ReadFdPool::Get().Adopt(this);
  }
  ~PosixReadableFile() override { ReadFdPool::Get().Forget(this); }

  uint64_t Size() const override { return size_; }
  const std::string& path() const override { return path_; }

  Status ReadAt(uint64_t offset, std::span<std::byte> dst) const override {
    CKPT_RETURN_IF_ERROR(CheckRange(offset, dst.size()));
    if (dst.empty()) return Status();
    CKPT_ASSIGN_OR_RETURN(int fd, Pin());
    Status s = ReadWithFd(fd, offset, dst);
    Unpin();
    return s;
  }

  Result<MappedRegion> Map(uint64_t offset, uint64_t length) const override {
    CKPT_RETURN_IF_ERROR(CheckRange(offset, length));
    if (length == 0) return MappedRegion{};
    static const uint64_t kPage = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    uint64_t start = offset / kPage * kPage;
    uint64_t map_len = length + (offset - start);
    CKPT_ASSIGN_OR_RETURN(int fd, Pin());
    // The mapping stays valid after the descriptor is closed.
    void* p = ::mmap(nullptr, map_len, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(start));
    const int err = errno;
    Unpin();
    if (p == MAP_FAILED) {
      return ErrnoToStatus(err, "mapping " + Quote(path_) + " " + RangeString(offset, length));
    }
    std::shared_ptr<const void> owner(
        p, [map_len](const void* q) { ::munmap(const_cast<void*>(q), map_len); });
    const std::byte* base = static_cast<const std::byte*>(p) + (offset - start);
    return MappedRegion{std::span<const std::byte>(base, length), std::move(owner)};
  }

 private:
  friend class ReadFdPool;

  Result<int> Pin() const {
    return ReadFdPool::Get().Acquire(const_cast<PosixReadableFile*>(this));
  }
  void Unpin() const { ReadFdPool::Get().Release(const_cast<PosixReadableFile*>(this)); }

  // Opens the file again after the pool closed its descriptor.
  Result<int> Reopen() const {
    struct stat st;
    Result<int> fd = OpenRegularFile(path_, &st);
    if (!fd.ok()) {
      return DataLossError("reopening " + Quote(path_) +
                           " (closed to bound open files): " + fd.status().message());
    }
    if (st.st_dev != dev_ || st.st_ino != ino_) {
      ::close(*fd);
      return DataLossError("reopening " + Quote(path_) +
                           " (closed to bound open files): it was replaced since it was opened");
    }
    return fd;
  }

  Status ReadWithFd(int fd, uint64_t offset, std::span<std::byte> dst) const {
    size_t done = 0;
    while (done < dst.size()) {
      ssize_t n =
          ::pread(fd, dst.data() + done, dst.size() - done, static_cast<off_t>(offset + done));
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

  Status CheckRange(uint64_t offset, uint64_t length) const {
    if (offset > size_ || length > size_ - offset) {
      return DataLossError("reading " + Quote(path_) + ": range " + RangeString(offset, length) +
                           " is past the end of the " + std::to_string(size_) + "-byte file");
    }
    return Status();
  }

  const std::string path_;
  const uint64_t size_;
  const dev_t dev_;
  const ino_t ino_;
  // Guarded by the pool's mutex.
  int fd_;
  uint32_t users_ = 0;
  bool idle_ = false;
  std::list<PosixReadableFile*>::iterator idle_pos_;
};

void ReadFdPool::MakeRoom(size_t keep) {
  while (open_ > keep && !idle_.empty()) {
    PosixReadableFile* victim = idle_.front();
    idle_.pop_front();
    victim->idle_ = false;
    ::close(victim->fd_);
    victim->fd_ = -1;
    --open_;
  }
}

void ReadFdPool::Adopt(PosixReadableFile* f) {
  std::lock_guard<std::mutex> lock(mu_);
  ++open_;
  f->idle_pos_ = idle_.insert(idle_.end(), f);
  f->idle_ = true;
  // The newest file is at the back, so it is the last to go.
  MakeRoom(budget_);
}

Result<int> ReadFdPool::Acquire(PosixReadableFile* f) {
  std::lock_guard<std::mutex> lock(mu_);
  if (f->fd_ < 0) {
    MakeRoom(budget_ > 0 ? budget_ - 1 : 0);
    CKPT_ASSIGN_OR_RETURN(f->fd_, f->Reopen());
    ++open_;
  } else if (f->idle_) {
    idle_.erase(f->idle_pos_);
    f->idle_ = false;
  }
  ++f->users_;
  return f->fd_;
}

void ReadFdPool::Release(PosixReadableFile* f) {
  std::lock_guard<std::mutex> lock(mu_);
  if (--f->users_ == 0) {
    f->idle_pos_ = idle_.insert(idle_.end(), f);
    f->idle_ = true;
    MakeRoom(budget_);  // pinned descriptors may have pushed the count over
  }
}

void ReadFdPool::Forget(PosixReadableFile* f) {
  std::lock_guard<std::mutex> lock(mu_);
  if (f->idle_) idle_.erase(f->idle_pos_);
  f->idle_ = false;
  if (f->fd_ >= 0) {
    ::close(f->fd_);
    f->fd_ = -1;
    --open_;
  }
}

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
      ssize_t n =
          ::pwrite(fd_, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
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
    struct stat st;
    CKPT_ASSIGN_OR_RETURN(int fd, OpenRegularFile(path, &st));
    return std::unique_ptr<ReadableFile>(new PosixReadableFile(path, fd, st));
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
    struct stat st;
    if (::lstat(from.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return RenameDirectory(from, to);
    if (::rename(from.c_str(), to.c_str()) != 0) {
      return ErrnoToStatus(errno, "renaming " + Quote(from) + " to " + Quote(to));
    }
    return Status();
  }

  // A directory is published under a name nothing holds: rename(2) would
  // silently replace an empty directory created there meanwhile.
  Status RenameDirectory(const std::string& from, const std::string& to) {
    const std::string what = "renaming " + Quote(from) + " to " + Quote(to);
    if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0)
      return Status();
    if (errno == EEXIST)
      return AlreadyExistsError(what + ": the target exists (a directory never replaces one)");
    if (errno != EINVAL && errno != ENOSYS) return ErrnoToStatus(errno, what);
    // The filesystem cannot refuse atomically: check, then rename.
    struct stat st;
    if (::lstat(to.c_str(), &st) == 0) {
      return AlreadyExistsError(what + ": the target exists (a directory never replaces one)");
    }
    if (::rename(from.c_str(), to.c_str()) != 0) return ErrnoToStatus(errno, what);
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
