// AtomicFileWriter: temp file in the destination directory → fsync → rename
// → fsync directory. The temporary name starts with '.' and contains ".tmp-",
// so directory listings that look for published files never match it.
#include <atomic>
#include <random>
#include <string>

#include "ckpt/storage.h"

namespace ckpt {
namespace {

std::string UniqueSuffix() {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t seed = std::random_device{}();
  uint64_t v = seed ^ (counter.fetch_add(1) * 0x9E3779B97F4A7C15ull);
  static const char kHex[] = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < 12; ++i) {
    s += kHex[v & 15];
    v >>= 4;
  }
  return s;
}

}  // namespace

Result<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::Create(Storage& storage,
                                                                   std::string path) {
  std::string dir(Dirname(path));
  std::string base(Basename(path));
  if (base.empty() || base == "." || base == ".." || base == "/") {
    return InvalidArgumentError("cannot publish a file at \"" + path + "\": no file name");
  }
  for (int attempt = 0;; ++attempt) {
    std::string temp = JoinPath(dir, "." + base + ".tmp-" + UniqueSuffix());
    Result<std::unique_ptr<WritableFile>> file = storage.OpenWrite(temp, CreateMode::kExclusive);
    if (file.ok()) {
      return std::unique_ptr<AtomicFileWriter>(
          new AtomicFileWriter(storage, std::move(path), std::move(temp), std::move(*file)));
    }
    if (file.status().code() != StatusCode::kAlreadyExists || attempt > 8) {
      return file.status().WithContext("creating temporary file for \"" + path + "\"");
    }
  }
}

AtomicFileWriter::AtomicFileWriter(Storage& storage, std::string path, std::string temp_path,
                                   std::unique_ptr<WritableFile> file)
    : storage_(storage),
      path_(std::move(path)),
      temp_path_(std::move(temp_path)),
      file_(std::move(file)) {}

AtomicFileWriter::~AtomicFileWriter() { Abort(); }

Status AtomicFileWriter::Append(std::span<const std::byte> data) {
  if (done_) return FailedPreconditionError("\"" + path_ + "\": write after commit or abort");
  return file_->Append(data);
}

Status AtomicFileWriter::WriteAt(uint64_t offset, std::span<const std::byte> data) {
  if (done_) return FailedPreconditionError("\"" + path_ + "\": write after commit or abort");
  return file_->WriteAt(offset, data);
}

uint64_t AtomicFileWriter::Size() const { return file_->Size(); }

Status AtomicFileWriter::Commit() {
  if (done_) return FailedPreconditionError("\"" + path_ + "\": already committed or aborted");
  Status s = file_->Sync();
  if (s.ok()) s = file_->Close();
  if (s.ok()) s = storage_.Rename(temp_path_, path_);
  if (!s.ok()) {
    Abort();
    return s.WithContext("publishing \"" + path_ + "\"");
  }
  done_ = true;
  // The rename is only durable once the directory entry is.
  return storage_.SyncDir(std::string(Dirname(path_))).WithContext("publishing \"" + path_ + "\"");
}

void AtomicFileWriter::Abort() {
  if (done_) return;
  done_ = true;
  file_->Close().IgnoreError();
  storage_.Remove(temp_path_).IgnoreError();
}

}  // namespace ckpt
