// Storage that fails on purpose: the k-th operation of a chosen kind fails
// with ENOSPC or EIO, writes short (an error after part of the bytes), or
// tears silently (part of the bytes written, success reported). With no
// fault armed it only counts operations, so a test can first count a save's
// operations and then walk the fault over every one of them.
#ifndef CKPT_TESTS_IO_FAULT_STORAGE_H_
#define CKPT_TESTS_IO_FAULT_STORAGE_H_

#include <array>
#include <atomic>
#include <memory>
#include <string>

#include "ckpt/storage.h"

namespace ckpt::testing {

enum class Op { kOpen, kWrite, kSync, kRename, kRead, kCount };
enum class Fault { kNoSpace, kIo, kShortWrite, kTornWrite };

inline const char* OpName(Op op) {
  static const char* kNames[] = {"open", "write", "fsync", "rename", "read"};
  return kNames[static_cast<int>(op)];
}
inline const char* FaultName(Fault f) {
  static const char* kNames[] = {"ENOSPC", "EIO", "short write", "silent torn write"};
  return kNames[static_cast<int>(f)];
}

class FaultStorage final : public StorageWrapper {
 public:
  explicit FaultStorage(std::shared_ptr<Storage> base) : StorageWrapper(std::move(base)) {}

  // Arms a fault for the k-th (1-based) operation of kind `op` from now on.
  void Arm(Op op, uint64_t k, Fault fault) {
    for (auto& c : counts_) c = 0;
    op_ = op;
    k_ = k;
    fault_ = fault;
    fired_ = false;
  }
  void Disarm() { k_ = 0; }
  uint64_t count(Op op) const { return counts_[static_cast<size_t>(op)]; }
  bool fired() const { return fired_; }

  std::string_view name() const override { return "fault"; }
  Result<std::unique_ptr<ReadableFile>> OpenRead(const std::string& p) override {
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> f, target().OpenRead(p));
    return std::unique_ptr<ReadableFile>(new Reader(this, std::move(f)));
  }
  Result<std::unique_ptr<WritableFile>> OpenWrite(const std::string& p, CreateMode m) override {
    CKPT_RETURN_IF_ERROR(Hit(Op::kOpen, "creating " + p));
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> f, target().OpenWrite(p, m));
    return std::unique_ptr<WritableFile>(new Writer(this, std::move(f)));
  }
  Status Rename(const std::string& a, const std::string& b) override {
    CKPT_RETURN_IF_ERROR(Hit(Op::kRename, "renaming " + a));
    return target().Rename(a, b);
  }
  Status SyncDir(const std::string& d) override {
    CKPT_RETURN_IF_ERROR(Hit(Op::kSync, "syncing directory " + d));
    return target().SyncDir(d);
  }

 private:
  // Counts the operation; the armed one fails. Torn and short writes are
  // handled by the writer, which asks Tear().
  Status Hit(Op op, const std::string& what) {
    const uint64_t n = ++counts_[static_cast<size_t>(op)];
    if (k_ == 0 || op != op_ || n != k_) return Status();
    if (op == Op::kWrite && (fault_ == Fault::kShortWrite || fault_ == Fault::kTornWrite))
      return Status();
    fired_ = true;
    return IOError(
        what + ": injected " + FaultName(fault_) +
        (fault_ == Fault::kNoSpace ? " (No space left on device)" : " (Input/output error)"));
  }
  // For the write just counted: how many of `n` bytes to really write, and
  // whether to report an error after them.
  bool Tear(uint64_t* n, bool* fail) {
    if (k_ == 0 || op_ != Op::kWrite || counts_[static_cast<size_t>(Op::kWrite)] != k_)
      return false;
    if (fault_ != Fault::kShortWrite && fault_ != Fault::kTornWrite) return false;
    if (*n < 2) return false;  // nothing to tear
    fired_ = true;
    *n /= 2;
    *fail = fault_ == Fault::kShortWrite;
    return true;
  }

  class Writer final : public WritableFileWrapper {
   public:
    Writer(FaultStorage* fs, std::unique_ptr<WritableFile> f)
        : WritableFileWrapper(std::move(f)), fs_(fs) {}
    Status Append(std::span<const std::byte> d) override {
      CKPT_RETURN_IF_ERROR(fs_->Hit(Op::kWrite, "writing " + path()));
      uint64_t n = d.size();
      bool fail = false;
      if (fs_->Tear(&n, &fail)) {
        CKPT_RETURN_IF_ERROR(target().Append(d.first(n)));
        if (fail) return IOError("writing " + path() + ": injected short write");
        // Silent: the rest of the bytes are skipped, the size still grows.
        return target().WriteAt(target().Size() + (d.size() - n) - 1, d.last(1));
      }
      return target().Append(d);
    }
    Status WriteAt(uint64_t off, std::span<const std::byte> d) override {
      CKPT_RETURN_IF_ERROR(fs_->Hit(Op::kWrite, "writing " + path()));
      uint64_t n = d.size();
      bool fail = false;
      if (fs_->Tear(&n, &fail)) {
        CKPT_RETURN_IF_ERROR(target().WriteAt(off, d.first(n)));
        if (fail) return IOError("writing " + path() + ": injected short write");
        return target().WriteAt(off + d.size() - 1, d.last(1));  // a hole where the rest should be
      }
      return target().WriteAt(off, d);
    }
    Status Sync() override {
      CKPT_RETURN_IF_ERROR(fs_->Hit(Op::kSync, "syncing " + path()));
      return target().Sync();
    }

   private:
    FaultStorage* fs_;
  };

  class Reader final : public ReadableFileWrapper {
   public:
    Reader(FaultStorage* fs, std::unique_ptr<ReadableFile> f)
        : ReadableFileWrapper(std::move(f)), fs_(fs) {}
    Status ReadAt(uint64_t off, std::span<std::byte> dst) const override {
      CKPT_RETURN_IF_ERROR(fs_->Hit(Op::kRead, "reading " + path()));
      return target().ReadAt(off, dst);
    }
    Result<MappedRegion> Map(uint64_t off, uint64_t len) const override {
      CKPT_RETURN_IF_ERROR(fs_->Hit(Op::kRead, "mapping " + path()));
      return target().Map(off, len);
    }

   private:
    FaultStorage* fs_;
  };

  std::array<std::atomic<uint64_t>, static_cast<size_t>(Op::kCount)> counts_{};
  std::atomic<Op> op_{Op::kOpen};
  std::atomic<uint64_t> k_{0};
  std::atomic<Fault> fault_{Fault::kIo};
  std::atomic<bool> fired_{false};
};

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_IO_FAULT_STORAGE_H_
