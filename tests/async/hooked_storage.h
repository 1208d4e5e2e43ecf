// POSIX storage with test hooks: a callback runs before file creations and
// renames and may fail them or hold them back.
#ifndef CKPT_TESTS_ASYNC_HOOKED_STORAGE_H_
#define CKPT_TESTS_ASYNC_HOOKED_STORAGE_H_

#include <functional>
#include <memory>
#include <string>

#include "ckpt/storage.h"

namespace ckpt::testing {

class HookedStorage final : public Storage {
 public:
  // op is "create" or "rename"; the path is the file created or renamed.
  using Hook = std::function<Status(std::string_view op, const std::string& path)>;
  explicit HookedStorage(Hook hook) : hook_(std::move(hook)) {}

  std::string_view name() const override { return "hooked"; }
  Result<std::unique_ptr<ReadableFile>> OpenRead(const std::string& p) override { return base_->OpenRead(p); }
  Result<std::unique_ptr<WritableFile>> OpenWrite(const std::string& p, CreateMode m) override {
    CKPT_RETURN_IF_ERROR(hook_("create", p));
    return base_->OpenWrite(p, m);
  }
  Result<std::vector<DirEntry>> List(const std::string& d) override { return base_->List(d); }
  Result<DirEntry> Stat(const std::string& p) override { return base_->Stat(p); }
  Status Remove(const std::string& p) override { return base_->Remove(p); }
  Status Rename(const std::string& a, const std::string& b) override {
    CKPT_RETURN_IF_ERROR(hook_("rename", b));
    return base_->Rename(a, b);
  }
  Status MakeDirs(const std::string& p) override { return base_->MakeDirs(p); }
  Status SyncDir(const std::string& d) override { return base_->SyncDir(d); }
  Status Symlink(const std::string& t, const std::string& l) override { return base_->Symlink(t, l); }
  Result<std::string> ReadLink(const std::string& p) override { return base_->ReadLink(p); }

 private:
  Hook hook_;
  std::shared_ptr<Storage> base_ = PosixStorage();
};

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_ASYNC_HOOKED_STORAGE_H_
