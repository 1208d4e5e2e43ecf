#ifndef CKPT_IO_ERRNO_STATUS_H_
#define CKPT_IO_ERRNO_STATUS_H_

#include <string_view>

#include "ckpt/status.h"

namespace ckpt {

// The one place where errno values become Status codes. The message is
// "<context>: <strerror> (errno <n>)".
Status ErrnoToStatus(int err, std::string_view context);

}  // namespace ckpt

#endif  // CKPT_IO_ERRNO_STATUS_H_
