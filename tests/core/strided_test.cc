#include "core/strided.h"

#include <gtest/gtest.h>

#include <numeric>
#include <random>

#include "ckpt/status.h"

namespace ckpt {
namespace {

// The element offsets (in elements) of `l` in row-major order, one at a
// time: what every copy did before the helper existed.
std::vector<int64_t> NaiveOffsets(const StridedLayout& l) {
  uint64_t total = 1;
  for (uint64_t d : l.shape) total *= d;
  std::vector<int64_t> out;
  std::vector<uint64_t> idx(l.shape.size(), 0);
  const std::vector<int64_t> strides = l.strides.empty() ? RowMajorStrides(l.shape) : l.strides;
  for (uint64_t e = 0; e < total; ++e) {
    int64_t off = 0;
    for (size_t d = 0; d < idx.size(); ++d) off += static_cast<int64_t>(idx[d]) * strides[d];
    out.push_back(off);
    for (size_t d = idx.size(); d-- > 0;) {
      if (++idx[d] < l.shape[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

// A view into a buffer of `storage` elements: a random shape, each
// dimension possibly sliced, permuted or reversed. *origin is where the
// view's first element sits in the buffer.
StridedLayout RandomView(std::mt19937_64& rng, uint64_t esz, int64_t* origin, uint64_t* storage) {
  const size_t rank = rng() % 5;
  std::vector<uint64_t> full(rank);
  for (auto& d : full) d = 1 + rng() % 5;
  std::vector<int64_t> strides = RowMajorStrides(full);
  StridedLayout l{std::vector<uint64_t>(rank), std::vector<int64_t>(rank), esz};
  *storage = std::accumulate(full.begin(), full.end(), uint64_t{1}, std::multiplies<>());
  *origin = 0;
  for (size_t d = 0; d < rank; ++d) {
    const uint64_t begin = rng() % 3 == 0 ? rng() % full[d] : 0;
    l.shape[d] = rng() % 4 == 0 ? 1 + rng() % (full[d] - begin) : full[d] - begin;
    l.strides[d] = strides[d];
    *origin += static_cast<int64_t>(begin) * strides[d];
    if (rng() % 5 == 0) {  // reversed
      *origin += static_cast<int64_t>(l.shape[d] - 1) * strides[d];
      l.strides[d] = -strides[d];
    }
  }
  if (rank >= 2 && rng() % 3 == 0) {  // transposed
    const size_t a = rng() % rank, b = rng() % rank;
    std::swap(l.shape[a], l.shape[b]);
    std::swap(l.strides[a], l.strides[b]);
  }
  return l;
}

TEST(StridedTest, GatherScatterAndRangesMatchAnElementByElementWalkOnRandomViews) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 2000; ++trial) {
    const uint64_t esz = uint64_t{1} << (rng() % 4);
    int64_t origin = 0;
    uint64_t storage = 0;
    const StridedLayout l = RandomView(rng, esz, &origin, &storage);
    std::vector<std::byte> buf(storage * esz);
    for (auto& b : buf) b = static_cast<std::byte>(rng());
    const std::byte* base = buf.data() + origin * static_cast<int64_t>(esz);
    const std::vector<int64_t> offs = NaiveOffsets(l);
    std::vector<std::byte> want;
    for (int64_t o : offs)
      want.insert(want.end(), base + o * static_cast<int64_t>(esz),
                  base + (o + 1) * static_cast<int64_t>(esz));

    std::vector<std::byte> got(want.size());
    GatherAll(l, base, got.data());
    ASSERT_EQ(got, want) << "trial " << trial;

    // Any sub-range, starting and ending inside runs.
    const uint64_t n = offs.size();
    const uint64_t first = n == 0 ? 0 : rng() % n, count = n == 0 ? 0 : rng() % (n - first + 1);
    std::vector<std::byte> part(count * esz);
    GatherElements(l, base, first, count, part.data());
    ASSERT_TRUE(
        std::equal(part.begin(), part.end(), want.begin() + static_cast<int64_t>(first * esz)))
        << "trial " << trial << " range [" << first << ", " << first + count << ")";

    // Scatter writes exactly the view's elements and nothing else. A
    // reversed or transposed view of distinct elements is still one-to-one.
    std::vector<std::byte> dst(buf.size(), std::byte{0xEE});
    std::vector<std::byte> src(want.size());
    for (auto& b : src) b = static_cast<std::byte>(rng());
    ScatterAll(l, src.data(), dst.data() + origin * static_cast<int64_t>(esz));
    std::vector<std::byte> expect(buf.size(), std::byte{0xEE});
    for (size_t e = 0; e < offs.size(); ++e) {
      std::copy_n(src.begin() + static_cast<int64_t>(e * esz), esz,
                  expect.begin() + (origin + offs[e]) * static_cast<int64_t>(esz));
    }
    ASSERT_EQ(dst, expect) << "trial " << trial;
  }
}

TEST(StridedTest, ContiguousInnerDimensionsAreCopiedAsOneRunPerOuterIndex) {
  // Rows 2..5 of a [8, 16, 4] array of 4-byte elements are contiguous: one
  // run of 1024 bytes.
  const StridedLayout rows{{4, 16, 4}, {64, 4, 1}, 4};
  std::vector<uint64_t> runs;
  ForEachRunInRange(rows, 0, 4 * 16 * 4, [&](int64_t off, uint64_t bytes) {
    EXPECT_EQ(off, 0);
    runs.push_back(bytes);
  });
  EXPECT_EQ(runs, std::vector<uint64_t>{1024});

  // Columns 0..7 of dimension 1 of a [4, 16, 4] array: the inner [8, 4] is
  // contiguous, so one run of 128 bytes per index of dimension 0, 256 bytes
  // apart.
  const StridedLayout mid{{4, 8, 4}, {64, 4, 1}, 4};
  runs.clear();
  std::vector<int64_t> offs;
  ForEachRunInRange(mid, 0, 4 * 8 * 4, [&](int64_t off, uint64_t bytes) {
    offs.push_back(off);
    runs.push_back(bytes);
  });
  EXPECT_EQ(runs, (std::vector<uint64_t>{128, 128, 128, 128}));
  EXPECT_EQ(offs, (std::vector<int64_t>{0, 256, 512, 768}));

  // Columns 0..7 of a [4, 16] array: runs of 8 elements.
  const StridedLayout cols{{4, 8}, {16, 1}, 2};
  runs.clear();
  ForEachRunInRange(cols, 3, 10, [&](int64_t, uint64_t bytes) { runs.push_back(bytes); });
  EXPECT_EQ(runs, (std::vector<uint64_t>{10, 10})) << "elements 3..7 of row 0, 0..4 of row 1";

  // A transpose has no contiguous run: one element per call.
  const StridedLayout t{{3, 2}, {1, 3}, 8};
  runs.clear();
  ForEachRunInRange(t, 0, 6, [&](int64_t, uint64_t bytes) { runs.push_back(bytes); });
  EXPECT_EQ(runs, std::vector<uint64_t>(6, 8));

  // No strides: the whole range in one call.
  runs.clear();
  ForEachRunInRange(StridedLayout{{5, 7}, {}, 2}, 4, 20, [&](int64_t off, uint64_t bytes) {
    EXPECT_EQ(off, 8);
    runs.push_back(bytes);
  });
  EXPECT_EQ(runs, std::vector<uint64_t>{40});
}

TEST(StridedTest, ForEachRunStopsAtTheFirstError) {
  const StridedLayout l{{4, 3}, {1, 4}, 1};
  int calls = 0;
  Status s = ForEachRun(
      l, [&](int64_t, uint64_t) { return ++calls == 3 ? DataLossError("third run") : Status(); });
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_EQ(calls, 3);
}

TEST(StridedTest, RowMajorStridesCountElementsOfTheTrailingDimensions) {
  EXPECT_EQ(RowMajorStrides({2, 3, 4}), (std::vector<int64_t>{12, 4, 1}));
  EXPECT_EQ(RowMajorStrides({}), std::vector<int64_t>{});
  EXPECT_EQ(RowMajorStrides({5, 0, 2}), (std::vector<int64_t>{0, 2, 1}));
}

}  // namespace
}  // namespace ckpt
