// Communicator: how the ranks of a job coordinate.
//
// Implementations: one rank (the default), ranks as threads of one process
// (for tests and single-host runs), and MPI (include/ckpt/mpi_comm.h).
// Every rank must call the collectives in the same order. Each collective
// takes a timeout: a peer that hangs or died makes it return Unavailable
// within the timeout instead of blocking forever. After a collective fails
// the communicator is broken and every later collective fails at once.
// A Communicator is used by one thread at a time.
#ifndef CKPT_COMM_H_
#define CKPT_COMM_H_

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/status.h"

namespace ckpt {

using Timeout = std::chrono::milliseconds;
inline constexpr Timeout kDefaultCollectiveTimeout = std::chrono::minutes(10);

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Short description for messages: "threads", "mpi", "single".
  virtual std::string_view kind() const = 0;

  virtual Status Barrier(Timeout timeout) = 0;
  // Every rank's bytes, indexed by rank.
  virtual Result<std::vector<std::string>> AllGather(std::string_view mine, Timeout timeout) = 0;
  // Replaces `*data` on every rank with the root's.
  virtual Status Broadcast(int root, std::string* data, Timeout timeout) = 0;
  // Collective: a new communicator over the same ranks whose collectives
  // never match this one's, so another thread can use it at the same time
  // (background saves do). Ranks must duplicate in the same order.
  virtual Result<std::unique_ptr<Communicator>> Duplicate(Timeout timeout) = 0;

  // True on every rank when any rank passes true.
  Result<bool> AnyTrue(bool flag, Timeout timeout);
  // All-reduce of an error: OK on every rank when every rank passes OK;
  // otherwise every rank gets the failing rank's status (the lowest such
  // rank), its message prefixed with "rank R: ". A failed collective is
  // returned as is.
  Status AgreeOnStatus(const Status& local, Timeout timeout);
};

std::unique_ptr<Communicator> NewSingleRankCommunicator();

// `n` communicators of one in-process group; rank i is element i. Hand each
// to its own thread.
std::vector<std::unique_ptr<Communicator>> NewThreadCommunicators(int n);

}  // namespace ckpt

#endif  // CKPT_COMM_H_
