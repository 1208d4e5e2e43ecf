"""Stateful helpers a NeMo training loop checkpoints with ``save_on_dp_ranks``
/ ``save_on_global_ranks``: the random number generators, in NeMo's file
contents (loadable with ``torch.load(weights_only=True)``)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["StatefulRNG"]


class StatefulRNG:
    """Seeds and checkpoints Python's, NumPy's and torch's generators.

    ``state_dict()`` holds ``random_rng_state``, ``np_bit_generator``,
    ``np_keys``, ``np_position``, ``np_has_gauss``, ``np_cached_gaussian``,
    ``torch_rng_state`` and ``cuda_rng_state`` (NeMo's keys)."""

    def __init__(self, seed: int, ranked: bool = False) -> None:
        if ranked and torch.distributed.is_initialized():
            seed += torch.distributed.get_rank()
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        return {
            "random_rng_state": random.getstate(),
            "np_bit_generator": name,
            "np_keys": torch.from_numpy(np.array(keys, copy=True)),
            "np_position": int(pos),
            "np_has_gauss": int(has_gauss),
            "np_cached_gaussian": float(cached),
            "torch_rng_state": torch.get_rng_state(),
            "cuda_rng_state": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["random_rng_state"])
        np.random.set_state(
            (
                state["np_bit_generator"],
                state["np_keys"].cpu().numpy(),
                state["np_position"],
                state["np_has_gauss"],
                state["np_cached_gaussian"],
            )
        )
        torch.set_rng_state(state["torch_rng_state"])
        if torch.cuda.is_available() and state.get("cuda_rng_state"):
            torch.cuda.set_rng_state_all(state["cuda_rng_state"])
