"""State dicts as the engine sees them: tensors described by pointer and
geometry, non-tensor values as JSON or bytes.

Nothing here copies tensor data: a CPU tensor is described by its data
pointer and element strides (views included), a DTensor by its local
tensor and the chunk offsets the DTensor itself reports.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import InvalidArgumentError

try:
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.placement_types import Partial
except ImportError:  # pragma: no cover - torch built without distributed
    DTensor = None  # type: ignore[assignment,misc]
    Partial = None  # type: ignore[assignment,misc]

# torch dtype -> safetensors dtype name, for every dtype both know.
_TO_ST: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.uint16: "U16",
    torch.int32: "I32",
    torch.uint32: "U32",
    torch.int64: "I64",
    torch.uint64: "U64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.complex64: "C64",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
for _name, _st in (
    ("float8_e8m0fnu", "F8_E8M0"),
    ("float8_e4m3fnuz", "F8_E4M3FNUZ"),
    ("float8_e5m2fnuz", "F8_E5M2FNUZ"),
):
    if hasattr(torch, _name):
        _TO_ST[getattr(torch, _name)] = _st
_FROM_ST: dict[str, torch.dtype] = {v: k for k, v in _TO_ST.items()}

# Chunk: (global offsets, shape, data pointer, element strides or None).
Chunk = tuple[list[int], list[int], int, "list[int] | None"]
# Tensor: (fqn, dtype name, global shape, chunks).
TensorDesc = tuple[str, str, list[int], list[Chunk]]


def st_dtype(dtype: torch.dtype, where: str) -> str:
    try:
        return _TO_ST[dtype]
    except KeyError:
        raise InvalidArgumentError(f"{where}: dtype {dtype} has no safetensors equivalent") from None


def torch_dtype(name: str) -> torch.dtype:
    try:
        return _FROM_ST[name]
    except KeyError:
        raise InvalidArgumentError(f"dtype {name} has no torch equivalent here") from None


def flatten(state: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any, Any, Any]]:
    """(fqn, value, container, key) for every leaf. Nested dicts, and lists
    or tuples that hold a tensor somewhere inside, are walked with their keys
    or indices joined by '.', the way torch.distributed.checkpoint flattens
    state dicts; any other value is one leaf."""
    for key, value in state.items():
        yield from _walk(f"{prefix}{key}", value, state, key)


def _walk(fqn: str, value: Any, container: Any, key: Any) -> Iterator[tuple[str, Any, Any, Any]]:
    if isinstance(value, Mapping) and not _is_tensor(value):
        for k, v in value.items():
            yield from _walk(f"{fqn}.{k}", v, value, k)
    elif isinstance(value, (list, tuple)) and _holds_tensor(value):
        for i, item in enumerate(value):
            # A tuple cannot take a new value; its tensors are still filled in place.
            yield from _walk(f"{fqn}.{i}", item, value if isinstance(value, list) else None, i)
    else:
        yield fqn, value, container, key


def _holds_tensor(value: Any) -> bool:
    if _is_tensor(value):
        return True
    if isinstance(value, Mapping):
        return any(_holds_tensor(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_tensor(v) for v in value)
    return False


def _is_tensor(v: Any) -> bool:
    return isinstance(v, torch.Tensor)


def _local_cpu(t: torch.Tensor, fqn: str, for_load: bool) -> torch.Tensor:
    if t.device.type == "meta":
        raise InvalidArgumentError(
            f"tensor '{fqn}' is on the meta device: materialize it (to_empty) before "
            + ("loading into it" if for_load else "saving it")
        )
    if t.device.type != "cpu":
        raise InvalidArgumentError(f"tensor '{fqn}' is on {t.device}; ckpt reads and writes CPU tensors")
    if t.is_sparse or t.layout != torch.strided:
        raise InvalidArgumentError(
            f"tensor '{fqn}' has layout {t.layout}; only strided tensors are supported"
        )
    if t.is_conj() or t.is_neg():
        raise InvalidArgumentError(f"tensor '{fqn}' is a lazy conjugate/negative view; resolve it first")
    return t


def _strides(t: torch.Tensor) -> list[int] | None:
    if t.is_contiguous():
        return None
    return list(t.stride())


@dataclass
class Described:
    """A state dict flattened for the engine; keeps every tensor alive."""

    tensors: list[TensorDesc] = field(default_factory=list)
    keep: list[torch.Tensor] = field(default_factory=list)
    json: dict[str, str] = field(default_factory=dict)
    bytes: dict[str, bytes] = field(default_factory=dict)
    # For loads: fqn -> (container, key) of non-tensor leaves.
    slots: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    # For loads into a temporary (a dtype the engine cannot fill in place).
    copy_back: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


def _chunk_of(fqn: str, value: torch.Tensor, for_load: bool) -> tuple[list[int], list[int], torch.Tensor]:
    """(global shape, chunk offsets, local tensor) of a tensor or DTensor."""
    if DTensor is not None and isinstance(value, DTensor):
        for p in value.placements:
            if Partial is not None and isinstance(p, Partial):
                raise InvalidArgumentError(
                    f"tensor '{fqn}' has a Partial placement; reduce it before checkpointing"
                )
        local = _local_cpu(value.to_local(), fqn, for_load)
        chunks = value.__create_chunk_list__()
        if len(chunks) != 1:
            raise InvalidArgumentError(
                f"tensor '{fqn}': {len(chunks)} local chunks; ckpt expects one per rank"
            )
        offsets = list(chunks[0].offsets)
        if list(chunks[0].sizes) != list(local.shape):
            raise InvalidArgumentError(
                f"tensor '{fqn}': the local tensor's shape {list(local.shape)} differs from its chunk's "
                f"{list(chunks[0].sizes)}"
            )
        return list(value.shape), offsets, local
    local = _local_cpu(value, fqn, for_load)
    return list(value.shape), [0] * value.dim(), local


def describe(
    state: Mapping[str, Any], *, for_load: bool, want: Mapping[str, torch.dtype] | None = None
) -> Described:
    """Flattens `state`. For a save, non-tensor values become JSON (when they
    round-trip exactly) or torch.save bytes. For a load, tensors are filled in
    place and non-tensor leaves are remembered to be replaced."""
    out = Described()
    for fqn, value, container, key in flatten(state):
        if not _is_tensor(value):
            if for_load:
                out.slots[fqn] = (container, key)
            else:
                encode_value(fqn, value, out)
            continue
        shape, offsets, local = _chunk_of(fqn, value, for_load)
        dtype = st_dtype(local.dtype, f"tensor '{fqn}'")
        if for_load and not local.is_contiguous() and local.numel() > 0 and _overlapping(local):
            raise InvalidArgumentError(f"tensor '{fqn}': cannot load into a view whose elements overlap")
        chunks: list[Chunk] = []
        if local.numel() > 0 or math.prod(shape) == 0:
            chunks.append((offsets, list(local.shape), local.data_ptr(), _strides(local)))
        out.keep.append(local)
        out.tensors.append((fqn, dtype, shape, chunks))
    return out


def _overlapping(t: torch.Tensor) -> bool:
    # Distinct elements need distinct addresses: sort dims by stride and check
    # each stride exceeds the extent of the dims inside it.
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape, strict=True) if n > 1)
    extent = 1
    for stride, n in dims:
        if stride < extent:
            return True
        extent = stride * n
    return False


# The engine keeps JSON values as nlohmann::json does: integers within 64
# bits, nesting within its parser's depth limit. Other values are pickled.
_JSON_MAX_DEPTH = 32


def _json_exact(value: Any) -> str | None:
    if not _json_fits(value, 0):
        return None
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    back = json.loads(text)
    return text if back == value and type(back) is type(value) else None


def _json_fits(value: Any, depth: int) -> bool:
    if depth > _JSON_MAX_DEPTH:
        return False
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**64
    if isinstance(value, list):
        return all(_json_fits(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_fits(v, depth + 1) for k, v in value.items())
    return False


def encode_value(fqn: str, value: Any, out: Described) -> None:
    text = _json_exact(value)
    if text is not None:
        out.json[fqn] = text
        return
    buf = io.BytesIO()
    torch.save(value, buf)
    out.bytes[fqn] = buf.getvalue()


def decode_bytes(fqn: str, data: bytes, allow_pickle: bool) -> Any:
    try:
        return torch.load(io.BytesIO(data), weights_only=not allow_pickle)
    except Exception as e:  # torch raises UnpicklingError or RuntimeError
        raise InvalidArgumentError(
            f"value '{fqn}' holds objects that a weights-only load refuses ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); pass allow_pickle=True to load it if you trust "
            "the checkpoint"
        ) from e
