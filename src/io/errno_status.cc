#include "io/errno_status.h"

#include <cerrno>
#include <cstring>
#include <string>

namespace ckpt {

Status ErrnoToStatus(int err, std::string_view context) {
  std::string msg(context);
  msg += ": ";
  msg += std::strerror(err);
  msg += " (errno " + std::to_string(err) + ")";
  switch (err) {
    case 0:
      return InternalError(msg + " reported without an error");
    case ENOENT:
      return NotFoundError(std::move(msg));
    case EEXIST:
      return AlreadyExistsError(std::move(msg));
    case ENOTEMPTY:
    case ENOTDIR:
    case EISDIR:
    case EACCES:
    case EPERM:
    case EROFS:
    case EBADF:
      return FailedPreconditionError(std::move(msg));
    case EINVAL:
    case ENAMETOOLONG:
    case ELOOP:
      return InvalidArgumentError(std::move(msg));
    case ENOSPC:
    case EDQUOT:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
    case EAGAIN:
    case EBUSY:
      return UnavailableError(std::move(msg));
    default:
      return IOError(std::move(msg));
  }
}

}  // namespace ckpt
