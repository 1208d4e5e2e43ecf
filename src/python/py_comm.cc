// Communicators for Python callers, and asynchronous saves.
//
// PyCommunicator runs each collective by calling a Python object (ckpt's
// torch.distributed adapter). It holds the GIL only while that call runs;
// torch releases it again while the collective waits, so an engine thread
// in the background and the training thread never wait on each other for
// the GIL. A Python exception (a timeout, a dead peer) becomes Unavailable,
// and the communicator is broken from then on, as the interface requires.

#include <atomic>
#include <map>

#include "async/staging_pipe.h"
#include "async/worker.h"
#include "ckpt/staging.h"
#include "python/common.h"

namespace ckpt::python {
namespace {

class PyCommunicator final : public Communicator {
 public:
  PyCommunicator(nb::object impl, int rank, int size)
      : impl_(std::move(impl)), rank_(rank), size_(size) {}
  ~PyCommunicator() override {
    if (!Py_IsInitialized()) {
      impl_.release();  // the interpreter is gone; nothing left to release it to
      return;
    }
    nb::gil_scoped_acquire gil;
    impl_.reset();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view kind() const override { return "torch.distributed"; }

  Status Barrier(Timeout timeout) override {
    return Call("barrier", [&] { impl_.attr("barrier")(Seconds(timeout)); });
  }

  Result<std::vector<std::string>> AllGather(std::string_view mine, Timeout timeout) override {
    std::vector<std::string> out;
    Status s = Call("all_gather", [&] {
      nb::object got =
          impl_.attr("all_gather")(nb::bytes(mine.data(), mine.size()), Seconds(timeout));
      for (nb::handle h : got) {
        nb::bytes b = nb::cast<nb::bytes>(h);
        out.emplace_back(b.c_str(), b.size());
      }
    });
    if (!s.ok()) return s;
    if (out.size() != static_cast<size_t>(size_)) {
      broken_ = true;
      return InternalError("all_gather returned " + std::to_string(out.size()) + " values for " +
                           std::to_string(size_) + " ranks");
    }
    return out;
  }

  Status Broadcast(int root, std::string* data, Timeout timeout) override {
    return Call("broadcast", [&] {
      nb::bytes got = nb::cast<nb::bytes>(
          impl_.attr("broadcast")(root, nb::bytes(data->data(), data->size()), Seconds(timeout)));
      data->assign(got.c_str(), got.size());
    });
  }

  Result<std::unique_ptr<Communicator>> Duplicate(Timeout timeout) override {
    std::unique_ptr<Communicator> dup;
    Status s = Call("duplicate", [&] {
      nb::object other = impl_.attr("duplicate")(Seconds(timeout));
      dup = std::make_unique<PyCommunicator>(std::move(other), rank_, size_);
    });
    if (!s.ok()) return s;
    return dup;
  }

 private:
  static double Seconds(Timeout t) { return static_cast<double>(t.count()) / 1000.0; }

  template <typename Fn>
  Status Call(const char* what, Fn fn) {
    if (broken_)
      return UnavailableError(std::string(what) + ": the communicator failed earlier on rank " +
                              std::to_string(rank_));
    if (!Py_IsInitialized())
      return UnavailableError(std::string(what) + ": the Python interpreter has exited");
    nb::gil_scoped_acquire gil;
    try {
      fn();
      return Status();
    } catch (nb::python_error& e) {
      broken_ = true;
      std::string msg = nb::str(e.value()).c_str();
      return UnavailableError(std::string("torch.distributed ") + what + " failed on rank " +
                              std::to_string(rank_) + ": " +
                              nb::str(e.type().attr("__name__")).c_str() + ": " + msg);
    } catch (const std::exception& e) {
      broken_ = true;
      return UnavailableError(std::string("torch.distributed ") + what + " failed on rank " +
                              std::to_string(rank_) + ": " + e.what());
    }
  }

  nb::object impl_;
  const int rank_;
  const int size_;
  std::atomic<bool> broken_{false};
};

// Asynchronous saves: the caller's thread copies the tensors into host
// staging memory (GIL released) and returns; a background worker writes and
// publishes each save in submission order on its own communicator.
class AsyncSaver {
 public:
  AsyncSaver(std::shared_ptr<Communicator> comm, unsigned copy_threads, uint64_t budget)
      : comm_(std::move(comm)),
        memory_(NewHostStagingMemory(copy_threads)),
        budget_(budget),
        worker_(std::make_unique<async::Worker>()) {}
  ~AsyncSaver() { Close(); }

  uint64_t Submit(const std::string& path, const TensorList& tensors, const JsonMap& json,
                  const nb::dict& bytes, double timeout_s) {
    if (!worker_) throw StatusException{FailedPreconditionError("the async saver is closed")};
    // The previous save must be done before its staging memory is reused;
    // its outcome stays with its own future.
    if (last_ != 0) Collect(last_);
    auto job = std::make_shared<Job>();
    job->owned = BuildStateDict(tensors, json, bytes);
    job->pipe = std::make_unique<async::StagingPipe>(*memory_, job->owned.sd, budget_);
    SaveOptions options;
    options.timeout = ToTimeout(timeout_s);
    options.source = job->pipe.get();
    std::shared_ptr<Communicator> comm = comm_;
    const uint64_t ticket = worker_->Submit([job, comm, path, options]() {
      return SaveSharded(*comm, *PosixStorage(), path, job->owned.sd, options);
    });
    last_ = ticket;
    Released([&] { return job->pipe->Produce(); });
    return ticket;
  }

  // Raises the save's error, every time it is asked.
  void Wait(uint64_t ticket) { RaiseIfError(Collect(ticket)); }
  bool Done(uint64_t ticket) {
    return results_.contains(ticket) || !worker_ || worker_->Done(ticket);
  }
  void Drain() {
    if (last_ != 0) RaiseIfError(Collect(last_));
  }

  // Waits for save `ticket` (GIL released) and keeps its outcome.
  Status Collect(uint64_t ticket) {
    if (auto it = results_.find(ticket); it != results_.end()) return it->second;
    if (!worker_)
      return FailedPreconditionError("the async saver was closed before save " +
                                     std::to_string(ticket));
    Status s;
    {
      nb::gil_scoped_release release;
      s = worker_->Wait(ticket);
    }
    results_[ticket] = s;
    return s;
  }

  // Runs what is queued and stops the worker; later submits fail.
  void Close() {
    if (!worker_) return;
    const bool gil = Py_IsInitialized() && PyGILState_Check();
    if (gil && last_ != 0) Collect(last_).IgnoreError();  // kept for its future
    std::unique_ptr<async::Worker> w = std::move(worker_);
    if (gil) {
      nb::gil_scoped_release release;
      w.reset();
    } else {
      w.reset();
    }
  }

 private:
  struct Job {
    Owned owned;
    std::unique_ptr<async::StagingPipe> pipe;
  };
  std::shared_ptr<Communicator> comm_;
  std::unique_ptr<StagingMemory> memory_;
  const uint64_t budget_;
  std::unique_ptr<async::Worker> worker_;
  uint64_t last_ = 0;
  std::map<uint64_t, Status> results_;  // outcome of each collected save; guarded by the GIL
};

}  // namespace

void BindCommunicator(nb::module_& m) {
  nb::class_<PyComm>(m, "Communicator")
      .def_static(
          "single", [] { return PyComm(NewSingleRankCommunicator()); }, "One rank, no peers.")
      .def_static(
          "from_python",
          [](nb::object impl, int rank, int size) {
            if (size < 1 || rank < 0 || rank >= size) {
              throw nb::value_error(
                  ("rank " + std::to_string(rank) + " of " + std::to_string(size)).c_str());
            }
            return PyComm(std::make_shared<PyCommunicator>(std::move(impl), rank, size));
          },
          nb::arg("impl"), nb::arg("rank"), nb::arg("size"),
          "Collectives through `impl`'s all_gather/broadcast/barrier/duplicate methods.")
      .def_prop_ro("rank", [](const PyComm& c) { return c.get().rank(); })
      .def_prop_ro("size", [](const PyComm& c) { return c.get().size(); })
      .def(
          "barrier",
          [](PyComm& c, double timeout_s) {
            Released([&] { return c.get().Barrier(ToTimeout(timeout_s)); });
          },
          nb::arg("timeout_s"))
      .def(
          "agree",
          [](PyComm& c, std::optional<std::string> error, double timeout_s) {
            Status local = error ? InvalidArgumentError(*error) : Status();
            Released([&] { return c.get().AgreeOnStatus(local, ToTimeout(timeout_s)); });
          },
          nb::arg("error").none(), nb::arg("timeout_s"),
          "Raises on every rank when any rank passes an error message.");
}

void BindAsyncSaver(nb::module_& m) {
  nb::class_<AsyncSaver>(m, "AsyncSaver")
      .def(
          "__init__",
          [](AsyncSaver* self, PyComm& comm, unsigned copy_threads, uint64_t budget) {
            new (self) AsyncSaver(comm.shared(), copy_threads, budget);
          },
          nb::arg("comm"), nb::arg("copy_threads") = 0, nb::arg("staging_budget") = 0)
      .def("submit", &AsyncSaver::Submit, nb::arg("path"), nb::arg("tensors"), nb::arg("json"),
           nb::arg("bytes"), nb::arg("timeout_s"),
           "Stages the tensors and queues the save; returns its ticket.")
      .def("wait", &AsyncSaver::Wait, nb::arg("ticket"))
      .def("done", &AsyncSaver::Done, nb::arg("ticket"))
      .def("drain", &AsyncSaver::Drain)
      .def("close", &AsyncSaver::Close);
}

}  // namespace ckpt::python
