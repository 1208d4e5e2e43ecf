#!/usr/bin/env python3
"""ckpt's S3 backend against boto3's transfer manager on the same local
S3-protocol server (moto's, SigV4 checked), the same objects, the same run.

    bench/s3_bench.py [--size 256M] [--reps 3] [--part 16M] [--budget 128M] [--json FILE]

- save: ``ckpt.save`` of a one-rank state dict (one safetensors object,
  uploaded as parallel multipart parts) against ``boto3 upload_file`` of the
  very object ckpt wrote (taken from a local copy in the page cache).
- load: ``ckpt.load`` into preallocated tensors against ``boto3
  download_file`` of the same object into a local file.
- memory: the peak resident memory a ckpt save adds over the state dict
  itself (its own process, ``ru_maxrss``), against the configured part
  budget (``CKPT_S3_MEMORY_BUDGET``).

boto3 runs with its defaults (8 MiB parts, 10 threads). Times are the best
of --reps; throughput is object bytes / time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "python"))

BUCKET = "bench"


def parse_size(s: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(s[:-1]) * units[s[-1].upper()]) if s[-1].upper() in units else int(s)


def make_state(nbytes: int):  # noqa: ANN201
    import torch

    n = 8
    rows = max(1, nbytes // (n * 4096 * 4))
    g = torch.Generator().manual_seed(0)
    return {f"layer{i}.weight": torch.randn(rows, 4096, generator=g) for i in range(n)}


def child_save(url: str, nbytes: int) -> None:
    """Saves in a fresh process and prints the resident memory it added."""
    import ckpt

    sd = make_state(nbytes)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    ckpt.save(sd, url)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    print(json.dumps({"seconds": dt, "cpu_seconds": cpu, "added_rss": (r1.ru_maxrss - r0.ru_maxrss) * 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="256M")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--part", default="16M")
    ap.add_argument("--budget", default="128M")
    ap.add_argument("--json")
    ap.add_argument("--child-save", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child_save:
        child_save(a.child_save[0], int(a.child_save[1]))
        return

    import boto3.s3.transfer
    import ckpt
    import torch
    from s3_server import start_server

    nbytes = parse_size(a.size)
    server = start_server()
    try:
        env = server.env(
            CKPT_S3_PART_SIZE=str(parse_size(a.part)), CKPT_S3_MEMORY_BUDGET=str(parse_size(a.budget))
        )
        os.environ.update(env)
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        config = boto3.s3.transfer.TransferConfig()
        sd = make_state(nbytes)
        obj_bytes = 0
        res: dict[str, list[float]] = {
            "ckpt_save": [],
            "boto3_upload": [],
            "ckpt_load": [],
            "boto3_download": [],
        }
        rss: list[int] = []
        with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
            local = os.path.join(tmp, "obj.safetensors")
            back = os.path.join(tmp, "back.safetensors")
            for rep in range(a.reps):
                url = f"s3://{BUCKET}/ckpt-{rep}"
                # ckpt save, in its own process (its memory is measured)
                out = subprocess.run(
                    [sys.executable, __file__, "--child-save", url, str(nbytes)],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=True,
                )
                r = json.loads(out.stdout.strip().splitlines()[-1])
                res["ckpt_save"].append(r["seconds"])
                rss.append(r["added_rss"])
                key = next(
                    o["Key"]
                    for o in client.list_objects_v2(Bucket=BUCKET, Prefix=f"ckpt-{rep}/")["Contents"]
                    if o["Key"].endswith(".safetensors")
                )
                obj_bytes = client.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
                if rep == 0:
                    client.download_file(BUCKET, key, local, Config=config)
                # boto3 upload of the same object
                t0 = time.perf_counter()
                client.upload_file(local, BUCKET, f"boto3-{rep}/obj.safetensors", Config=config)
                res["boto3_upload"].append(time.perf_counter() - t0)
                # loads
                got = {k: torch.empty_like(v) for k, v in sd.items()}
                t0 = time.perf_counter()
                ckpt.load(got, url)
                res["ckpt_load"].append(time.perf_counter() - t0)
                assert all(torch.equal(got[k], sd[k]) for k in sd)
                t0 = time.perf_counter()
                client.download_file(BUCKET, key, back, Config=config)
                res["boto3_download"].append(time.perf_counter() - t0)
                os.unlink(back)
        best = {k: min(v) for k, v in res.items()}
        mb = obj_bytes / 1e6
        report = {
            "object_bytes": obj_bytes,
            "reps": a.reps,
            "seconds_best": best,
            "MB_per_s": {k: mb / v for k, v in best.items()},
            "save_ratio_vs_boto3": best["boto3_upload"] / best["ckpt_save"],
            "load_ratio_vs_boto3": best["boto3_download"] / best["ckpt_load"],
            "ckpt_save_added_rss_bytes_max": max(rss),
            "part_budget_bytes": parse_size(a.budget),
        }
        print(json.dumps(report, indent=2))
        if a.json:
            Path(a.json).write_text(json.dumps(report, indent=2))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
