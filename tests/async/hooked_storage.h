// POSIX storage with test hooks: a callback runs before file creations and
// renames and may fail them or hold them back.
#ifndef CKPT_TESTS_ASYNC_HOOKED_STORAGE_H_
#define CKPT_TESTS_ASYNC_HOOKED_STORAGE_H_

#include <functional>
#include <memory>
#include <string>

#include "ckpt/storage.h"

namespace ckpt::testing {

class HookedStorage final : public StorageWrapper {
 public:
  // op is "create" or "rename"; the path is the file created or renamed.
  using Hook = std::function<Status(std::string_view op, const std::string& path)>;
  explicit HookedStorage(Hook hook) : StorageWrapper(PosixStorage()), hook_(std::move(hook)) {}

  std::string_view name() const override { return "hooked"; }
  Result<std::unique_ptr<WritableFile>> OpenWrite(const std::string& p, CreateMode m) override {
    CKPT_RETURN_IF_ERROR(hook_("create", p));
    return target().OpenWrite(p, m);
  }
  Status Rename(const std::string& a, const std::string& b) override {
    CKPT_RETURN_IF_ERROR(hook_("rename", b));
    return target().Rename(a, b);
  }

 private:
  Hook hook_;
};

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_ASYNC_HOOKED_STORAGE_H_
