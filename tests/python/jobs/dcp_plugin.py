"""ckpt's DCP plugin against DCP itself and torch's own HF storage.

dcp_plugin.py async_thread DIR     dcp.async_save (thread executor) with
                                   ckpt.dcp.StorageWriter, then dcp.load
dcp_plugin.py async_process DIR    the same with the process executor
dcp_plugin.py torch_writer DIR     torch's HuggingFaceStorageWriter
                                   (save_distributed) read back by
                                   ckpt.load and ckpt.dcp.StorageReader
"""

from __future__ import annotations

import sys

import ckpt
import torch
import torch.distributed.checkpoint as dcp
from common import expected, finish, init, same_bits


def tensors(world: int, saving: bool) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    out = {}
    for name, shape, dtype, save_pl, load_pl in (
        ("a", (8, 6), torch.float32, Shard(0), Shard(1)),
        ("b", (6, 10), torch.bfloat16, Shard(1), Shard(0)),
        ("c", (3, 3), torch.float16, Replicate(), Shard(0)),
    ):
        full = expected(name, shape, dtype) if saving else torch.zeros(shape, dtype=dtype)
        out[name] = distribute_tensor(full, mesh, [save_pl if saving else load_pl])
    return out


def check(sd: dict) -> None:
    for name, shape, dtype in (
        ("a", (8, 6), torch.float32),
        ("b", (6, 10), torch.bfloat16),
        ("c", (3, 3), torch.float16),
    ):
        assert same_bits(sd[name].full_tensor(), expected(name, shape, dtype)), name


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    rank, world = init()
    if mode == "cached":
        from torch.distributed.checkpoint import DefaultSavePlanner

        planner = DefaultSavePlanner(enable_plan_caching=True)
        for i in range(3):
            sd = tensors(world, saving=True)
            dcp.save(sd, storage_writer=ckpt.dcp.StorageWriter(f"{path}{i}"), planner=planner)
        for i in range(3):
            got = tensors(world, saving=False)
            dcp.load(got, storage_reader=ckpt.dcp.StorageReader(f"{path}{i}"))
            check(got)
    elif mode.startswith("async"):
        from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

        kind = AsyncCheckpointerType.THREAD if mode == "async_thread" else AsyncCheckpointerType.PROCESS
        sd = tensors(world, saving=True)
        sd["step"] = 5
        fut = dcp.async_save(sd, storage_writer=ckpt.dcp.StorageWriter(path), async_checkpointer_type=kind)
        fut.result()
        torch.distributed.barrier()
        ckpt.verify(path)
        got = tensors(world, saving=False)
        got["step"] = 0
        dcp.load(got, storage_reader=ckpt.dcp.StorageReader(path))
        check(got)
        assert got["step"] == 5
    else:
        from torch.distributed.checkpoint import HuggingFaceStorageWriter

        dcp.save(
            tensors(world, saving=True), storage_writer=HuggingFaceStorageWriter(path, save_distributed=True)
        )
        torch.distributed.barrier()
        got = tensors(world, saving=False)
        ckpt.load(got, path)
        check(got)
        got = tensors(world, saving=False)
        dcp.load(got, storage_reader=ckpt.dcp.StorageReader(path))
        check(got)
        info = ckpt.inspect(path)
        assert not info.has_manifest and info.has_sharding_info
    print(f"OK rank {rank} {mode}", flush=True)
    finish()


if __name__ == "__main__":
    main()
