"""Fixtures for ckpt's Python tests: real gloo ranks on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(n: int, script: str, *args: str, timeout: float = 240, expect_ok: bool = True) -> list[str]:
    """Runs tests/python/jobs/<script> on `n` gloo ranks under torchrun;
    returns each rank's output. Fails the test when a rank fails (unless
    `expect_ok` is False)."""
    port = free_port()
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"ckpt_ranks_{port}"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={n}",
        "--master-addr=127.0.0.1",
        f"--master-port={port}",
        "--log-dir",
        str(logs),
        "--redirects=3",
        "--tee=3",
        str(HERE / "jobs" / script),
        *args,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if expect_ok and proc.returncode != 0:
        pytest.fail(
            f"{script} on {n} ranks failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        )
    return [proc.stdout, proc.stderr, str(proc.returncode)]


@pytest.fixture
def ranks():
    return run_ranks


# The ckpt command-line tool the C++ build made (the test command builds it
# before the Python tests run).
CLI = Path(os.environ.get("CKPT_CLI", HERE.parents[1] / "build" / "default" / "ckpt"))


def cli(*args: object, ok: bool = True) -> subprocess.CompletedProcess:
    """Runs `ckpt ARGS...`; with `ok`, fails the test unless it exits 0."""
    if not CLI.exists():
        pytest.fail(f"{CLI} is not built (cmake --build --preset default)")
    proc = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=60)
    if ok:
        assert proc.returncode == 0, f"ckpt {' '.join(map(str, args))}: {proc.stdout}\n{proc.stderr}"
    return proc


# torch dtype -> safetensors dtype name, written out here on purpose (the
# tests do not take the table from the code they check).
ST_NAMES = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.uint16: "U16",
    torch.int32: "I32",
    torch.uint32: "U32",
    torch.int64: "I64",
    torch.uint64: "U64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}


def bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes, for bit-for-bit comparisons (NaN payloads included)."""
    return t.reshape(-1).contiguous().view(torch.uint8)
