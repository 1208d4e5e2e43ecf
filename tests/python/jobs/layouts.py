"""Saves or loads every layout on this job's ranks.

    layouts.py save|save_async|save_dcp DIR
    layouts.py load|load_dcp|load_torch_hf DIR
    layouts.py load_plain DIR            (one process, no torch.distributed)

The loads use other layouts than the saves (dim 0 <-> dim 1, 2-D mesh <->
1-D) and usually another world size; every tensor is compared bit for bit.
"""

from __future__ import annotations

import os
import sys

import ckpt
import torch
from common import expected, finish, init, same_bits

TENSORS = {
    "dim0": ((8, 6), torch.float32),
    "dim1": ((6, 8), torch.bfloat16),
    "mesh2d": ((8, 8), torch.float32),
    "replicated": ((5, 3), torch.int64),
    "uneven": ((7, 3), torch.float16),
    "scalar": ((), torch.float32),
    "empty": ((0, 4), torch.float32),
    "plain": ((4, 4), torch.uint8),
}


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))


def placements(name: str, world: int, saving: bool):
    from torch.distributed.tensor import Replicate, Shard

    if name == "dim0":
        return None, [Shard(0) if saving else Shard(1)]
    if name == "dim1":
        return None, [Shard(1) if saving else Shard(0)]
    if name == "mesh2d":
        if world == 4 and saving:
            return (2, 2), [Shard(0), Shard(1)]
        if world == 4:
            return (2, 2), [Shard(1), Shard(0)]
        return None, [Shard(1) if saving else Shard(0)]
    if name == "replicated":
        return None, [Replicate()]
    if name == "uneven":
        return None, [Shard(0)]
    return None, None


def state(world: int, saving: bool, fill: bool) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor

    sd: dict = {}
    for name, (shape, dtype) in TENSORS.items():
        full = expected(name, shape, dtype) if fill else torch.zeros(shape, dtype=dtype)
        mesh_shape, pl = placements(name, world, saving)
        if pl is None:
            sd[name] = full
        else:
            mesh = init_device_mesh("cpu", mesh_shape or (world,))
            sd[name] = distribute_tensor(full, mesh, pl)
    m = model()
    if not fill:
        for p in m.parameters():
            torch.nn.init.zeros_(p)
    fully_shard(m)
    sd["model"] = m.state_dict()
    sd["step"] = 11 if fill else 0
    sd["meta"] = ("adam", 3) if fill else None
    return sd


def check(sd: dict, torch_reader: bool = False) -> None:
    from torch.distributed.tensor import DTensor

    for name, (shape, dtype) in TENSORS.items():
        got = sd[name].full_tensor() if isinstance(sd[name], DTensor) else sd[name]
        assert same_bits(got, expected(name, shape, dtype)), f"{name}: {got}"
    ref = model().state_dict()
    for k, v in sd["model"].items():
        got = v.full_tensor() if isinstance(v, DTensor) else v
        assert same_bits(got, ref[k]), f"model.{k}"
    if not torch_reader:
        assert sd["step"] == 11, sd["step"]
        assert sd["meta"] == ("adam", 3), sd["meta"]


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "load_plain":
        sd = {name: torch.zeros(shape, dtype=dt) for name, (shape, dt) in TENSORS.items()}
        sd["model"] = {k: torch.zeros_like(v) for k, v in model().state_dict().items()}
        sd["step"], sd["meta"] = 0, None
        stats = ckpt.load(sd, path, allow_pickle=False)
        check(sd)
        assert stats.bytes_read >= stats.bytes_needed > 0
        print("OK load_plain")
        return
    rank, world = init()
    import torch.distributed.checkpoint as dcp

    if mode.startswith("save"):
        sd = state(world, saving=True, fill=True)
        if mode == "save":
            ckpt.save(sd, path)
        elif mode == "save_async":
            fut = ckpt.async_save(sd, path)
            fut.result()
            assert fut.done()
        else:
            dcp.save(sd, storage_writer=ckpt.dcp.StorageWriter(path))
        assert os.path.isdir(path)
    else:
        sd = state(world, saving=False, fill=False)
        if mode == "load":
            ckpt.load(sd, path)
        elif mode == "load_dcp":
            dcp.load(sd, storage_reader=ckpt.dcp.StorageReader(path))
        else:
            from torch.distributed.checkpoint import HuggingFaceStorageReader

            del sd["step"], sd["meta"]
            dcp.load(sd, storage_reader=HuggingFaceStorageReader(path))
        check(sd, torch_reader=mode == "load_torch_hf")
    print(f"OK rank {rank} {mode}", flush=True)
    finish()


if __name__ == "__main__":
    main()
