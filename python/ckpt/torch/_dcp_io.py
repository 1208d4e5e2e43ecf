"""The one place where ``optim/`` (and distributed custom state) is written
and read: torch.distributed.checkpoint's own format (``__{rank}_{k}.distcp``
+ ``.metadata``), exactly the files NeMo writes there."""

from __future__ import annotations

from typing import Any

import torch.distributed.checkpoint as dcp

__all__ = ["dcp_async_save", "dcp_load", "dcp_save"]


def _group_kwargs(process_group: Any) -> dict[str, Any]:
    return {} if process_group is None else {"process_group": process_group}


def dcp_save(state_dict: dict[str, Any], path: str, process_group: Any = None) -> None:
    """Collective: writes `state_dict` to the directory `path` in DCP's format."""
    dcp.save(state_dict, checkpoint_id=path, **_group_kwargs(process_group))


def dcp_async_save(state_dict: dict[str, Any], path: str, process_group: Any) -> Any:
    """Collective: stages `state_dict` (a copy: the caller may change its
    tensors once this returns) and writes it on a background thread using
    `process_group`; returns the future of the write."""
    return dcp.async_save(state_dict, checkpoint_id=path, process_group=process_group)


def dcp_load(state_dict: dict[str, Any], path: str, process_group: Any = None) -> None:
    """Collective: fills `state_dict` in place from the DCP directory `path`."""
    dcp.load(state_dict, checkpoint_id=path, **_group_kwargs(process_group))
