#include "ckpt/status.h"

#include <gtest/gtest.h>

#include <memory>

namespace ckpt {
namespace {

TEST(StatusTest, OkByDefault) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOk);
  EXPECT_EQ(s.ToString(), "OK");
  EXPECT_EQ(s.message(), "");
}

TEST(StatusTest, EveryCodeHasItsConstructorAndName) {
  struct Case {
    Status status;
    StatusCode code;
    const char* name;
  };
  const Case cases[] = {
      {InvalidArgumentError("m"), StatusCode::kInvalidArgument, "InvalidArgument"},
      {NotFoundError("m"), StatusCode::kNotFound, "NotFound"},
      {AlreadyExistsError("m"), StatusCode::kAlreadyExists, "AlreadyExists"},
      {DataLossError("m"), StatusCode::kDataLoss, "DataLoss"},
      {IOError("m"), StatusCode::kIOError, "IOError"},
      {FailedPreconditionError("m"), StatusCode::kFailedPrecondition, "FailedPrecondition"},
      {UnavailableError("m"), StatusCode::kUnavailable, "Unavailable"},
      {InternalError("m"), StatusCode::kInternal, "Internal"},
  };
  for (const Case& c : cases) {
    EXPECT_FALSE(c.status.ok());
    EXPECT_EQ(c.status.code(), c.code);
    EXPECT_EQ(StatusCodeName(c.code), c.name);
    EXPECT_EQ(c.status.ToString(), std::string(c.name) + ": m");
  }
}

TEST(StatusTest, ContextChainsOutermostFirst) {
  Status root = DataLossError("tensor 'w': data_offsets [0, 12) need 16 bytes");
  Status s = root.WithContext("reading shard-00002").WithContext("loading step 10");
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_EQ(s.message(),
            "loading step 10: reading shard-00002: tensor 'w': data_offsets [0, 12) need 16 bytes");
  EXPECT_EQ(root.message(), "tensor 'w': data_offsets [0, 12) need 16 bytes");
  EXPECT_TRUE(Status().WithContext("anything").ok());
}

TEST(StatusTest, OkCodeWithMessageIsOk) {
  Status s(StatusCode::kOk, "ignored");
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.message(), "");
}

Result<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgumentError(std::to_string(x) + " is odd");
  return x / 2;
}

Result<int> Quarter(int x) {
  CKPT_ASSIGN_OR_RETURN(int h, Half(x));
  CKPT_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

Status CheckQuarter(int x) {
  CKPT_RETURN_IF_ERROR(Quarter(x));
  return Status();
}

TEST(ResultTest, ValueAndErrorPropagate) {
  Result<int> ok = Quarter(12);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 3);
  Result<int> bad = Quarter(6);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(), "3 is odd");
  EXPECT_TRUE(CheckQuarter(8).ok());
  EXPECT_EQ(CheckQuarter(2).message(), "1 is odd");
}

TEST(ResultTest, OkStatusIsNotAValue) {
  Result<int> r{Status()};
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
}

TEST(ResultTest, MoveOnlyValuesAndContext) {
  Result<std::unique_ptr<int>> r = std::make_unique<int>(7);
  ASSERT_TRUE(r.ok());
  std::unique_ptr<int> p = std::move(r).value();
  EXPECT_EQ(*p, 7);
  Result<std::unique_ptr<int>> e = NotFoundError("x");
  Result<std::unique_ptr<int>> e2 = std::move(e).WithContext("opening y");
  EXPECT_EQ(e2.status().message(), "opening y: x");
}

}  // namespace
}  // namespace ckpt
