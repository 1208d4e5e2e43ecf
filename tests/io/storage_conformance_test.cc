// One suite that every Storage backend must pass.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <future>
#include <random>
#include <thread>

#include "ckpt/s3.h"
#include "ckpt/storage.h"
#include "test_util.h"

namespace ckpt {
namespace {

using testing::StatusIs;
using testing::TempDir;
using testing::ToString;

struct Backend {
  const char* name;
  std::function<std::shared_ptr<Storage>()> make;
  bool real_dir;  // root is a fresh POSIX temp dir
  // An object store (s3): no rename, no parent directories needed, readers
  // of a replaced object fail instead of keeping their snapshot.
  bool object_store = false;
};

// The S3 backend against the server named by CKPT_TEST_S3_ENDPOINT (and
// CKPT_TEST_S3_BUCKET, credentials in AWS_*): tests/python/test_s3.py starts
// a local S3-protocol server and runs this suite against it.
std::shared_ptr<Storage> TestS3Storage() {
  auto o = S3OptionsFromEnvironment(std::getenv("CKPT_TEST_S3_BUCKET"));
  if (!o.ok()) std::abort();
  o->endpoint = std::getenv("CKPT_TEST_S3_ENDPOINT");
  o->part_size = 5ull << 20;
  o->memory_budget = 24ull << 20;
  o->parallel = 4;
  auto s = NewS3Storage(*o);
  if (!s.ok()) std::abort();
  return *s;
}

void PrintTo(const Backend& b, std::ostream* os) { *os << b.name; }

// The forwarding bases with nothing overridden, files included: a wrapper
// built on them behaves exactly as the backend it wraps.
class ForwardingStorage final : public StorageWrapper {
 public:
  explicit ForwardingStorage(std::shared_ptr<Storage> target) : StorageWrapper(std::move(target)) {}
  Result<std::unique_ptr<ReadableFile>> OpenRead(const std::string& path) override {
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> f, target().OpenRead(path));
    return std::unique_ptr<ReadableFile>(std::make_unique<ReadableFileWrapper>(std::move(f)));
  }
  Result<std::unique_ptr<WritableFile>> OpenWrite(const std::string& path,
                                                  CreateMode mode) override {
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> f, target().OpenWrite(path, mode));
    return std::unique_ptr<WritableFile>(std::make_unique<WritableFileWrapper>(std::move(f)));
  }
};

class StorageConformanceTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    storage_ = GetParam().make();
    if (GetParam().real_dir) {
      tmp_ = std::make_unique<TempDir>();
      root_ = tmp_->path();
    } else if (GetParam().object_store) {
      // A fresh key prefix per test.
      root_ = "/conformance-" + std::to_string(std::random_device{}()) + "-" +
              ::testing::UnitTest::GetInstance()->current_test_info()->name();
      for (char& c : root_) c = c == '/' && &c != root_.data() ? '-' : c;
      CKPT_ASSERT_OK(storage_->MakeDirs(root_));
    } else {
      root_ = "/root";
      ASSERT_TRUE(storage_->MakeDirs(root_).ok());
    }
  }
  std::string P(std::string_view rel) const { return JoinPath(root_, rel); }
  Status Write(const std::string& path, std::string_view contents) {
    CKPT_ASSIGN_OR_RETURN(auto f, storage_->OpenWrite(path, CreateMode::kTruncate));
    CKPT_RETURN_IF_ERROR(f->Append(AsBytes(contents)));
    return f->Close();
  }

  std::shared_ptr<Storage> storage_;
  std::unique_ptr<TempDir> tmp_;
  std::string root_;
};

TEST_P(StorageConformanceTest, WriteThenReadBack) {
  CKPT_ASSERT_OK(Write(P("a.bin"), "hello world"));
  auto f = storage_->OpenRead(P("a.bin"));
  CKPT_ASSERT_OK(f);
  EXPECT_EQ((*f)->Size(), 11u);
  std::vector<std::byte> buf(5);
  CKPT_ASSERT_OK((*f)->ReadAt(6, buf));
  EXPECT_EQ(ToString(buf), "world");
  CKPT_ASSERT_OK(ReadFileToString(*storage_, P("a.bin")));
  EXPECT_EQ(*ReadFileToString(*storage_, P("a.bin")), "hello world");
}

TEST_P(StorageConformanceTest, ReadPastEndIsDataLossNamingTheRange) {
  CKPT_ASSERT_OK(Write(P("a.bin"), "0123456789"));
  auto f = storage_->OpenRead(P("a.bin"));
  CKPT_ASSERT_OK(f);
  std::vector<std::byte> buf(4);
  Status s = (*f)->ReadAt(8, buf);
  EXPECT_THAT(s, StatusIs(StatusCode::kDataLoss, "[8, 12)"));
  EXPECT_THAT(s, StatusIs(StatusCode::kDataLoss, "10-byte file"));
  EXPECT_THAT((*f)->ReadAt(~0ull, buf),
              StatusIs(StatusCode::kDataLoss,
                       "range [18446744073709551615, 3) is past the end of the 10-byte file"));
  std::vector<std::byte> none;
  CKPT_EXPECT_OK((*f)->ReadAt(10, none));
}

TEST_P(StorageConformanceTest, ParallelReadsMatchSerialReads) {
  std::mt19937_64 rng(3);
  std::vector<std::byte> data = testing::RandomBytes(1 << 20, rng);
  CKPT_ASSERT_OK(WriteFileAtomically(*storage_, P("big"), ToString(data)));
  auto f = storage_->OpenRead(P("big"));
  CKPT_ASSERT_OK(f);
  for (unsigned threads : {0u, 1u, 3u, 8u}) {
    std::vector<std::byte> got(data.size() - 100);
    CKPT_ASSERT_OK(ReadAtParallel(**f, 100, got, threads, 4096));
    EXPECT_TRUE(std::equal(got.begin(), got.end(), data.begin() + 100)) << threads;
  }
  std::vector<std::byte> past(data.size());
  Status s = ReadAtParallel(**f, 1, past, 4, 4096);
  EXPECT_THAT(s, StatusIs(StatusCode::kDataLoss,
                          "range [786433, 1048577) is past the end of the 1048576-byte file"));
}

TEST_P(StorageConformanceTest, MapGivesTheBytesAndOutlivesTheFile) {
  CKPT_ASSERT_OK(Write(P("m.bin"), std::string(10000, 'x') + "tail"));
  if (GetParam().object_store) {  // no mappings: callers fall back to ranged reads
    auto f = storage_->OpenRead(P("m.bin"));
    CKPT_ASSERT_OK(f);
    EXPECT_THAT((*f)->Map(10000, 4), StatusIs(StatusCode::kFailedPrecondition, "cannot map"));
    EXPECT_THAT((*f)->Map(10000, 5),
                StatusIs(StatusCode::kDataLoss, "past the end of the 10004-byte file"));
    return;
  }
  MappedRegion region;
  {
    auto f = storage_->OpenRead(P("m.bin"));
    CKPT_ASSERT_OK(f);
    auto m = (*f)->Map(10000, 4);
    CKPT_ASSERT_OK(m);
    region = *m;
    EXPECT_THAT((*f)->Map(10000, 5),
                StatusIs(StatusCode::kDataLoss,
                         "range [10000, 10005) is past the end of the 10004-byte file"));
  }
  EXPECT_EQ(ToString(region.bytes), "tail");
}

TEST_P(StorageConformanceTest, PositionalWritesAndHoles) {
  auto f = storage_->OpenWrite(P("p.bin"), CreateMode::kTruncate);
  CKPT_ASSERT_OK(f);
  CKPT_ASSERT_OK((*f)->WriteAt(4, AsBytes("EF")));
  CKPT_ASSERT_OK((*f)->WriteAt(0, AsBytes("AB")));
  EXPECT_EQ((*f)->Size(), 6u);
  CKPT_ASSERT_OK((*f)->Append(AsBytes("GH")));
  CKPT_ASSERT_OK((*f)->Sync());
  CKPT_ASSERT_OK((*f)->Close());
  CKPT_EXPECT_OK((*f)->Close());
  EXPECT_THAT((*f)->Append(AsBytes("x")),
              StatusIs(StatusCode::kFailedPrecondition, "file is closed"));
  EXPECT_EQ(*ReadFileToString(*storage_, P("p.bin")), std::string("AB\0\0EFGH", 8));
}

TEST_P(StorageConformanceTest, CreateModes) {
  CKPT_ASSERT_OK(Write(P("x"), "old"));
  auto excl = storage_->OpenWrite(P("x"), CreateMode::kExclusive);
  EXPECT_THAT(excl, StatusIs(StatusCode::kAlreadyExists, "creating \"" + P("x") + "\""));
  CKPT_ASSERT_OK(Write(P("x"), "n"));
  EXPECT_EQ(*ReadFileToString(*storage_, P("x")), "n");
  if (GetParam().object_store) return;  // keys need no parent
  auto missing_parent = storage_->OpenWrite(P("no/such/x"), CreateMode::kTruncate);
  EXPECT_THAT(missing_parent,
              StatusIs(StatusCode::kNotFound, "creating \"" + P("no/such/x") + "\""));
}

TEST_P(StorageConformanceTest, MissingThingsAreNotFound) {
  EXPECT_THAT(storage_->OpenRead(P("nope")),
              StatusIs(StatusCode::kNotFound, "opening \"" + P("nope") + "\""));
  EXPECT_THAT(storage_->Stat(P("nope")),
              StatusIs(StatusCode::kNotFound, "stat of \"" + P("nope") + "\""));
  EXPECT_THAT(storage_->List(P("nope")),
              StatusIs(StatusCode::kNotFound, "listing \"" + P("nope") + "\""));
  EXPECT_THAT(storage_->Remove(P("nope")),
              StatusIs(StatusCode::kNotFound, "removing \"" + P("nope") + "\""));
  if (!GetParam().object_store) {
    EXPECT_THAT(storage_->Rename(P("nope"), P("b")),
                StatusIs(StatusCode::kNotFound, "renaming \"" + P("nope") + "\""));
  }
  EXPECT_FALSE(*Exists(*storage_, P("nope")));
  CKPT_EXPECT_OK(RemoveAll(*storage_, P("nope")));
}

TEST_P(StorageConformanceTest, DirectoriesListSortedWithTypesAndSizes) {
  CKPT_ASSERT_OK(storage_->MakeDirs(P("d/e/f")));
  CKPT_ASSERT_OK(storage_->MakeDirs(P("d/e/f")));  // idempotent
  CKPT_ASSERT_OK(Write(P("d/b.txt"), "12345"));
  CKPT_ASSERT_OK(Write(P("d/a.txt"), ""));
  CKPT_ASSERT_OK(Write(P("d/e/deep"), "z"));
  auto list = storage_->List(P("d"));
  CKPT_ASSERT_OK(list);
  ASSERT_EQ(list->size(), 3u);
  EXPECT_EQ((*list)[0].name, "a.txt");
  EXPECT_EQ((*list)[0].type, EntryType::kFile);
  EXPECT_EQ((*list)[1].name, "b.txt");
  EXPECT_EQ((*list)[1].size, 5u);
  EXPECT_EQ((*list)[2].name, "e");
  EXPECT_EQ((*list)[2].type, EntryType::kDirectory);
  auto st = storage_->Stat(P("d/e"));
  CKPT_ASSERT_OK(st);
  EXPECT_EQ(st->type, EntryType::kDirectory);
  EXPECT_THAT(storage_->OpenRead(P("d/e")),
              StatusIs(StatusCode::kFailedPrecondition,
                       "opening \"" + P("d/e") + "\": not a regular file"));
  EXPECT_THAT(
      storage_->MakeDirs(P("d/a.txt/x")),
      StatusIs(StatusCode::kFailedPrecondition, "creating directory \"" + P("d/a.txt/x") + "\""));
}

TEST_P(StorageConformanceTest, RemoveRefusesNonEmptyDirsAndRemoveAllDoesNot) {
  CKPT_ASSERT_OK(storage_->MakeDirs(P("t/u")));
  CKPT_ASSERT_OK(Write(P("t/u/f"), "1"));
  EXPECT_THAT(storage_->Remove(P("t")),
              StatusIs(StatusCode::kFailedPrecondition, "removing \"" + P("t") + "\""));
  CKPT_ASSERT_OK(RemoveAll(*storage_, P("t")));
  EXPECT_FALSE(*Exists(*storage_, P("t")));
  CKPT_ASSERT_OK(storage_->MakeDirs(P("empty")));
  CKPT_ASSERT_OK(storage_->Remove(P("empty")));
}

// Links: POSIX has them; the memory backend says it has none, so callers
// can fall back (LATEST.txt). RemoveAll removes a link, never its target.
TEST_P(StorageConformanceTest, SymlinksOrAClearRefusal) {
  CKPT_ASSERT_OK(storage_->MakeDirs(P("target")));
  CKPT_ASSERT_OK(Write(P("target/keep"), "1"));
  CKPT_ASSERT_OK(Write(P("plain"), "x"));
  Status linked = storage_->Symlink("target", P("link"));
  if (!GetParam().real_dir) {
    EXPECT_THAT(linked, StatusIs(StatusCode::kFailedPrecondition, "has no symbolic links"));
    EXPECT_THAT(storage_->ReadLink(P("plain")),
                StatusIs(StatusCode::kFailedPrecondition, "has no symbolic links"));
    return;
  }
  CKPT_ASSERT_OK(linked);
  Result<std::string> target = storage_->ReadLink(P("link"));
  ASSERT_TRUE(target.ok()) << target.status().ToString();
  EXPECT_EQ(*target, "target");
  EXPECT_THAT(
      storage_->Symlink("target", P("link")),
      StatusIs(StatusCode::kAlreadyExists, "creating link \"" + P("link") + "\" to \"target\""));
  EXPECT_THAT(
      storage_->ReadLink(P("plain")),
      StatusIs(StatusCode::kInvalidArgument, "\"" + P("plain") + "\" is not a symbolic link"));
  EXPECT_THAT(storage_->ReadLink(P("absent")),
              StatusIs(StatusCode::kNotFound, "reading link \"" + P("absent") + "\""));
  // Through the link the directory is visible; removing the link keeps it.
  EXPECT_TRUE(*Exists(*storage_, P("link/keep")));
  CKPT_ASSERT_OK(storage_->MakeDirs(P("holder")));
  CKPT_ASSERT_OK(storage_->Symlink("../target", P("holder/inner")));
  CKPT_ASSERT_OK(RemoveAll(*storage_, P("holder")));
  CKPT_ASSERT_OK(RemoveAll(*storage_, P("link")));
  EXPECT_FALSE(*Exists(*storage_, P("holder")));
  EXPECT_THAT(storage_->ReadLink(P("link")), StatusIs(StatusCode::kNotFound, "reading link"));
  EXPECT_TRUE(*Exists(*storage_, P("target/keep")));
}

TEST_P(StorageConformanceTest, RenameReplacesFilesAndMovesDirectories) {
  if (GetParam().object_store) {
    EXPECT_FALSE(storage_->CanRename());
    CKPT_ASSERT_OK(Write(P("src"), "new"));
    EXPECT_THAT(storage_->Rename(P("src"), P("dst")),
                StatusIs(StatusCode::kFailedPrecondition, "no rename"));
    EXPECT_FALSE(*Exists(*storage_, P("dst")));
    return;
  }
  EXPECT_TRUE(storage_->CanRename());
  CKPT_ASSERT_OK(Write(P("src"), "new"));
  CKPT_ASSERT_OK(Write(P("dst"), "old"));
  CKPT_ASSERT_OK(storage_->Rename(P("src"), P("dst")));
  EXPECT_EQ(*ReadFileToString(*storage_, P("dst")), "new");
  EXPECT_FALSE(*Exists(*storage_, P("src")));

  CKPT_ASSERT_OK(storage_->MakeDirs(P("tree/sub")));
  CKPT_ASSERT_OK(Write(P("tree/sub/leaf"), "L"));
  CKPT_ASSERT_OK(storage_->Rename(P("tree"), P("moved")));
  EXPECT_EQ(*ReadFileToString(*storage_, P("moved/sub/leaf")), "L");
  EXPECT_FALSE(*Exists(*storage_, P("tree")));
  CKPT_EXPECT_OK(storage_->SyncDir(P("moved")));
  // A directory never replaces one, not even an empty one.
  CKPT_ASSERT_OK(storage_->MakeDirs(P("empty")));
  Status s = storage_->Rename(P("moved"), P("empty"));
  EXPECT_THAT(s, StatusIs(StatusCode::kAlreadyExists, "a directory never replaces one"));
  EXPECT_TRUE(*Exists(*storage_, P("moved/sub/leaf")));
}

TEST_P(StorageConformanceTest, OpenReadersKeepTheirSnapshotAcrossReplace) {
  CKPT_ASSERT_OK(Write(P("f"), "version-one"));
  auto reader = storage_->OpenRead(P("f"));
  CKPT_ASSERT_OK(reader);
  CKPT_ASSERT_OK(WriteFileAtomically(*storage_, P("f"), "v2"));
  std::vector<std::byte> buf(11);
  if (GetParam().object_store) {
    // The old version is gone: the reader says so instead of mixing versions.
    EXPECT_THAT((*reader)->ReadAt(0, buf),
                StatusIs(StatusCode::kDataLoss, "replaced since it was opened"));
    EXPECT_EQ(*ReadFileToString(*storage_, P("f")), "v2");
    return;
  }
  CKPT_ASSERT_OK((*reader)->ReadAt(0, buf));
  EXPECT_EQ(ToString(buf), "version-one");
  EXPECT_EQ(*ReadFileToString(*storage_, P("f")), "v2");
}

TEST_P(StorageConformanceTest, AtomicWriterPublishesOnlyOnCommit) {
  {
    auto w = AtomicFileWriter::Create(*storage_, P("pub.json"));
    CKPT_ASSERT_OK(w);
    CKPT_ASSERT_OK((*w)->Append(AsBytes("partial")));
    EXPECT_FALSE(*Exists(*storage_, P("pub.json")));
    if (GetParam().object_store) {
      EXPECT_EQ((*w)->temp_path(), P("pub.json"));  // the upload itself is the temporary
    } else {
      EXPECT_TRUE(*Exists(*storage_, (*w)->temp_path()));
    }
    EXPECT_EQ(Dirname((*w)->temp_path()), Dirname(P("pub.json")));
    // Destroyed without Commit: the temporary file goes away.
  }
  auto list = storage_->List(root_);
  CKPT_ASSERT_OK(list);
  EXPECT_TRUE(list->empty()) << (*list)[0].name;

  auto w = AtomicFileWriter::Create(*storage_, P("pub.json"));
  CKPT_ASSERT_OK(w);
  CKPT_ASSERT_OK((*w)->Append(AsBytes("{}")));
  CKPT_ASSERT_OK((*w)->Commit());
  EXPECT_EQ(*ReadFileToString(*storage_, P("pub.json")), "{}");
  EXPECT_THAT((*w)->Append(AsBytes("x")),
              StatusIs(StatusCode::kFailedPrecondition, "write after commit or abort"));
  EXPECT_THAT((*w)->Commit(),
              StatusIs(StatusCode::kFailedPrecondition, "already committed or aborted"));
  list = storage_->List(root_);
  ASSERT_EQ(list->size(), 1u);
}

TEST_P(StorageConformanceTest, AtomicWriterNeedsAnExistingDirectory) {
  if (GetParam().object_store) {  // a key needs no parent
    CKPT_ASSERT_OK(WriteFileAtomically(*storage_, P("missing/f"), "x"));
    EXPECT_EQ(*ReadFileToString(*storage_, P("missing/f")), "x");
    return;
  }
  auto w = AtomicFileWriter::Create(*storage_, P("missing/f"));
  EXPECT_THAT(w, StatusIs(StatusCode::kNotFound, "missing/f"));
}

TEST_P(StorageConformanceTest, ConcurrentReadersAndAtomicWriters) {
  CKPT_ASSERT_OK(WriteFileAtomically(*storage_, P("shared"), std::string(4096, 'a')));
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        if (t % 2 == 0) {
          std::string body(4096, static_cast<char>('b' + t));
          if (!WriteFileAtomically(*storage_, P("shared"), body).ok()) ++failures;
        } else {
          Result<std::string> s = ReadFileToString(*storage_, P("shared"));
          // An object replaced between open and read is DataLoss, not a mix.
          if (GetParam().object_store && s.status().code() == StatusCode::kDataLoss &&
              s.status().message().find("replaced since it was opened") != std::string::npos) {
            continue;
          }
          // A reader sees one complete version, never a mix.
          if (!s.ok() || s->size() != 4096 || s->find_first_not_of((*s)[0]) != std::string::npos) {
            ++failures;
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(PathTest, JoinDirnameBasename) {
  EXPECT_EQ(JoinPath("a", "b"), "a/b");
  EXPECT_EQ(JoinPath("a/", "b"), "a/b");
  EXPECT_EQ(JoinPath("", "b"), "b");
  EXPECT_EQ(Dirname("/x/y/z"), "/x/y");
  EXPECT_EQ(Dirname("z"), ".");
  EXPECT_EQ(Dirname("/z"), "/");
  EXPECT_EQ(Basename("/x/y/z"), "z");
  EXPECT_EQ(Basename("/x/y/"), "y");
}

// ---- POSIX only: special files, descriptor budget, side-file cap.

size_t OpenDescriptors() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

// Runs `open` with a deadline; a FIFO that blocks it is unblocked by opening
// the write side, so a regression fails instead of hanging the suite.
template <typename T>
T WithFifoDeadline(const std::string& fifo, std::function<T()> open) {
  auto f = std::async(std::launch::async, std::move(open));
  if (f.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    ADD_FAILURE() << "opening " << fifo << " blocked";
    int w = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
    f.wait();
    if (w >= 0) ::close(w);
  }
  return f.get();
}

TEST(PosixStorageTest, FifosAreRefusedWithoutBlocking) {
  TempDir tmp;
  const std::string fifo = tmp / "index.json";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  Storage& fs = *PosixStorage();
  Status open = WithFifoDeadline<Status>(fifo, [&] { return fs.OpenRead(fifo).status(); });
  EXPECT_THAT(open, StatusIs(StatusCode::kFailedPrecondition, "not a regular file (a FIFO)"));
  EXPECT_THAT(open, StatusIs(StatusCode::kFailedPrecondition, fifo));
  Status whole =
      WithFifoDeadline<Status>(fifo, [&] { return ReadFileToString(fs, fifo).status(); });
  EXPECT_THAT(whole, StatusIs(StatusCode::kFailedPrecondition, "not a regular file (a FIFO)"));
  Status dir = fs.OpenRead(tmp.path()).status();
  EXPECT_THAT(dir, StatusIs(StatusCode::kFailedPrecondition, "a directory"));
}

TEST(PosixStorageTest, OpenReadersHoldABoundedNumberOfDescriptors) {
  TempDir tmp;
  Storage& fs = *PosixStorage();
  const size_t files = 3 * kMaxOpenReadFiles;
  for (size_t i = 0; i < files; ++i) {
    CKPT_ASSERT_OK(
        WriteFileAtomically(fs, tmp / ("f" + std::to_string(i)), "file " + std::to_string(i)));
  }
  const size_t before = OpenDescriptors();
  std::vector<std::unique_ptr<ReadableFile>> open;
  for (size_t i = 0; i < files; ++i) {
    auto f = fs.OpenRead(tmp / ("f" + std::to_string(i)));
    CKPT_ASSERT_OK(f);
    open.push_back(std::move(*f));
  }
  EXPECT_LE(OpenDescriptors(), before + kMaxOpenReadFiles);
  // Every file still reads its own bytes, from several threads at once.
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 2; ++round) {
        for (size_t i = static_cast<size_t>(t); i < files; i += 4) {
          const std::string want = "file " + std::to_string(i);
          std::vector<std::byte> buf(want.size());
          if (!open[i]->ReadAt(0, buf).ok() || ToString(buf) != want) ++wrong;
          auto m = open[i]->Map(0, want.size());
          if (!m.ok() || ToString(m->bytes) != want) ++wrong;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_LE(OpenDescriptors(), before + kMaxOpenReadFiles);
  open.clear();
  EXPECT_LE(OpenDescriptors(), before);
}

TEST(PosixStorageTest, AReaderReopenedAfterItsFileWasReplacedIsDataLoss) {
  TempDir tmp;
  Storage& fs = *PosixStorage();
  CKPT_ASSERT_OK(WriteFileAtomically(fs, tmp / "first", "version-one"));
  auto first = fs.OpenRead(tmp / "first");
  CKPT_ASSERT_OK(first);
  // Enough other readers to close the first one's descriptor.
  std::vector<std::unique_ptr<ReadableFile>> others;
  for (size_t i = 0; i < kMaxOpenReadFiles + 4; ++i) {
    const std::string p = tmp / ("o" + std::to_string(i));
    CKPT_ASSERT_OK(WriteFileAtomically(fs, p, "x"));
    auto f = fs.OpenRead(p);
    CKPT_ASSERT_OK(f);
    others.push_back(std::move(*f));
  }
  CKPT_ASSERT_OK(WriteFileAtomically(fs, tmp / "first", "version-two"));
  std::vector<std::byte> buf(11);
  Status s = (*first)->ReadAt(0, buf);
  EXPECT_THAT(s, StatusIs(StatusCode::kDataLoss, "replaced since it was opened"));
  EXPECT_THAT(s, StatusIs(StatusCode::kDataLoss, tmp / "first"));
}

TEST(PosixStorageTest, SideFilesReadWholeAreCappedAndCopiesStream) {
  TempDir tmp;
  Storage& fs = *PosixStorage();
  // A sparse file one byte over the cap: refused before anything is allocated.
  const std::string big = tmp / "manifest.json";
  {
    int fd = ::open(big.c_str(), O_WRONLY | O_CREAT, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(kMaxSideFileBytes + 1)), 0);
    ::close(fd);
  }
  Result<std::string> r = ReadFileToString(fs, big);
  EXPECT_THAT(r, StatusIs(StatusCode::kFailedPrecondition,
                          big + ": file of " + std::to_string(kMaxSideFileBytes + 1) + " bytes"));
  EXPECT_THAT(r, StatusIs(StatusCode::kFailedPrecondition,
                          std::to_string(kMaxSideFileBytes) + "-byte limit"));
  // CopyFile streams any size: 20 MiB of random bytes, bit-exact.
  std::mt19937_64 rng(5);
  const std::vector<std::byte> data = testing::RandomBytes(20u << 20, rng);
  {
    auto w = fs.OpenWrite(tmp / "tf_model.h5", CreateMode::kExclusive);
    CKPT_ASSERT_OK(w);
    CKPT_ASSERT_OK((*w)->Append(data));
    CKPT_ASSERT_OK((*w)->Close());
  }
  CKPT_ASSERT_OK(CopyFile(fs, tmp / "tf_model.h5", tmp / "copy.h5"));
  auto c = fs.OpenRead(tmp / "copy.h5");
  CKPT_ASSERT_OK(c);
  std::vector<std::byte> back((*c)->Size());
  CKPT_ASSERT_OK((*c)->ReadAt(0, back));
  EXPECT_TRUE(back == data);
}

INSTANTIATE_TEST_SUITE_P(
    Backends, StorageConformanceTest,
    ::testing::Values(
        Backend{"posix", [] { return PosixStorage(); }, true},
        Backend{"memory", [] { return NewMemoryStorage(); }, false},
        Backend{"forwarding_posix",
                [] { return std::make_shared<ForwardingStorage>(PosixStorage()); }, true},
        Backend{"forwarding_memory",
                [] { return std::make_shared<ForwardingStorage>(NewMemoryStorage()); }, false}),
    [](const ::testing::TestParamInfo<Backend>& p) { return std::string(p.param.name); });

// Only with a server: test_s3.py runs these and fails unless they ran.
std::vector<Backend> S3Backends() {
  if (std::getenv("CKPT_TEST_S3_ENDPOINT") == nullptr) return {};
  return {Backend{"s3", TestS3Storage, false, true}};
}
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(S3StorageTest);

class S3StorageTest : public StorageConformanceTest {};

// A file of several parts written out of order, with its first bytes
// rewritten last (as the safetensors writer rewrites its header): uploaded
// as a multipart upload whose buffers stay within the memory budget.
TEST_P(S3StorageTest, MultipartOutOfOrderWritesRoundTrip) {
  std::mt19937_64 rng(7);
  const uint64_t part = 5ull << 20;
  std::vector<std::byte> data = testing::RandomBytes(3 * part + 12345, rng);
  auto f = storage_->OpenWrite(P("multi.bin"), CreateMode::kTruncate);
  CKPT_ASSERT_OK(f);
  const uint64_t chunk = 1 << 20;
  std::vector<uint64_t> order;
  for (uint64_t off = 0; off < data.size(); off += chunk) order.push_back(off);
  std::shuffle(order.begin(), order.end(), rng);
  for (uint64_t off : order) {
    const uint64_t n = std::min<uint64_t>(chunk, data.size() - off);
    CKPT_ASSERT_OK((*f)->WriteAt(off, std::span(data).subspan(off, n)));
  }
  CKPT_ASSERT_OK((*f)->WriteAt(0, std::span(data).first(100)));
  Result<bool> early = Exists(*storage_, P("multi.bin"));
  CKPT_ASSERT_OK(early);
  EXPECT_FALSE(*early);  // nothing until Close
  CKPT_ASSERT_OK((*f)->Close());
  auto r = storage_->OpenRead(P("multi.bin"));
  CKPT_ASSERT_OK(r);
  ASSERT_EQ((*r)->Size(), data.size());
  std::vector<std::byte> back(data.size());
  CKPT_ASSERT_OK((*r)->ReadAt(0, back));
  EXPECT_TRUE(back == data);
  // A ranged read gets just its range.
  std::vector<std::byte> mid(1000);
  CKPT_ASSERT_OK((*r)->ReadAt(part - 500, mid));
  EXPECT_TRUE(std::equal(mid.begin(), mid.end(), data.begin() + part - 500));
}

// Writes scattered over more parts than the budget holds (24 MiB: four
// parts of 5 MiB, each only partly written, none uploadable) fail with the
// budget named instead of buffering past it; nothing is published.
TEST_P(S3StorageTest, ScatteredWritesPastTheMemoryBudgetFail) {
  const uint64_t part = 5ull << 20;
  const std::vector<std::byte> one(10, std::byte{1});
  auto f = storage_->OpenWrite(P("scattered.bin"), CreateMode::kTruncate);
  CKPT_ASSERT_OK(f);
  for (uint64_t k = 0; k < 4; ++k) CKPT_ASSERT_OK((*f)->WriteAt(k * part + 7, one));
  EXPECT_THAT(
      (*f)->WriteAt(4 * part + 7, one),
      StatusIs(StatusCode::kFailedPrecondition,
               "bytes [20971527, 20971537) into part 5: the memory budget of 25165824 bytes "
               "(CKPT_S3_MEMORY_BUDGET) is held by 20971520 bytes of partly written parts"));
  EXPECT_FALSE((*f)->Close().ok());
  EXPECT_FALSE(*Exists(*storage_, P("scattered.bin")));
}

TEST(S3OptionsTest, AMemoryBudgetUnderTwoPartsIsRefused) {
  S3Options o;
  o.bucket = "b";
  o.endpoint = "http://127.0.0.1:9";
  o.access_key = "key";
  o.secret_key = "secret";
  o.part_size = 8ull << 20;
  o.memory_budget = 12ull << 20;
  EXPECT_THAT(NewS3Storage(o).status(),
              StatusIs(StatusCode::kInvalidArgument,
                       "memory budget of 12582912 bytes (CKPT_S3_MEMORY_BUDGET) is less than two "
                       "parts of 8388608 bytes"));
  o.memory_budget = 16ull << 20;
  CKPT_EXPECT_OK(NewS3Storage(o));
}

TEST_P(S3StorageTest, AnAbandonedUploadPublishesNothing) {
  std::mt19937_64 rng(8);
  std::vector<std::byte> data = testing::RandomBytes(11ull << 20, rng);
  {
    auto f = storage_->OpenWrite(P("gone.bin"), CreateMode::kTruncate);
    CKPT_ASSERT_OK(f);
    CKPT_ASSERT_OK((*f)->Append(data));  // parts 2 and beyond are uploaded
  }
  EXPECT_FALSE(*Exists(*storage_, P("gone.bin")));
  auto list = storage_->List(root_);
  CKPT_ASSERT_OK(list);
  EXPECT_TRUE(list->empty());
}

// More keys than one listing page (1000): List follows continuation tokens
// and RemoveAll deletes them in batches.
TEST_P(S3StorageTest, ListingAndRemovalPastOnePage) {
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < 1010; i += 8) {
        char name[32];
        std::snprintf(name, sizeof name, "many/k%04d", i);
        if (!Write(P(name), "v").ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(failures.load(), 0);
  auto list = storage_->List(P("many"));
  CKPT_ASSERT_OK(list);
  ASSERT_EQ(list->size(), 1010u);
  EXPECT_EQ(list->front().name, "k0000");
  EXPECT_EQ(list->back().name, "k1009");
  CKPT_ASSERT_OK(RemoveAll(*storage_, P("many")));
  EXPECT_FALSE(*Exists(*storage_, P("many")));
}

INSTANTIATE_TEST_SUITE_P(Server, StorageConformanceTest, ::testing::ValuesIn(S3Backends()),
                         [](const ::testing::TestParamInfo<Backend>& p) {
                           return std::string(p.param.name);
                         });
INSTANTIATE_TEST_SUITE_P(Server, S3StorageTest, ::testing::ValuesIn(S3Backends()),
                         [](const ::testing::TestParamInfo<Backend>& p) {
                           return std::string(p.param.name);
                         });

}  // namespace
}  // namespace ckpt
