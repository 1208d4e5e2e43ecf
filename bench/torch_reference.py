#!/usr/bin/env python3
"""Times torch.save / torch.load of the tensors the ckpt benchmarks use
(bf16 [4096, 4096]) in a tmpfs directory, for comparison with ckpt's figures.

    torch_reference.py [--gib G] [--dir /dev/shm] [--reps N]
"""

import argparse
import os
import statistics
import tempfile
import time

import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gib", type=float, default=1.0)
    p.add_argument("--dir", default="/dev/shm")
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    n = max(1, int(a.gib * (1 << 30) // (4096 * 4096 * 2)))
    sd = {
        f"model.layers.{i}.mlp.up_proj.weight": torch.full((4096, 4096), float(i), dtype=torch.bfloat16)
        for i in range(n)
    }
    gb = n * 4096 * 4096 * 2 / 1e9
    saves, loads = [], []
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        path = os.path.join(d, "model.pt")
        for _ in range(a.reps):
            t = time.perf_counter()
            torch.save(sd, path)
            saves.append(time.perf_counter() - t)
            t = time.perf_counter()
            back = torch.load(path)
            loads.append(time.perf_counter() - t)
            del back
    s, l = statistics.median(saves), statistics.median(loads)
    print(f"torch {torch.__version__}: {gb:.2f} GB in {n} bf16 tensors, tmpfs, median of {a.reps}")
    print(f"torch.save {gb / s:8.2f} GB/s   torch.load {gb / l:8.2f} GB/s")
    print(
        'RESULT {"bench":"torch","measure":"torch.save to tmpfs (GB/s)","value":%.4g,"target":"-","met":true}'
        % (gb / s)
    )
    print(
        'RESULT {"bench":"torch","measure":"torch.load from tmpfs (GB/s)","value":%.4g,"target":"-","met":true}'
        % (gb / l)
    )


if __name__ == "__main__":
    main()
