"""Tiny Mixtral and Qwen3-MoE models (transformers' fused experts in memory),
FSDP2-sharded over the experts: the Checkpointer saves per-expert Hugging
Face tensors, each rank writing and then reading only the experts it holds.

checkpointer_moe.py DIR
"""

from __future__ import annotations

import os
import sys
import warnings

import torch
import torch.distributed as dist
from common import TINY_LLAMA, finish, init, same_bits
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

warnings.simplefilter("ignore")
import ckpt  # noqa: E402
from ckpt.torch import Checkpointer, CheckpointingConfig  # noqa: E402
from ckpt.torch.model_state import model_state_dict  # noqa: E402

COMMON = dict(TINY_LLAMA, hidden_size=32, intermediate_size=64, vocab_size=128)
EXPERTS = 4


def build(kind: str, seed: int, shard: bool) -> torch.nn.Module:
    import transformers

    if kind == "mixtral":
        cfg = transformers.MixtralConfig(**COMMON, num_local_experts=EXPERTS, num_experts_per_tok=2)
    else:
        cfg = transformers.Qwen3MoeConfig(
            **COMMON, num_experts=EXPERTS, num_experts_per_tok=2, moe_intermediate_size=16, head_dim=8
        )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    if shard:
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    return model


def full(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: (v.full_tensor() if isinstance(v, DTensor) else v).clone() for k, v in model.state_dict().items()
    }


def main() -> None:
    root = sys.argv[1]
    rank, world = init()
    for kind in ("mixtral", "qwen3_moe"):
        c = Checkpointer(CheckpointingConfig(checkpoint_dir=root, save_consolidated="every"), rank, 0, 0)
        model = build(kind, 1, shard=True)
        want = full(model)
        sd = model_state_dict(model, cpu_offload=False)
        block = "block_sparse_moe" if kind == "mixtral" else "mlp"
        mine = sorted({int(k.split(".experts.")[1].split(".")[0]) for k in sd if ".experts." in k})
        per_rank = EXPERTS // world
        assert mine == list(range(rank * per_rank, (rank + 1) * per_rank)), (kind, rank, mine)
        path = os.path.join(root, kind)
        c.save_model(model, path, is_final_checkpoint=True)
        names = set(ckpt.inspect(os.path.join(path, "model")).tensors)
        experts = {f"model.layers.{i}.{block}.experts.{e}." for i in range(2) for e in range(EXPERTS)}
        assert all(any(n.startswith(p) for n in names) for p in experts), sorted(names)[:8]
        assert not any("gate_up_proj" in n for n in names)
        import json

        meta = os.path.join(path, "model", ".hf_metadata", "fqn_to_file_index_mapping.json")
        with open(meta) as f:
            assert set(json.load(f)) == names  # every rank's experts are mapped

        fresh = build(kind, 2, shard=True)
        fresh_sd = model_state_dict(fresh, cpu_offload=False)
        expert_keys = {k: v for k, v in fresh_sd.items() if ".experts." in k}
        stats = ckpt.load(expert_keys, os.path.join(path, "model"), allow_unexpected=True)
        # this rank read its experts' bytes and no others
        own = sum(v.numel() * v.element_size() for v in expert_keys.values())
        assert stats.bytes_needed == own, (stats.bytes_needed, own)
        c.load_model(fresh, os.path.join(path, "model"))
        got = full(fresh)
        for k, v in want.items():
            assert same_bits(got[k], v), (kind, k)
        if rank == 0:
            import transformers

            hf = transformers.AutoModelForCausalLM.from_pretrained(
                os.path.join(path, "model", "consolidated")
            )
            for k, v in hf.state_dict().items():
                assert same_bits(v, want[k]), (kind, "consolidated", k)
        dist.barrier()
        c.close()
    print(f"OK rank {rank} moe", flush=True)
    finish()


if __name__ == "__main__":
    main()
