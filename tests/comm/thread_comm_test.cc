#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "ckpt/comm.h"
#include "test_util.h"

namespace ckpt {
namespace {

using std::chrono::milliseconds;
using testing::StatusIs;

// Runs fn(comm) on one thread per rank and waits for all.
template <typename Fn>
void OnRanks(int n, Fn fn) {
  auto comms = NewThreadCommunicators(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) threads.emplace_back([&, r] { fn(*comms[static_cast<size_t>(r)]); });
  for (auto& t : threads) t.join();
}

TEST(ThreadCommTest, CollectivesAgreeAcrossRanks) {
  for (int n : {1, 2, 4, 8}) {
    std::vector<std::string> gathered(static_cast<size_t>(n));
    std::atomic<int> errors{0};
    OnRanks(n, [&](Communicator& c) {
      for (int round = 0; round < 20; ++round) {
        auto all = c.AllGather("r" + std::to_string(c.rank()) + "." + std::to_string(round),
                               milliseconds(5000));
        if (!all.ok() || all->size() != static_cast<size_t>(n)) {
          ++errors;
          return;
        }
        for (int r = 0; r < n; ++r) {
          if ((*all)[static_cast<size_t>(r)] !=
              "r" + std::to_string(r) + "." + std::to_string(round))
            ++errors;
        }
        std::string b = c.rank() == round % n ? "from root" : "junk";
        if (!c.Broadcast(round % n, &b, milliseconds(5000)).ok() || b != "from root") ++errors;
        if (!c.Barrier(milliseconds(5000)).ok()) ++errors;
      }
    });
    EXPECT_EQ(errors.load(), 0) << n << " ranks";
  }
}

TEST(ThreadCommTest, AgreeOnStatusReportsTheFailingRankEverywhere) {
  std::vector<Status> got(4);
  OnRanks(4, [&](Communicator& c) {
    Status local = c.rank() == 2 ? Status(StatusCode::kUnavailable, "disk full on /x") : Status();
    got[static_cast<size_t>(c.rank())] = c.AgreeOnStatus(local, milliseconds(5000));
  });
  for (const Status& s : got) {
    EXPECT_EQ(s.code(), StatusCode::kUnavailable);
    EXPECT_EQ(s.message(), "rank 2: disk full on /x");
  }
  std::vector<int> any(3);  // not vector<bool>: each thread writes its own element
  OnRanks(3, [&](Communicator& c) {
    any[static_cast<size_t>(c.rank())] = *c.AnyTrue(c.rank() == 1, milliseconds(5000));
  });
  EXPECT_EQ(any, std::vector<int>({1, 1, 1}));
}

TEST(ThreadCommTest, ARankThatStopsAnsweringMakesOthersFailWithinTheTimeout) {
  std::vector<Status> got(4);
  std::vector<double> seconds(4);
  OnRanks(4, [&](Communicator& c) {
    if (c.rank() == 3) return;  // never joins the collective
    auto t0 = std::chrono::steady_clock::now();
    got[static_cast<size_t>(c.rank())] = c.Barrier(milliseconds(200));
    seconds[static_cast<size_t>(c.rank())] =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // The group stays broken: later collectives fail at once.
    Status again = c.Barrier(milliseconds(10000));
    if (again.code() != StatusCode::kFailedPrecondition) got[static_cast<size_t>(c.rank())] = again;
  });
  int timed_out = 0;
  for (int r = 0; r < 3; ++r) {
    const Status& s = got[static_cast<size_t>(r)];
    EXPECT_THAT(s, StatusIs(StatusCode::kUnavailable, "waiting for rank(s) 3"));
    EXPECT_LT(seconds[static_cast<size_t>(r)], 5.0);
    if (s.message().find("timed out") != std::string::npos) ++timed_out;
  }
  EXPECT_GE(timed_out, 1);
}

TEST(SingleRankCommTest, TrivialCollectives) {
  auto c = NewSingleRankCommunicator();
  EXPECT_EQ(c->rank(), 0);
  EXPECT_EQ(c->size(), 1);
  CKPT_EXPECT_OK(c->Barrier(milliseconds(1)));
  auto all = c->AllGather("x", milliseconds(1));
  CKPT_ASSERT_OK(all);
  EXPECT_EQ(*all, std::vector<std::string>{"x"});
  EXPECT_EQ(c->AgreeOnStatus(IOError("e"), milliseconds(1)).message(), "rank 0: e");
}

}  // namespace
}  // namespace ckpt
