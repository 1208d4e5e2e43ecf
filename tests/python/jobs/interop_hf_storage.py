"""torch's HuggingFaceStorageWriter and ckpt's sharded saves, read by the other side.

    interop_hf_storage.py ROOT [PREV_ROOT]

On this job's ranks (1, 2 or 4), writes under ROOT:
    plain/          HuggingFaceStorageWriter(save_distributed=True)
    mapped/         ... with fqn_to_index_mapping (3 files per rank)
    consolidated/   ... with enable_consolidation (floats only: torch 2.13's
                    consolidation cannot size integer tensors)
    both/           ... with fqn_to_index_mapping and enable_consolidation
    ckpt/           ckpt.save of every tensor
    ckpt_float/     ckpt.save of the float tensors only
then loads every directory back in other layouts: torch's with ckpt.load,
ckpt's with torch's HuggingFaceStorageReader + dcp.load. With PREV_ROOT
(written by another world size), loads those directories the same way.
Every tensor is compared bit for bit.
"""

from __future__ import annotations

import os
import sys

import ckpt
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from common import expected, init, same_bits

# name: (global shape, dtype, save placement, load placement)
FLOATS = {
    "dim0": ((8, 6), torch.float32, "s0", "s1"),
    "dim1": ((6, 10), torch.bfloat16, "s1", "s0"),
    "mesh2d": ((8, 8), torch.float32, "2d", "2d_t"),
    "replicated": ((5, 3), torch.float16, "r", "s0"),
    "uneven": ((7, 3), torch.float64, "s0", "s1"),
    "uneven1": ((3, 5), torch.float32, "s1", "r"),
}
INTS = {
    "int_rep": ((5, 3), torch.int64, "r", "s1"),
    "int_dim0": ((7, 2), torch.int32, "s0", "r"),
    "flag": ((6,), torch.bool, "s0", "r"),
}
ALL = {**FLOATS, **INTS}
# Which output file each tensor goes to in the "mapped" and "both" saves.
MAPPING = {name: 1 + i % 3 for i, name in enumerate(ALL)}
VARIANTS = {
    # name: (tensors, fqn_to_index_mapping, enable_consolidation)
    "plain": (ALL, None, False),
    "mapped": (ALL, MAPPING, False),
    "consolidated": (FLOATS, None, True),
    "both": (FLOATS, {k: v for k, v in MAPPING.items() if k in FLOATS}, True),
}


def full(name: str) -> torch.Tensor:
    shape, dtype, _, _ = ALL[name]
    return expected(name, shape, dtype)


def layout(kind: str, world: int):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard

    if kind.startswith("2d") and world == 4:
        mesh = init_device_mesh("cpu", (2, 2))
        return mesh, [Shard(0), Shard(1)] if kind == "2d" else [Shard(1), Shard(0)]
    mesh = init_device_mesh("cpu", (world,))
    if kind == "2d":
        return mesh, [Shard(1)]
    if kind == "2d_t":
        return mesh, [Shard(0)]
    return mesh, [{"s0": Shard(0), "s1": Shard(1), "r": Replicate()}[kind]]


def tensors(names, world: int, saving: bool) -> dict:
    from torch.distributed.tensor import distribute_tensor

    out = {}
    for name in names:
        shape, dtype, save_pl, load_pl = ALL[name]
        mesh, pl = layout(save_pl if saving else load_pl, world)
        src = full(name) if saving else torch.zeros(shape, dtype=dtype)
        out[name] = distribute_tensor(src, mesh, pl)
    return out


def check(sd: dict, where: str) -> None:
    for name, t in sd.items():
        got = t.full_tensor()
        assert same_bits(got, full(name)), f"{where}: {name}: {got} != {full(name)}"


def save_all(root: str, world: int) -> None:
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    for variant, (names, mapping, consolidate) in VARIANTS.items():
        writer = HuggingFaceStorageWriter(
            os.path.join(root, variant),
            fqn_to_index_mapping=mapping,
            save_distributed=True,
            enable_consolidation=consolidate,
        )
        dcp.save(tensors(names, world, saving=True), storage_writer=writer)
    ckpt.save(tensors(ALL, world, saving=True), os.path.join(root, "ckpt"))
    ckpt.save(tensors(FLOATS, world, saving=True), os.path.join(root, "ckpt_float"))
    dist.barrier()


def load_all(root: str, world: int) -> None:
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    for variant, (names, _, consolidate) in VARIANTS.items():
        path = os.path.join(root, variant)
        sd = tensors(names, world, saving=False)
        ckpt.load(sd, os.path.join(path, "sharded") if consolidate else path)
        check(sd, f"ckpt.load {path}")
        if consolidate:  # torch's consolidated Hugging Face directory
            sd = tensors(names, world, saving=False)
            ckpt.load(sd, path)
            check(sd, f"ckpt.load consolidated {path}")
    for variant, names in (("ckpt", ALL), ("ckpt_float", FLOATS)):
        path = os.path.join(root, variant)
        sd = tensors(names, world, saving=False)
        dcp.load(sd, storage_reader=HuggingFaceStorageReader(path))
        check(sd, f"torch HuggingFaceStorageReader {path}")


def main() -> None:
    root = sys.argv[1]
    prev = sys.argv[2] if len(sys.argv) > 2 else None
    rank, world = init()
    save_all(root, world)
    load_all(root, world)
    if prev:
        load_all(prev, world)
    dist.barrier()
    print(f"OK rank {rank} of {world}", flush=True)
    dist.destroy_process_group()
    # torch 2.13's gloo groups of device meshes sometimes abort the
    # interpreter's teardown; the checks above are done (see layouts.py).
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
