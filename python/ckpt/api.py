"""ckpt's functions for state dicts: save, load, asynchronous save,
consolidation, verification and inspection."""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import _ckpt as _ckpt
from . import _dist
from ._state import decode_bytes, describe, st_dtype, torch_dtype
from .errors import NotFoundError

__all__ = [
    "CheckpointInfo",
    "ChunkInfo",
    "LoadStats",
    "SaveFuture",
    "TensorInfo",
    "async_save",
    "consolidate",
    "inspect",
    "load",
    "save",
    "verify",
]

DEFAULT_TIMEOUT = 600.0

PathLike = str | os.PathLike[str]


def _path(p: PathLike) -> str:
    return os.path.abspath(os.fspath(p))


def save(
    state_dict: Mapping[str, Any],
    path: PathLike,
    *,
    process_group: Any = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Saves a (possibly distributed) state dict as a sharded checkpoint.

    Collective: every rank of `process_group` (default: the world, or one
    rank without torch.distributed) calls it with its own state dict. Each
    rank writes only the chunks it holds; a tensor held by several ranks
    (replicated, or a plain tensor on every rank) is written once. `path`
    appears only when complete and is never overwritten. Non-tensor values
    are kept: as JSON when they round-trip exactly, else as ``torch.save``
    bytes (from rank 0).

    Example::

        ckpt.save({"model": model.state_dict(), "step": 100}, "/ckpt/step_100")
    """
    d = describe(state_dict, for_load=False)
    comm = _dist.engine_comm(process_group, timeout_s=timeout)
    _ckpt.save(comm, _path(path), d.tensors, d.json, d.bytes, timeout)


@dataclass
class LoadStats:
    """What a load did, and the keys report (the same on every rank)."""

    bytes_needed: int
    bytes_read: int
    reads: int
    missing_keys: list[str]
    unexpected_keys: list[str]


def load(
    state_dict: dict[str, Any],
    path: PathLike,
    *,
    process_group: Any = None,
    allow_missing: bool = False,
    allow_unexpected: bool = True,
    key_mapping: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    skip_prefixes: Sequence[str] = (),
    tie_word_embeddings: bool = False,
    cast_floats: bool = False,
    dequantize_fp8: bool = False,
    verify_checksums: bool = True,
    allow_pickle: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> LoadStats:
    """Fills a state dict in place from a checkpoint of any layout.

    Collective. Works on checkpoints ckpt wrote with any number of ranks, on
    torch's HuggingFaceStorageWriter output and on plain Hugging Face model
    directories. Each rank reads only the byte ranges its tensors (or its
    DTensors' local chunks) need.

    - `allow_missing`: leave state-dict tensors the checkpoint lacks untouched.
    - `allow_unexpected`: ignore checkpoint tensors nobody asked for (a subset).
    - `key_mapping`: ordered (regex, replacement) renames of checkpoint keys;
      the first pattern that changes a key wins (groups as ``\\1`` or ``$1``).
    - `cast_floats`: convert between f16/bf16/f32/f64 instead of refusing.
    - `allow_pickle`: non-tensor values are read with ``torch.load(weights_only=True)``
      unless this is set.

    Example::

        sd = model.state_dict()
        stats = ckpt.load(sd, "/ckpt/step_100")
        print(stats.bytes_read, stats.missing_keys)
    """
    p = _path(path)
    d = describe(state_dict, for_load=True)
    o = _ckpt.LoadOptions()
    o.allow_missing = allow_missing
    o.allow_unexpected = allow_unexpected
    if key_mapping is not None:
        pairs = list(key_mapping.items()) if isinstance(key_mapping, Mapping) else list(key_mapping)
        o.key_mapping = [(str(a), str(b)) for a, b in pairs]
    o.skip_prefixes = list(skip_prefixes)
    o.tie_word_embeddings = tie_word_embeddings
    o.cast_floats = cast_floats
    o.dequantize_fp8 = dequantize_fp8
    o.verify_checksums = verify_checksums
    o.timeout_s = timeout
    if d.tensors:
        comm = _dist.engine_comm(process_group, timeout_s=timeout)
        stats = _ckpt.load(comm, p, d.tensors, o)
    else:  # only values (every rank's state dict has the same keys)
        stats = {"bytes_needed": 0, "bytes_read": 0, "reads": 0, "missing_keys": [], "unexpected_keys": []}
    if d.slots:
        _fill_values(d.slots, p, allow_missing, allow_pickle)
    return LoadStats(**stats)


def _fill_values(
    slots: dict[str, tuple[Any, Any]], path: str, allow_missing: bool, allow_pickle: bool
) -> None:
    import json

    texts, raw = _ckpt.read_extra_state(path)
    for fqn, (container, key) in slots.items():
        if fqn in texts:
            container[key] = json.loads(texts[fqn])
        elif fqn in raw:
            container[key] = decode_bytes(fqn, raw[fqn], allow_pickle)
        elif not allow_missing:
            raise NotFoundError(f"{path}: the checkpoint has no value '{fqn}'")


class SaveFuture:
    """An asynchronous save in flight. `result()` waits (GIL released) and
    raises the save's error; `done()` polls."""

    def __init__(self, saver: _ckpt.AsyncSaver, ticket: int, path: str) -> None:
        self._saver = saver
        self._ticket = ticket
        self.path = path

    def done(self) -> bool:
        return self._saver.done(self._ticket)

    def result(self) -> None:
        self._saver.wait(self._ticket)

    # torch.futures / concurrent.futures spelling
    wait = result


_savers: dict[Any, _ckpt.AsyncSaver] = {}
_savers_lock = threading.Lock()


def _close_savers() -> None:
    with _savers_lock:
        savers = list(_savers.values())
        _savers.clear()
    for s in savers:
        s.close()


atexit.register(_close_savers)


def async_save(
    state_dict: Mapping[str, Any],
    path: PathLike,
    *,
    process_group: Any = None,
    staging_budget: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
) -> SaveFuture:
    """Saves in the background; returns once the tensors are copied.

    The caller is blocked only while the tensors are copied into host
    staging memory (kept for the next save); writing, fsync and publishing
    happen on a background thread with its own process group. A save waits
    for the previous one to finish first. `staging_budget` bounds staging
    memory in bytes (0: the whole state).

    Example::

        fut = ckpt.async_save(model.state_dict(), f"/ckpt/step_{step}")
        ...  # keep training
        fut.result()
    """
    d = describe(state_dict, for_load=False)
    group = process_group
    key = (id(group) if group is not None else None, staging_budget)
    with _savers_lock:
        saver = _savers.get(key)
    if saver is None:
        comm = _dist.background_comm(process_group, timeout_s=timeout)
        saver = _ckpt.AsyncSaver(comm, 0, staging_budget)
        with _savers_lock:
            _savers[key] = saver
    p = _path(path)
    ticket = saver.submit(p, d.tensors, d.json, d.bytes, timeout)
    return SaveFuture(saver, ticket, p)


def consolidate(
    path: PathLike,
    out_dir: PathLike,
    *,
    process_group: Any = None,
    base_model_dir: PathLike | None = None,
    dtype: torch.dtype | None = None,
    max_shard_size: int = 5 << 30,
    equal_files: int = 0,
    threads: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """Turns a sharded checkpoint into a Hugging Face model directory
    (``model-0000i-of-0000N.safetensors`` + index). Collective: output files
    are spread over the ranks. Returns counts and warnings."""
    o = _ckpt.ConsolidateOptions()
    if base_model_dir is not None:
        o.base_model_dir = _path(base_model_dir)
    if dtype is not None:
        o.cast_dtype = st_dtype(dtype, "consolidate dtype")
    o.max_shard_size = int(max_shard_size)
    o.equal_files = int(equal_files)
    o.threads = int(threads)
    o.timeout_s = timeout
    comm = _dist.engine_comm(process_group, timeout_s=timeout)
    return dict(_ckpt.consolidate(comm, _path(path), _path(out_dir), o))


def verify(path: PathLike) -> None:
    """Reads every chunk of a sharded checkpoint and checks every recorded
    checksum, the manifest and the tiling; raises on the first problem."""
    _ckpt.verify(_path(path))


@dataclass
class ChunkInfo:
    file: str
    offsets: list[int]
    shape: list[int]
    checksum: str


@dataclass
class TensorInfo:
    dtype: torch.dtype | str
    shape: list[int]
    chunks: list[ChunkInfo] = field(default_factory=list)


@dataclass
class CheckpointInfo:
    files: list[str]
    has_manifest: bool
    has_sharding_info: bool
    tensors: dict[str, TensorInfo]
    values: dict[str, str]


def inspect(path: PathLike) -> CheckpointInfo:
    """What a sharded checkpoint holds: its files, and per tensor the dtype
    (a torch dtype where torch has it), global shape and saved chunks."""
    p = _path(path)
    raw = _ckpt.inspect(p)
    tensors: dict[str, TensorInfo] = {}
    for t in raw["tensors"]:
        try:
            dt: torch.dtype | str = torch_dtype(t["dtype"])
        except Exception:
            dt = t["dtype"]
        tensors[t["fqn"]] = TensorInfo(dt, list(t["shape"]), [ChunkInfo(**c) for c in t["chunks"]])
    texts, raw_bytes = _ckpt.read_extra_state(p)
    values = {k: "json" for k in texts} | {k: "bytes" for k in raw_bytes}
    return CheckpointInfo(raw["files"], raw["has_manifest"], raw["has_sharding_info"], tensors, values)
