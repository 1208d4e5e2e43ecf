"""ckpt's main job in Python: ``python -m ckpt.demo``.

Trains a tiny ``transformers`` Llama with FSDP2 on 4 gloo ranks and AdamW,
checkpointing asynchronously through ``ckpt.torch.Checkpointer`` (NeMo's
API); is killed with SIGKILL in the middle of a save; resumes on 2 ranks from
the newest complete checkpoint; finishes, exports ``consolidated/``, loads it
with ``AutoModelForCausalLM.from_pretrained`` and compares the logits; and
compares the whole loss curve with an uninterrupted 4-rank run.

Every rank computes the loss of the whole global batch, and FSDP2 reduces
gradients in float64, so the arithmetic does not depend on the number of
ranks and the loss curves can be compared bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

__all__ = ["main"]

VOCAB, SEQ, BATCH = 256, 32, 8


def build_model() -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from .torch import Checkpointer

    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=SEQ,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    torch.manual_seed(0)
    Checkpointer.initialize_model_weights(model, torch.device("cpu"))
    return model


class StepLoader:
    """A data loader whose position is its state: batch k is a function of
    (seed, k) alone."""

    def __init__(self, seed: int) -> None:
        self.seed, self.position = seed, 0

    def next_batch(self) -> Any:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.position)
        self.position += 1
        return torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "position": self.position}

    def load_state_dict(self, sd: dict[str, int]) -> None:
        self.seed, self.position = int(sd["seed"]), int(sd["position"])


def probe_ids() -> Any:
    import torch

    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(7))


def full_state(model: Any, opt: Any, sched: Any, loader: StepLoader, rng: Any) -> dict[str, Any]:
    """Everything a resume must restore, as full tensors (collective)."""
    import torch
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    def full(sd: dict[str, Any]) -> dict[str, Any]:
        return {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in sd.items()}

    flat = StateDictOptions(flatten_optimizer_state_dict=True)
    return {
        "model": full(get_model_state_dict(model)),
        "optim": full(get_optimizer_state_dict(model, opt, options=flat)),
        "sched": sched.state_dict(),
        "dataloader": loader.state_dict(),
        "rng": {k: v for k, v in rng.state_dict().items() if k != "cuda_rng_state"},
        "torch_rng": torch.get_rng_state(),
    }


def compare_states(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """The entries that differ (tensors compared bit for bit)."""
    import torch

    bad: list[str] = []

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            return (
                a.dtype == b.dtype
                and a.shape == b.shape
                and torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8))
            )
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        return bool(a == b)

    for part in want:
        if isinstance(want[part], dict) and part in ("model", "optim"):
            bad += [
                f"{part}:{k}"
                for k in want[part]
                if k not in got[part] or not same(got[part][k], want[part][k])
            ]
            bad += [f"{part}:{k} (extra)" for k in got[part] if k not in want[part]]
        elif not same(got[part], want[part]):
            bad.append(part)
    return bad


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from .torch import Checkpointer, CheckpointingConfig, StatefulRNG

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    root = os.path.join(args.dir, "checkpoints")
    os.makedirs(root, exist_ok=True)
    cfg = CheckpointingConfig(checkpoint_dir=root, is_async=True, save_consolidated="final")
    ckptr = Checkpointer(cfg, dp_rank=rank, tp_rank=0, pp_rank=0)
    model = build_model()
    mp = MixedPrecisionPolicy(reduce_dtype=torch.float64)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps, eta_min=1e-4)
    loader = StepLoader(seed=11)
    rng = StatefulRNG(1234)
    start = 0
    measured: dict[str, Any] = {"blocked_s": [], "step_s": []}
    if args.mode == "resume":
        path = ckptr.latest()
        assert path is not None, f"{root}: no complete checkpoint"
        t0 = time.perf_counter()
        ckptr.load_model(model, os.path.join(path, "model"))
        ckptr.load_optimizer(opt, model, path, sched)
        ckptr.load_on_dp_ranks(loader, "dataloader", path)
        ckptr.load_on_global_ranks(rng, "rng", path)
        measured["load_s"] = time.perf_counter() - t0
        measured["resumed_from"] = os.path.basename(path)
        start = int(os.path.basename(path).rsplit("_", 1)[1])
        want = torch.load(os.path.join(args.reference, f"state_step_{start}.pt"), weights_only=True)
        got = full_state(model, opt, sched, loader, rng)
        bad = compare_states(got, want)
        assert not bad, f"rank {rank}: state after resume differs from the uninterrupted run: {bad[:5]}"
        measured["state_checked"] = {k: len(v) if k in ("model", "optim") else 1 for k, v in want.items()}
    losses: dict[int, str] = {}
    for step in range(start, args.steps):
        t0 = time.perf_counter()
        ids = loader.next_batch()
        labels = ids.masked_fill(torch.rand(ids.shape) < 0.1, -100)  # the RNG stream matters
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        losses[step + 1] = float(loss.item()).hex()
        measured["step_s"].append(time.perf_counter() - t0)
        s = step + 1
        if s % args.save_every == 0 or s == args.steps:
            if args.mode == "reference":
                state = full_state(model, opt, sched, loader, rng)
                if rank == 0:
                    torch.save(state, os.path.join(args.dir, f"state_step_{s}.pt"))
            path = os.path.join(root, f"epoch_0_step_{s}")
            ckptr.reserve(path)
            t0 = time.perf_counter()
            ckptr.save_model(model, path, is_final_checkpoint=s == args.steps)
            t1 = time.perf_counter()
            ckptr.save_optimizer(opt, model, path, sched)
            measured["blocked_s"].append((t1 - t0, time.perf_counter() - t1))
            ckptr.save_on_dp_ranks(loader, "dataloader", path)
            ckptr.save_on_global_ranks(rng, "rng", path)
            if args.mode == "crash" and s == args.crash_at:
                sys.stdout.flush()
                dist.barrier()  # every rank has handed its save to the background
                os.kill(os.getpid(), signal.SIGKILL)
            ckptr.publish(path)
    t0 = time.perf_counter()
    ckptr.close()
    measured["drain_s"] = time.perf_counter() - t0
    with torch.no_grad():
        logits = model(input_ids=probe_ids()).logits
    if rank == 0:
        torch.save(logits, os.path.join(args.dir, f"logits_{args.mode}.pt"))
        with open(os.path.join(args.dir, f"run_{args.mode}.json"), "w") as f:
            json.dump({"world": world, "losses": losses, "measured": measured}, f)
    sys.stdout.flush()
    dist.destroy_process_group()
    os._exit(0)


def _launch(n: int, mode: str, args: argparse.Namespace, expect_ok: bool = True) -> float:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}",
        "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "ckpt.demo", "--worker", mode,
        "--dir", args.dir, "--steps", str(args.steps), "--save-every", str(args.save_every),
        "--crash-at", str(args.crash_at), "--reference", args.reference,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if expect_ok and p.returncode != 0:
        raise SystemExit(f"demo: the {mode} run on {n} ranks failed:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    if not expect_ok and p.returncode == 0:
        raise SystemExit(f"demo: the {mode} run was to be killed but exited cleanly")
    return time.perf_counter() - t0


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the scenario; returns what it measured (raises when a check fails)."""
    import torch

    from .torch import lifecycle

    base = args.dir
    ref_dir = args.reference = args.dir = os.path.join(base, "uninterrupted")
    t_ref = _launch(4, "reference", args)
    args.dir = os.path.join(base, "interrupted")
    t_crash = _launch(4, "crash", args, expect_ok=False)
    root = os.path.join(args.dir, "checkpoints")
    killed = os.path.join(root, f"epoch_0_step_{args.crash_at}")
    survivor = lifecycle.latest(root)
    assert survivor is not None and survivor != killed, f"LATEST should skip {killed}, names {survivor}"
    assert lifecycle.is_incomplete(killed) if os.path.exists(killed) else True
    t_resume = _launch(2, "resume", args)
    ref = json.load(open(os.path.join(ref_dir, "run_reference.json")))
    res = json.load(open(os.path.join(args.dir, "run_resume.json")))
    resumed_from = res["measured"]["resumed_from"]
    first = int(resumed_from.rsplit("_", 1)[1]) + 1
    mismatches = [s for s, v in res["losses"].items() if ref["losses"][s] != v]
    assert not mismatches, f"loss differs from the uninterrupted run at steps {mismatches}"
    final = os.path.join(root, f"epoch_0_step_{args.steps}")
    consolidated = os.path.join(final, "model", "consolidated")
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    t0 = time.perf_counter()
    hf_model = AutoModelForCausalLM.from_pretrained(consolidated)
    t_hf = time.perf_counter() - t0
    with torch.no_grad():
        hf_logits = hf_model(input_ids=probe_ids()).logits
    trained = torch.load(os.path.join(args.dir, "logits_resume.pt"), weights_only=True)
    max_diff = float((hf_logits - trained).abs().max())
    assert torch.allclose(hf_logits, trained, rtol=0, atol=1e-5), f"logits differ by {max_diff}"
    m = res["measured"]
    return {
        "steps": args.steps,
        "killed mid-save at step": args.crash_at,
        "killed checkpoint left": "incomplete (ignored)" if os.path.exists(killed) else "staging only",
        "resumed from (4 -> 2 ranks)": resumed_from,
        "state after resume, bit for bit": "{model} weights, {optim} optimizer entries, "
        "scheduler, dataloader, RNG".format(**m["state_checked"]),
        "loss steps compared bit for bit": f"{len(res['losses'])} (steps {first}..{args.steps})",
        "final loss": float.fromhex(res["losses"][str(args.steps)]),
        "train step, mean (2 ranks)": f"{1000 * sum(m['step_s']) / len(m['step_s']):.1f} ms",
        "training blocked per async save, model / optimizer": "{:.1f} ms / {:.1f} ms".format(
            *(1000 * sum(b[i] for b in m["blocked_s"]) / len(m["blocked_s"]) for i in (0, 1))
        ),
        "resume load (model+optim+state)": f"{1000 * m['load_s']:.0f} ms",
        "checkpoint size": f"{_dir_bytes(final) / 1e6:.2f} MB",
        "from_pretrained(consolidated)": f"{1000 * t_hf:.0f} ms",
        "logits max |diff| vs trained model": f"{max_diff:.3g}",
        "wall: reference / crash / resume runs": f"{t_ref:.0f} s / {t_crash:.0f} s / {t_resume:.0f} s",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ckpt.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", help="work directory (default: a temporary one, removed afterwards)")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--save-every", type=int, default=8)
    p.add_argument("--crash-at", type=int, default=16)
    p.add_argument("--json", action="store_true", help="print the measurements as JSON")
    p.add_argument("--worker", choices=["reference", "crash", "resume"], help=argparse.SUPPRESS)
    p.add_argument("--reference", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.mode = args.worker
        worker(args)
        return 0
    if not (0 < args.save_every <= args.crash_at < args.steps and args.crash_at % args.save_every == 0):
        p.error("need 0 < save-every <= crash-at < steps, crash-at a multiple of save-every")
    tmp = None
    if args.dir is None:
        tmp = args.dir = tempfile.mkdtemp(prefix="ckpt_demo_")
    try:
        table = run(args)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(table, indent=2))
    else:
        width = max(map(len, table))
        print("ckpt Python demo: FSDP2 Llama, async saves, SIGKILL mid-save, resume on another world size")
        for k, v in table.items():
            print(f"  {k:<{width}}  {v}")
        print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
