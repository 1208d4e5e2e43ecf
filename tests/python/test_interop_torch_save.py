"""torch 2.13 `torch.save` archives (views, shared storages, several dtypes)
read by ckpt's CLI: inspect, verify and convert, every tensor bit for bit."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest
import safetensors.torch as st
import torch
from conftest import ST_NAMES, bits, cli

# The dtypes the archive holds (torch.save's storage classes).
ARCHIVE_DTYPES = (
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
)


def state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    base = torch.randn(6, 8, generator=g)
    sd: dict[str, torch.Tensor] = torch.nn.Linear(8, 6).state_dict()  # OrderedDict with _metadata
    sd["base"] = base
    sd["transposed"] = base.t()  # same storage, strides (1, 8)
    sd["rows"] = base[2:5]  # same storage, offset 16
    sd["strided"] = base[::2, 1::3]  # same storage, offset and gaps
    sd["tied"] = base  # the same tensor under a second name
    for dtype in ARCHIVE_DTYPES:
        if dtype == torch.bool:
            sd[f"t_{ST_NAMES[dtype]}"] = torch.randint(0, 2, (3, 5), generator=g).bool()
        elif dtype.is_floating_point:
            sd[f"t_{ST_NAMES[dtype]}"] = torch.randn(3, 5, generator=g).to(dtype)
        else:
            sd[f"t_{ST_NAMES[dtype]}"] = torch.randint(-100, 100, (3, 5), generator=g).to(dtype)
    sd["scalar"] = torch.tensor(2.5, dtype=torch.float64)
    sd["empty"] = torch.zeros(0, 3, dtype=torch.bfloat16)
    big = torch.arange(40, dtype=torch.int32)
    sd["int_view"] = big[5:25].view(4, 5)  # a small view of a larger storage
    return sd


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    d = tmp_path_factory.mktemp("torch_save")
    sd = state_dict()
    torch.save(sd, d / "pytorch_model.bin")
    return d, sd


def test_torch_2_13_writes_the_zip_records_the_format_notes_describe(archive):
    d, sd = archive
    with zipfile.ZipFile(d / "pytorch_model.bin") as z:
        names = z.namelist()
        assert all(n.startswith("pytorch_model/") for n in names), names  # the basename, not archive/
        assert "pytorch_model/byteorder" in names and z.read("pytorch_model/byteorder") == b"little"
        assert "pytorch_model/data.pkl" in names
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
        # Shared storages are written once: base and its views share a record.
        data = [n for n in names if "/data/" in n]
        assert len(data) < len(sd)
    # And it stays loadable with weights_only (what ckpt's reader mirrors).
    back = torch.load(d / "pytorch_model.bin", weights_only=True)
    assert back["transposed"].stride() == (1, 8)


def test_ckpt_inspect_and_verify_read_a_torch_save_archive_with_views_and_shared_storages(archive):
    d, sd = archive
    for target in (d / "pytorch_model.bin", d):
        info = json.loads(cli("inspect", "--json", target).stdout)
        got = {t["name"]: t for t in info["tensors"]}
        assert sorted(got) == sorted(sd), target
        for k, v in sd.items():
            assert got[k]["shape"] == list(v.shape), (target, k)
            assert got[k]["dtype"] == ST_NAMES[v.dtype], (target, k)
        verdict = json.loads(cli("verify", "--json", target).stdout)
        assert verdict["valid"] is True and verdict["num_tensors"] == len(sd), verdict


def test_ckpt_convert_writes_every_tensor_of_a_torch_save_archive_bit_for_bit(archive, tmp_path):
    d, sd = archive
    cli("convert", d, tmp_path / "out")
    got: dict[str, torch.Tensor] = {}
    for f in sorted((tmp_path / "out").glob("*.safetensors")):
        got.update(st.load_file(str(f)))
    assert sorted(got) == sorted(sd)
    for k, v in sd.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert torch.equal(bits(got[k]), bits(v)), k
    cli("verify", tmp_path / "out")


def test_ckpt_refuses_a_torch_save_archive_that_would_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    (tmp_path / "m").mkdir()
    torch.save({"w": torch.ones(2), "x": Evil()}, tmp_path / "m" / "pytorch_model.bin")
    proc = cli("verify", tmp_path / "m" / "pytorch_model.bin", ok=False)
    assert proc.returncode != 0
    assert "system" in (proc.stdout + proc.stderr)
    assert cli("convert", tmp_path / "m", tmp_path / "out", ok=False).returncode != 0
