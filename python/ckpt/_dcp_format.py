"""Writing torch.distributed.checkpoint's own format (FileSystemWriter's
layout) from a state dict: ``ckpt.save(..., format="dcp")``.

Python arranges: which rank writes which chunk (each distinct chunk once, by
the lowest rank holding it; plain tensors and non-tensor values by rank 0)
and the ``torch.save`` serialization DCP uses for every chunk and object.
The engine writes each rank's ``__{rank}_0.distcp`` durably into a hidden
staging directory, then the coordinator writes ``.metadata`` and renames the
directory into place, so an interrupted save leaves nothing at the path.
"""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from . import _ckpt as _ckpt
from ._state import _chunk_of, _is_tensor, flatten, st_dtype
from .errors import CheckpointError, InvalidArgumentError

__all__ = ["save_dcp"]


def _serialize(value: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(value, buf)
    return buf.getvalue()


def _group_info(process_group: Any) -> tuple[int, int, bool]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(process_group), dist.get_world_size(process_group), True
    return 0, 1, False


def _all_gather(obj: Any, process_group: Any, distributed: bool, world: int) -> list[Any]:
    if not distributed:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj, group=process_group)
    return out


def _agree(error: Exception | None, process_group: Any, distributed: bool, world: int) -> None:
    """Raises on every rank when any rank failed: a failing rank its own
    exception, the others a CheckpointError naming the first failed rank."""
    errors = _all_gather(
        None if error is None else f"{type(error).__name__}: {error}", process_group, distributed, world
    )
    if error is not None:
        raise error
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if failed:
        raise CheckpointError(f"rank {failed[0][0]} failed: {failed[0][1]}")


def save_dcp(state_dict: Mapping[str, Any], path: str, process_group: Any = None) -> None:
    rank, world, distributed = _group_info(process_group)
    error: Exception | None = None
    chunks: list[tuple[str, str, list[int], list[int], list[int], torch.Tensor]] = []
    objects: dict[str, Any] = {}
    try:
        for fqn, value, _, _ in flatten(state_dict):
            if _is_tensor(value):
                shape, offsets, local = _chunk_of(fqn, value, for_load=False)
                chunks.append((fqn, st_dtype(value.dtype, fqn), shape, offsets, list(local.shape), local))
            else:
                objects[fqn] = value
    except CheckpointError as e:
        error = e
    _agree(error, process_group, distributed, world)

    # Each distinct (fqn, offsets) is written by the lowest rank holding it.
    held = _all_gather([(c[0], tuple(c[3])) for c in chunks], process_group, distributed, world)
    owner: dict[tuple[str, tuple[int, ...]], int] = {}
    for r, keys in enumerate(held):
        for k in keys:
            owner.setdefault(k, r)
    mine = [c for c in chunks if owner[(c[0], tuple(c[3]))] == rank]

    token = secrets.token_hex(8) if rank == 0 else ""
    token = _all_gather(token, process_group, distributed, world)[0]
    staging = ""
    error = None
    if rank == 0:
        try:
            _ckpt.create_staging_dir(path, token)
        except CheckpointError as e:
            error = e
    _agree(error, process_group, distributed, world)
    parent, name = os.path.split(path)
    staging = os.path.join(parent, f".{name}.tmp-{token}")

    file = f"__{rank}_0.distcp"
    records: tuple[list[Any], list[Any]] = ([], [])
    error = None
    try:
        # A clone holds exactly the chunk's elements, contiguous: torch.save
        # of a view would store its whole storage.
        blobs = [_serialize(c[5].detach().cpu().clone(memory_format=torch.contiguous_format)) for c in mine]
        byte_items = sorted(objects.items()) if rank == 0 else []
        blobs += [_serialize(v) for _, v in byte_items]
        ranges = _ckpt.write_dcp_data_file(staging, file, blobs)
        for c, (off, length) in zip(mine, ranges[: len(mine)], strict=True):
            records[0].append((c[0], c[1], c[2], c[3], c[4], file, off, length))
        for (fqn, _), (off, length) in zip(byte_items, ranges[len(mine) :], strict=True):
            records[1].append((fqn, file, off, length))
    except Exception as e:  # torch.save of any object may fail: clean up, then raise everywhere
        error = e
    text = None if error is None else f"{type(error).__name__}: {error}"
    gathered = _all_gather((text, records), process_group, distributed, world)
    failed = [(r, e) for r, (e, _) in enumerate(gathered) if e is not None]
    if failed:
        if rank == 0:
            _ckpt.remove_all(staging)
        if error is not None:
            raise error
        raise CheckpointError(f"rank {failed[0][0]} failed: {failed[0][1]}")

    error = None
    if rank == 0:
        tensors: dict[str, tuple[str, list[int], list[Any]]] = {}
        byte_entries: list[Any] = []
        for _, (tensor_records, bytes_records) in gathered:
            for fqn, dtype, shape, offsets, sizes, f, off, length in tensor_records:
                t = tensors.setdefault(fqn, (dtype, shape, []))
                if (t[0], t[1]) != (dtype, shape):
                    raise InvalidArgumentError(
                        f"tensor '{fqn}' is {t[0]} {t[1]} on one rank and {dtype} {shape} on another"
                    )
                t[2].append((offsets, sizes, f, off, length))
            byte_entries += bytes_records
        try:
            _ckpt.publish_dcp_dir(
                staging,
                path,
                [(fqn, d, s, sorted(c)) for fqn, (d, s, c) in sorted(tensors.items())],
                byte_entries,
            )
        except CheckpointError as e:
            error = e
    _agree(error, process_group, distributed, world)
