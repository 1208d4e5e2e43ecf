"""State dicts of models and optimizers as the Checkpointer saves them:
DTensors stay sharded, a tied ``lm_head`` is left out (it is the embedding),
optimizer state is flattened per parameter FQN (NeMo's ``optim/`` keys)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .._state import torch_dtype
from . import hf

__all__ = [
    "assert_materialized",
    "lm_head_tied_to_embeddings",
    "match_checkpoint_dtypes",
    "model_state_dict",
    "optimizer_state_dict",
    "set_optimizer_state",
    "to_empty_parameters_only",
]

LM_HEAD = "lm_head.weight"


def lm_head_tied_to_embeddings(model: torch.nn.Module) -> bool:
    """True when ``lm_head.weight`` is the input embedding's tensor."""
    head = getattr(model, "lm_head", None)
    get_in = getattr(model, "get_input_embeddings", None)
    if head is None or get_in is None:
        return False
    emb = get_in()
    return emb is not None and getattr(head, "weight", None) is getattr(emb, "weight", object())


def assert_materialized(model: torch.nn.Module) -> None:
    for name, p in model.named_parameters():
        if p.device.type == "meta":
            raise ValueError(
                f"parameter '{name}' is on the meta device; materialize the model first "
                "(Checkpointer.initialize_model_weights(model, device))"
            )


def to_empty_parameters_only(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Moves parameters (not buffers) to `device` without copying data."""
    for module in model.modules():
        for key, p in list(module._parameters.items()):
            if p is not None and p.device.type == "meta":
                module._parameters[key] = torch.nn.Parameter(
                    torch.empty_like(p, device=device), requires_grad=p.requires_grad
                )
    return model


def model_state_dict(model: torch.nn.Module, cpu_offload: bool) -> dict[str, Any]:
    """The model's state dict (DTensors for sharded parameters, sharing the
    parameters' storage), without a tied ``lm_head.weight``, with MoE
    experts as per-expert views in the Hugging Face checkpoint's names."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from .moe import to_hf_views

    sd = get_model_state_dict(model, options=StateDictOptions(cpu_offload=cpu_offload))
    if lm_head_tied_to_embeddings(model):
        sd.pop(LM_HEAD, None)
    return to_hf_views(model, sd)


def match_checkpoint_dtypes(
    model: torch.nn.Module, dtypes: Mapping[str, Any], key_mapping: Mapping[str, str] | None
) -> list[str]:
    """Gives floating-point parameters the dtype their checkpoint tensor has
    (a bf16 base model stays bf16), as NeMo's base-model load does. `dtypes`
    maps checkpoint keys to torch dtypes or safetensors dtype names. Returns
    the parameters whose dtype could not change (sharded by FSDP2)."""
    from torch.distributed.tensor import DTensor

    if key_mapping:
        dtypes = hf.apply_key_mapping(dtypes, key_mapping)
    kept: list[str] = []
    for name, p in list(model.named_parameters()):
        want = dtypes.get(name)
        if want is None:
            continue
        if isinstance(want, str):
            try:
                want = torch_dtype(want)
            except Exception:
                continue
        if p.dtype == want or not (p.is_floating_point() and want.is_floating_point):
            continue
        if isinstance(p, DTensor):
            kept.append(name)
        else:
            p.data = p.data.to(want)
    return kept


def optimizer_state_dict(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, cpu_offload: bool, materialize: bool = False
) -> dict[str, Any]:
    """Flattened optimizer state: ``state.<fqn>.<name>`` and
    ``param_groups.<fqn>.<key>``. With `materialize`, an optimizer that has
    not stepped yet gets zero state first, so a load has places to fill."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if materialize:
        _materialize_state(optimizer)
    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(flatten_optimizer_state_dict=True, cpu_offload=cpu_offload)
    )


def set_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        model, optimizer, optim_state_dict=sd, options=StateDictOptions(flatten_optimizer_state_dict=True)
    )


def _materialize_state(optimizer: torch.optim.Optimizer) -> None:
    """Creates Adam-family state (step, exp_avg, exp_avg_sq, max_exp_avg_sq)
    for parameters that have none; other optimizers take one step with zero
    gradients and a zero learning rate."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p not in optimizer.state]
    if not params:
        return
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        for g in optimizer.param_groups:
            for p in g["params"]:
                if p in optimizer.state:
                    continue
                st: dict[str, Any] = {
                    "step": torch.tensor(0.0),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
                if g.get("amsgrad"):
                    st["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                optimizer.state[p] = st
        return
    saved_lr = [g.get("lr") for g in optimizer.param_groups]
    saved_grads = {p: p.grad for p in params}
    for g in optimizer.param_groups:
        if "lr" in g:
            g["lr"] = 0.0
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for g, lr in zip(optimizer.param_groups, saved_lr, strict=True):
        if lr is not None:
            g["lr"] = lr
    for p, grad in saved_grads.items():
        p.grad = grad
