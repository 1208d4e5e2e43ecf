#include "io/errno_status.h"

#include <gtest/gtest.h>

#include <cerrno>

#include "test_util.h"

namespace ckpt {
namespace {

using ::ckpt::testing::StatusIs;

TEST(ErrnoStatusTest, MapsCommonErrnos) {
  EXPECT_EQ(ErrnoToStatus(ENOENT, "x").code(), StatusCode::kNotFound);
  EXPECT_EQ(ErrnoToStatus(EEXIST, "x").code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(ErrnoToStatus(ENOSPC, "x").code(), StatusCode::kUnavailable);
  EXPECT_EQ(ErrnoToStatus(EIO, "x").code(), StatusCode::kIOError);
  EXPECT_EQ(ErrnoToStatus(EACCES, "x").code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(ErrnoToStatus(EINVAL, "x").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrnoToStatus(0, "x").code(), StatusCode::kInternal);
  Status s = ErrnoToStatus(ENOSPC, "writing \"/d/f\"");
  EXPECT_THAT(s, StatusIs(StatusCode::kUnavailable, "writing \"/d/f\": "));
  EXPECT_THAT(s, StatusIs(StatusCode::kUnavailable, "(errno 28)"));
}

}  // namespace
}  // namespace ckpt
