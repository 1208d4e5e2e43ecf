// The `ckpt._ckpt` extension: a thin layer between Python and the engine.
//
// Python arranges (state dicts, DTensor geometry, torch objects); this file
// turns its plain descriptions into engine types and moves no tensor bytes
// itself. Tensors cross as raw data pointers plus element strides; the
// Python caller keeps the tensors alive for as long as a call (or an
// asynchronous save's staging) may touch them. Every call that does I/O or
// waits for other ranks releases the GIL; the torch.distributed
// communicator takes it back only for the duration of one collective.

#include <array>
#include <memory>

#include "ckpt/consolidate.h"
#include "ckpt/s3.h"
#include "ckpt/version.h"
#include "python/common.h"

namespace nb = nanobind;

namespace ckpt::python {
namespace {

std::array<PyObject*, 9> g_error_classes{};  // by StatusCode; set from Python

void RaiseStatus(const Status& s) {
  const auto code = static_cast<size_t>(s.code());
  PyObject* cls = code < g_error_classes.size() ? g_error_classes[code] : nullptr;
  PyErr_SetString(cls != nullptr ? cls : PyExc_RuntimeError, s.message().c_str());
}

void RegisterErrors(const nb::dict& classes) {
  for (size_t c = 1; c < g_error_classes.size(); ++c) {
    const std::string name(StatusCodeName(static_cast<StatusCode>(c)));
    if (!classes.contains(name.c_str()))
      throw nb::key_error(("no error class for " + name).c_str());
    nb::object cls = classes[name.c_str()];
    Py_XDECREF(g_error_classes[c]);
    g_error_classes[c] = cls.release().ptr();
  }
}

nb::dict StatsDict(const LoadStats& s) {
  nb::dict d;
  d["bytes_needed"] = s.bytes_needed;
  d["bytes_read"] = s.bytes_read;
  d["reads"] = s.reads;
  d["missing_keys"] = s.missing_keys;
  d["unexpected_keys"] = s.unexpected_keys;
  return d;
}

void Save(PyComm& comm, const std::string& path, const TensorList& tensors, const JsonMap& json,
          const nb::dict& bytes, double timeout_s) {
  Owned owned = BuildStateDict(tensors, json, bytes);
  SaveOptions options;
  options.timeout = ToTimeout(timeout_s);
  Released([&]() -> Status {
    CKPT_ASSIGN_OR_RETURN(StoragePath at, ResolveStoragePath(path));
    return SaveSharded(comm.get(), *at.storage, at.path, owned.sd, options);
  });
}

nb::dict Load(PyComm& comm, const std::string& path, const TensorList& tensors,
              const LoadOptions& options) {
  Owned owned = BuildStateDict(tensors, {}, nb::dict());
  LoadStats stats;
  Released([&]() -> Status {
    CKPT_ASSIGN_OR_RETURN(StoragePath at, ResolveStoragePath(path));
    return LoadSharded(comm.get(), *at.storage, at.path, owned.sd, options, &stats);
  });
  return StatsDict(stats);
}

nb::tuple ReadExtra(const std::string& path) {
  StateDict sd;
  Released([&]() -> Status {
    CKPT_ASSIGN_OR_RETURN(StoragePath at, ResolveStoragePath(path));
    CKPT_ASSIGN_OR_RETURN(sd, ReadExtraState(*at.storage, at.path));
    return Status();
  });
  nb::dict bytes;
  for (const auto& [k, v] : sd.bytes) {
    bytes[k.c_str()] = nb::bytes(reinterpret_cast<const char*>(v.data()), v.size());
  }
  return nb::make_tuple(sd.json, bytes);
}

nb::dict Inspect(const std::string& path) {
  ShardedCheckpointInfo info;
  Released([&]() -> Status {
    CKPT_ASSIGN_OR_RETURN(StoragePath at, ResolveStoragePath(path));
    CKPT_ASSIGN_OR_RETURN(info, ReadShardedCheckpoint(*at.storage, at.path));
    return Status();
  });
  nb::list tensors;
  for (const ShardedTensorInfo& t : info.tensors) {
    nb::list chunks;
    for (const ShardedChunkInfo& c : t.chunks) {
      nb::dict cd;
      cd["file"] = c.file;
      cd["offsets"] = c.offsets;
      cd["shape"] = c.shape;
      cd["checksum"] = c.checksum;
      chunks.append(cd);
    }
    nb::dict td;
    td["fqn"] = t.fqn;
    td["dtype"] = std::string(DTypeName(t.dtype));
    td["shape"] = t.global.dims();
    td["chunks"] = chunks;
    tensors.append(td);
  }
  nb::dict d;
  d["files"] = info.files;
  d["has_manifest"] = info.has_manifest;
  d["has_sharding_info"] = info.has_sharding_info;
  d["tensors"] = tensors;
  return d;
}

nb::dict ConsolidateDir(PyComm& comm, const std::string& in, const std::string& out,
                        const ConsolidateOptions& options) {
  ConsolidateStats stats;
  Released([&]() -> Status {
    CKPT_ASSIGN_OR_RETURN(StoragePath from, ResolveStoragePath(in));
    CKPT_ASSIGN_OR_RETURN(StoragePath to, ResolveStoragePath(out));
    if (from.storage != to.storage) {
      return InvalidArgumentError(
          "consolidating " + in + " into " + out +
          ": input and output must be on the same storage (both local, or the same bucket)");
    }
    return Consolidate(comm.get(), *from.storage, from.path, to.path, options, &stats);
  });
  nb::dict d;
  d["files"] = stats.files;
  d["tensors"] = stats.tensors;
  d["bytes"] = stats.bytes;
  d["rank_bytes"] = stats.rank_bytes;
  d["warnings"] = stats.warnings;
  return d;
}

}  // namespace
}  // namespace ckpt::python

NB_MODULE(_ckpt, m) {
  using namespace ckpt;
  using namespace ckpt::python;
  m.doc() = "ckpt's engine, called from the ckpt package (use the package, not this module).";
  m.attr("VERSION") = CKPT_VERSION_STRING;

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const StatusException& e) {
      RaiseStatus(e.status);
    }
  });
  m.def("register_errors", &RegisterErrors, nb::arg("classes"),
        "Sets the exception class raised for each status code name.");
  m.def("dtype_names", [] {
    std::vector<std::string> out;
    for (const DTypeInfo& d : AllDTypes()) out.emplace_back(d.name);
    return out;
  });

  BindCommunicator(m);

  // The engine's own options structs, fields as they are (timeouts in seconds).
  nb::class_<LoadOptions>(m, "LoadOptions")
      .def(nb::init<>())
      .def_rw("allow_missing", &LoadOptions::allow_missing)
      .def_rw("allow_unexpected", &LoadOptions::allow_unexpected)
      .def_rw("key_mapping", &LoadOptions::key_mapping)
      .def_rw("skip_prefixes", &LoadOptions::skip_prefixes)
      .def_rw("tie_word_embeddings", &LoadOptions::tie_word_embeddings)
      .def_rw("verify_checksums", &LoadOptions::verify_checksums)
      .def_rw("cast_floats", &LoadOptions::cast_floats)
      .def_rw("dequantize_fp8", &LoadOptions::dequantize_fp8)
      .def_prop_rw(
          "timeout_s", [](const LoadOptions& o) { return o.timeout.count() / 1000.0; },
          [](LoadOptions& o, double s) { o.timeout = ToTimeout(s); });
  nb::class_<ConsolidateOptions>(m, "ConsolidateOptions")
      .def(nb::init<>())
      .def_rw("base_model_dir", &ConsolidateOptions::base_model_dir)
      .def_rw("max_shard_size", &ConsolidateOptions::max_shard_size)
      .def_rw("equal_files", &ConsolidateOptions::equal_files)
      .def_rw("threads", &ConsolidateOptions::threads)
      .def_prop_rw(
          "cast_dtype",
          [](const ConsolidateOptions& o) {
            return o.cast_dtype ? std::optional<std::string>(DTypeName(*o.cast_dtype))
                                : std::nullopt;
          },
          [](ConsolidateOptions& o, std::optional<std::string> name) {
            if (!name) {
              o.cast_dtype.reset();
              return;
            }
            Result<DType> d = ParseDType(*name);
            RaiseIfError(d.status());
            o.cast_dtype = *d;
          },
          nb::arg("name").none())
      .def_prop_rw(
          "timeout_s", [](const ConsolidateOptions& o) { return o.timeout.count() / 1000.0; },
          [](ConsolidateOptions& o, double s) { o.timeout = ToTimeout(s); });

  m.def("save", &Save, nb::arg("comm"), nb::arg("path"), nb::arg("tensors"), nb::arg("json"),
        nb::arg("bytes"), nb::arg("timeout_s"), "Collective sharded save of described tensors.");
  m.def("load", &Load, nb::arg("comm"), nb::arg("path"), nb::arg("tensors"), nb::arg("options"),
        "Collective sharded load into described tensors; returns load statistics.");
  m.def("read_extra_state", &ReadExtra, nb::arg("path"),
        "The non-tensor entries of a sharded checkpoint: (json texts, raw bytes).");
  m.def("inspect", &Inspect, nb::arg("path"),
        "The files, tensors and chunks of a sharded checkpoint.");
  m.def(
      "verify",
      [](const std::string& path) {
        Released([&]() -> Status {
          CKPT_ASSIGN_OR_RETURN(StoragePath at, ResolveStoragePath(path));
          return VerifyShardedCheckpoint(*at.storage, at.path);
        });
      },
      nb::arg("path"), "Reads every chunk of a sharded checkpoint and checks its checksums.");
  m.def("consolidate", &ConsolidateDir, nb::arg("comm"), nb::arg("in_dir"), nb::arg("out_dir"),
        nb::arg("options"),
        "Collective: a sharded checkpoint into a Hugging Face model directory.");

  BindDcpSteps(m);
  BindAsyncSaver(m);
  BindSafetensors(m);
}
