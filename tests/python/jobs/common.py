"""Helpers for the rank jobs: process group, meshes, expected tensors."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


# A tiny Llama's config fields (the MoE models take them too).
TINY_LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=64,
)


def init() -> tuple[int, int]:
    dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def expected(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A deterministic tensor whose every element differs (by name)."""
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    n = 1
    for s in shape:
        n *= s
    if dtype == torch.bool:
        return torch.randint(0, 2, (n,), generator=g).to(torch.bool).reshape(shape)
    if dtype.is_floating_point:
        return (torch.randn(n, generator=g, dtype=torch.float64) * 100).to(dtype).reshape(shape)
    return torch.randint(-100, 100, (n,), generator=g).to(dtype).reshape(shape)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.numel() == 0:
        return True
    return torch.equal(
        a.reshape(-1).contiguous().view(torch.uint8), b.reshape(-1).contiguous().view(torch.uint8)
    )


def finish() -> None:
    """Ends a rank job once its checks passed. torch 2.13's gloo groups (device
    meshes' subgroups among them) sometimes abort interpreter teardown
    ("terminate called without an active exception"), with or without ckpt,
    so the job leaves without it."""
    import torch.distributed as dist

    sys.stdout.flush()
    sys.stderr.flush()
    if dist.is_initialized():
        dist.destroy_process_group()
    os._exit(0)
