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
from common import finish, init

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
        # The failed group is dropped: the next save works on a fresh one.
        ckpt.save(sd, path + "_after", timeout=30)
        ckpt.verify(path + "_after")
        print(f"RECOVERED rank {rank}", flush=True)
        os._exit(0)  # the abandoned gloo group may still hold a socket; skip teardown
    if mode == "prepare_error":
        # One rank's state dict is invalid: every rank raises at once (well
        # within the timeout), the others naming that rank's error.
        bad = {"w": torch.empty(4, device="meta")} if rank == 1 else {"w": torch.ones(4)}
        t0 = time.monotonic()
        try:
            ckpt.save(bad, path, timeout=60)
        except ckpt.InvalidArgumentError as e:
            elapsed = time.monotonic() - t0
            assert elapsed < 30, elapsed
            assert "meta device" in str(e) and (rank == 1 or "rank 1" in str(e)), str(e)
            print(f"RAISED rank {rank}: {e}", flush=True)
        else:
            raise AssertionError("a save with an invalid state dict on rank 1 returned")
        assert not os.path.exists(path)
        ckpt.save({"w": torch.ones(4)}, path, timeout=60)  # the same group still works
        print(f"RECOVERED rank {rank}", flush=True)
        finish()
    if mode == "budget":
        # A staging budget smaller than the state, with a replicated tensor only
        # rank 0 writes: rank 1 stages nothing it needs and must still succeed.
        state = {"rep": torch.full((1 << 20,), float(rank + 1)) * 0 + 7, "w": sd["w"]}
        fut = ckpt.async_save(state, path, staging_budget=1 << 20)
        fut.result()
        fut.result()  # the outcome stays with the future
        got = {"rep": torch.zeros(1 << 20), "w": distribute_tensor(torch.zeros(1 << 20, 4), mesh, [Shard(0)])}
        ckpt.load(got, path)
        assert bool((got["rep"] == 7).all()) and bool((got["w"].to_local() == 1).all())
        print(f"RECOVERED rank {rank}", flush=True)
        finish()
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
    finish()


if __name__ == "__main__":
    main()
