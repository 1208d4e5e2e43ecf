"""Mixture-of-experts weights between transformers' in-memory layout and the
per-expert Hugging Face checkpoint form.

transformers 5 keeps a layer's experts fused: ``mlp.experts.gate_up_proj``
``[E, 2I, H]`` (gate rows then up rows) and ``mlp.experts.down_proj``
``[E, H, I]``. Checkpoints hold one ``[I, H]`` / ``[H, I]`` tensor per expert
(Mixtral: ``block_sparse_moe.experts.<e>.w1/w3/w2.weight``; Qwen3-MoE:
``mlp.experts.<e>.gate_proj/up_proj/down_proj.weight``). The per-expert
tensors are views of the fused ones, so saves write from and loads read
into the model's own storage. A sharded (FSDP2 / expert-parallel) fused
tensor is split by experts across ranks: each rank's views cover only the
experts it holds, so it writes and reads only those.
"""

from __future__ import annotations

import re
from typing import Any

import torch

__all__ = ["MOE_LAYOUTS", "to_hf_views"]

# model_type -> (checkpoint block name, gate, up, down)
MOE_LAYOUTS = {
    "mixtral": ("block_sparse_moe", "w1", "w3", "w2"),
    "qwen3_moe": ("mlp", "gate_proj", "up_proj", "down_proj"),
}
_FUSED = re.compile(r"^(.*\.layers\.\d+\.)mlp\.experts\.(gate_up_proj|down_proj)$")
_MLP = re.compile(r"^(.*\.layers\.\d+\.)mlp\.(.*)$")


def _local_rows(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The locally held experts of a fused tensor and the first one's index."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(t, DTensor):
        return t, 0
    if any(not isinstance(p, Shard) or p.dim != 0 for p in t.placements if not p.is_replicate()):
        raise ValueError(
            f"fused experts sharded as {t.placements}: only expert (dim 0) sharding is supported"
        )
    chunks = t.__create_chunk_list__()
    local = t.to_local()
    return local, int(chunks[0].offsets[0]) if chunks else 0


def to_hf_views(model: torch.nn.Module, sd: dict[str, Any]) -> dict[str, Any]:
    """`sd` with each fused expert tensor replaced by per-expert views in the
    checkpoint's names (and Mixtral's ``mlp.`` renamed ``block_sparse_moe.``);
    `sd` itself when the model is not a known MoE."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    layout = MOE_LAYOUTS.get(str(model_type))
    if layout is None or not any(_FUSED.match(k) for k in sd):
        return sd
    block, gate, up, down = layout
    out: dict[str, Any] = {}
    for key, value in sd.items():
        m = _FUSED.match(key)
        if m is None:
            mm = _MLP.match(key)
            out[f"{mm.group(1)}{block}.{mm.group(2)}" if mm else key] = value
            continue
        prefix, which = m.groups()
        local, first = _local_rows(value)
        for i in range(local.shape[0]):
            e = first + i
            base = f"{prefix}{block}.experts.{e}."
            if which == "gate_up_proj":
                half = local.shape[1] // 2
                out[base + f"{gate}.weight"] = local[i, :half]
                out[base + f"{up}.weight"] = local[i, half:]
            else:
                out[base + f"{down}.weight"] = local[i]
    return out
