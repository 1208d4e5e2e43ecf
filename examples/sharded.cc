// The README's sharded tour, compiled and run as a test so it stays true:
// 4 ranks save a row-sharded [8, 6] tensor; 2 ranks load it column-sharded.
//   sharded DIR
#include "ckpt/sharded.h"

#include <cstdio>
#include <thread>
#include <vector>

using namespace ckpt;

// Rank r of 4 holds rows [2r, 2r + 2) of an [8, 6] float tensor.
Status SaveRank(Communicator& comm, const std::string& dir, std::vector<float>& rows) {
  StateDict sd;
  uint64_t r = static_cast<uint64_t>(comm.rank());
  sd.tensors.push_back(
      {"model.w",
       DType::kF32,
       Shape({8, 6}),
       {{{2 * r, 0}, Shape({2, 6}), reinterpret_cast<std::byte*>(rows.data()), {}}}});
  return SaveSharded(comm, *PosixStorage(), dir, sd);
}

// Rank r of 2 loads columns [3r, 3r + 3) of every row.
Status LoadRank(Communicator& comm, const std::string& dir, std::vector<float>& cols) {
  StateDict sd;
  uint64_t r = static_cast<uint64_t>(comm.rank());
  sd.tensors.push_back(
      {"model.w",
       DType::kF32,
       Shape({8, 6}),
       {{{0, 3 * r}, Shape({8, 3}), reinterpret_cast<std::byte*>(cols.data()), {}}}});
  return LoadSharded(comm, *PosixStorage(), dir, sd);
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::string dir = std::string(argv[1]) + "/step_10";
  std::vector<Status> st(4);
  std::vector<std::thread> threads;
  auto savers = NewThreadCommunicators(4);
  for (int r = 0; r < 4; ++r) {
    threads.emplace_back([&, r] {
      std::vector<float> rows(12);
      for (int i = 0; i < 12; ++i)
        rows[static_cast<size_t>(i)] = static_cast<float>(r * 12 + i);  // value = row * 6 + col
      st[static_cast<size_t>(r)] = SaveRank(*savers[static_cast<size_t>(r)], dir, rows);
    });
  }
  for (auto& t : threads) t.join();
  threads.clear();
  auto loaders = NewThreadCommunicators(2);
  std::vector<std::vector<float>> cols(2, std::vector<float>(24));
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      st[static_cast<size_t>(r)] =
          LoadRank(*loaders[static_cast<size_t>(r)], dir, cols[static_cast<size_t>(r)]);
    });
  }
  for (auto& t : threads) t.join();
  for (const Status& s : st) {
    if (!s.ok()) {
      std::printf("%s\n", s.ToString().c_str());
      return 1;
    }
  }
  for (int r = 0; r < 2; ++r) {
    for (int i = 0; i < 8; ++i) {
      for (int j = 0; j < 3; ++j) {
        if (cols[static_cast<size_t>(r)][static_cast<size_t>(i * 3 + j)] !=
            static_cast<float>(i * 6 + 3 * r + j)) {
          std::printf("mismatch\n");
          return 1;
        }
      }
    }
  }
  std::printf("OK\n");
  return 0;
}
