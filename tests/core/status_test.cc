#include "ckpt/status.h"

#include <gtest/gtest.h>

namespace ckpt {
namespace {

TEST(StatusTest, OkByDefault) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOk);
  EXPECT_EQ(s.ToString(), "OK");
}

}  // namespace
}  // namespace ckpt
