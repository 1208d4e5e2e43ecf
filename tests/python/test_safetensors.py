"""ckpt.safetensors against the reference package, both ways."""

from __future__ import annotations

import json

import ckpt
import pytest
import safetensors.torch as st
import torch
from conftest import bits
from test_tensors import ALL_DTYPES, random_bits


def sample() -> dict[str, torch.Tensor]:
    out = {f"t.{i}.{str(d).split('.')[-1]}": random_bits((3, 5), d, i) for i, d in enumerate(ALL_DTYPES)}
    out["scalar"] = torch.tensor(1.5, dtype=torch.float64)
    out["empty"] = torch.zeros(0, 7, dtype=torch.bfloat16)
    return out


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}, {"format": "pt", "note": "x" * 37}])
def test_ckpt_writes_the_same_bytes_as_safetensors_save_file(tmp_path, metadata):
    tensors = sample()
    st.save_file(tensors, str(tmp_path / "ref.safetensors"), metadata=metadata)
    ckpt.safetensors.save_file(tensors, tmp_path / "ours.safetensors", metadata=metadata)
    ours, ref = (tmp_path / "ours.safetensors").read_bytes(), (tmp_path / "ref.safetensors").read_bytes()
    if metadata is None or len(metadata) == 1:
        assert ours == ref
        return
    # The reference orders __metadata__ keys by a per-process hash (it differs
    # from run to run); ckpt sorts them. Everything else is the same bytes.
    n = int.from_bytes(ref[:8], "little")
    assert ours[:8] == ref[:8] and ours[8 + n :] == ref[8 + n :]
    assert json.loads(ours[8 : 8 + n]) == json.loads(ref[8 : 8 + n])
    assert ours[8 : 8 + n].rstrip(b" ").endswith(b"}") and len(ours) == len(ref)


def test_views_are_written_without_a_contiguous_copy_and_match_the_reference(tmp_path):
    base = torch.arange(40, dtype=torch.float32).reshape(5, 8)
    views = {"t": base.t(), "s": base[::2, 1::3]}
    ckpt.safetensors.save_file(views, tmp_path / "v.safetensors")
    st.save_file({k: v.contiguous() for k, v in views.items()}, str(tmp_path / "r.safetensors"))
    assert (tmp_path / "v.safetensors").read_bytes() == (tmp_path / "r.safetensors").read_bytes()


def test_files_written_by_safetensors_read_back_with_metadata_and_lazy_slices(tmp_path):
    tensors = sample()
    st.save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    got = ckpt.safetensors.load_file(tmp_path / "ref.safetensors")
    assert set(got) == set(tensors)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and torch.equal(bits(got[k]), bits(v)), k
    with ckpt.safetensors.safe_open(tmp_path / "ref.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert f.keys() == sorted(tensors)
        name = "t.11.float32"
        sl = f.get_slice(name)
        assert sl.get_shape() == [3, 5] and sl.get_dtype() == "F32"
        full = tensors[name]
        assert torch.equal(sl[1:3], full[1:3])
        assert torch.equal(sl[:, 2:4], full[:, 2:4])
        assert torch.equal(sl[2], full[2])
        assert torch.equal(sl[..., -1], full[..., -1])
        with pytest.raises(ckpt.InvalidArgumentError, match="step 1"):
            sl[::2]
    with st.safe_open(str(tmp_path / "ref.safetensors"), framework="pt") as ref:
        assert sorted(ref.keys()) == sorted(tensors)


def test_safetensors_reads_what_ckpt_writes(tmp_path):
    tensors = sample()
    ckpt.safetensors.save_file(tensors, tmp_path / "ours.safetensors", metadata={"format": "pt"})
    got = st.load_file(str(tmp_path / "ours.safetensors"))
    for k, v in tensors.items():
        assert torch.equal(bits(got[k]), bits(v)), k


def test_a_file_is_never_half_written(tmp_path):
    target = tmp_path / "m.safetensors"
    with pytest.raises(ckpt.InvalidArgumentError, match="'bad'"):
        ckpt.safetensors.save_file(
            {"ok": torch.ones(2), "bad": torch.ones(2, dtype=torch.complex128)}, target
        )
    assert not target.exists()
