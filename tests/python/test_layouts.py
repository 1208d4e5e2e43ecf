"""Sharded round trips across world sizes and layouts, bit for bit.

Each save runs on real gloo ranks under torchrun; each load uses other
placements (dim 0 <-> dim 1, 2-D mesh <-> 1-D, FSDP2 on another world size)
and checks every tensor and value (jobs/layouts.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import HERE, run_ranks


def load_plain(path: str) -> None:
    r = subprocess.run(
        [sys.executable, str(HERE / "jobs" / "layouts.py"), "load_plain", path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "OK load_plain" in r.stdout, r.stderr[-4000:]


@pytest.mark.parametrize(
    ("save_ranks", "save_mode", "loads"),
    [
        (4, "save", [(2, "load"), (1, "load_plain"), (2, "load_torch_hf")]),
        (2, "save_async", [(4, "load"), (1, "load_plain")]),
        (1, "save", [(2, "load")]),
        (4, "save_dcp", [(2, "load_dcp"), (2, "load_torch_hf"), (1, "load_plain")]),
    ],
)
def test_a_save_on_n_ranks_loads_bit_exactly_into_other_layouts_and_world_sizes(
    tmp_path, save_ranks, save_mode, loads
):
    path = str(tmp_path / "ckpt")
    out = run_ranks(save_ranks, "layouts.py", save_mode, path)
    assert out[0].count(f" {save_mode}") >= save_ranks
    for n, mode in loads:
        if n == 1:
            load_plain(path)
        else:
            out = run_ranks(n, "layouts.py", mode, path)
            assert out[0].count(f" {mode}") >= n, out[0][-2000:]
