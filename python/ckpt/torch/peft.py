"""PEFT adapters (the ``peft`` library) in the files NeMo writes and
``peft.PeftModel.from_pretrained`` reads: ``adapter_model.safetensors``
(keys ``base_model.model.<module>.lora_A.weight``, no adapter name) and
``adapter_config.json``, plus NeMo's ``automodel_peft_config.json``."""

from __future__ import annotations

import json
import os
from typing import Any

import torch

__all__ = ["adapter_state", "load_adapter", "save_adapter"]

ADAPTER_FILE = "adapter_model.safetensors"


def _full(t: torch.Tensor) -> torch.Tensor:
    full = getattr(t, "full_tensor", None)
    return (full() if full is not None else t).detach().cpu().contiguous()


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Collective under FSDP2: the adapter's full tensors, in the names
    ``PeftModel.from_pretrained`` reads."""
    from peft.utils import get_peft_model_state_dict

    return {k: _full(v) for k, v in get_peft_model_state_dict(model).items()}


def save_adapter(
    model: torch.nn.Module, directory: str, sd: dict[str, torch.Tensor], peft_config: Any, tokenizer: Any
) -> None:
    """Rank 0: writes the adapter weights `sd` and the configs into `directory`."""
    from ..safetensors import save_file

    configs = getattr(model, "peft_config", None)
    if peft_config is None and configs:
        peft_config = configs.get("default", next(iter(configs.values())))
    if peft_config is None:
        raise ValueError(
            f"{directory}: save_model of a PEFT run needs peft_config (or a peft.PeftModel); "
            f"{type(model).__name__} has neither"
        )
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
    """Every rank reads the adapter file and sets the adapter weights (its
    slices of them when the model is sharded)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from ..safetensors import load_file

    path = os.path.join(directory, ADAPTER_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no adapter weights")
    saved = load_file(path)
    adapter = getattr(model, "active_adapter", "default")
    adapter = adapter if isinstance(adapter, str) else adapter[0]
    # The file's names leave out the adapter's name; the model's hold it.
    names = {k.replace(f".{adapter}.", "."): k for k in model.state_dict() if "lora_" in k}
    unexpected = sorted(k for k in saved if k not in names)
    if unexpected:
        raise ValueError(f"{path}: adapter tensors the model has no place for: {unexpected[:5]}")
    missing = sorted(k for k in names if k not in saved)
    if missing:
        raise ValueError(f"{path}: the model's adapter tensors {missing[:5]} are not in the file")
    full: dict[str, Any] = {names[k]: v for k, v in saved.items()}
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, strict=False))
