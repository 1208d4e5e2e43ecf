// AtomicFileWriter: temp file in the destination directory → fsync → rename
// → fsync directory. The temporary name starts with '.' and contains ".tmp-",
// so directory listings that look for published files never match it.
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <random>
#include <string>
#include <vector>

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
  const uint64_t at = file_->Size();
  CKPT_RETURN_IF_ERROR(file_->Append(data));
  return Record(at, data);
}

Status AtomicFileWriter::WriteAt(uint64_t offset, std::span<const std::byte> data) {
  if (done_) return FailedPreconditionError("\"" + path_ + "\": write after commit or abort");
  CKPT_RETURN_IF_ERROR(file_->WriteAt(offset, data));
  return Record(offset, data);
}

// Remembers a write; a later write over it (a header rewritten in place)
// replaces what is checked there.
Status AtomicFileWriter::Record(uint64_t offset, std::span<const std::byte> data) {
  if (data.empty()) return Status();
  const uint64_t hash = XXH64(data.data(), data.size(), 0);
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t end = offset + data.size();
  std::erase_if(written_, [&](const Written& w) { return w.offset < end && offset < w.offset + w.length; });
  written_.push_back({offset, data.size(), hash});
  return Status();
}

Status AtomicFileWriter::ReadBack() {
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> f, storage_.OpenRead(temp_path_));
  std::vector<std::byte> buf;
  for (const Written& w : written_) {
    // Hash straight from a mapping where the backend has one (no copy).
    Result<MappedRegion> m = f->Map(w.offset, w.length);
    if (!m.ok() && m.status().code() != StatusCode::kFailedPrecondition) return m.status();
    if (m.ok()) {
      if (XXH64(m->bytes.data(), m->bytes.size(), 0) == w.hash) continue;
      return DataLossError("\"" + temp_path_ + "\": bytes [" + std::to_string(w.offset) + ", " +
                           std::to_string(w.offset + w.length) +
                           ") read back differ from what was written (the storage lost a write)");
    }
    buf.resize(std::min<uint64_t>(w.length, 8ull << 20));
    XXH64_state_t* st = XXH64_createState();
    std::unique_ptr<XXH64_state_t, decltype(&XXH64_freeState)> guard(st, &XXH64_freeState);
    XXH64_reset(st, 0);
    for (uint64_t done = 0; done < w.length;) {
      const uint64_t n = std::min<uint64_t>(buf.size(), w.length - done);
      CKPT_RETURN_IF_ERROR(f->ReadAt(w.offset + done, std::span<std::byte>(buf.data(), n)));
      XXH64_update(st, buf.data(), n);
      done += n;
    }
    if (XXH64_digest(st) != w.hash) {
      return DataLossError("\"" + temp_path_ + "\": bytes [" + std::to_string(w.offset) + ", " +
                           std::to_string(w.offset + w.length) +
                           ") read back differ from what was written (the storage lost a write)");
    }
  }
  return Status();
}

uint64_t AtomicFileWriter::Size() const { return file_->Size(); }

Status AtomicFileWriter::Commit() {
  if (done_) return FailedPreconditionError("\"" + path_ + "\": already committed or aborted");
  Status s = file_->Sync();
  if (s.ok()) s = ReadBack();
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
