"""The one place where ``optim/`` (and distributed custom state) is written
and read: torch.distributed.checkpoint's own format (``__{rank}_0.distcp``
+ ``.metadata``), the files NeMo writes there, through ckpt's DCP writer
and reader (``ckpt.save(..., format="dcp")``, ``ckpt.load``)."""

from __future__ import annotations

import copy
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from .. import api

__all__ = ["dcp_async_save", "dcp_load", "dcp_save"]

_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-dcp")


def dcp_save(state_dict: dict[str, Any], path: str, process_group: Any = None) -> None:
    """Collective: writes `state_dict` to the directory `path` in DCP's format."""
    api.save(state_dict, path, process_group=process_group, format="dcp")


def _staged(value: Any) -> Any:
    """A copy the caller's later changes do not reach (DTensors stay DTensors)."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        local = value.to_local().clone()
        return DTensor.from_local(
            local,
            value.device_mesh,
            value.placements,
            run_check=False,
            shape=value.shape,
            stride=value.stride(),
        )
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _staged(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_staged(v) for v in value]
    return copy.deepcopy(value)


def dcp_async_save(state_dict: dict[str, Any], path: str, process_group: Any) -> Future[None]:
    """Collective: copies `state_dict` (the caller may change its tensors once
    this returns) and writes the copy on a background thread whose
    collectives run on `process_group`; returns the future of the write."""
    staged = _staged(state_dict)
    return _writer.submit(dcp_save, staged, path, process_group)


def dcp_load(state_dict: dict[str, Any], path: str, process_group: Any = None) -> None:
    """Collective: fills `state_dict` in place from the DCP directory `path`
    (any layout; its non-tensor values are read with ``weights_only``)."""
    api.load(state_dict, path, process_group=process_group)
