// safetensors files for Python: lazy opening, ranged and boxed reads into
// caller memory, and writes straight from (possibly strided) tensors.

#include "ckpt/safetensors.h"
#include "core/strided.h"
#include "python/common.h"

namespace ckpt::python {
namespace {

class PySafetensors {
 public:
  static PySafetensors Open(const std::string& path) {
    std::unique_ptr<SafetensorsFile> f;
    Released([&]() -> Status {
      CKPT_ASSIGN_OR_RETURN(f, SafetensorsFile::Open(*PosixStorage(), path));
      return Status();
    });
    return PySafetensors(std::move(f));
  }

  std::vector<std::string> Keys() const {
    std::vector<std::string> out;
    for (const TensorInfo& t : file_->header().tensors()) out.push_back(t.name);
    return out;
  }

  std::optional<std::map<std::string, std::string>> Metadata() const {
    if (!file_->header().has_metadata()) return std::nullopt;
    return file_->header().metadata();
  }

  std::tuple<std::string, std::vector<uint64_t>, uint64_t, uint64_t> Info(
      const std::string& name) const {
    const TensorInfo& t = Find(name);
    return {std::string(DTypeName(t.dtype)), t.shape.dims(), t.begin, t.end};
  }

  void ReadRange(const std::string& name, uint64_t offset, uintptr_t ptr, uint64_t nbytes) const {
    std::span<std::byte> dst(reinterpret_cast<std::byte*>(ptr), nbytes);
    Released([&] { return file_->ReadRange(name, offset, dst); });
  }

  // Copies the box [offsets, offsets + shape) of tensor `name` into
  // contiguous row-major memory at `ptr`, reading only the runs it needs.
  void ReadBox(const std::string& name, const std::vector<uint64_t>& offsets,
               const std::vector<uint64_t>& box, uintptr_t ptr) const {
    const TensorInfo& t = Find(name);
    const std::vector<uint64_t>& full = t.shape.dims();
    const std::string where = file_->path() + ": tensor '" + name + "'";
    if (offsets.size() != full.size() || box.size() != full.size()) {
      throw StatusException{InvalidArgumentError(where + ": a box of rank " +
                                                 std::to_string(box.size()) +
                                                 " for a tensor of shape " + t.shape.ToString())};
    }
    uint64_t total = 1;
    for (size_t d = 0; d < full.size(); ++d) {
      if (offsets[d] > full[d] || box[d] > full[d] - offsets[d]) {
        throw StatusException{InvalidArgumentError(
            where + ": slice [" + std::to_string(offsets[d]) + ", " +
            std::to_string(offsets[d] + box[d]) + ") of dimension " + std::to_string(d) +
            " exceeds its size " + std::to_string(full[d]))};
      }
      total *= box[d];
    }
    const uint64_t bits = DTypeBits(t.dtype);
    std::byte* dst = reinterpret_cast<std::byte*>(ptr);
    if (total == 0) return;
    if (bits % 8 != 0 && box != full) {
      throw StatusException{InvalidArgumentError(where + ": sub-byte " +
                                                 std::string(DTypeName(t.dtype)) +
                                                 " tensors are read whole only")};
    }
    // Trailing dimensions taken whole merge into one run with the first
    // partially taken dimension before them.
    size_t k = full.size();
    while (k > 0 && offsets[k - 1] == 0 && box[k - 1] == full[k - 1]) --k;
    if (k == 0) {
      Released([&] { return file_->ReadTensor(name, std::span<std::byte>(dst, t.nbytes())); });
      return;
    }
    const size_t outer = k - 1;  // dims [0, outer) are walked; dim `outer` starts each run
    std::vector<uint64_t> src_stride(full.size(), 1);
    for (size_t d = full.size() - 1; d-- > 0;) src_stride[d] = src_stride[d + 1] * full[d + 1];
    const uint64_t esz = bits / 8;
    const uint64_t run = box[outer] * src_stride[outer] * esz;
    Released([&]() -> Status {
      std::vector<uint64_t> idx(outer, 0);
      const uint64_t runs = total * esz / run;
      for (uint64_t r = 0; r < runs; ++r) {
        uint64_t elem = offsets[outer] * src_stride[outer];
        for (size_t d = 0; d < outer; ++d) elem += (offsets[d] + idx[d]) * src_stride[d];
        CKPT_RETURN_IF_ERROR(
            file_->ReadRange(name, elem * esz, std::span<std::byte>(dst + r * run, run)));
        for (size_t d = outer; d-- > 0;) {
          if (++idx[d] < box[d]) break;
          idx[d] = 0;
        }
      }
      return Status();
    });
  }

 private:
  explicit PySafetensors(std::unique_ptr<SafetensorsFile> f) : file_(std::move(f)) {}
  const TensorInfo& Find(const std::string& name) const {
    const TensorInfo* t = file_->header().Find(name);
    if (t == nullptr)
      throw StatusException{NotFoundError(file_->path() + ": no tensor named '" + name + "'")};
    return *t;
  }
  std::shared_ptr<SafetensorsFile> file_;
};

// (name, dtype, shape, data pointer, element strides or None)
using FileTensor = std::tuple<std::string, std::string, std::vector<uint64_t>, uintptr_t,
                              std::optional<std::vector<int64_t>>>;

void SaveFile(const std::string& path, const std::vector<FileTensor>& tensors,
              const std::optional<std::map<std::string, std::string>>& metadata) {
  std::vector<TensorSpec> specs;
  std::vector<DType> dtypes;
  for (const auto& [name, dtype_name, shape, ptr, strides] : tensors) {
    Result<DType> d = ParseDType(dtype_name);
    if (!d.ok()) throw StatusException{d.status().WithContext(path + ": tensor '" + name + "'")};
    specs.push_back({name, *d, Shape(shape)});
    dtypes.push_back(*d);
  }
  Released([&]() -> Status {
    CKPT_ASSIGN_OR_RETURN(
        std::unique_ptr<SafetensorsWriter> w,
        SafetensorsWriter::Create(*PosixStorage(), path, std::move(specs), metadata));
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto& [name, dtype_name, shape, ptr, strides] = tensors[i];
      const StridedLayout layout{shape, strides ? *strides : std::vector<int64_t>{},
                                 std::max<uint64_t>(1, DTypeBits(dtypes[i]) / 8)};
      const auto* base = reinterpret_cast<const std::byte*>(ptr);
      if (!strides) {
        CKPT_ASSIGN_OR_RETURN(uint64_t n, Shape(shape).NumBytes(dtypes[i]));
        if (n > 0) CKPT_RETURN_IF_ERROR(w->Write(name, 0, std::span<const std::byte>(base, n)));
        continue;
      }
      if (DTypeBits(dtypes[i]) % 8 != 0) {
        return InvalidArgumentError(path + ": tensor '" + name +
                                    "': strided sub-byte tensors are not supported");
      }
      CKPT_RETURN_IF_ERROR(ForEachGatheredPiece(
          layout, base, 8ull << 20, [&](uint64_t off, std::span<const std::byte> piece) {
            return w->Write(name, off, piece);
          }));
    }
    return w->Commit();
  });
}

}  // namespace

void BindSafetensors(nb::module_& m) {
  nb::class_<PySafetensors>(m, "SafetensorsFile")
      .def_static("open", &PySafetensors::Open, nb::arg("path"))
      .def("keys", &PySafetensors::Keys, "Tensor names in file order.")
      .def("metadata", &PySafetensors::Metadata, "`__metadata__`, or None when the file has none.")
      .def("info", &PySafetensors::Info, nb::arg("name"), "(dtype, shape, begin, end) of a tensor.")
      .def("read_range", &PySafetensors::ReadRange, nb::arg("name"), nb::arg("offset"),
           nb::arg("ptr"), nb::arg("nbytes"))
      .def("read_box", &PySafetensors::ReadBox, nb::arg("name"), nb::arg("offsets"),
           nb::arg("shape"), nb::arg("ptr"));
  m.def("save_safetensors", &SaveFile, nb::arg("path"), nb::arg("tensors"),
        nb::arg("metadata").none(),
        "Writes a safetensors file from tensors in memory, atomically.");
}

}  // namespace ckpt::python
