"""Failure scenarios on real ranks.

failures.py hang DIR      rank 1 stops answering; every rank must raise
                          within the timeout
failures.py io DIR        rank 1 cannot write its file; every rank raises
                          the same error and nothing is published
failures.py io_dcp DIR    the same through dcp.save with ckpt's writer
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time

import ckpt
import torch
from common import init

TIMEOUT = 4.0


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    rank, world = init()
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    if mode == "hang":
        # Ranks that joined different subgroups keep different group
        # bookkeeping in torch; ckpt's own groups must not depend on it.
        torch.distributed.new_group([0])
    mesh = init_device_mesh("cpu", (world,))
    sd = {"w": distribute_tensor(torch.ones(1 << 20, 4), mesh, [Shard(0)])}
    if mode == "hang":
        ckpt.save(sd, path + "_warm", timeout=TIMEOUT)  # every rank answers once
        if rank == 1:
            time.sleep(3 * TIMEOUT)  # stops answering for longer than the timeout
        t0 = time.monotonic()
        try:
            ckpt.save(sd, path, timeout=TIMEOUT)
        except ckpt.UnavailableError as e:
            elapsed = time.monotonic() - t0
            assert elapsed < 3 * TIMEOUT, elapsed
            print(f"RAISED rank {rank} after {elapsed:.1f}s: {str(e)[:200]}", flush=True)
        else:
            raise AssertionError("a save with a silent peer returned")
        os._exit(0)  # the group is broken; skip teardown
    import torch.distributed.checkpoint as dcp

    def save() -> None:
        if mode == "io":
            ckpt.save(sd, path)
        else:
            dcp.save(sd, storage_writer=ckpt.dcp.StorageWriter(path))

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    if rank == 1:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, limit[1]))  # its shard is 8 MiB
    try:
        save()
    except BaseException as e:  # noqa: BLE001 - DCP's CheckpointException is a BaseException
        print(f"RAISED rank {rank} {type(e).__name__}: {' '.join(str(e).split())[:400]}", flush=True)
    else:
        raise AssertionError("a save whose rank 1 cannot write returned")
    assert not os.path.exists(path)
    torch.distributed.barrier()
    staging = "." + os.path.basename(path) + ".tmp-"
    parent = os.path.dirname(path)
    if mode == "io":  # ckpt.save removes its staging at once
        assert not [e for e in os.listdir(parent) if e.startswith(staging)]
    if rank == 1:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
    save()  # the next save succeeds and leaves no staging behind
    torch.distributed.barrier()
    assert os.path.isdir(path) and not [e for e in os.listdir(parent) if e.startswith(staging)]
    ckpt.verify(path)
    print(f"RECOVERED rank {rank}", flush=True)


if __name__ == "__main__":
    main()
