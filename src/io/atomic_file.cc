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
  if (!storage.CanRename()) {
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> file,
                          storage.OpenWrite(path, CreateMode::kTruncate));
    std::string temp = path;
    return std::unique_ptr<AtomicFileWriter>(
        new AtomicFileWriter(storage, std::move(path), std::move(temp), std::move(file)));
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
// replaces what is checked there. O(log n) per write: a file written in many
// small scattered pieces (a tensor assembled column by column) stays n log n.
Status AtomicFileWriter::Record(uint64_t offset, std::span<const std::byte> data) {
  if (data.empty()) return Status();
  const uint64_t hash = XXH64(data.data(), data.size(), 0);
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t end = offset + data.size();
  auto it = written_.lower_bound(offset);
  if (it != written_.begin()) {
    auto prev = std::prev(it);
    if (prev->second.offset + prev->second.length > offset) it = prev;
  }
  while (it != written_.end() && it->first < end) it = written_.erase(it);
  written_.emplace_hint(it, offset, Written{offset, data.size(), hash});
  return Status();
}

namespace {

constexpr uint64_t kReadBackWindow = 8ull << 20;

Status LostWrite(const std::string& path, uint64_t offset, uint64_t length) {
  return DataLossError("\"" + path + "\": bytes [" + std::to_string(offset) + ", " +
                       std::to_string(offset + length) +
                       ") read back differ from what was written (the storage lost a write)");
}

}  // namespace

// Written ranges are checked in file order, many at a time: the ranges that
// fit in one window are mapped (or read) once, so the cost is the bytes
// written plus a constant per window, not a mapping per write.
Status AtomicFileWriter::ReadBack() {
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> f, storage_.OpenRead(temp_path_));
  std::vector<std::byte> buf;
  for (auto it = written_.begin(); it != written_.end();) {
    const uint64_t start = it->second.offset;
    auto last = it;
    uint64_t stop = start + it->second.length;
    for (auto next = std::next(it); next != written_.end(); ++next) {
      const uint64_t e = next->second.offset + next->second.length;
      if (e - start > kReadBackWindow) break;
      last = next;
      stop = e;
    }
    const auto group_end = std::next(last);
    // Hash straight from a mapping where the backend has one (no copy).
    Result<MappedRegion> m = f->Map(start, stop - start);
    if (!m.ok() && m.status().code() != StatusCode::kFailedPrecondition) return m.status();
    std::span<const std::byte> window;
    if (m.ok()) {
      window = m->bytes;
    } else if (stop - start <= kReadBackWindow) {
      buf.resize(stop - start);
      CKPT_RETURN_IF_ERROR(f->ReadAt(start, std::span<std::byte>(buf)));
      window = buf;
    } else {
      // One range longer than the window, on a backend without mappings: stream it.
      const Written& w = it->second;
      buf.resize(kReadBackWindow);
      XXH64_state_t* st = XXH64_createState();
      std::unique_ptr<XXH64_state_t, decltype(&XXH64_freeState)> guard(st, &XXH64_freeState);
      XXH64_reset(st, 0);
      for (uint64_t done = 0; done < w.length;) {
        const uint64_t n = std::min<uint64_t>(buf.size(), w.length - done);
        CKPT_RETURN_IF_ERROR(f->ReadAt(w.offset + done, std::span<std::byte>(buf.data(), n)));
        XXH64_update(st, buf.data(), n);
        done += n;
      }
      if (XXH64_digest(st) != w.hash) return LostWrite(temp_path_, w.offset, w.length);
      it = group_end;
      continue;
    }
    for (; it != group_end; ++it) {
      const Written& w = it->second;
      if (XXH64(window.data() + (w.offset - start), w.length, 0) != w.hash) {
        return LostWrite(temp_path_, w.offset, w.length);
      }
    }
  }
  return Status();
}

uint64_t AtomicFileWriter::Size() const { return file_ ? file_->Size() : 0; }

Status AtomicFileWriter::Commit() {
  if (done_) return FailedPreconditionError("\"" + path_ + "\": already committed or aborted");
  if (!storage_.CanRename()) {
    // The upload publishes; each request's payload is checked by the store
    // (signed SHA-256), so there is nothing to read back.
    Status s = file_->Close();
    done_ = true;
    if (!s.ok()) file_.reset();
    return s.WithContext("publishing \"" + path_ + "\"");
  }
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
  if (!storage_.CanRename()) {
    file_.reset();  // discards the upload: nothing is published
    return;
  }
  file_->Close().IgnoreError();
  storage_.Remove(temp_path_).IgnoreError();
}

}  // namespace ckpt
