// MPI communicator: non-blocking collectives polled against a deadline.
#include "ckpt/mpi_comm.h"

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

namespace ckpt {
namespace {

std::atomic<int> g_live{0};
bool g_we_initialized = false;
int g_thread_level = MPI_THREAD_SINGLE;

Status MpiError(int rc, const std::string& what) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  return IOError(what + ": " + std::string(msg, static_cast<size_t>(len)));
}

class MpiComm final : public Communicator {
 public:
  MpiComm(MPI_Comm comm, int rank, int size) : comm_(comm), rank_(rank), size_(size) {}
  ~MpiComm() override {
    if (broken_.empty()) MPI_Comm_free(&comm_);
    if (--g_live == 0 && g_we_initialized) {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized) MPI_Finalize();
    }
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view kind() const override { return "mpi"; }

  Status Barrier(Timeout timeout) override {
    CKPT_RETURN_IF_ERROR(CheckUsable("barrier"));
    MPI_Request req;
    int rc = MPI_Ibarrier(comm_, &req);
    if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Ibarrier");
    return Wait(&req, Deadline(timeout), timeout, "barrier");
  }

  Result<std::vector<std::string>> AllGather(std::string_view mine, Timeout timeout) override {
    CKPT_RETURN_IF_ERROR(CheckUsable("all-gather"));
    auto deadline = Deadline(timeout);
    int64_t len = static_cast<int64_t>(mine.size());
    std::vector<int64_t> lens(static_cast<size_t>(size_));
    MPI_Request req;
    int rc = MPI_Iallgather(&len, 1, MPI_INT64_T, lens.data(), 1, MPI_INT64_T, comm_, &req);
    if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Iallgather");
    CKPT_RETURN_IF_ERROR(Wait(&req, deadline, timeout, "all-gather of sizes"));
    std::vector<int> counts(static_cast<size_t>(size_)), displs(static_cast<size_t>(size_));
    int64_t total = 0;
    for (int r = 0; r < size_; ++r) {
      displs[static_cast<size_t>(r)] = static_cast<int>(total);
      counts[static_cast<size_t>(r)] = static_cast<int>(lens[static_cast<size_t>(r)]);
      total += lens[static_cast<size_t>(r)];
    }
    if (total > INT32_MAX) {
      return InvalidArgumentError("all-gather of " + std::to_string(total) +
                                  " bytes exceeds MPI's 2 GiB count limit");
    }
    std::string all(static_cast<size_t>(total), '\0');
    rc = MPI_Iallgatherv(mine.data(), static_cast<int>(len), MPI_BYTE, all.data(), counts.data(),
                         displs.data(), MPI_BYTE, comm_, &req);
    if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Iallgatherv");
    CKPT_RETURN_IF_ERROR(Wait(&req, deadline, timeout, "all-gather"));
    std::vector<std::string> out;
    out.reserve(static_cast<size_t>(size_));
    for (int r = 0; r < size_; ++r) {
      out.push_back(all.substr(static_cast<size_t>(displs[static_cast<size_t>(r)]),
                               static_cast<size_t>(counts[static_cast<size_t>(r)])));
    }
    return out;
  }

  Result<std::unique_ptr<Communicator>> Duplicate(Timeout timeout) override {
    CKPT_RETURN_IF_ERROR(CheckUsable("duplicate"));
    if (g_thread_level < MPI_THREAD_MULTIPLE) {
      return FailedPreconditionError(
          "duplicating an MPI communicator for use from another thread needs MPI_THREAD_MULTIPLE, "
          "which this MPI library does not provide");
    }
    // MPI_Comm_dup has no timeout: a barrier with one first, so a missing
    // rank is an error, not a hang.
    CKPT_RETURN_IF_ERROR(Barrier(timeout));
    MPI_Comm dup;
    int rc = MPI_Comm_dup(comm_, &dup);
    if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Comm_dup");
    MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
    ++g_live;
    return std::unique_ptr<Communicator>(new MpiComm(dup, rank_, size_));
  }

  Status Broadcast(int root, std::string* data, Timeout timeout) override {
    CKPT_RETURN_IF_ERROR(CheckUsable("broadcast"));
    if (root < 0 || root >= size_) {
      return InvalidArgumentError("broadcast root " + std::to_string(root) + " of " +
                                  std::to_string(size_) + " ranks");
    }
    auto deadline = Deadline(timeout);
    int64_t len = static_cast<int64_t>(data->size());
    MPI_Request req;
    int rc = MPI_Ibcast(&len, 1, MPI_INT64_T, root, comm_, &req);
    if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Ibcast");
    CKPT_RETURN_IF_ERROR(Wait(&req, deadline, timeout, "broadcast of size"));
    if (len > INT32_MAX) return InvalidArgumentError("broadcast larger than 2 GiB");
    data->resize(static_cast<size_t>(len));
    rc = MPI_Ibcast(data->data(), static_cast<int>(len), MPI_BYTE, root, comm_, &req);
    if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Ibcast");
    return Wait(&req, deadline, timeout, "broadcast");
  }

 private:
  using Clock = std::chrono::steady_clock;
  static Clock::time_point Deadline(Timeout t) { return Clock::now() + t; }

  Status CheckUsable(const char* what) const {
    if (broken_.empty()) return Status();
    return FailedPreconditionError("rank " + std::to_string(rank_) + ": " + what +
                                   " on a broken MPI communicator (" + broken_ + ")");
  }

  // Polls with a short sleep so a waiting rank does not burn a core.
  Status Wait(MPI_Request* req, Clock::time_point deadline, Timeout timeout, const char* what) {
    auto sleep = std::chrono::microseconds(20);
    for (;;) {
      int done = 0;
      int rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) return MpiError(rc, std::string("MPI_Test during ") + what);
      if (done) return Status();
      if (Clock::now() >= deadline) {
        broken_ = std::string(what) + " timed out after " + std::to_string(timeout.count()) + " ms";
        return UnavailableError("rank " + std::to_string(rank_) + ": " + broken_ +
                                " (a peer is hung or gone)");
      }
      std::this_thread::sleep_for(sleep);
      sleep = std::min(sleep * 2, std::chrono::microseconds(2000));
    }
  }

  MPI_Comm comm_;
  int rank_;
  int size_;
  std::string broken_;
};

}  // namespace

bool HaveMpi() { return true; }

Result<std::unique_ptr<Communicator>> NewMpiWorldCommunicator() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
    if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Init_thread");
    g_we_initialized = true;
  }
  MPI_Query_thread(&g_thread_level);
  MPI_Comm comm;
  int rc = MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Comm_dup");
  // Report errors as return codes; the runtime still ends the job when a
  // process dies.
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  int rank = 0, size = 0;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  ++g_live;
  return std::unique_ptr<Communicator>(new MpiComm(comm, rank, size));
}

}  // namespace ckpt
