// Shared pieces of the extension's files: how engine errors become Python
// exceptions, GIL release around engine calls, and the plain descriptions
// of tensors that Python hands over.
#ifndef CKPT_PYTHON_COMMON_H_
#define CKPT_PYTHON_COMMON_H_

// Every file sees the same set of type casters: a caster missing from one
// translation unit changes the layout of shared template instances.
#include <nanobind/nanobind.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "ckpt/comm.h"
#include "ckpt/sharded.h"
#include "ckpt/state_dict.h"
#include "ckpt/status.h"

namespace ckpt::python {

namespace nb = nanobind;

// Thrown by the binding code, turned into the ckpt.CheckpointError subclass
// named after the status code.
struct StatusException {
  Status status;
};

inline void RaiseIfError(const Status& s) {
  if (!s.ok()) throw StatusException{s};
}

// Runs `fn` (returning Status) with the GIL released; raises its error.
template <typename Fn>
void Released(Fn fn) {
  Status s;
  {
    nb::gil_scoped_release release;
    s = fn();
  }
  RaiseIfError(s);
}

inline Timeout ToTimeout(double seconds) {
  // At most about 30 years, so the milliseconds always fit.
  if (!(seconds > 0 && seconds <= 1e9))
    throw nb::value_error("timeout must be a number of seconds in (0, 1e9]");
  return Timeout(static_cast<int64_t>(seconds * 1000.0 + 0.5));
}

// One local chunk: (global offsets, shape, data pointer, element strides or
// None for contiguous row-major).
using ChunkDesc = std::tuple<std::vector<uint64_t>, std::vector<uint64_t>, uintptr_t,
                             std::optional<std::vector<int64_t>>>;
// One tensor: (fqn, safetensors dtype name, global shape, chunks).
using TensorDesc =
    std::tuple<std::string, std::string, std::vector<uint64_t>, std::vector<ChunkDesc>>;
using TensorList = std::vector<TensorDesc>;
using JsonMap = std::map<std::string, std::string>;

// A state dict built from descriptions; the bytes values are copies.
struct Owned {
  StateDict sd;
};
Owned BuildStateDict(const TensorList& tensors, const JsonMap& json, const nb::dict& bytes);

// A communicator as Python holds it.
class PyComm {
 public:
  explicit PyComm(std::shared_ptr<Communicator> comm) : comm_(std::move(comm)) {}
  Communicator& get() const { return *comm_; }
  std::shared_ptr<Communicator> shared() const { return comm_; }

 private:
  std::shared_ptr<Communicator> comm_;
};

void BindCommunicator(nb::module_& m);
void BindDcpSteps(nb::module_& m);
void BindAsyncSaver(nb::module_& m);
void BindSafetensors(nb::module_& m);

}  // namespace ckpt::python

#endif  // CKPT_PYTHON_COMMON_H_
