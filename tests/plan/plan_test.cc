// The planners on their own, with simulated ranks: the save plan's protocol
// (compact and full plans), replica deduplication, balancing, the checks of
// the union of the ranks' chunks, and the load plan's read coalescing.
#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "plan/load_plan.h"
#include "plan/save_plan.h"
#include "test_util.h"

namespace ckpt::plan {
namespace {

using ckpt::testing::IsOk;
using ckpt::testing::StatusIs;

// A tensor's chunk on one rank (no data: planning never reads it).
DistTensor Piece(const std::string& fqn, Shape global, std::vector<uint64_t> off, Shape shape,
                 DType dtype = DType::kF32) {
  DistTensor t{fqn, dtype, std::move(global), {}};
  t.chunks.push_back({std::move(off), std::move(shape), nullptr, {}});
  return t;
}

Result<std::vector<LocalPlan>> FullPlans(const std::vector<StateDict>& ranks) {
  std::vector<LocalPlan> plans;
  for (const StateDict& sd : ranks) {
    CKPT_ASSIGN_OR_RETURN(LocalPlan p, DecodeLocalPlan(EncodeLocalPlan(sd)));
    plans.push_back(std::move(p));
  }
  return plans;
}

// The protocol as rank `me` runs it: compact plans first, full plans when
// the ranks' tables differ. `*compact` tells which one decided.
Result<GlobalPlan> Plan(const std::vector<StateDict>& ranks, bool* compact = nullptr,
                        size_t me = 0) {
  std::vector<std::string> wires;
  for (const StateDict& sd : ranks) wires.push_back(EncodeChunkPlan(sd));
  CKPT_ASSIGN_OR_RETURN(std::optional<std::vector<LocalPlan>> shared,
                        DecodeChunkPlans(TensorTable::Of(ranks[me]), std::move(wires)));
  if (compact != nullptr) *compact = shared.has_value();
  if (shared) return BuildGlobalPlan(*shared);
  CKPT_ASSIGN_OR_RETURN(std::vector<LocalPlan> full, FullPlans(ranks));
  return BuildGlobalPlan(full);
}

// `n` ranks, each holding rows [r * rows, (r + 1) * rows) of every tensor.
std::vector<StateDict> RowShards(int n, int tensors, uint64_t rows, uint64_t cols) {
  std::vector<StateDict> ranks(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    for (int t = 0; t < tensors; ++t) {
      ranks[static_cast<size_t>(r)].tensors.push_back(Piece(
          "layers." + std::to_string(t) + ".w", Shape({rows * static_cast<uint64_t>(n), cols}),
          {static_cast<uint64_t>(r) * rows, 0}, Shape({rows, cols})));
    }
  }
  return ranks;
}

size_t TotalWrites(const GlobalPlan& g) {
  size_t n = 0;
  for (const auto& w : g.writes) n += w.size();
  return n;
}

TEST(SavePlan, ShardedRanksUseCompactPlansAndWriteTheirOwnChunks) {
  const std::vector<StateDict> ranks = RowShards(4, 3, 8, 16);
  bool compact = false;
  Result<GlobalPlan> g = Plan(ranks, &compact);
  ASSERT_THAT(g, IsOk());
  EXPECT_TRUE(compact);
  EXPECT_EQ(g->num_tensors, 3u);
  for (size_t r = 0; r < 4; ++r) {
    ASSERT_EQ(g->writes[r].size(), 3u) << "rank " << r;
    for (uint32_t t = 0; t < 3; ++t) {
      EXPECT_EQ(g->writes[r][t].tensor, t);
      EXPECT_EQ(g->writes[r][t].chunk, 0u);
    }
    EXPECT_EQ(g->bytes[r], 3u * 8 * 16 * 4);
  }
}

TEST(SavePlan, CompactAndFullPlansAgree) {
  std::vector<StateDict> ranks = RowShards(3, 2, 4, 4);
  // A replicated tensor too: every rank holds all of it.
  for (StateDict& sd : ranks) sd.tensors.push_back(Piece("norm", Shape({6}), {0}, Shape({6})));
  bool compact = false;
  Result<GlobalPlan> a = Plan(ranks, &compact);
  Result<std::vector<LocalPlan>> full = FullPlans(ranks);
  ASSERT_THAT(full, IsOk());
  Result<GlobalPlan> b = BuildGlobalPlan(*full);
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  EXPECT_TRUE(compact);
  EXPECT_EQ(a->bytes, b->bytes);
  for (size_t r = 0; r < ranks.size(); ++r) {
    ASSERT_EQ(a->writes[r].size(), b->writes[r].size());
    for (size_t i = 0; i < a->writes[r].size(); ++i) {
      EXPECT_EQ(a->writes[r][i].tensor, b->writes[r][i].tensor);
      EXPECT_EQ(a->writes[r][i].chunk, b->writes[r][i].chunk);
    }
  }
}

TEST(SavePlan, RanksWithOtherTensorsFallBackToFullPlans) {
  std::vector<StateDict> ranks = RowShards(2, 2, 4, 4);
  // Rank 1 lists the same tensors in another order: its table differs.
  std::swap(ranks[1].tensors[0], ranks[1].tensors[1]);
  bool compact = true;
  Result<GlobalPlan> g = Plan(ranks, &compact);
  ASSERT_THAT(g, IsOk());
  EXPECT_FALSE(compact);
  EXPECT_EQ(TotalWrites(*g), 4u);
  // Rank 1's write items index its own order.
  EXPECT_EQ(g->writes[1].size(), 2u);
  EXPECT_EQ(g->bytes[0], g->bytes[1]);
}

TEST(SavePlan, EveryRankReachesTheSameDecision) {
  std::vector<StateDict> ranks = RowShards(3, 2, 4, 4);
  ranks[2].tensors[1].dtype = DType::kBF16;  // a different table on rank 2
  for (size_t me = 0; me < ranks.size(); ++me) {
    bool compact = true;
    EXPECT_THAT(Plan(ranks, &compact, me),
                StatusIs(StatusCode::kInvalidArgument, "rank 0 has F32"));
    EXPECT_FALSE(compact) << "rank " << me;
  }
}

TEST(SavePlan, ReplicatedChunksAreWrittenOnceAndSpreadOverTheirHolders) {
  std::vector<StateDict> ranks(4);
  for (StateDict& sd : ranks) {
    for (int t = 0; t < 8; ++t)
      sd.tensors.push_back(Piece("bias." + std::to_string(t), Shape({16}), {0}, Shape({16})));
  }
  Result<GlobalPlan> g = Plan(ranks);
  ASSERT_THAT(g, IsOk());
  EXPECT_EQ(TotalWrites(*g), 8u);  // each replicated tensor once
  for (size_t r = 0; r < 4; ++r) EXPECT_EQ(g->bytes[r], 2u * 16 * 4) << "rank " << r;
}

TEST(SavePlan, ReplicatedChunksBalanceAgainstChunksOnlyOneRankHolds) {
  // Rank 0 alone holds a large tensor; a replicated one, held by ranks 0 and
  // 1, goes to rank 1 even though rank 0 comes first.
  std::vector<StateDict> ranks(2);
  ranks[0].tensors.push_back(Piece("big", Shape({1024}), {0}, Shape({1024})));
  ranks[1].tensors.push_back(DistTensor{"big", DType::kF32, Shape({1024}), {}});  // no part of it
  for (StateDict& sd : ranks) sd.tensors.push_back(Piece("small", Shape({64}), {0}, Shape({64})));
  Result<GlobalPlan> g = Plan(ranks);
  ASSERT_THAT(g, IsOk());
  ASSERT_EQ(g->writes[1].size(), 1u);
  EXPECT_EQ(g->writes[1][0].tensor, 1u);
  EXPECT_EQ(g->bytes[0], 1024u * 4);
  EXPECT_EQ(g->bytes[1], 64u * 4);
}

TEST(SavePlan, LargestReplicatedChunksGoFirst) {
  // Replicated tensors a (20 elements), b (30), c (20) on two ranks. Largest
  // first: b → rank 0, a → rank 1, c → rank 1 (20 < 30). In listing order
  // rank 0 would get a and c instead.
  std::vector<StateDict> ranks(2);
  for (StateDict& sd : ranks) {
    sd.tensors.push_back(Piece("a", Shape({20}), {0}, Shape({20})));
    sd.tensors.push_back(Piece("b", Shape({30}), {0}, Shape({30})));
    sd.tensors.push_back(Piece("c", Shape({20}), {0}, Shape({20})));
  }
  Result<GlobalPlan> g = Plan(ranks);
  ASSERT_THAT(g, IsOk());
  EXPECT_EQ(g->bytes[0], 30u * 4);  // b
  EXPECT_EQ(g->bytes[1], 40u * 4);  // a and c
  ASSERT_EQ(g->writes[0].size(), 1u);
  EXPECT_EQ(g->writes[0][0].tensor, 1u);
}

TEST(SavePlan, OverlapsHolesAndSplitChunksAreRefusedWithTheirTensor) {
  std::vector<StateDict> overlap = RowShards(2, 1, 4, 4);
  overlap[1].tensors[0].chunks[0].offsets = {3, 0};
  overlap[1].tensors[0].chunks[0].shape = Shape({5, 4});
  EXPECT_THAT(Plan(overlap), StatusIs(StatusCode::kInvalidArgument, "tensor 'layers.0.w'"));

  std::vector<StateDict> hole = RowShards(2, 1, 4, 4);
  hole[1].tensors[0].chunks[0].shape = Shape({3, 4});
  EXPECT_THAT(Plan(hole), StatusIs(StatusCode::kInvalidArgument, "a hole"));

  std::vector<StateDict> two = RowShards(1, 1, 4, 4);
  two[0].tensors[0].global_shape = Shape({8, 4});
  two[0].tensors[0].chunks.push_back({{4, 0}, Shape({4, 4}), nullptr, {}});
  EXPECT_THAT(Plan(two), StatusIs(StatusCode::kInvalidArgument, "holds 2 different chunks"));
}

TEST(SavePlan, ChunksOfTheWrongRankAreNamedByTheFullPlan) {
  std::vector<StateDict> ranks = RowShards(2, 1, 4, 4);
  ranks[1].tensors[0].chunks[0].offsets = {4};
  bool compact = true;
  EXPECT_THAT(Plan(ranks, &compact),
              StatusIs(StatusCode::kInvalidArgument, "a chunk has 1 offsets for a rank-2"));
  EXPECT_FALSE(compact);
}

TEST(SavePlan, MalformedCompactPlansAreDataLoss) {
  std::vector<StateDict> ranks = RowShards(2, 2, 4, 4);
  std::vector<std::string> wires = {EncodeChunkPlan(ranks[0]), EncodeChunkPlan(ranks[1])};
  std::vector<std::string> truncated = wires;
  truncated[1].pop_back();
  EXPECT_THAT(DecodeChunkPlans(TensorTable::Of(ranks[0]), truncated),
              StatusIs(StatusCode::kDataLoss, "malformed save plan"));
  std::vector<std::string> trailing = wires;
  trailing[0].push_back('\x01');
  EXPECT_THAT(DecodeChunkPlans(TensorTable::Of(ranks[0]), trailing),
              StatusIs(StatusCode::kDataLoss, "trailing bytes"));
  std::vector<std::string> kind = wires;
  kind[1][0] = '\x07';
  EXPECT_THAT(DecodeChunkPlans(TensorTable::Of(ranks[0]), kind),
              StatusIs(StatusCode::kDataLoss, "plan kind"));
}

TEST(SavePlan, LargePlansReportTheLowestTensorsError) {
  // Enough chunks for the checks to run in parallel ranges; two broken
  // tensors, far apart: the first one is reported, as a sequential pass would.
  std::vector<StateDict> ranks = RowShards(256, 1200, 2, 4);
  ranks[7].tensors[1100].chunks[0].shape = Shape({1, 4});
  ranks[3].tensors[20].chunks[0].shape = Shape({1, 4});
  EXPECT_THAT(Plan(ranks), StatusIs(StatusCode::kInvalidArgument, "tensor 'layers.20.w'"));
  ranks[3].tensors[20].chunks[0].shape = Shape({2, 4});
  EXPECT_THAT(Plan(ranks), StatusIs(StatusCode::kInvalidArgument, "tensor 'layers.1100.w'"));
  ranks[7].tensors[1100].chunks[0].shape = Shape({2, 4});
  Result<GlobalPlan> g = Plan(ranks);
  ASSERT_THAT(g, IsOk());
  EXPECT_EQ(TotalWrites(*g), 256u * 1200);
}

// Load planning: the reads that fill a local chunk from a saved one.
SavedChunk Saved(Box box, uint64_t data_offset) {
  SavedChunk c;
  c.box = std::move(box);
  c.data_offset = data_offset;
  return c;
}

uint64_t BytesRead(const std::vector<ReadOp>& ops) {
  uint64_t n = 0;
  for (const ReadOp& op : ops) n += op.length;
  return n;
}

TEST(LoadPlan, ARowSliceIsOneDirectRead) {
  std::vector<ReadOp> ops;
  ASSERT_THAT(
      PlanChunkReads(Saved(Box{{0, 0}, {8, 16}}, 100), DType::kF32, Box{{2, 0}, {3, 16}}, {}, &ops),
      IsOk());
  ASSERT_EQ(ops.size(), 1u);
  EXPECT_EQ(ops[0].file_offset, 100u + 2 * 16 * 4);
  EXPECT_EQ(ops[0].length, 3u * 16 * 4);
  EXPECT_TRUE(ops[0].Direct());
}

TEST(LoadPlan, SmallGapsBetweenRowsAreMergedIntoOneRead) {
  // Columns 0..62 of 64: each row skips 1 column, well under 5% extra.
  std::vector<ReadOp> ops;
  ASSERT_THAT(
      PlanChunkReads(Saved(Box{{0, 0}, {8, 64}}, 0), DType::kF32, Box{{0, 0}, {8, 63}}, {}, &ops),
      IsOk());
  ASSERT_EQ(ops.size(), 1u);
  EXPECT_EQ(ops[0].pieces.size(), 8u);
  EXPECT_LE(BytesRead(ops), 8u * 63 * 4 * 105 / 100);
  EXPECT_FALSE(ops[0].Direct());
}

TEST(LoadPlan, LargeGapsAreNotReadAndNoMoreThanFivePercentExtraIsRead) {
  // Half the columns: merging would read twice the bytes needed.
  std::vector<ReadOp> ops;
  ASSERT_THAT(
      PlanChunkReads(Saved(Box{{0, 0}, {8, 64}}, 0), DType::kF32, Box{{0, 0}, {8, 32}}, {}, &ops),
      IsOk());
  EXPECT_EQ(ops.size(), 8u);
  EXPECT_EQ(BytesRead(ops), 8u * 32 * 4);
}

}  // namespace
}  // namespace ckpt::plan
