#include "ckpt/storage.h"

#include <algorithm>
#include <mutex>
#include <thread>

namespace ckpt {

std::string JoinPath(std::string_view a, std::string_view b) {
  if (a.empty()) return std::string(b);
  if (b.empty()) return std::string(a);
  std::string out(a);
  if (out.back() != '/') out += '/';
  out.append(b.front() == '/' ? b.substr(1) : b);
  return out;
}

std::string_view Dirname(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  size_t slash = path.rfind('/');
  if (slash == std::string_view::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string_view Basename(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

Result<bool> Exists(Storage& storage, const std::string& path) {
  Result<DirEntry> st = storage.Stat(path);
  if (st.ok()) return true;
  if (st.status().code() == StatusCode::kNotFound) return false;
  return st.status();
}

Result<std::string> ReadFileToString(Storage& storage, const std::string& path,
                                     uint64_t max_bytes) {
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> file, storage.OpenRead(path));
  if (file->Size() > max_bytes) {
    return FailedPreconditionError(path + ": file of " + std::to_string(file->Size()) +
                                   " bytes is larger than the " + std::to_string(max_bytes) +
                                   "-byte limit for files read whole");
  }
  std::string out(file->Size(), '\0');
  CKPT_RETURN_IF_ERROR(
      file->ReadAt(0, std::as_writable_bytes(std::span<char>(out.data(), out.size()))));
  return out;
}

Status CopyFile(Storage& storage, const std::string& from, const std::string& to) {
  constexpr uint64_t kPiece = 8ull << 20;
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> in, storage.OpenRead(from));
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> out,
                        AtomicFileWriter::Create(storage, to));
  std::vector<std::byte> buf(std::min<uint64_t>(kPiece, in->Size()));
  for (uint64_t off = 0; off < in->Size(); off += buf.size()) {
    const auto piece = std::span(buf).first(std::min<uint64_t>(buf.size(), in->Size() - off));
    CKPT_RETURN_IF_ERROR(in->ReadAt(off, piece));
    CKPT_RETURN_IF_ERROR(out->Append(piece));
  }
  return out->Commit();
}

Status ReadAtParallel(const ReadableFile& file, uint64_t offset, std::span<std::byte> dst,
                      unsigned threads, uint64_t min_piece) {
  if (threads == 0) threads = std::clamp(std::thread::hardware_concurrency(), 1u, 8u);
  min_piece = std::max<uint64_t>(min_piece, 1);
  const uint64_t pieces = std::min<uint64_t>(threads, dst.size() / min_piece);
  if (pieces <= 1) return file.ReadAt(offset, dst);
  // Contiguous slices, one per thread; the calling thread takes the first.
  const uint64_t per = (dst.size() + pieces - 1) / pieces;
  std::mutex mu;
  Status first_error;
  auto work = [&](uint64_t i) {
    uint64_t begin = i * per, n = std::min<uint64_t>(per, dst.size() - begin);
    Status s = file.ReadAt(offset + begin, dst.subspan(begin, n));
    if (!s.ok()) {
      std::lock_guard<std::mutex> lock(mu);
      if (first_error.ok()) first_error = s;
    }
  };
  std::vector<std::thread> helpers;
  helpers.reserve(pieces - 1);
  for (uint64_t i = 1; i < pieces; ++i) helpers.emplace_back(work, i);
  work(0);
  for (std::thread& t : helpers) t.join();
  return first_error;
}

Status Storage::Symlink(const std::string& target, const std::string& link) {
  (void)target;
  return FailedPreconditionError("creating link " + link + ": the " + std::string(name()) +
                                 " storage has no symbolic links");
}

Result<std::string> Storage::ReadLink(const std::string& path) {
  return FailedPreconditionError("reading link " + path + ": the " + std::string(name()) +
                                 " storage has no symbolic links");
}

Status RemoveAll(Storage& storage, const std::string& path) { return storage.RemoveTree(path); }

Status Storage::RemoveTree(const std::string& path) {
  Storage& storage = *this;
  // A link is removed itself, never what it points to.
  if (storage.ReadLink(path).ok()) {
    Status s = storage.Remove(path);
    return s.code() == StatusCode::kNotFound ? Status() : s;
  }
  Result<DirEntry> st = storage.Stat(path);
  if (!st.ok()) return st.status().code() == StatusCode::kNotFound ? Status() : st.status();
  if (st->type == EntryType::kDirectory) {
    CKPT_ASSIGN_OR_RETURN(std::vector<DirEntry> entries, storage.List(path));
    for (const DirEntry& e : entries) {
      CKPT_RETURN_IF_ERROR(RemoveAll(storage, JoinPath(path, e.name)));
    }
  }
  Status s = storage.Remove(path);
  return s.code() == StatusCode::kNotFound ? Status() : s;
}

Status WriteFileAtomically(Storage& storage, const std::string& path, std::string_view contents) {
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> w,
                        AtomicFileWriter::Create(storage, path));
  CKPT_RETURN_IF_ERROR(w->Append(AsBytes(contents)));
  return w->Commit();
}

}  // namespace ckpt
