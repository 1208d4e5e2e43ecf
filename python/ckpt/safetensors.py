"""safetensors files, the way ``safetensors.torch`` spells it, on ckpt's
strict reader and streaming writer.

Reads are lazy: opening reads only the header, ``get_slice(name)[...]``
reads only the bytes of the slice. Writes stream straight from the tensors
(strided views included, no contiguous copy) and publish atomically::

    ckpt.safetensors.save_file({"w": w.t()}, "model.safetensors", metadata={"format": "pt"})
    with ckpt.safetensors.safe_open("model.safetensors", framework="pt") as f:
        rows = f.get_slice("w")[2:4]
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from . import _ckpt
from ._state import _local_cpu, _strides, st_dtype, torch_dtype
from .errors import InvalidArgumentError

__all__ = ["load_file", "open", "safe_open", "save", "save_file"]


def save_file(
    tensors: Mapping[str, torch.Tensor],
    filename: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Writes `tensors` to `filename` (atomically: the file appears complete
    or not at all). The layout is the reference writer's, byte for byte."""
    items = []
    keep = []
    path = os.fspath(filename)
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise InvalidArgumentError(f"{path}: value '{name}' is a {type(t).__name__}, not a tensor")
        t = _local_cpu(t.detach(), name, for_load=False)
        keep.append(t)
        items.append(
            (name, st_dtype(t.dtype, f"{path}: tensor '{name}'"), list(t.shape), t.data_ptr(), _strides(t))
        )
    md = None if metadata is None else {str(k): str(v) for k, v in metadata.items()}
    _ckpt.save_safetensors(os.path.abspath(path), items, md)
    del keep


save = save_file


def load_file(filename: str | os.PathLike[str], device: str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a file, in file order, as new CPU tensors."""
    with safe_open(filename, framework="pt", device=device) as f:
        return {k: f.get_tensor(k) for k in f.keys()}


class SafeSlice:
    """A tensor of an open file; indexing reads only the selected bytes."""

    def __init__(self, file: _ckpt.SafetensorsFile, name: str) -> None:
        self._file = file
        self._name = name
        dtype, shape, _, _ = file.info(name)
        self._dtype_name = dtype
        self._shape = list(shape)

    def get_shape(self) -> list[int]:
        return list(self._shape)

    def get_dtype(self) -> str:
        return self._dtype_name

    def __getitem__(self, index: Any) -> torch.Tensor:
        offsets, box, squeeze = _box(index, self._shape, self._name)
        out = torch.empty(box, dtype=torch_dtype(self._dtype_name))
        if out.numel() > 0:
            self._file.read_box(self._name, offsets, box, out.data_ptr())
        return out[tuple(0 if s else slice(None) for s in squeeze)] if any(squeeze) else out


def _box(index: Any, shape: list[int], name: str) -> tuple[list[int], list[int], list[bool]]:
    idx = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis for i in idx):
        k = idx.index(Ellipsis)
        fill = len(shape) - (len(idx) - 1)
        idx = idx[:k] + (slice(None),) * max(fill, 0) + idx[k + 1 :]
    if len(idx) > len(shape):
        raise InvalidArgumentError(f"tensor '{name}': {len(idx)} indices for shape {shape}")
    idx = idx + (slice(None),) * (len(shape) - len(idx))
    offsets, box, squeeze = [], [], []
    for d, (i, n) in enumerate(zip(idx, shape, strict=True)):
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            if step != 1:
                raise InvalidArgumentError(
                    f"tensor '{name}': dimension {d}: only step 1 slices are supported"
                )
            offsets.append(start)
            box.append(max(stop - start, 0))
            squeeze.append(False)
        elif isinstance(i, int):
            j = i + n if i < 0 else i
            if not 0 <= j < n:
                raise InvalidArgumentError(
                    f"tensor '{name}': index {i} is out of range for dimension {d} of size {n}"
                )
            offsets.append(j)
            box.append(1)
            squeeze.append(True)
        else:
            raise InvalidArgumentError(f"tensor '{name}': unsupported index {i!r}")
    return offsets, box, squeeze


class safe_open:  # noqa: N801 - the name safetensors users know
    """An open safetensors file: ``keys()``, ``metadata()``, ``get_tensor``,
    ``get_slice``. Only ``framework="pt"`` and CPU are supported."""

    def __init__(self, filename: str | os.PathLike[str], framework: str = "pt", device: str = "cpu") -> None:
        if framework not in ("pt", "torch"):
            raise InvalidArgumentError(f"framework '{framework}' is not supported; use 'pt'")
        if str(device) != "cpu":
            raise InvalidArgumentError(f"device '{device}' is not supported; ckpt reads into CPU memory")
        self._file = _ckpt.SafetensorsFile.open(os.path.abspath(os.fspath(filename)))

    def __enter__(self) -> safe_open:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def keys(self) -> list[str]:
        return sorted(self._file.keys())

    def offset_keys(self) -> list[str]:
        """Names in the order their data lies in the file."""
        return list(self._file.keys())

    def metadata(self) -> dict[str, str] | None:
        return self._file.metadata()

    def get_slice(self, name: str) -> SafeSlice:
        return SafeSlice(self._file, name)

    def get_tensor(self, name: str) -> torch.Tensor:
        dtype, shape, begin, end = self._file.info(name)
        out = torch.empty(list(shape), dtype=torch_dtype(dtype))
        if end > begin:
            self._file.read_range(name, 0, out.data_ptr(), end - begin)
        return out


open = safe_open  # noqa: A001
