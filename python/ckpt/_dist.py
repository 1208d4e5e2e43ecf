"""The engine's collectives over torch.distributed.

The engine asks for four collectives (all-gather of bytes, broadcast,
barrier, duplicate); this adapter runs them on gloo process groups over the
ranks of the caller's process group. ckpt makes groups of its own over
those ranks (one for calls from the caller's thread, one per asynchronous
saver), so its collectives never interleave with the job's. Each waits at
most the engine's timeout, so a peer that hangs or died becomes an error on
every rank that waits for it.
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

_lock = threading.Lock()
# Engine communicators by process group, for calls from the caller's thread.
_foreground: dict[Any, _ckpt.Communicator] = {}
# Every gloo group ckpt made, released at exit.
_own_groups: list[Any] = []
# How many groups ckpt made per rank set: members make them in the same
# order (at collective calls), so the count names a group alike on each.
_made: dict[tuple[int, ...], int] = {}


def _clear() -> None:
    # Released before the interpreter exits: gloo groups left to process
    # teardown can abort it.
    with _lock:
        _foreground.clear()
        _own_groups.clear()


atexit.register(_clear)


def _wait(work: Any, timeout_s: float, what: str) -> None:
    if not work.wait(datetime.timedelta(seconds=timeout_s)):
        raise TimeoutError(f"{what} did not complete within {timeout_s:g} s")


def _to_bytes(t: torch.Tensor, n: int) -> bytes:
    return ctypes.string_at(t.data_ptr(), n) if n else b""


def _group_name(ranks: list[int]) -> str:
    key = tuple(ranks)
    with _lock:
        n = _made.get(key, 0) + 1
        _made[key] = n
    return f"ckpt/{'_'.join(map(str, ranks))}/{n}"


def _own_gloo_group(name: str, ranks: list[int], timeout_s: float) -> Any:
    """A gloo group over `ranks` (global ranks) that meets through the job's
    store under `name`. It is not registered with torch.distributed: making
    it needs only its members, and the job's own group bookkeeping (which
    differs between ranks that joined different subgroups) plays no part.
    Making it waits for every member, with the GIL released."""
    store = dist.PrefixStore(name, dist.distributed_c10d._get_default_store())
    timeout = datetime.timedelta(seconds=max(timeout_s, 1.0))
    pg = dist.ProcessGroupGloo(store, ranks.index(dist.get_rank()), len(ranks), timeout)
    with _lock:
        _own_groups.append(pg)
    return pg


class TorchDistComm:
    """Collectives of one gloo group of ckpt's, in the shape the engine asks."""

    def __init__(self, ranks: list[int], timeout_s: float) -> None:
        self.ranks = list(ranks)
        self.rank = self.ranks.index(dist.get_rank())
        self.size = len(self.ranks)
        # Named now, in the caller's order; made at the first collective, on
        # whichever thread runs it (an asynchronous saver's background
        # thread, so waiting for the other ranks to join never blocks the
        # caller).
        self._name = _group_name(self.ranks)
        self._timeout_s = timeout_s
        self._pg: Any = None

    @property
    def pg(self) -> Any:
        if self._pg is None:
            self._pg = _own_gloo_group(self._name, self.ranks, self._timeout_s)
        return self._pg

    def all_gather(self, data: bytes, timeout_s: float) -> list[bytes]:
        n = torch.tensor([len(data)], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.size)]
        _wait(self.pg.allgather([sizes], [n]), timeout_s, "all_gather of sizes")
        lengths = [int(s.item()) for s in sizes]
        width = max(max(lengths), 1)
        mine = torch.zeros(width, dtype=torch.uint8)
        if data:
            mine[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        outs = [torch.empty(width, dtype=torch.uint8) for _ in range(self.size)]
        _wait(self.pg.allgather([outs], [mine]), timeout_s, "all_gather")
        return [_to_bytes(o, k) for o, k in zip(outs, lengths, strict=True)]

    def broadcast(self, root: int, data: bytes, timeout_s: float) -> bytes:
        opts = dist.BroadcastOptions()
        opts.rootRank = root
        n = torch.tensor([len(data)], dtype=torch.int64)
        _wait(self.pg.broadcast([n], opts), timeout_s, "broadcast of size")
        length = int(n.item())
        buf = torch.zeros(max(length, 1), dtype=torch.uint8)
        if self.rank == root and data:
            buf[:length] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        _wait(self.pg.broadcast([buf], opts), timeout_s, "broadcast")
        return _to_bytes(buf, length)

    def barrier(self, timeout_s: float) -> None:
        _wait(self.pg.allreduce([torch.zeros(1, dtype=torch.int64)]), timeout_s, "barrier")

    def duplicate(self, timeout_s: float) -> TorchDistComm:
        return TorchDistComm(self.ranks, timeout_s)


def _group_ranks(process_group: Any) -> list[int] | None:
    """The global ranks of `process_group` (default: the world); None when
    there is nothing to coordinate (no torch.distributed, or one rank)."""
    if not (dist.is_available() and dist.is_initialized()):
        if process_group is not None:
            raise ValueError("a process_group was given but torch.distributed is not initialized")
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    ranks = dist.get_process_group_ranks(group)
    return ranks if len(ranks) > 1 else None


def engine_comm(process_group: Any = None, *, timeout_s: float = 600.0) -> _ckpt.Communicator:
    """The engine communicator for calls from the caller's thread over the
    ranks of `process_group`; one rank without torch.distributed. Collective
    the first time it is called for a group; reused afterwards."""
    ranks = _group_ranks(process_group)
    if ranks is None:
        return _ckpt.Communicator.single()
    key = _key(process_group, timeout_s)
    with _lock:
        comm = _foreground.get(key)
    if comm is None:
        impl = TorchDistComm(ranks, timeout_s)
        comm = _ckpt.Communicator.from_python(impl, impl.rank, impl.size)
        with _lock:
            _foreground[key] = comm
    return comm


def _key(process_group: Any, timeout_s: float) -> tuple[Any, float]:
    # A group's gloo timeout is fixed when it is made: one group per timeout.
    return (process_group if process_group is not None else dist.group.WORLD, float(timeout_s))


def forget(process_group: Any, timeout_s: float) -> None:
    """Drops the communicator of a failed call (a communicator is broken
    after a failed collective); the next call makes a new group."""
    if _group_ranks(process_group) is None:
        return
    with _lock:
        _foreground.pop(_key(process_group, timeout_s), None)


def background_comm(process_group: Any = None, *, timeout_s: float = 600.0) -> _ckpt.Communicator:
    """A new engine communicator on a new group, for a background thread."""
    ranks = _group_ranks(process_group)
    if ranks is None:
        return _ckpt.Communicator.single()
    impl = TorchDistComm(ranks, timeout_s)
    return _ckpt.Communicator.from_python(impl, impl.rank, impl.size)
