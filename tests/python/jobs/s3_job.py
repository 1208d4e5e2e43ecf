"""Sharded saves and loads on an S3-protocol server (credentials and
endpoint in AWS_* variables).

s3_job.py save URL        4 ranks: save a row-sharded tensor, a replicated
                          one and a step
s3_job.py load URL        2 ranks: load it resharded; each rank must read
                          exactly the bytes it needs
s3_job.py outage PREV NEW FLAGDIR
                          save PREV; then NEW while the test cuts the
                          server (every rank must raise, nothing is
                          published); after the server is back PREV loads
                          bit-exactly and NEW saves
"""

from __future__ import annotations

import os
import sys
import time

import ckpt
import torch
from common import expected, finish, init, same_bits

ROWS, COLS = 1 << 16, 16  # 4 MiB of float32
BIG = 1 << 19  # 32 MiB: 8 MiB a rank, uploaded in parts


def state(mesh, placement, rows: int = ROWS):  # noqa: ANN001, ANN201
    from torch.distributed.tensor import Replicate, distribute_tensor

    return {
        "w": distribute_tensor(expected("w", (rows, COLS), torch.float32), mesh, [placement]),
        "b": distribute_tensor(expected("b", (COLS,), torch.bfloat16), mesh, [Replicate()]),
        "step": 7,
    }


def empty(mesh, placement, rows: int = ROWS):  # noqa: ANN001, ANN201
    from torch.distributed.tensor import Replicate, distribute_tensor

    return {
        "w": distribute_tensor(torch.zeros(rows, COLS), mesh, [placement]),
        "b": distribute_tensor(torch.zeros(COLS, dtype=torch.bfloat16), mesh, [Replicate()]),
        "step": 0,
    }


def check(got: dict, rank: int, rows: int = ROWS) -> None:
    assert same_bits(got["w"].full_tensor(), expected("w", (rows, COLS), torch.float32)), rank
    assert same_bits(got["b"].full_tensor(), expected("b", (COLS,), torch.bfloat16)), rank
    assert got["step"] == 7, got["step"]


def wait_for(path: str, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.05)


def main() -> None:
    mode = sys.argv[1]
    rank, world = init()
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard

    mesh = init_device_mesh("cpu", (world,))
    if mode == "save":
        ckpt.save(state(mesh, Shard(0)), sys.argv[2])
        print(f"SAVED rank {rank}", flush=True)
    elif mode == "load":
        got = empty(mesh, Shard(0))
        stats = ckpt.load(got, sys.argv[2])
        check(got, rank)
        # Resharded 4 → 2: each rank reads its rows' byte ranges and nothing else.
        assert stats.bytes_needed > 0 and stats.bytes_read == stats.bytes_needed, stats
        print(f"LOADED rank {rank} needed={stats.bytes_needed} read={stats.bytes_read}", flush=True)
    elif mode == "outage":
        prev, new, flags = sys.argv[2], sys.argv[3], sys.argv[4]
        sd = state(mesh, Shard(0), BIG)
        ckpt.save(sd, prev)
        torch.distributed.barrier()
        if rank == 0:
            open(os.path.join(flags, "prev_saved"), "w").close()
        try:
            ckpt.save(sd, new, timeout=120)
        except ckpt.CheckpointError as e:
            print(f"RAISED rank {rank}: {str(e)[:300]}", flush=True)
        else:
            raise AssertionError("a save through a vanished server returned")
        wait_for(os.path.join(flags, "server_back"))
        got = empty(mesh, Shard(0), BIG)
        try:
            ckpt.load(got, new)
        except ckpt.NotFoundError as e:
            assert "never committed" in str(e) or "no ckpt_manifest.json" in str(e), str(e)
        else:
            raise AssertionError("the failed save was published")
        got = empty(mesh, Shard(0), BIG)
        ckpt.load(got, prev)
        check(got, rank, BIG)
        ckpt.save(sd, new)
        got = empty(mesh, Shard(0), BIG)
        ckpt.load(got, new)
        check(got, rank, BIG)
        print(f"RECOVERED rank {rank}", flush=True)
    finish()


if __name__ == "__main__":
    main()
