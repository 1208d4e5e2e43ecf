"""ckpt's functions for state dicts: save, load, asynchronous save,
consolidation, verification and inspection."""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import _ckpt as _ckpt
from . import _dist
from ._state import decode_bytes, describe, st_dtype, torch_dtype
from .errors import CheckpointError, InvalidArgumentError, NotFoundError, UnavailableError

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
# About 30 years: longer timeouts are refused rather than overflowing.
MAX_TIMEOUT = 1e9

PathLike = str | os.PathLike[str]


def _path(p: PathLike) -> str:
    """A local path made absolute; an object-storage URL (s3://bucket/prefix,
    msc://profile/key) as given."""
    text = os.fspath(p)
    if text.startswith(("s3://", "msc://")):
        return text
    return os.path.abspath(text)


def save(
    state_dict: Mapping[str, Any],
    path: PathLike,
    *,
    process_group: Any = None,
    timeout: float = DEFAULT_TIMEOUT,
    format: str = "ckpt",
) -> None:
    """Saves a (possibly distributed) state dict as a sharded checkpoint.

    Collective: every rank of `process_group` (default: the world, or one
    rank without torch.distributed) calls it with its own state dict. Each
    rank writes only the chunks it holds; a tensor held by several ranks
    (replicated, or a plain tensor on every rank) is written once. `path`
    appears only when complete and is never overwritten. Non-tensor values
    are kept: as JSON when they round-trip exactly, else as ``torch.save``
    bytes (from rank 0).

    ``format="dcp"`` writes torch.distributed.checkpoint's own layout
    instead (``__{rank}_0.distcp`` per rank and a ``.metadata`` pickle, every
    non-tensor value as ``torch.save`` bytes), which ``dcp.load`` reads;
    ``ckpt.load`` reads both.

    Example::

        ckpt.save({"model": model.state_dict(), "step": 100}, "/ckpt/step_100")
    """
    p = _path(path)
    if format == "dcp":
        from ._dcp_format import save_dcp

        _check_timeout(timeout)
        save_dcp(state_dict, p, process_group)
        return
    if format != "ckpt":
        raise InvalidArgumentError(f"format must be 'ckpt' or 'dcp', not {format!r}")
    _collective(
        process_group,
        timeout,
        lambda: describe(state_dict, for_load=False),
        lambda comm, d: _ckpt.save(comm, p, d.tensors, d.json, d.bytes, timeout),
    )


def _check_timeout(timeout: float) -> float:
    if not (0 < timeout <= MAX_TIMEOUT):
        raise InvalidArgumentError(
            f"timeout must be a number of seconds in (0, {MAX_TIMEOUT:g}], not {timeout}"
        )
    return float(timeout)


def _collective(
    process_group: Any,
    timeout: float,
    prepare: Callable[[], Any],
    call: Callable[[_ckpt.Communicator, Any], Any],
) -> Any:
    """Runs `prepare` on every rank, makes every rank raise when any rank's
    preparation failed (the failing rank raises its own error), then runs the
    collective engine `call`. A communicator whose collective failed is
    dropped so the next call starts on a fresh group."""
    timeout = _check_timeout(timeout)
    comm = _dist.engine_comm(process_group, timeout_s=timeout)
    error: CheckpointError | None = None
    prepared: Any = None
    try:
        prepared = prepare()
    except CheckpointError as e:
        error = e
    try:
        if comm.size > 1:
            comm.agree(None if error is None else f"{type(error).__name__}: {error}", timeout)
        if error is not None:
            raise error
        return call(comm, prepared)
    except UnavailableError:
        _dist.forget(process_group, timeout)
        raise
    except CheckpointError:
        if error is not None:
            raise error from None
        raise


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
    o.timeout_s = _check_timeout(timeout)

    def prepare() -> tuple[Any, dict[str, Any]]:
        d = describe(state_dict, for_load=True)
        # Values are read and checked before any tensor is overwritten.
        return d, _read_values(d.slots, p, allow_missing, allow_pickle)

    def run(comm: _ckpt.Communicator, prepared: tuple[Any, dict[str, Any]]) -> dict[str, Any]:
        d, values = prepared
        # Every rank's state dict has the same keys: all or none call the engine.
        stats = _ckpt.load(comm, p, d.tensors, o) if d.tensors else _no_stats()
        for fqn, value in values.items():
            container, key = d.slots[fqn]
            if container is not None:  # None: inside a tuple, which cannot take a new value
                container[key] = value
        return stats

    stats = _collective(process_group, timeout, prepare, run)
    return LoadStats(**stats)


def _no_stats() -> dict[str, Any]:
    return {"bytes_needed": 0, "bytes_read": 0, "reads": 0, "missing_keys": [], "unexpected_keys": []}


def _read_values(
    slots: dict[str, tuple[Any, Any]], path: str, allow_missing: bool, allow_pickle: bool
) -> dict[str, Any]:
    import json

    if not slots:
        return {}
    texts, raw = _ckpt.read_extra_state(path)
    out: dict[str, Any] = {}
    for fqn in slots:
        if fqn in texts:
            out[fqn] = json.loads(texts[fqn])
        elif fqn in raw:
            out[fqn] = decode_bytes(fqn, raw[fqn], allow_pickle)
        elif not allow_missing:
            raise NotFoundError(f"{path}: the checkpoint has no value '{fqn}'")
    return out


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
        try:
            self._saver.wait(self._ticket)
        except UnavailableError:
            # The saver's group failed (a peer timed out or died): the next
            # asynchronous save starts a new saver on a new group.
            with _savers_lock:
                for k, v in list(_savers.items()):
                    if v is self._saver:
                        del _savers[k]
            raise

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
    for the previous one to finish first (its outcome stays with its
    future). `staging_budget` bounds staging memory in bytes (0: the whole
    state); it is fixed by the first asynchronous save on a process group.

    Example::

        fut = ckpt.async_save(model.state_dict(), f"/ckpt/step_{step}")
        ...  # keep training
        fut.result()
    """
    p = _path(path)

    def submit(comm: _ckpt.Communicator, d: Any) -> SaveFuture:
        key = id(process_group) if process_group is not None else None
        with _savers_lock:
            saver = _savers.get(key)
        if saver is None:  # the first asynchronous save on this group, on every rank
            saver = _ckpt.AsyncSaver(
                _dist.background_comm(process_group, timeout_s=timeout), 0, staging_budget
            )
            with _savers_lock:
                _savers[key] = saver
        return SaveFuture(saver, saver.submit(p, d.tensors, d.json, d.bytes, timeout), p)

    future: SaveFuture = _collective(
        process_group, timeout, lambda: describe(state_dict, for_load=False), submit
    )
    return future


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
    o.timeout_s = _check_timeout(timeout)
    src, dst = _path(path), _path(out_dir)
    return dict(
        _collective(
            process_group, timeout, lambda: None, lambda comm, _: _ckpt.consolidate(comm, src, dst, o)
        )
    )


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


def inspect_files(path: str) -> dict[str, Any]:
    """The engine's description of a sharded checkpoint; a checkpoint that
    holds only non-tensor values has no files and no tensors."""
    try:
        return dict(_ckpt.inspect(path))
    except NotFoundError:
        texts, raw = _ckpt.read_extra_state(path)
        if not texts and not raw:
            raise
        return {"files": [], "has_manifest": True, "has_sharding_info": False, "tensors": []}


def inspect(path: PathLike) -> CheckpointInfo:
    """What a sharded checkpoint holds: its files, and per tensor the dtype
    (a torch dtype where torch has it), global shape and saved chunks."""
    p = _path(path)
    raw = inspect_files(p)
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
