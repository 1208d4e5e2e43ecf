// The staging pipe on its own: a producer and a writer thread, with and
// without a memory budget, contiguous and strided chunks, failures on either
// side.
#include "ckpt/staging.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "async/staging_pipe.h"
#include "test_util.h"

namespace ckpt::async {
namespace {

using ::ckpt::testing::StatusIs;

struct Fixture {
  std::vector<float> a, b;
  StateDict sd;
  std::vector<std::byte> expected;  // the chunks' bytes in row-major order, a then b
  Fixture() {
    a.resize(1000 * 300);
    for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i);
    // b is viewed transposed: a [200, 100] chunk over a [100, 200] buffer.
    b.resize(200 * 100);
    for (size_t i = 0; i < b.size(); ++i) b[i] = -static_cast<float>(i);
    sd.tensors.push_back(
        WholeTensor("a", DType::kF32, Shape{1000, 300}, reinterpret_cast<std::byte*>(a.data())));
    DistTensor t{"b", DType::kF32, Shape{200, 100}, {}};
    t.chunks.push_back(
        LocalChunk{{0, 0}, Shape{200, 100}, reinterpret_cast<std::byte*>(b.data()), {1, 200}});
    sd.tensors.push_back(t);
    const std::byte* p = reinterpret_cast<const std::byte*>(a.data());
    expected.assign(p, p + a.size() * 4);
    for (size_t r = 0; r < 200; ++r) {
      for (size_t c = 0; c < 100; ++c) {
        const float v = b[c * 200 + r];
        const std::byte* q = reinterpret_cast<const std::byte*>(&v);
        expected.insert(expected.end(), q, q + 4);
      }
    }
  }
};

// The writer side, as SaveSharded drives it: the chunks of the tensors in
// `which`, in order.
Status Drain(StagingPipe& pipe, const StateDict& sd, std::vector<std::byte>* out,
             std::vector<uint32_t> which = {0, 1}) {
  for (uint32_t ti : which) {
    const DistTensor& t = sd.tensors[ti];
    const uint64_t n = *t.chunks[0].shape.NumBytes(t.dtype);
    for (uint64_t got = 0; got < n;) {
      Result<std::span<const std::byte>> piece = pipe.Next({ti, 0});
      if (!piece.ok()) return piece.status();
      out->insert(out->end(), piece->begin(), piece->end());
      got += piece->size();
      pipe.Release();
    }
  }
  pipe.Finish(Status());
  return Status();
}

TEST(StagingPipe, UnboundedStagesEverythingBeforeTheWriterStarts) {
  Fixture f;
  auto memory = NewHostStagingMemory(2);
  StagingPipe pipe(*memory, f.sd, 0);
  // No writer yet: the producer must not wait for one.
  CKPT_ASSERT_OK(pipe.Produce());
  std::vector<std::byte> out;
  CKPT_ASSERT_OK(Drain(pipe, f.sd, &out));
  EXPECT_EQ(out, f.expected);
  EXPECT_EQ(memory->capacity(), f.expected.size());
}

TEST(StagingPipe, BudgetBoundsMemoryAndWrapsTheRing) {
  Fixture f;
  auto memory = NewHostStagingMemory(2);
  for (int round = 0; round < 2; ++round) {  // memory is reused, not grown
    StagingPipe pipe(*memory, f.sd, 100000);
    std::vector<std::byte> out;
    Status writer;
    std::thread w([&] { writer = Drain(pipe, f.sd, &out); });
    CKPT_EXPECT_OK(pipe.Produce());
    w.join();
    CKPT_EXPECT_OK(writer);
    EXPECT_EQ(out, f.expected);
    EXPECT_LE(memory->capacity(), 100000u);
    EXPECT_LE(pipe.piece_size(), 50000u);
  }
}

TEST(StagingPipe, WriterFailureUnblocksTheProducer) {
  Fixture f;
  auto memory = NewHostStagingMemory(1);
  StagingPipe pipe(*memory, f.sd, 65536);
  std::thread w([&] {
    Result<std::span<const std::byte>> piece = pipe.Next({0, 0});  // one piece, then the disk fails
    (void)piece;
    pipe.Release();
    pipe.Finish(IOError("injected: disk full"));
  });
  Status s = pipe.Produce();
  w.join();
  EXPECT_THAT(s, StatusIs(StatusCode::kIOError, "injected: disk full"));
}

TEST(StagingPipe, FailureBeforeAnyWriteUnblocksTheProducer) {
  Fixture f;
  auto memory = NewHostStagingMemory(1);
  StagingPipe pipe(*memory, f.sd, 65536);  // the ring fills; the producer must wait
  std::thread w([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    pipe.Finish(UnavailableError("rank 1 is gone"));
  });
  Status s = pipe.Produce();
  w.join();
  EXPECT_THAT(s, StatusIs(StatusCode::kUnavailable, "rank 1 is gone"));
}

// A rank that holds a replica another rank writes stages it anyway; the
// writer skips it.
TEST(StagingPipe, WriterSkipsChunksItDoesNotWrite) {
  Fixture f;
  const std::vector<std::byte> b_bytes(f.expected.begin() + static_cast<long>(f.a.size() * 4),
                                       f.expected.end());
  for (uint64_t budget : {uint64_t{0}, uint64_t{100000}}) {
    auto memory = NewHostStagingMemory(2);
    StagingPipe pipe(*memory, f.sd, budget);
    std::vector<std::byte> out;
    Status writer;
    std::thread w([&] { writer = Drain(pipe, f.sd, &out, {1}); });
    CKPT_EXPECT_OK(pipe.Produce());
    w.join();
    CKPT_EXPECT_OK(writer);
    EXPECT_EQ(out, b_bytes) << "budget " << budget;
  }
}

}  // namespace
}  // namespace ckpt::async
