"""The ranks' side of the Checkpointer: who is rank 0, barriers that carry a
rank's error to every rank, the size table of every rank's tensors, and the
small files one rank writes (``torch.save`` state, ``config.yaml``,
``losses.json``)."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["save_config", "save_losses"]

logger = logging.getLogger(__name__)


def rank() -> int:
    """This process's global rank (0 without torch.distributed)."""
    return dist.get_rank() if dist.is_initialized() else 0


def barrier(group: Any = None) -> None:
    """Waits for every rank of `group` (nothing to wait for on one process)."""
    if dist.is_initialized():
        dist.barrier(group=group)


def ensure_dirs(*dirs: str | None, group: Any = None) -> None:
    """Collective: creates the directories, and no rank goes on before they exist."""
    for d in dirs:
        if d:
            os.makedirs(d, exist_ok=True)
    barrier(group)


def raise_everywhere(err: BaseException | None, what: str, group: Any) -> None:
    """Collective: a step one rank did (and failed) fails on every rank, so
    no rank waits forever in the next collective. The failing rank raises
    its own error, the others one that names `what`."""
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        flag = torch.tensor([0 if err is None else 1])
        dist.all_reduce(flag, group=group)
        if err is None and int(flag.item()):
            raise RuntimeError(f"{what} failed on another rank")
    if err is not None:
        raise err


def all_sizes(sd: dict[str, Any], group: Any) -> dict[str, int]:
    """Tensor name -> global size in bytes over every rank's state dict, in
    the order rank 0 (then the others) lists them."""
    mine = {k: v.numel() * v.element_size() for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return mine
    every: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(every, mine, group=group)
    out: dict[str, int] = {}
    for d in every:
        for k, n in d.items():
            out.setdefault(k, n)
    return out


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary name, fsync, rename: a reader sees the
    old file or the whole new one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_config(config: dict[str, Any], weights_path: str) -> None:
    """Writes the run's config as ``weights_path/config.yaml`` (rank 0)."""
    import yaml

    if rank() != 0:
        return
    os.makedirs(weights_path, exist_ok=True)
    with open(os.path.join(weights_path, "config.yaml"), "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)


def save_losses(losses: dict[str, Any], weights_path: str) -> None:
    """Writes ``weights_path/losses.json`` (rank 0): the validation metrics
    ``LOWEST_VAL`` is chosen by."""
    import json

    if rank() != 0:
        return
    os.makedirs(weights_path, exist_ok=True)
    with open(os.path.join(weights_path, "losses.json"), "w") as f:
        json.dump(losses, f)


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """A warning (logged and raised as UserWarning) the first time only."""
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)
        warnings.warn(message, stacklevel=3)
