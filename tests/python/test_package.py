"""The package as users meet it: its names, its type stubs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ckpt
from ckpt import _ckpt

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_stubs_match_the_built_extension(tmp_path):
    out = tmp_path / "_ckpt.pyi"
    r = subprocess.run(
        [sys.executable, "-m", "nanobind.stubgen", "-q", "-m", "ckpt._ckpt", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    committed = (ROOT / "python" / "ckpt" / "_ckpt.pyi").read_text()
    assert out.read_text() == committed, "regenerate python/ckpt/_ckpt.pyi with nanobind.stubgen"


def test_the_public_names_are_exported_and_typed():
    for name in ckpt.__all__:
        assert hasattr(ckpt, name), name
    assert ckpt.__version__ == _ckpt.VERSION
    assert (Path(ckpt.__file__).parent / "py.typed").exists()
    assert set(_ckpt.dtype_names()) >= {"BF16", "F8_E4M3", "U64", "BOOL"}
