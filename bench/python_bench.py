#!/usr/bin/env python3
"""ckpt's Python package against torch.distributed.checkpoint (DCP) and
safetensors, on the same tensors and the same ranks, in one run.

    bench/python_bench.py [--nproc N] [--size 1G] [--reps 3] [--dir DIR]
                          [--sections save,async,load,single,overhead] [--cold] [--json FILE]

Without torchrun around it, the script starts itself under
``torch.distributed.run --standalone --nproc-per-node N`` (gloo, CPU). Every
rank holds an FSDP-like shard (DTensor ``Shard(0)``) of a model-like state
dict (bf16 linear weights, f32 norms and an f32 head). What it measures:

- save: ``ckpt.save`` vs ``dcp.save`` with ``FileSystemWriter`` and with
  ``HuggingFaceStorageWriter(save_distributed=True)``; ``dcp.save`` with
  ``ckpt.dcp.StorageWriter``; ``dd conv=fsync`` of the same bytes (disk limit).
  Everything is fsync'd. Time: barrier to barrier over all ranks.
- async save: time until ``ckpt.async_save`` / ``dcp.async_save`` (thread
  executor, own gloo group) return, the time until they complete, and a
  single-thread memcpy of each rank's bytes (into touched and fresh pages).
- load (warm page cache unless --cold): same layout (Shard(0)) and resharded
  (saved Shard(0), loaded Shard(1); 1-D tensors stay Shard(0)): ``ckpt.load`` vs
  ``dcp.load`` with ``FileSystemReader`` / ``HuggingFaceStorageReader``, and
  ``dcp.load`` with ``ckpt.dcp.StorageReader``. Values are checked once.
- single rank (rank 0, the others wait): ``ckpt.safetensors.save_file`` /
  ``load_file`` vs ``safetensors.torch`` on the full tensors.
- Python overhead (rank 0, a one-rank group, the full state): what
  ``ckpt.save`` does in Python before the C++ call (``describe``, the
  communicator, the path) against the C++ call ``ckpt._ckpt.save`` itself.

Operations are interleaved with their references (order rotated each
repetition) and the median of --reps repetitions is reported. Checkpoints
go under --dir (default $TMPDIR or /tmp) and are removed after each
operation. Output: a table ``what | ckpt | reference | ratio | target | met``
and one ``RESULT {json}`` line per row (the convention of bench/*.cc, read
by bench/run_all.sh); --json FILE also writes every sample.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import glob
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

SECTIONS = ("save", "async", "load", "single", "overhead")


def parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(float(t))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--nproc", type=int, default=int(os.environ.get("WORLD_SIZE", 2)), help="ranks (default 2)"
    )
    p.add_argument("--size", default="1G", help="total state size, e.g. 1G, 256M (default 1G)")
    p.add_argument("--reps", type=int, default=3, help="repetitions per measurement (median; default 3)")
    p.add_argument(
        "--dir",
        default=os.environ.get("TMPDIR") or "/tmp",
        help="where checkpoints go (default $TMPDIR or /tmp)",
    )
    p.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS)
    )
    p.add_argument(
        "--cold", action="store_true", help="drop the checkpoint files from the page cache before each load"
    )
    p.add_argument("--json", metavar="FILE", help="also write the rows and every sample as JSON")
    a = p.parse_args(argv)
    a.bytes = parse_size(a.size)
    a.sections = [s for s in a.sections.split(",") if s]
    for s in a.sections:
        if s not in SECTIONS:
            p.error(f"unknown section {s!r}")
    return a


def relaunch_under_torchrun(a: argparse.Namespace) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={a.nproc}",
        os.path.abspath(__file__),
        *sys.argv[1:],
    ]
    os.execv(sys.executable, cmd)


# ---------------------------------------------------------------------------
# Everything below runs on every rank.

import ckpt  # noqa: E402
import ckpt.dcp  # noqa: E402
import ckpt.safetensors  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from ckpt import _ckpt, _dist  # noqa: E402
from ckpt._state import describe  # noqa: E402
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter  # noqa: E402
from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader, HuggingFaceStorageWriter  # noqa: E402
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.tensor import DTensor, Shard, distribute_tensor  # noqa: E402

RANK = 0
WORLD = 1


def log(msg: str) -> None:
    if RANK == 0:
        print(msg, flush=True)


def barrier() -> None:
    dist.barrier()


def allmax(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def rm(path: str) -> None:
    """Rank 0 removes `path`; every rank waits."""
    if RANK == 0:
        shutil.rmtree(path, ignore_errors=True)
        if os.path.exists(path):
            os.remove(path)
    barrier()


def timed(fn: Callable[[], Any]) -> float:
    """Seconds of `fn` on all ranks, barrier to barrier."""
    barrier()
    t0 = time.perf_counter()
    fn()
    barrier()
    return allmax([time.perf_counter() - t0])[0]


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


# ---------------------------------------------------------------------------
# The state: a Llama-like model, sized to the requested bytes.


def model_shapes(total: int) -> list[tuple[str, list[int], torch.dtype]]:
    mib = 1 << 20
    h = 2048 if total >= 512 * mib else 1024 if total >= 128 * mib else 512 if total >= 16 * mib else 256
    inter = 4 * h
    layer_bytes = (4 * h * h + 3 * h * inter) * 2 + 2 * h * 4
    layers = max(1, int(total * 0.8) // layer_bytes)
    rest = total - layers * layer_bytes - h * 4
    vocab = max(64, rest // (6 * h) // 64 * 64)  # bf16 embedding + f32 head
    out: list[tuple[str, list[int], torch.dtype]] = [
        ("model.embed_tokens.weight", [vocab, h], torch.bfloat16)
    ]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", [h], torch.float32),
            (p + "self_attn.q_proj.weight", [h, h], torch.bfloat16),
            (p + "self_attn.k_proj.weight", [h, h], torch.bfloat16),
            (p + "self_attn.v_proj.weight", [h, h], torch.bfloat16),
            (p + "self_attn.o_proj.weight", [h, h], torch.bfloat16),
            (p + "post_attention_layernorm.weight", [h], torch.float32),
            (p + "mlp.gate_proj.weight", [inter, h], torch.bfloat16),
            (p + "mlp.up_proj.weight", [inter, h], torch.bfloat16),
            (p + "mlp.down_proj.weight", [h, inter], torch.bfloat16),
        ]
    out += [("model.norm.weight", [h], torch.float32), ("lm_head.weight", [vocab, h], torch.float32)]
    return out


def make_full(shapes: list[tuple[str, list[int], torch.dtype]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    return {name: torch.empty(shape, dtype=dt).uniform_(-1, 1, generator=g) for name, shape, dt in shapes}


def reshard_dim(t: torch.Tensor, want: int) -> int:
    return min(want, t.dim() - 1)


def shard(full: dict[str, torch.Tensor], mesh: Any, dim: int, zeros: bool = False) -> dict[str, DTensor]:
    out = {}
    for k, v in full.items():
        d = distribute_tensor(v, mesh, [Shard(reshard_dim(v, dim))], src_data_rank=None)
        local = torch.zeros_like(d.to_local()) if zeros else d.to_local().clone()
        out[k] = DTensor.from_local(
            local, mesh, d.placements, run_check=False, shape=d.shape, stride=d.stride()
        )
    return out


def locals_of(sd: dict[str, DTensor]) -> list[torch.Tensor]:
    return [v.to_local() for v in sd.values()]


# ---------------------------------------------------------------------------
# References.

_memmove = ctypes.memmove


def memcpy_into(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    for d, s in zip(dst, src, strict=True):
        _memmove(d.data_ptr(), s.data_ptr(), nbytes(s))


def memcpy_fresh(src: list[torch.Tensor]) -> None:
    dst = [torch.empty_like(s) for s in src]
    memcpy_into(dst, src)
    del dst


def touch_pages(sd: dict[str, torch.Tensor]) -> None:
    """Reads one byte of every page (safetensors.torch maps files lazily)."""
    for t in sd.values():
        if t.numel():
            int(t.view(-1).view(torch.uint8)[::4096].sum())


def dd_write(path: str, total: int) -> float:
    count = max(1, math.ceil(total / (16 << 20)))
    t0 = time.perf_counter()
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={path}", "bs=16M", f"count={count}", "conv=fsync", "status=none"],
        check=True,
    )
    dt = time.perf_counter() - t0
    os.remove(path)
    return dt


def evict(path: str) -> None:
    """Drops `path` (a file, or every file under a directory) from the page cache."""
    os.sync()
    files = [path] if os.path.isfile(path) else glob.glob(os.path.join(path, "**"), recursive=True)
    for f in files:
        if os.path.isfile(f):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def drop_cache(path: str) -> None:
    """Rank 0 drops every file under `path` from the page cache; all ranks wait."""
    if RANK == 0:
        evict(path)
    barrier()


# ---------------------------------------------------------------------------
# Results.


class Report:
    def __init__(self, args: argparse.Namespace, total: int, ntensors: int) -> None:
        self.rows: list[dict[str, Any]] = []
        self.samples: dict[str, list[float]] = {}
        self.args = args
        self.total = total
        self.ntensors = ntensors

    def add_samples(self, name: str, xs: list[float]) -> None:
        self.samples.setdefault(name, []).extend(xs)

    def med(self, name: str) -> float:
        xs = self.samples.get(name)
        return statistics.median(xs) if xs else float("nan")

    def row(
        self, section: str, what: str, ckpt_s: str, ref_s: str, ratio: float, target: str, unit: str = "x"
    ) -> None:
        met: bool | None = None
        if target != "-" and not math.isnan(ratio):
            op, val = target.split()
            met = ratio >= float(val) if op == ">=" else ratio <= float(val)
        self.rows.append(
            dict(
                section=section,
                what=what,
                ckpt=ckpt_s,
                reference=ref_s,
                ratio=ratio,
                unit=unit,
                target=target,
                met=met,
            )
        )

    def print(self) -> None:
        if RANK != 0:
            return
        a = self.args
        print()
        print(
            f"ckpt {ckpt.__version__}, torch {torch.__version__}: {WORLD} ranks (gloo, CPU), "
            f"{self.total / (1 << 30):.3f} GiB in {self.ntensors} tensors (bf16 + f32, DTensor Shard(0)), "
            f"dir {a.dir}, median of {a.reps}, page cache {'cold (fadvise DONTNEED)' if a.cold else 'warm'} for loads"
        )
        head = ("what", "ckpt", "reference", "ratio", "target", "met")
        cells = [head] + [
            (
                r["what"],
                r["ckpt"],
                r["reference"],
                fmt_ratio(r["ratio"], r["unit"]),
                r["target"],
                "-" if r["met"] is None else ("yes" if r["met"] else "NO"),
            )
            for r in self.rows
        ]
        w = [max(len(c[i]) for c in cells) for i in range(len(head))]
        sep = "-+-".join("-" * x for x in w)
        section = None
        for i, c in enumerate(cells):
            if i > 0 and self.rows[i - 1]["section"] != section:
                section = self.rows[i - 1]["section"]
                print(sep)
            print(" | ".join(s.ljust(x) if j == 0 else s.rjust(x) for j, (s, x) in enumerate(zip(c, w))))
            if i == 0:
                section = None
        print()
        for r in self.rows:
            value = r["ratio"] * (100 if r["unit"] == "%" else 1)
            print(
                "RESULT "
                + json.dumps(
                    {
                        "bench": "python",
                        "measure": f"{r['what']} ({'%' if r['unit'] == '%' else 'ratio'})",
                        "value": float(f"{value:.4g}") if not math.isnan(value) else None,
                        "target": r["target"]
                        if r["unit"] != "%" or r["target"] == "-"
                        else f"{r['target'].split()[0]} {float(r['target'].split()[1]) * 100:g}",
                        "met": True if r["met"] is None else r["met"],
                    },
                    separators=(",", ":"),
                )
            )
        if a.json:
            with open(a.json, "w") as f:
                json.dump(
                    {
                        "ranks": WORLD,
                        "bytes": self.total,
                        "tensors": self.ntensors,
                        "reps": a.reps,
                        "dir": a.dir,
                        "cold_loads": a.cold,
                        "cores": os.cpu_count(),
                        "rows": self.rows,
                        "samples": self.samples,
                    },
                    f,
                    indent=1,
                )
            print(f"JSON written to {a.json}")


def fmt_ratio(r: float, unit: str) -> str:
    if math.isnan(r):
        return "n/a"
    return f"{r * 100:.2f}%" if unit == "%" else f"{r:.2f}x"


def secs(t: float) -> str:
    return "n/a" if math.isnan(t) else f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


def tput(t: float, n: int) -> str:
    return "n/a" if math.isnan(t) else f"{secs(t)} {n / t / 1e9:.2f} GB/s"


def interleave(
    reps: int,
    ops: list[tuple[str, Callable[[], float]]],
    rep_report: Report,
    on_rep: Callable[[int], None] | None = None,
) -> None:
    """Runs every op once per repetition, the order rotated each time."""
    for r in range(reps):
        k = r % len(ops)
        for name, op in ops[k:] + ops[:k]:
            try:
                t = op()
            except Exception as e:  # keep the other measurements going
                log(f"  {name}: FAILED: {type(e).__name__}: {e}")
                t = float("nan")
            rep_report.add_samples(name, [t])
        if on_rep is not None:
            on_rep(r)
        log(
            f"  repetition {r + 1}/{reps}: "
            + ", ".join(f"{n} {secs(rep_report.samples[n][-1])}" for n, _ in ops)
        )


# ---------------------------------------------------------------------------
# Sections.


def bench_save(a: argparse.Namespace, rep: Report, sd: dict[str, DTensor], work: str, total: int) -> None:
    log("== save (fsync'd), all ranks")
    path = os.path.join(work, "save")
    dd_file = os.path.join(work, "dd.bin")

    def op(fn: Callable[[], Any]) -> Callable[[], float]:
        def run() -> float:
            rm(path)
            try:
                return timed(fn)
            finally:
                rm(path)

        return run

    def dd() -> float:
        barrier()
        t = [dd_write(dd_file, total) if RANK == 0 else 0.0]
        barrier()
        return allmax(t)[0]

    ops = [
        ("dd", dd),
        ("ckpt.save", op(lambda: ckpt.save(sd, path))),
        ("dcp.save FileSystemWriter", op(lambda: dcp.save(sd, storage_writer=FileSystemWriter(path)))),
        (
            "dcp.save HuggingFaceStorageWriter",
            op(lambda: dcp.save(sd, storage_writer=HuggingFaceStorageWriter(path, save_distributed=True))),
        ),
        (
            "dcp.save ckpt.dcp.StorageWriter",
            op(lambda: dcp.save(sd, storage_writer=ckpt.dcp.StorageWriter(path))),
        ),
    ]
    # One untimed save first: communicator set-up and DCP's first-call costs.
    op(lambda: ckpt.save(sd, path))()
    op(lambda: dcp.save(sd, storage_writer=FileSystemWriter(path)))()
    interleave(a.reps, ops, rep)
    m = rep.med
    c = m("ckpt.save")
    for ref in ("dcp.save FileSystemWriter", "dcp.save HuggingFaceStorageWriter"):
        rep.row("save", f"save: ckpt.save vs {ref}", tput(c, total), tput(m(ref), total), m(ref) / c, ">= 2")
    p = m("dcp.save ckpt.dcp.StorageWriter")
    for ref in ("dcp.save FileSystemWriter", "dcp.save HuggingFaceStorageWriter"):
        rep.row(
            "save",
            f"save: dcp.save+ckpt.dcp.StorageWriter vs {ref}",
            tput(p, total),
            tput(m(ref), total),
            m(ref) / p,
            ">= 2",
        )
    rep.row(
        "save",
        "save: ckpt.save vs dd conv=fsync (disk limit)",
        tput(c, total),
        tput(m("dd"), total),
        m("dd") / c,
        ">= 0.9",
    )
    rep.row(
        "save",
        "save: dcp.save FileSystemWriter vs dd (for scale)",
        tput(m("dcp.save FileSystemWriter"), total),
        tput(m("dd"), total),
        m("dd") / m("dcp.save FileSystemWriter"),
        "-",
    )


def bench_async(a: argparse.Namespace, rep: Report, sd: dict[str, DTensor], work: str, total: int) -> None:
    log("== async save, all ranks (blocking = until the call returns; complete = until its future is done)")
    path = os.path.join(work, "async")
    src = locals_of(sd)
    per_rank = sum(nbytes(t) for t in src)
    touched = [torch.zeros_like(t) for t in src]
    dcp_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(minutes=30))

    def one(start: Callable[[], Any]) -> tuple[float, float]:
        rm(path)
        barrier()
        t0 = time.perf_counter()
        fut = start()
        tb = time.perf_counter() - t0
        fut.result()
        tc = time.perf_counter() - t0
        tb, tc = allmax([tb, tc])
        rm(path)
        return tb, tc

    def ck() -> tuple[float, float]:
        return one(lambda: ckpt.async_save(sd, path))

    def dc() -> tuple[float, float]:
        return one(lambda: dcp.async_save(sd, storage_writer=FileSystemWriter(path), process_group=dcp_group))

    first_ck = ck()
    first_dc = dc()
    rep.add_samples("ckpt.async_save first blocking", [first_ck[0]])
    rep.add_samples("dcp.async_save first blocking", [first_dc[0]])

    def record(name: str, f: Callable[[], tuple[float, float]]) -> Callable[[], float]:
        def run() -> float:
            tb, tc = f()
            rep.add_samples(name + " complete", [tc])
            return tb

        return run

    ops = [
        ("memcpy touched", lambda: timed(lambda: memcpy_into(touched, src))),
        ("memcpy fresh", lambda: timed(lambda: memcpy_fresh(src))),
        ("ckpt.async_save blocking", record("ckpt.async_save", ck)),
        ("dcp.async_save blocking", record("dcp.async_save", dc)),
    ]
    interleave(a.reps, ops, rep)
    m = rep.med
    cb, db = m("ckpt.async_save blocking"), m("dcp.async_save blocking")
    mt, mf = m("memcpy touched"), m("memcpy fresh")
    rep.row(
        "async", "async: blocking, ckpt.async_save vs dcp.async_save", secs(cb), secs(db), cb / db, "<= 0.25"
    )
    rep.row(
        "async",
        f"async: blocking, ckpt vs memcpy {per_rank / (1 << 20):.0f} MiB/rank (touched)",
        secs(cb),
        secs(mt),
        cb / mt,
        "<= 1.2",
    )
    rep.row("async", "async: blocking, ckpt vs memcpy into fresh pages", secs(cb), secs(mf), cb / mf, "-")
    rep.row("async", "async: blocking, dcp.async_save vs memcpy (touched)", secs(db), secs(mt), db / mt, "-")
    rep.row(
        "async",
        "async: first ckpt.async_save blocking vs later",
        secs(first_ck[0]),
        secs(cb),
        first_ck[0] / cb,
        "<= 2",
    )
    rep.row(
        "async",
        "async: first dcp.async_save blocking vs later",
        secs(first_dc[0]),
        secs(db),
        first_dc[0] / db,
        "-",
    )
    cc, dcc = m("ckpt.async_save complete"), m("dcp.async_save complete")
    rep.row(
        "async",
        "async: until complete, ckpt vs dcp (throughput)",
        tput(cc, total),
        tput(dcc, total),
        dcc / cc,
        "-",
    )


def bench_load(
    a: argparse.Namespace,
    rep: Report,
    sd: dict[str, DTensor],
    full: dict[str, torch.Tensor] | None,
    mesh: Any,
    work: str,
    total: int,
) -> None:
    log("== load, all ranks: saving one checkpoint per format (untimed)")
    dirs = {k: os.path.join(work, "load-" + k) for k in ("ckpt", "fs", "hf", "plugin")}
    for d in dirs.values():
        rm(d)
    ckpt.save(sd, dirs["ckpt"])
    dcp.save(sd, storage_writer=FileSystemWriter(dirs["fs"]))
    dcp.save(sd, storage_writer=HuggingFaceStorageWriter(dirs["hf"], save_distributed=True))
    dcp.save(sd, storage_writer=ckpt.dcp.StorageWriter(dirs["plugin"]))
    barrier()
    expected = {0: locals_of(sd)}
    names = list(sd)
    stats: dict[str, Any] = {}
    for layout, dim in (("same layout", 0), ("resharded Shard(0)->Shard(1)", 1)):
        log(f"== load, {layout}, page cache {'cold' if a.cold else 'warm'}")
        if dim == 1:
            assert full is not None
            expected[1] = locals_of(shard(full, mesh, 1))
        targets = shard_zeros_like(sd, mesh, dim, expected[dim])
        tl = locals_of(targets)
        per_rank = sum(nbytes(t) for t in tl)
        touched = [torch.zeros_like(t) for t in tl]
        checked: set[str] = set()

        def op(name: str, d: str, fn: Callable[[], Any]) -> Callable[[], float]:
            def run() -> float:
                for t in tl:
                    t.zero_()
                if a.cold:
                    drop_cache(d)
                out: list[Any] = []
                t = timed(lambda: out.append(fn()))
                if name not in checked:
                    checked.add(name)
                    check(name, names, tl, expected[dim])
                    if out and isinstance(out[0], ckpt.LoadStats):
                        stats[layout] = out[0]
                return t

            return run

        pre = f"load {layout}: "
        ops = [
            (pre + "memcpy", lambda: timed(lambda: memcpy_into(touched, expected[dim]))),
            (pre + "ckpt.load", op("ckpt.load", dirs["ckpt"], lambda: ckpt.load(targets, dirs["ckpt"]))),
            (
                pre + "dcp.load FileSystemReader",
                op("fs", dirs["fs"], lambda: dcp.load(targets, storage_reader=FileSystemReader(dirs["fs"]))),
            ),
            (
                pre + "dcp.load HuggingFaceStorageReader",
                op(
                    "hf",
                    dirs["hf"],
                    lambda: dcp.load(targets, storage_reader=HuggingFaceStorageReader(dirs["hf"])),
                ),
            ),
            (
                pre + "dcp.load ckpt.dcp.StorageReader",
                op(
                    "plugin",
                    dirs["plugin"],
                    lambda: dcp.load(targets, storage_reader=ckpt.dcp.StorageReader(dirs["plugin"])),
                ),
            ),
            (
                pre + "ckpt.load of the DCP HF dir",
                op("ckpt-hf", dirs["hf"], lambda: ckpt.load(targets, dirs["hf"])),
            ),
        ]
        # One untimed load of each kind first (and the value check).
        for _, fn in ops:
            try:
                fn()
            except Exception as e:
                log(f"  warm-up failed: {type(e).__name__}: {e}")
        interleave(a.reps, ops, rep)
        m = rep.med
        c = m(pre + "ckpt.load")
        for ref in ("dcp.load FileSystemReader", "dcp.load HuggingFaceStorageReader"):
            rep.row(
                "load",
                f"{pre}ckpt.load vs {ref}",
                tput(c, total),
                tput(m(pre + ref), total),
                m(pre + ref) / c,
                ">= 2",
            )
        p = m(pre + "dcp.load ckpt.dcp.StorageReader")
        for ref in ("dcp.load FileSystemReader", "dcp.load HuggingFaceStorageReader"):
            rep.row(
                "load",
                f"{pre}dcp.load+ckpt.dcp.StorageReader vs {ref}",
                tput(p, total),
                tput(m(pre + ref), total),
                m(pre + ref) / p,
                ">= 2",
            )
        h = m(pre + "ckpt.load of the DCP HF dir")
        rep.row(
            "load",
            f"{pre}ckpt.load of DCP's HF dir vs dcp.load HuggingFaceStorageReader",
            tput(h, total),
            tput(m(pre + "dcp.load HuggingFaceStorageReader"), total),
            m(pre + "dcp.load HuggingFaceStorageReader") / h,
            ">= 2",
        )
        if not a.cold:
            rep.row(
                "load",
                f"{pre}ckpt.load vs memcpy {per_rank / (1 << 20):.0f} MiB/rank",
                tput(c, total),
                secs(m(pre + "memcpy")),
                m(pre + "memcpy") / c,
                ">= 0.8",
            )
        if dim == 1:
            same = m("load same layout: ckpt.load")
            rep.row(
                "load",
                "load: ckpt.load resharded vs same layout (time)",
                secs(c),
                secs(same),
                c / same,
                "<= 1.2",
            )
            s = stats.get(layout)
            if s is not None:
                rr = allmax([s.bytes_read / max(s.bytes_needed, 1)])[0]
                rep.row(
                    "load",
                    "load resharded: ckpt bytes read / bytes needed (max rank)",
                    f"{s.bytes_read / (1 << 20):.0f} MiB",
                    f"{s.bytes_needed / (1 << 20):.0f} MiB",
                    rr,
                    "<= 1.05",
                )
        del targets, tl, touched
    for d in dirs.values():
        rm(d)


def shard_zeros_like(
    sd: dict[str, DTensor], mesh: Any, dim: int, expected: list[torch.Tensor]
) -> dict[str, DTensor]:
    out = {}
    for (k, v), e in zip(sd.items(), expected, strict=True):
        out[k] = DTensor.from_local(
            torch.zeros_like(e),
            mesh,
            [Shard(reshard_dim(v, dim))],
            run_check=False,
            shape=v.shape,
            stride=v.stride(),
        )
    return out


def check(name: str, names: list[str], got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    bad = [n for n, g, w in zip(names, got, want, strict=True) if not torch.equal(g, w)]
    nbad = int(allmax([float(len(bad))])[0])
    if nbad:
        log(f"  VALUE CHECK FAILED for {name}: {nbad} tensors differ on some rank (e.g. {bad[:3]})")


def bench_single(
    a: argparse.Namespace, rep: Report, full: dict[str, torch.Tensor] | None, work: str, total: int
) -> None:
    log("== single rank (rank 0; the others wait): safetensors files")
    import safetensors.torch as st

    fa, fb = os.path.join(work, "ckpt.safetensors"), os.path.join(work, "ref.safetensors")
    if RANK == 0:
        assert full is not None
        names = list(full)

        def save_ckpt() -> float:
            if os.path.exists(fa):
                os.remove(fa)
            t0 = time.perf_counter()
            ckpt.safetensors.save_file(full, fa)
            return time.perf_counter() - t0

        def save_ref() -> float:
            if os.path.exists(fb):
                os.remove(fb)
            t0 = time.perf_counter()
            st.save_file(full, fb)
            return time.perf_counter() - t0

        checked = set()

        def load(
            name: str, fn: Callable[[str], dict[str, torch.Tensor]], f: str, touch: bool = False
        ) -> Callable[[], float]:
            def run() -> float:
                if a.cold:
                    evict(f)
                t0 = time.perf_counter()
                out = fn(f)
                if touch:
                    touch_pages(out)
                t = time.perf_counter() - t0
                if name not in checked:
                    checked.add(name)
                    if sorted(out) != sorted(names) or any(not torch.equal(out[k], full[k]) for k in names):
                        print(f"  VALUE CHECK FAILED for {name}", flush=True)
                del out
                return t

            return run

        save_ckpt()
        save_ref()
        ops = [
            ("st save ckpt", save_ckpt),
            ("st save ref", save_ref),
            ("st load ckpt", load("ckpt", ckpt.safetensors.load_file, fa)),
            ("st load ref", load("ref", st.load_file, fb)),
            ("st load ref + touch", load("ref+touch", st.load_file, fb, touch=True)),
        ]
        for r in range(a.reps):
            # Saves before loads (the loads read this repetition's files); pairs rotated.
            s = ops[:2] if r % 2 == 0 else ops[1::-1]
            lo = ops[2:] if r % 2 == 0 else ops[:1:-1]  # the three loads
            for name, fn in s + lo:
                rep.add_samples(name, [fn()])
            log(
                f"  repetition {r + 1}/{a.reps}: "
                + ", ".join(f"{n} {secs(rep.samples[n][-1])}" for n, _ in ops)
            )
        for f in (fa, fb):
            os.remove(f)
    barrier()
    if RANK == 0:
        m = rep.med
        rep.row(
            "single",
            "1 rank: ckpt.safetensors.save_file vs safetensors.torch.save_file (ckpt fsyncs, ref not)",
            tput(m("st save ckpt"), total),
            tput(m("st save ref"), total),
            m("st save ref") / m("st save ckpt"),
            ">= 2",
        )
        rep.row(
            "single",
            "1 rank: ckpt.safetensors.load_file vs safetensors.torch.load_file + touching every page",
            tput(m("st load ckpt"), total),
            tput(m("st load ref + touch"), total),
            m("st load ref + touch") / m("st load ckpt"),
            ">= 1.5",
        )
        rep.row(
            "single",
            "1 rank: ckpt.safetensors.load_file vs safetensors.torch.load_file (lazy mmap, untouched)",
            tput(m("st load ckpt"), total),
            tput(m("st load ref"), total),
            m("st load ref") / m("st load ckpt"),
            "-",
        )


def bench_overhead(
    a: argparse.Namespace,
    rep: Report,
    sd: dict[str, DTensor],
    full: dict[str, torch.Tensor] | None,
    one: Any,
    work: str,
    total: int,
) -> None:
    log("== Python overhead: ckpt.save vs the C++ call, rank 0 alone (one-rank group), full state")
    path = os.path.join(work, "overhead")
    inner = 20
    if RANK == 0:
        assert full is not None

        def py_save() -> float:
            t0 = time.perf_counter()
            ckpt.save(full, path, process_group=one)
            t = time.perf_counter() - t0
            shutil.rmtree(path)
            return t

        def cpp_save() -> float:
            comm = _dist.engine_comm(one)
            d = describe(full, for_load=False)
            p = os.path.abspath(path)
            t0 = time.perf_counter()
            _ckpt.save(comm, p, d.tensors, d.json, d.bytes, ckpt.api.DEFAULT_TIMEOUT)
            t = time.perf_counter() - t0
            shutil.rmtree(path)
            return t

        def python_part() -> float:
            # What ckpt.save runs before it enters _ckpt.save.
            xs = []
            for _ in range(inner):
                t0 = time.perf_counter()
                describe(full, for_load=False)
                _dist.engine_comm(one, timeout_s=ckpt.api.DEFAULT_TIMEOUT)
                os.path.abspath(os.fspath(path))
                xs.append(time.perf_counter() - t0)
            return statistics.median(xs)

        py_save()  # warm-up
        interleave_local(
            a.reps,
            [("ckpt.save (Python)", py_save), ("_ckpt.save (C++)", cpp_save), ("Python part", python_part)],
            rep,
        )
    # The sharded DTensor state, per rank: describe() is the Python work of every save/load.
    xs, ys = [], []
    for _ in range(inner):
        t0 = time.perf_counter()
        describe(sd, for_load=False)
        xs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        describe(sd, for_load=True)
        ys.append(time.perf_counter() - t0)
    dx, dy = allmax([statistics.median(xs), statistics.median(ys)])
    barrier()
    m = rep.med
    if RANK == 0:
        py, cpp, part = m("ckpt.save (Python)"), m("_ckpt.save (C++)"), m("Python part")
        rep.row(
            "overhead",
            f"Python overhead of ckpt.save, 1 rank, {total / (1 << 30):.2f} GiB: Python part vs C++ call",
            secs(part),
            secs(cpp),
            part / cpp,
            "<= 0.05",
            unit="%",
        )
        rep.row(
            "overhead",
            "ckpt.save from Python vs _ckpt.save alone (difference; disk noise)",
            secs(py),
            secs(cpp),
            (py - cpp) / cpp,
            "-",
            unit="%",
        )
        if "ckpt.save" in rep.samples:
            s = m("ckpt.save")
            rep.row(
                "overhead",
                f"describe(DTensor state, {WORLD} ranks) vs ckpt.save of it",
                secs(dx),
                secs(s),
                dx / s,
                "<= 0.05",
                unit="%",
            )
        if "load same layout: ckpt.load" in rep.samples:
            s = m("load same layout: ckpt.load")
            rep.row(
                "overhead",
                "describe(DTensor state, for load) vs ckpt.load of it",
                secs(dy),
                secs(s),
                dy / s,
                "<= 0.05",
                unit="%",
            )


def interleave_local(reps: int, ops: list[tuple[str, Callable[[], float]]], rep: Report) -> None:
    for r in range(reps):
        k = r % len(ops)
        for name, op in ops[k:] + ops[:k]:
            rep.add_samples(name, [op()])
        print(
            f"  repetition {r + 1}/{reps}: " + ", ".join(f"{n} {secs(rep.samples[n][-1])}" for n, _ in ops),
            flush=True,
        )


# ---------------------------------------------------------------------------


def main() -> None:
    global RANK, WORLD
    a = parse_args(sys.argv[1:])
    dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=30))
    RANK, WORLD = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (WORLD,))
    # A one-rank group per rank (rank 0 uses its own for the single-rank sections). Every rank
    # creates (and joins) the same number of groups: ckpt names its groups by a hash that counts
    # the groups each process holds, so an asymmetric dist.new_group([0]) would hang its next save.
    one, _ = dist.new_subgroups(group_size=1, backend="gloo")

    shapes = model_shapes(a.bytes)
    total = sum(math.prod(s) * torch.empty(0, dtype=dt).element_size() for _, s, dt in shapes)
    log(
        f"building {total / (1 << 30):.3f} GiB in {len(shapes)} tensors on {WORLD} ranks "
        f"(torch threads per rank: {torch.get_num_threads()})"
    )
    full = make_full(shapes)
    sd = shard(full, mesh, 0)
    need_full = RANK == 0 or "load" in a.sections
    if not need_full:
        full = None

    work = None
    if RANK == 0:
        os.makedirs(a.dir, exist_ok=True)
        work = tempfile.mkdtemp(prefix="ckpt-pybench-", dir=a.dir)
    box = [work]
    dist.broadcast_object_list(box, src=0)
    work = box[0]
    rep = Report(a, total, len(shapes))
    try:
        if "save" in a.sections:
            bench_save(a, rep, sd, work, total)
        if "async" in a.sections:
            bench_async(a, rep, sd, work, total)
        if "load" in a.sections:
            bench_load(a, rep, sd, full, mesh, work, total)
            if RANK != 0:
                full = None
        if "single" in a.sections:
            bench_single(a, rep, full, work, total)
        if "overhead" in a.sections:
            bench_overhead(a, rep, sd, full, one, work, total)
        rep.print()
    finally:
        barrier()
        if RANK == 0:
            shutil.rmtree(work, ignore_errors=True)
        ckpt.api._close_savers()
        dist.destroy_process_group()


if __name__ == "__main__":
    if "LOCAL_RANK" not in os.environ:
        relaunch_under_torchrun(parse_args(sys.argv[1:]))
    main()
