"""Files written by the safetensors package read by ckpt's CLI and engine, and
ckpt's files read by safetensors' safe_open (what test_safetensors.py does
not already cover): every dtype, metadata, empty and 0-d tensors."""

from __future__ import annotations

import json

import ckpt
import pytest
import safetensors
import safetensors.torch as st
import torch
from conftest import ST_NAMES, bits, cli
from test_tensors import ALL_DTYPES, random_bits

METADATA = {"format": "pt", "note": "ünïcode ✓", "empty": "", "json": '{"a": [1, 2]}'}


def sample() -> dict[str, torch.Tensor]:
    out = {}
    for i, d in enumerate(ALL_DTYPES):
        name = ST_NAMES[d]
        out[f"m.{name}"] = random_bits((3, 5), d, i)
        out[f"s.{name}"] = random_bits((), d, 100 + i)  # 0-d
        out[f"e.{name}"] = torch.zeros(0, 4, dtype=d)  # empty
    return out


def test_ckpt_inspect_and_verify_read_every_dtype_metadata_empty_and_0d_that_safetensors_wrote(tmp_path):
    tensors = sample()
    path = tmp_path / "ref.safetensors"
    st.save_file(tensors, str(path), metadata=METADATA)
    info = json.loads(cli("inspect", "--json", path).stdout)
    assert info["files"][0]["metadata"] == METADATA
    got = {t["name"]: t for t in info["tensors"]}
    assert sorted(got) == sorted(tensors)
    with st.safe_open(str(path), framework="pt") as ref:
        for k, v in tensors.items():
            assert got[k]["dtype"] == ST_NAMES[v.dtype] == ref.get_slice(k).get_dtype(), k
            assert got[k]["shape"] == list(v.shape) == ref.get_slice(k).get_shape(), k
            assert got[k]["bytes"] == v.numel() * v.element_size(), k
    assert info["total_bytes"] == sum(v.numel() * v.element_size() for v in tensors.values())
    verdict = json.loads(cli("verify", "--json", path).stdout)
    assert verdict["valid"] is True and verdict["num_tensors"] == len(tensors), verdict


def test_ckpt_verify_rejects_a_truncated_safetensors_file_as_safetensors_does(tmp_path):
    # The CLI test above can fail: the same file one byte short.
    path = tmp_path / "ref.safetensors"
    st.save_file(sample(), str(path))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(safetensors.SafetensorError):
        st.load_file(str(path))
    proc = cli("verify", path, ok=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr


def test_ckpt_load_reads_a_model_directory_safetensors_wrote_into_every_dtype(tmp_path):
    tensors = sample()
    st.save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    dst = {k: torch.zeros_like(v) for k, v in tensors.items()}
    stats = ckpt.load(dst, tmp_path)
    assert not stats.missing_keys
    for k, v in tensors.items():
        assert dst[k].dtype == v.dtype and torch.equal(bits(dst[k]), bits(v)), k


def test_safetensors_safe_open_reads_ckpt_files_metadata_slices_empty_and_0d(tmp_path):
    tensors = sample()
    path = tmp_path / "ours.safetensors"
    ckpt.safetensors.save_file(tensors, path, metadata=METADATA)
    with st.safe_open(str(path), framework="pt") as f:
        assert f.metadata() == METADATA
        assert sorted(f.keys()) == sorted(tensors)
        for k, v in tensors.items():
            got = f.get_tensor(k)
            assert got.dtype == v.dtype and got.shape == v.shape, k
            assert torch.equal(bits(got), bits(v)), k
            assert f.get_slice(k).get_dtype() == ST_NAMES[v.dtype], k
        assert torch.equal(bits(f.get_slice("m.F32")[1:3]), bits(tensors["m.F32"][1:3]))


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}])
def test_files_without_tensors_are_byte_identical_and_read_both_ways(tmp_path, metadata):
    st.save_file({}, str(tmp_path / "ref.safetensors"), metadata=metadata)
    ckpt.safetensors.save_file({}, tmp_path / "ours.safetensors", metadata=metadata)
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    assert ckpt.safetensors.load_file(tmp_path / "ref.safetensors") == {}
    assert st.load_file(str(tmp_path / "ours.safetensors")) == {}
    cli("verify", tmp_path / "ref.safetensors")
