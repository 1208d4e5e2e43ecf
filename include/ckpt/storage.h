// Storage: the one interface through which ckpt touches files.
//
// Backends: POSIX files (PosixStorage) and an in-process memory filesystem
// (NewMemoryStorage) for tests; both pass the same conformance suite. Paths
// are '/'-separated strings; a backend interprets them (the POSIX backend as
// ordinary paths). All methods are thread-safe unless a comment says
// otherwise; a single WritableFile must be used by one thread at a time.
//
// Committed data is never written in place. To publish a file, use
// AtomicFileWriter: it writes a temporary file in the destination directory,
// fsyncs it, renames it over the destination and fsyncs the directory, so a
// reader sees either the old file or the complete new one.
#ifndef CKPT_STORAGE_H_
#define CKPT_STORAGE_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/status.h"

namespace ckpt {

// A read-only view of bytes that stays valid while `owner` is alive.
struct MappedRegion {
  std::span<const std::byte> bytes;
  std::shared_ptr<const void> owner;
};

// The POSIX backend never blocks opening a file to read (a FIFO, socket or
// device is FailedPrecondition) and holds at most kMaxOpenReadFiles
// descriptors for open ReadableFiles at once (at most a quarter of
// RLIMIT_NOFILE, at least kMinOpenReadFiles): idle ones are closed, least
// recently used first, and reopened on the next read. A reader keeps its
// snapshot of a file replaced after open while its descriptor is held; one
// reopened after the file was replaced or removed is DataLoss.
inline constexpr uint64_t kMaxOpenReadFiles = 256;
inline constexpr uint64_t kMinOpenReadFiles = 16;

class ReadableFile {
 public:
  virtual ~ReadableFile() = default;
  // Size when the file was opened.
  virtual uint64_t Size() const = 0;
  // Fills all of `dst` from `offset`. A range past the end of the file is
  // DataLoss naming the range and the file size. Safe to call concurrently.
  virtual Status ReadAt(uint64_t offset, std::span<std::byte> dst) const = 0;
  // Maps [offset, offset + length) read-only without copying.
  // FailedPrecondition when the backend cannot map; DataLoss past the end.
  virtual Result<MappedRegion> Map(uint64_t offset, uint64_t length) const = 0;
  virtual const std::string& path() const = 0;
};

class WritableFile {
 public:
  virtual ~WritableFile() = default;
  // Appends at the current end of the file.
  virtual Status Append(std::span<const std::byte> data) = 0;
  // Writes at an absolute offset; the file grows as needed (holes read as
  // zeros). Later Appends continue from the largest offset written.
  virtual Status WriteAt(uint64_t offset, std::span<const std::byte> data) = 0;
  // Makes everything written so far durable.
  virtual Status Sync() = 0;
  // Releases the file. Idempotent; further writes fail.
  virtual Status Close() = 0;
  virtual uint64_t Size() const = 0;
  virtual const std::string& path() const = 0;
};

enum class EntryType { kFile, kDirectory, kOther };

struct DirEntry {
  std::string name;  // base name
  EntryType type = EntryType::kOther;
  uint64_t size = 0;  // bytes, for files
};

enum class CreateMode {
  kTruncate,   // create, or truncate an existing file
  kExclusive,  // AlreadyExists when the file exists
};

class Storage {
 public:
  virtual ~Storage() = default;

  // Short name of the backend ("posix", "memory").
  virtual std::string_view name() const = 0;
  // NotFound when the file does not exist.
  virtual Result<std::unique_ptr<ReadableFile>> OpenRead(const std::string& path) = 0;
  // NotFound when the parent directory does not exist.
  virtual Result<std::unique_ptr<WritableFile>> OpenWrite(const std::string& path,
                                                          CreateMode mode) = 0;
  // Entries of a directory sorted by name, without "." and "..".
  virtual Result<std::vector<DirEntry>> List(const std::string& dir) = 0;
  // NotFound when nothing exists at `path`.
  virtual Result<DirEntry> Stat(const std::string& path) = 0;
  // Removes a file or an empty directory. NotFound when absent.
  virtual Status Remove(const std::string& path) = 0;
  // Atomically renames a file or directory, replacing an existing file. A
  // directory never replaces anything, not even an empty directory
  // (AlreadyExists), so a published directory cannot swallow one that
  // appeared at its name meanwhile.
  virtual Status Rename(const std::string& from, const std::string& to) = 0;
  // Creates a directory and its missing parents; OK when it exists.
  virtual Status MakeDirs(const std::string& path) = 0;
  // Makes the directory's entries (creations, renames, removals) durable.
  virtual Status SyncDir(const std::string& dir) = 0;
  // Creates a symbolic link at `link` whose target is `target`, verbatim.
  // AlreadyExists when `link` exists. Backends without links (memory)
  // return FailedPrecondition.
  virtual Status Symlink(const std::string& target, const std::string& link);
  // The target of the link at `path`: NotFound when nothing is there,
  // InvalidArgument when it is not a link, FailedPrecondition on backends
  // without links.
  virtual Result<std::string> ReadLink(const std::string& path);
  // Whether Rename works. Object stores (s3) cannot rename: a file is
  // published by the upload that writes it, and a directory is published by
  // its commit object (docs/format.md, "Object storage").
  virtual bool CanRename() const { return true; }
  // Removes a file or a directory tree; OK when nothing exists. The default
  // walks the tree; an object store deletes what a listing finds in batches.
  virtual Status RemoveTree(const std::string& path);
};

// A Storage that forwards every call to another one: a wrapper (fault
// injection, hooks, counting) derives from it and overrides only the calls
// it changes, so a method added to Storage reaches the wrapped backend
// instead of silently taking Storage's default.
class StorageWrapper : public Storage {
 public:
  explicit StorageWrapper(std::shared_ptr<Storage> target) : target_(std::move(target)) {}
  Storage& target() const { return *target_; }

  std::string_view name() const override { return target_->name(); }
  Result<std::unique_ptr<ReadableFile>> OpenRead(const std::string& path) override {
    return target_->OpenRead(path);
  }
  Result<std::unique_ptr<WritableFile>> OpenWrite(const std::string& path,
                                                  CreateMode mode) override {
    return target_->OpenWrite(path, mode);
  }
  Result<std::vector<DirEntry>> List(const std::string& dir) override { return target_->List(dir); }
  Result<DirEntry> Stat(const std::string& path) override { return target_->Stat(path); }
  Status Remove(const std::string& path) override { return target_->Remove(path); }
  Status Rename(const std::string& from, const std::string& to) override {
    return target_->Rename(from, to);
  }
  Status MakeDirs(const std::string& path) override { return target_->MakeDirs(path); }
  Status SyncDir(const std::string& dir) override { return target_->SyncDir(dir); }
  Status Symlink(const std::string& target, const std::string& link) override {
    return target_->Symlink(target, link);
  }
  Result<std::string> ReadLink(const std::string& path) override { return target_->ReadLink(path); }

 private:
  std::shared_ptr<Storage> target_;
};

// The same for files a wrapper hands out.
class ReadableFileWrapper : public ReadableFile {
 public:
  explicit ReadableFileWrapper(std::unique_ptr<ReadableFile> target) : target_(std::move(target)) {}
  uint64_t Size() const override { return target_->Size(); }
  Status ReadAt(uint64_t offset, std::span<std::byte> dst) const override {
    return target_->ReadAt(offset, dst);
  }
  Result<MappedRegion> Map(uint64_t offset, uint64_t length) const override {
    return target_->Map(offset, length);
  }
  const std::string& path() const override { return target_->path(); }

 protected:
  ReadableFile& target() const { return *target_; }

 private:
  std::unique_ptr<ReadableFile> target_;
};

class WritableFileWrapper : public WritableFile {
 public:
  explicit WritableFileWrapper(std::unique_ptr<WritableFile> target) : target_(std::move(target)) {}
  Status Append(std::span<const std::byte> data) override { return target_->Append(data); }
  Status WriteAt(uint64_t offset, std::span<const std::byte> data) override {
    return target_->WriteAt(offset, data);
  }
  Status Sync() override { return target_->Sync(); }
  Status Close() override { return target_->Close(); }
  uint64_t Size() const override { return target_->Size(); }
  const std::string& path() const override { return target_->path(); }

 protected:
  WritableFile& target() const { return *target_; }

 private:
  std::unique_ptr<WritableFile> target_;
};

// The process-wide POSIX backend (stateless).
std::shared_ptr<Storage> PosixStorage();
// A fresh, empty in-memory filesystem whose root "/" exists.
std::shared_ptr<Storage> NewMemoryStorage();

// ---- Helpers built only on the interface above. ----

std::string JoinPath(std::string_view a, std::string_view b);
std::string_view Dirname(std::string_view path);  // "." when there is no '/'
std::string_view Basename(std::string_view path);

Result<bool> Exists(Storage& storage, const std::string& path);
// Side files (JSON indexes, manifests, configs, small state) are read whole;
// a larger one is FailedPrecondition naming the file and both sizes, so a
// huge or sparse file cannot exhaust memory. Copy big files with CopyFile.
inline constexpr uint64_t kMaxSideFileBytes = 256ull << 20;
Result<std::string> ReadFileToString(Storage& storage, const std::string& path,
                                     uint64_t max_bytes = kMaxSideFileBytes);
// Publishes a copy of the file `from` at `to` through AtomicFileWriter,
// streamed in bounded pieces (any size, constant memory).
Status CopyFile(Storage& storage, const std::string& from, const std::string& to);
// ReadAt split into pieces of at least `min_piece` bytes read by up to
// `threads` threads at once (0: one per hardware thread, at most 8). Page-cache
// copies are CPU-bound, so large reads go faster on several cores.
Status ReadAtParallel(const ReadableFile& file, uint64_t offset, std::span<std::byte> dst,
                      unsigned threads = 0, uint64_t min_piece = 8ull << 20);
// Removes a file or a directory tree. OK when nothing exists.
Status RemoveAll(Storage& storage, const std::string& path);
// Publishes `contents` at `path` through AtomicFileWriter.
Status WriteFileAtomically(Storage& storage, const std::string& path, std::string_view contents);

// Writes a file that appears at its destination only on Commit().
//
// Protocol: create "<dir>/.<name>.tmp-<unique>" exclusively → caller writes →
// Commit: fsync file → close → rename over `<dir>/<name>` → fsync <dir>.
// Destroying an uncommitted writer (or a failed Commit) removes the temporary
// file, so a crash or error never leaves a partial file at the destination.
// On a storage that cannot rename, the writer writes the destination itself
// (temp_path() == path()): the object appears only when Commit closes it
// (the upload completes), and an aborted writer discards its upload.
class AtomicFileWriter {
 public:
  static Result<std::unique_ptr<AtomicFileWriter>> Create(Storage& storage, std::string path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  Status Append(std::span<const std::byte> data);
  Status WriteAt(uint64_t offset, std::span<const std::byte> data);
  uint64_t Size() const;
  // Syncs, reads every written range back and compares its hash with what
  // was written (a write the storage reported but did not make is DataLoss,
  // and nothing is published), then renames into place and syncs the
  // directory.
  Status Commit();
  // Removes the temporary file; the destination is untouched.
  void Abort();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  AtomicFileWriter(Storage& storage, std::string path, std::string temp_path,
                   std::unique_ptr<WritableFile> file);
  Status Record(uint64_t offset, std::span<const std::byte> data);
  Status ReadBack();

  struct Written {
    uint64_t offset;
    uint64_t length;
    uint64_t hash;  // XXH64 of the bytes written
  };
  Storage& storage_;
  std::string path_;
  std::string temp_path_;
  std::unique_ptr<WritableFile> file_;
  std::mutex mu_;                        // writes may come from several threads
  std::map<uint64_t, Written> written_;  // by offset; no two overlap
  bool done_ = false;
};

inline std::span<const std::byte> AsBytes(std::string_view s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

}  // namespace ckpt

#endif  // CKPT_STORAGE_H_
