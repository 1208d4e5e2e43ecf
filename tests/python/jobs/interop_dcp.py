"""torch.distributed.checkpoint's own format (FileSystemWriter) against ckpt.

    interop_dcp.py ROOT [PREV_ROOT]

On this job's ranks (1, 2 or 4), with a small MLP sharded by FSDP2, trained
two Adam steps under a StepLR scheduler, writes under ROOT:
    optim/       dcp.save of NeMo's optimizer dict: {"optim":
                 get_optimizer_state_dict(..., flatten_optimizer_state_dict=True),
                 "sched": scheduler.state_dict()}
    model/       dcp.save of get_model_state_dict(model)
    ckpt_optim/  the same optimizer dict through ckpt.save(..., format="dcp")
    ref.pt       (rank 0) the full, unsharded model and optimizer state and
                 the scheduler state, for comparison
then, with PREV_ROOT (written by another world size), loads
    PREV_ROOT/optim and PREV_ROOT/model with ckpt.load, and
    PREV_ROOT/ckpt_optim with dcp.load + set_optimizer_state_dict,
into this world size's FSDP2 model and a fresh optimizer, and compares every
tensor with PREV_ROOT/ref.pt bit for bit, and the hyperparameters and
scheduler state for equality.
"""

from __future__ import annotations

import os
import sys

import ckpt
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from common import finish, init, same_bits
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

FLAT = StateDictOptions(flatten_optimizer_state_dict=True)
FULL = StateDictOptions(flatten_optimizer_state_dict=True, full_state_dict=True)


def build() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    # Odd sizes: FSDP2 shards dim 0 unevenly across 2 and 4 ranks.
    model = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.ReLU(), torch.nn.Linear(10, 5))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    return model, opt, sched


def train(
    model: torch.nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler
) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        x = torch.randn(4, 6, generator=g)
        model(x).square().sum().backward()
        opt.step()
        opt.zero_grad()
        sched.step()


def nemo_optim(model, opt, sched) -> dict:
    return {"optim": get_optimizer_state_dict(model, opt, options=FLAT), "sched": sched.state_dict()}


def compare(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys(), (what, sorted(set(got) ^ set(want)))
    for k, w in want.items():
        g = got[k]
        if isinstance(w, torch.Tensor):
            assert same_bits(g, w), (what, k, g, w)
        else:
            assert g == w, (what, k, g, w)


def check_loaded(model, opt, sched, ref: dict, what: str) -> None:
    compare(get_optimizer_state_dict(model, opt, options=FULL), ref["optim"], what + " optim")
    compare(sched.state_dict(), ref["sched"], what + " sched")


def main() -> None:
    rank, world = init()
    root = sys.argv[1]
    model, opt, sched = build()
    train(model, opt, sched)

    dcp.save(nemo_optim(model, opt, sched), checkpoint_id=os.path.join(root, "optim"))
    dcp.save(get_model_state_dict(model), checkpoint_id=os.path.join(root, "model"))
    ckpt.save(nemo_optim(model, opt, sched), os.path.join(root, "ckpt_optim"), format="dcp")
    full_model = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    ref = {
        "model": full_model,
        "optim": get_optimizer_state_dict(model, opt, options=FULL),
        "sched": sched.state_dict(),
    }
    if rank == 0:
        torch.save(ref, os.path.join(root, "ref.pt"))
    dist.barrier()

    if len(sys.argv) > 2:
        prev = sys.argv[2]
        ref = torch.load(os.path.join(prev, "ref.pt"), weights_only=True)

        # dcp.save (another world size) -> ckpt.load, NeMo's optimizer dir.
        model, opt, sched = build()
        sd = nemo_optim(model, opt, sched)
        ckpt.load(sd, os.path.join(prev, "optim"))
        set_optimizer_state_dict(model, opt, sd["optim"], options=FLAT)
        sched.load_state_dict(sd["sched"])
        check_loaded(model, opt, sched, ref, "dcp.save -> ckpt.load")

        msd = get_model_state_dict(model)
        ckpt.load(msd, os.path.join(prev, "model"))
        full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in msd.items()}
        compare(full, ref["model"], "dcp.save model -> ckpt.load")

        # ckpt.save(format="dcp") (another world size) -> dcp.load.
        model, opt, sched = build()
        sd = nemo_optim(model, opt, sched)
        dcp.load(sd, checkpoint_id=os.path.join(prev, "ckpt_optim"))
        set_optimizer_state_dict(model, opt, sd["optim"], options=FLAT)
        sched.load_state_dict(sd["sched"])
        check_loaded(model, opt, sched, ref, "ckpt.save(format=dcp) -> dcp.load")
    print(f"rank {rank} of {world}: ok", flush=True)
    finish()


if __name__ == "__main__":
    main()
