"""The engine's collectives over torch.distributed.

The engine asks for four collectives (all-gather of bytes, broadcast,
barrier, duplicate); this adapter runs them on a torch.distributed process
group (gloo on CPU). Each waits at most the engine's timeout, so a peer that
hangs or died becomes an error on every rank that waits for it.
"""

from __future__ import annotations

import atexit
import ctypes
import datetime
import threading
from typing import Any

import torch
import torch.distributed as dist

from . import _ckpt

_cache_lock = threading.Lock()
# Engine communicators by process group; ckpt's collectives run on a group of
# its own (a duplicate), so they never interleave with the job's.
_foreground: dict[Any, _ckpt.Communicator] = {}


_own_groups: list[Any] = []


def _clear() -> None:
    # Groups ckpt created are destroyed before the interpreter exits: gloo
    # groups left to process teardown can abort it.
    with _cache_lock:
        _foreground.clear()
        groups = list(_own_groups)
        _own_groups.clear()
    if dist.is_available() and dist.is_initialized():
        for g in groups:
            try:
                dist.destroy_process_group(g)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass


atexit.register(_clear)


def _wait(work: Any, timeout_s: float, what: str) -> None:
    if not work.wait(timeout=datetime.timedelta(seconds=timeout_s)):
        raise TimeoutError(f"{what} did not complete within {timeout_s:g} s")


def _to_bytes(t: torch.Tensor, n: int) -> bytes:
    return ctypes.string_at(t.data_ptr(), n) if n else b""


class TorchDistComm:
    """Collectives of one torch.distributed process group, for the engine."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.ranks = dist.get_process_group_ranks(group)

    def all_gather(self, data: bytes, timeout_s: float) -> list[bytes]:
        n = torch.tensor([len(data)], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.size)]
        _wait(dist.all_gather(sizes, n, group=self.group, async_op=True), timeout_s, "all_gather of sizes")
        lengths = [int(s.item()) for s in sizes]
        width = max(max(lengths), 1)
        mine = torch.zeros(width, dtype=torch.uint8)
        if data:
            mine[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        outs = [torch.empty(width, dtype=torch.uint8) for _ in range(self.size)]
        _wait(dist.all_gather(outs, mine, group=self.group, async_op=True), timeout_s, "all_gather")
        return [_to_bytes(o, k) for o, k in zip(outs, lengths, strict=True)]

    def broadcast(self, root: int, data: bytes, timeout_s: float) -> bytes:
        src = self.ranks[root]
        n = torch.tensor([len(data)], dtype=torch.int64)
        _wait(dist.broadcast(n, src=src, group=self.group, async_op=True), timeout_s, "broadcast of size")
        length = int(n.item())
        buf = torch.zeros(max(length, 1), dtype=torch.uint8)
        if self.rank == root and data:
            buf[:length] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        _wait(dist.broadcast(buf, src=src, group=self.group, async_op=True), timeout_s, "broadcast")
        return _to_bytes(buf, length)

    def barrier(self, timeout_s: float) -> None:
        t = torch.zeros(1, dtype=torch.int64)
        _wait(dist.all_reduce(t, group=self.group, async_op=True), timeout_s, "barrier")

    def duplicate(self, timeout_s: float) -> TorchDistComm:
        return TorchDistComm(new_group_like(self.group, timeout_s))


def new_group_like(group: Any, timeout_s: float) -> Any:
    """A new gloo group over the ranks of `group` (collective over them)."""
    ranks = dist.get_process_group_ranks(group)
    g = dist.new_group(
        ranks=ranks,
        backend="gloo",
        timeout=datetime.timedelta(seconds=max(timeout_s, 1.0)),
        use_local_synchronization=True,
    )
    with _cache_lock:
        _own_groups.append(g)
    return g


def engine_comm(process_group: Any = None, *, timeout_s: float = 600.0) -> _ckpt.Communicator:
    """The engine communicator for `process_group` (default: the world).

    One rank when torch.distributed is not initialized. Collective the first
    time it is called for a group: ckpt creates its own gloo group over the
    same ranks, and reuses it later.
    """
    if not (dist.is_available() and dist.is_initialized()):
        if process_group is not None:
            raise ValueError("a process_group was given but torch.distributed is not initialized")
        return _ckpt.Communicator.single()
    group = process_group if process_group is not None else dist.group.WORLD
    if dist.get_world_size(group) == 1:
        return _ckpt.Communicator.single()
    with _cache_lock:
        comm = _foreground.get(group)
    if comm is None:
        own = new_group_like(group, timeout_s)
        impl = TorchDistComm(own)
        comm = _ckpt.Communicator.from_python(impl, impl.rank, impl.size)
        with _cache_lock:
            _foreground[group] = comm
    return comm


def background_comm(process_group: Any = None, *, timeout_s: float = 600.0) -> _ckpt.Communicator:
    """A fresh engine communicator on a new group, for a background thread."""
    if not (dist.is_available() and dist.is_initialized()):
        return _ckpt.Communicator.single()
    group = process_group if process_group is not None else dist.group.WORLD
    if dist.get_world_size(group) == 1:
        return _ckpt.Communicator.single()
    impl = TorchDistComm(new_group_like(group, timeout_s))
    return _ckpt.Communicator.from_python(impl, impl.rank, impl.size)
