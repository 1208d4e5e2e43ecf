"""A tiny Llama sharded with FSDP2 (fully_shard per layer and at the root).

fsdp2_llama.py save DIR    trains one step, saves with ckpt.save, and
                           rank 0 writes the full state as a reference
fsdp2_llama.py load DIR    a fresh model (another world size) loads it;
                           every parameter must equal the reference
"""

from __future__ import annotations

import os
import sys

import ckpt
import torch
from common import finish, init, same_bits


def build() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    rank, world = init()
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    model = build()
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    if mode == "save":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        sd = model.state_dict()
        assert any(isinstance(v, DTensor) for v in sd.values())
        full = {k: (v.full_tensor() if isinstance(v, DTensor) else v).clone() for k, v in sd.items()}
        ckpt.save(sd, os.path.join(path, "model"))
        if rank == 0:
            torch.save(full, os.path.join(path, "reference.pt"))
    else:
        for p in model.parameters():
            torch.nn.init.zeros_(p)
        sd = model.state_dict()
        stats = ckpt.load(sd, os.path.join(path, "model"))
        ref = torch.load(os.path.join(path, "reference.pt"), weights_only=True)
        assert set(ref) == set(sd), set(ref) ^ set(sd)
        for k, v in sd.items():
            got = v.full_tensor() if isinstance(v, DTensor) else v
            assert same_bits(got, ref[k]), k
        assert stats.missing_keys == [] and stats.unexpected_keys == []
    print(f"OK rank {rank} {mode}", flush=True)
    finish()


if __name__ == "__main__":
    main()
