"""PEFT adapters (the ``peft`` library) in the files NeMo writes and
``peft.PeftModel.from_pretrained`` reads: ``adapter_model.safetensors``
(keys ``base_model.model.<module>.lora_A.weight``, no adapter name) and
``adapter_config.json``, plus NeMo's ``automodel_peft_config.json``."""

from __future__ import annotations

import json
import os
from typing import Any

import torch

__all__ = ["load_adapter", "save_adapter"]

ADAPTER_FILE = "adapter_model.safetensors"


def _full(t: torch.Tensor) -> torch.Tensor:
    full = getattr(t, "full_tensor", None)
    return (full() if full is not None else t).detach().cpu().contiguous()


def save_adapter(model: torch.nn.Module, directory: str, peft_config: Any, tokenizer: Any) -> None:
    """Rank 0: writes the adapter weights and configs into `directory`."""
    from peft.utils import get_peft_model_state_dict

    from ..safetensors import save_file

    configs = getattr(model, "peft_config", None)
    if peft_config is None and configs:
        peft_config = configs.get("default", next(iter(configs.values())))
    if peft_config is None:
        raise ValueError(
            f"{directory}: save_model of a PEFT run needs peft_config (or a peft.PeftModel); "
            f"{type(model).__name__} has neither"
        )
    sd = {k: _full(v) for k, v in get_peft_model_state_dict(model).items()}
    save_file(sd, os.path.join(directory, ADAPTER_FILE))
    cfg = peft_config.to_dict()
    for k, v in list(cfg.items()):
        if isinstance(v, set):
            cfg[k] = sorted(v)
        elif hasattr(v, "value"):
            cfg[k] = v.value
    with open(os.path.join(directory, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True, default=str)
    with open(os.path.join(directory, "automodel_peft_config.json"), "w") as f:
        json.dump(
            {"peft_type": str(cfg.get("peft_type")), "config": cfg}, f, indent=2, sort_keys=True, default=str
        )
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def load_adapter(model: torch.nn.Module, directory: str) -> None:
    """Every rank reads the adapter file and sets the adapter weights."""
    from peft.utils import set_peft_model_state_dict

    from ..safetensors import load_file

    path = os.path.join(directory, ADAPTER_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no adapter weights")
    result = set_peft_model_state_dict(model, load_file(path))
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ValueError(f"{path}: adapter tensors the model has no place for: {sorted(unexpected)[:5]}")
