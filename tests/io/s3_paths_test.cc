// Object-storage paths and settings, without a server: s3:// and msc://
// resolution, credentials from the environment and the AWS shared files, and
// the refusals (no credentials, plain HTTP off loopback, unknown profiles).
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include "ckpt/s3.h"
#include "test_util.h"

namespace ckpt {
namespace {

using testing::StatusIs;
using testing::TempDir;

// Sets variables for one test and puts the old values back.
class S3PathsTest : public ::testing::Test {
 protected:
  void Set(const char* name, const std::string& value) {
    Save(name);
    ::setenv(name, value.c_str(), 1);
  }
  void Unset(const char* name) {
    Save(name);
    ::unsetenv(name);
  }
  void SetUp() override {
    for (const char* n : {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                          "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_PROFILE",
                          "MSC_CONFIG", "CKPT_S3_PART_SIZE"}) {
      Unset(n);
    }
    Set("AWS_CONFIG_FILE", tmp_.path() + "/config");
    Set("AWS_SHARED_CREDENTIALS_FILE", tmp_.path() + "/credentials");
  }
  void TearDown() override {
    for (auto& [name, value] : saved_) {
      if (value) {
        ::setenv(name.c_str(), value->c_str(), 1);
      } else {
        ::unsetenv(name.c_str());
      }
    }
  }
  void WriteFile(const std::string& name, const std::string& text) {
    std::ofstream(tmp_.path() + "/" + name) << text;
  }

  TempDir tmp_;

 private:
  void Save(const char* name) {
    if (saved_.count(name)) return;
    const char* v = std::getenv(name);
    saved_[name] = v ? std::optional<std::string>(v) : std::nullopt;
  }
  std::map<std::string, std::optional<std::string>> saved_;
};

TEST_F(S3PathsTest, CredentialsComeFromTheSharedFilesAndTheEnvironmentWins) {
  WriteFile(
      "credentials",
      "[default]\naws_access_key_id = DEF\naws_secret_access_key = defsecret\n"
      "[train]\naws_access_key_id = AK\naws_secret_access_key = SK\naws_session_token = TOK\n");
  WriteFile("config",
            "[profile train]\nregion = eu-west-3\nendpoint_url = https://objects.example.com\n");
  Set("AWS_PROFILE", "train");
  auto o = S3OptionsFromEnvironment("b");
  CKPT_ASSERT_OK(o);
  EXPECT_EQ(o->access_key, "AK");
  EXPECT_EQ(o->secret_key, "SK");
  EXPECT_EQ(o->session_token, "TOK");
  EXPECT_EQ(o->region, "eu-west-3");
  EXPECT_EQ(o->endpoint, "https://objects.example.com");
  Set("AWS_ACCESS_KEY_ID", "ENVKEY");
  Set("AWS_REGION", "us-west-2");
  Set("CKPT_S3_PART_SIZE", "8388608");
  o = S3OptionsFromEnvironment("b");
  CKPT_ASSERT_OK(o);
  EXPECT_EQ(o->access_key, "ENVKEY");
  EXPECT_EQ(o->region, "us-west-2");
  EXPECT_EQ(o->part_size, 8388608u);
  Set("CKPT_S3_PART_SIZE", "lots");
  EXPECT_THAT(S3OptionsFromEnvironment("b"),
              StatusIs(StatusCode::kInvalidArgument,
                       "CKPT_S3_PART_SIZE=\"lots\": expected a positive whole number"));
}

TEST_F(S3PathsTest, S3UrlsResolveToTheBucketAndLocalPathsStayLocal) {
  Set("AWS_ACCESS_KEY_ID", "a");
  Set("AWS_SECRET_ACCESS_KEY", "s");
  Set("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
  auto at = ResolveStoragePath("s3://bucket/run/step_3");
  CKPT_ASSERT_OK(at);
  EXPECT_EQ(at->storage->name(), "s3");
  EXPECT_FALSE(at->storage->CanRename());
  EXPECT_EQ(at->path, "/run/step_3");
  auto again = ResolveStoragePath("s3://bucket/other");
  CKPT_ASSERT_OK(again);
  EXPECT_EQ(again->storage, at->storage);  // one backend (one connection pool) per bucket
  auto local = ResolveStoragePath("/tmp/x");
  CKPT_ASSERT_OK(local);
  EXPECT_EQ(local->storage->name(), "posix");
  EXPECT_EQ(local->path, "/tmp/x");
  EXPECT_THAT(ResolveStoragePath("s3:///x"), StatusIs(StatusCode::kInvalidArgument, "no bucket"));
}

TEST_F(S3PathsTest, RefusalsNameWhatIsMissing) {
  EXPECT_THAT(
      ResolveStoragePath("s3://nocreds/x"),
      StatusIs(StatusCode::kFailedPrecondition, "S3 storage for bucket nocreds: no credentials"));
  Set("AWS_ACCESS_KEY_ID", "a");
  Set("AWS_SECRET_ACCESS_KEY", "s");
  Set("AWS_ENDPOINT_URL", "http://objects.example.com");
  EXPECT_THAT(
      ResolveStoragePath("s3://b/x"),
      StatusIs(StatusCode::kFailedPrecondition, "plain HTTP is only used for loopback endpoints"));
  Set("AWS_ENDPOINT_URL", "ftp://objects.example.com");
  EXPECT_THAT(ResolveStoragePath("s3://b/x"),
              StatusIs(StatusCode::kInvalidArgument, "expected http:// or https://"));
}

TEST_F(S3PathsTest, MscProfilesResolveThroughTheConfig) {
  WriteFile("msc.yaml",
            "profiles:\n"
            "  ckpts:\n"
            "    storage_provider:\n"
            "      type: s3\n"
            "      options:\n"
            "        base_path: my-bucket/team/base   # a comment\n"
            "        endpoint_url: \"http://127.0.0.1:9\"\n"
            "        region_name: us-east-1\n"
            "    credentials_provider:\n"
            "      type: S3Credentials\n"
            "      options:\n"
            "        access_key: AK\n"
            "        secret_key: SK\n"
            "  disk:\n"
            "    storage_provider:\n"
            "      type: file\n"
            "      options:\n"
            "        base_path: /data\n");
  EXPECT_THAT(ResolveStoragePath("msc://ckpts/x"),
              StatusIs(StatusCode::kNotFound, "no MSC config at"));
  Set("MSC_CONFIG", tmp_.path() + "/msc.yaml");
  auto at = ResolveStoragePath("msc://ckpts/run1/step_5");
  CKPT_ASSERT_OK(at);
  EXPECT_EQ(at->storage->name(), "s3");
  EXPECT_EQ(at->path, "/team/base/run1/step_5");
  EXPECT_THAT(
      ResolveStoragePath("msc://nope/x"),
      StatusIs(StatusCode::kNotFound, "msc://nope/x: profile 'nope' is not in the MSC config"));
  EXPECT_THAT(ResolveStoragePath("msc://disk/x"),
              StatusIs(StatusCode::kInvalidArgument,
                       "has storage_provider type 'file'; only s3 is supported"));
}

}  // namespace
}  // namespace ckpt
