// The Checkpointer's private state, shared by the files that implement it
// (checkpointer.cc, lifecycle.cc, peft.cc). Next to each member: who
// touches it and what guards it. "Caller" is the thread the training loop
// calls the Checkpointer on (one at a time, as the header requires);
// "worker" is the background thread of asynchronous saves.
#ifndef CKPT_CHECKPOINT_CHECKPOINTER_IMPL_H_
#define CKPT_CHECKPOINT_CHECKPOINTER_IMPL_H_

#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "async/worker.h"
#include "ckpt/checkpointer.h"
#include "ckpt/staging.h"

namespace ckpt {

// At most one save of a kind in flight; its staging memory is reused by the
// next. Caller only.
struct Checkpointer::AsyncKind {
  std::unique_ptr<StagingMemory> memory;
  uint64_t ticket = 0;                           // the in-flight save's task
  std::shared_ptr<std::future<Status>> staging;  // wait_for_staging = false
};

struct Checkpointer::Impl {
  Impl(CheckpointingConfig c, ParallelRanks r, Communicator& m, std::shared_ptr<Storage> s)
      : config(std::move(c)), ranks(r), comm(m), storage(std::move(s)) {}

  // Set by Create, read-only afterwards: read by caller and worker alike.
  const CheckpointingConfig config;
  const ParallelRanks ranks;
  Communicator& comm;                      // caller only (collectives)
  const std::shared_ptr<Storage> storage;  // thread-safe itself

  // Set by Create and LoadBaseModel; caller only. Saves hand a copy to
  // their background tasks.
  std::string base_model_dir;

  // Asynchronous saves (is_async). Set by Create, reset by Close and the
  // destructor after the worker is drained; the background communicator is
  // used only by worker tasks, the worker's Submit/Wait only by the caller.
  std::unique_ptr<Communicator> bg_comm;
  std::unique_ptr<async::Worker> worker;
  AsyncKind model_kind, optim_kind;  // caller only

  // Checkpoint directory → its background tasks (saves, publish). Written
  // by the caller when it submits; read by Reserve (caller) and by
  // publishes (worker).
  std::mutex pending_mu;
  std::map<std::string, std::vector<uint64_t>> pending;  // guarded by pending_mu

  // Serializes rank 0's changes to the checkpoint root: Reserve on the
  // caller, publishes (and their retention) on the caller or the worker.
  std::mutex root_mu;

  bool closed = false;  // caller only
};

// The state dict restricted to tensors `keep` accepts (views; no copies).
StateDict FilterTensors(const StateDict& sd, const std::function<bool(const std::string&)>& keep);

}  // namespace ckpt

#endif  // CKPT_CHECKPOINT_CHECKPOINTER_IMPL_H_
