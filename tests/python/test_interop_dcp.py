"""torch.distributed.checkpoint's own format (FileSystemWriter, what NeMo
writes for optim/) against ckpt, both ways.

One torchrun job per world size (4, then 2, then 1) trains a small FSDP2
model, writes NeMo's optimizer dict with dcp.save and with
ckpt.save(format="dcp"), and loads the previous world size's directories
the other way round, bit for bit (jobs/interop_dcp.py). The tests here read
the same directories in one process and feed ckpt hostile metadata.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
import sys
import zipfile
from pathlib import Path

import ckpt
import pytest
import safetensors.torch as st
import torch
from conftest import cli, run_ranks
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "jobs"))

WORLDS = (4, 2, 1)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[int, Path]:
    roots: dict[int, Path] = {}
    prev: list[str] = []
    for world in WORLDS:
        roots[world] = tmp_path_factory.mktemp(f"dcp_{world}")
        out = run_ranks(world, "interop_dcp.py", str(roots[world]), *prev)
        assert out[0].count(f"of {world}: ok") == world, out[0][-3000:]
        prev = [str(roots[world])]
    return roots


def test_dcp_saves_from_4_2_and_1_ranks_load_through_ckpt_into_the_next_world_size_bit_exactly(saved):
    # The jobs compared every tensor; here the files show each world size
    # really wrote one data file per rank with torch's and with ckpt's writer.
    for world, root in saved.items():
        for d in ("optim", "model", "ckpt_optim"):
            names = sorted(p.name for p in (root / d).iterdir())
            want = sorted([".metadata"] + [f"__{r}_0.distcp" for r in range(world)])
            if d == "ckpt_optim":
                # ckpt writes a data file on every rank, even one that holds
                # only replicated entries another rank writes.
                assert names == want, (world, d, names)
            else:
                assert set(names) <= set(want) and ".metadata" in names, (world, d, names)


def _metadata(path: Path) -> Metadata:
    md = FileSystemReader(str(path)).read_metadata()
    assert isinstance(md, Metadata)
    return md


@pytest.mark.parametrize("world", WORLDS)
def test_ckpt_writes_the_same_metadata_entries_as_dcp_save(saved, world):
    torch_md = _metadata(saved[world] / "optim")
    ours = _metadata(saved[world] / "ckpt_optim")
    assert ours.state_dict_metadata.keys() == torch_md.state_dict_metadata.keys()
    for k, v in torch_md.state_dict_metadata.items():
        o = ours.state_dict_metadata[k]
        assert type(o) is type(v), k
        if isinstance(v, TensorStorageMetadata):
            assert isinstance(o, TensorStorageMetadata)
            assert (o.size, o.properties.dtype) == (v.size, v.properties.dtype), k
            assert sorted(tuple(c.offsets) for c in o.chunks) == sorted(tuple(c.offsets) for c in v.chunks), k
    # Every storage entry lies inside its data file.
    for idx, info in ours.storage_data.items():
        size = (saved[world] / "ckpt_optim" / info.relative_path).stat().st_size
        assert info.offset + info.length <= size, idx


def _reference(root: Path) -> dict:
    return torch.load(root / "ref.pt", weights_only=True)


def test_one_process_loads_a_4_rank_dcp_optimizer_dir_into_plain_tensors(saved):
    ref = _reference(saved[4])
    sd = {
        "optim": {
            k: torch.empty_like(v) if isinstance(v, torch.Tensor) else None for k, v in ref["optim"].items()
        },
        "sched": {k: None for k in ref["sched"]},
    }
    stats = ckpt.load(sd, saved[4] / "optim")
    for k, v in ref["optim"].items():
        got = sd["optim"][k]
        if isinstance(v, torch.Tensor):
            assert torch.equal(got.view(-1).view(torch.uint8), v.view(-1).view(torch.uint8)), k
        else:
            assert got == v, k
    assert sd["sched"] == ref["sched"]
    assert stats.bytes_read >= sum(
        v.numel() * v.element_size() for v in ref["optim"].values() if isinstance(v, torch.Tensor)
    )


@pytest.mark.parametrize("world", (4, 1))
def test_ckpt_inspect_verify_and_consolidate_accept_dcp_directories(saved, tmp_path, world):
    ref = _reference(saved[world])
    info = json.loads(cli("inspect", "--json", saved[world] / "model").stdout)
    assert info["kind"] == "dcp"
    shapes = {t["name"]: (t["dtype"], t["shape"]) for t in info["tensors"]}
    assert shapes == {k: (("F32"), list(v.shape)) for k, v in ref["model"].items()}
    optim = json.loads(cli("inspect", "--json", saved[world] / "optim").stdout)
    assert {t["name"] for t in optim["tensors"]} == {
        f"optim.{k}" for k, v in ref["optim"].items() if isinstance(v, torch.Tensor)
    }
    cli("verify", saved[world] / "optim")
    cli("verify", saved[world] / "ckpt_optim")
    out = tmp_path / "hf"
    cli("consolidate", saved[world] / "model", out)
    got = {}
    for f in sorted(out.glob("*.safetensors")):
        got.update(st.load_file(str(f)))
    assert got.keys() == ref["model"].keys()
    for k, v in ref["model"].items():
        assert torch.equal(got[k].view(torch.uint8), v.contiguous().view(torch.uint8)), k


def test_ckpt_verify_finds_a_flipped_byte_in_a_distcp_file(saved, tmp_path):
    d = _copy(saved, tmp_path)
    md = pickle.loads((d / ".metadata").read_bytes())
    info = _first_tensor_entry(md)
    data = bytearray((d / info.relative_path).read_bytes())
    # Flip the first byte of the chunk's tensor data (record data/0 of the
    # torch.save archive at the entry): local header, name, extra, data.
    with zipfile.ZipFile(io.BytesIO(bytes(data[info.offset : info.offset + info.length]))) as z:
        rec = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    at = info.offset + rec.header_offset
    name_len, extra_len = struct.unpack("<HH", data[at + 26 : at + 30])
    data[at + 30 + name_len + extra_len] ^= 0xFF
    (d / info.relative_path).write_bytes(bytes(data))
    proc = cli("verify", d, ok=False)
    assert proc.returncode != 0
    assert info.relative_path in proc.stderr, proc.stderr


def _copy(saved: dict[int, Path], tmp_path: Path) -> Path:
    d = tmp_path / "optim"
    shutil.copytree(saved[2] / "optim", d)
    return d


def _rewrite(d: Path, change) -> None:
    md = pickle.loads((d / ".metadata").read_bytes())  # our own test file, written by dcp.save
    change(md)
    (d / ".metadata").write_bytes(pickle.dumps(md))


def _target(saved: dict[int, Path]) -> dict:
    ref = _reference(saved[2])
    return {"optim": {k: torch.empty_like(v) for k, v in ref["optim"].items() if isinstance(v, torch.Tensor)}}


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_metadata_pickle_naming_a_foreign_global_is_refused_before_anything_runs(
    saved, tmp_path, monkeypatch
):
    d = _copy(saved, tmp_path)
    monkeypatch.chdir(tmp_path)
    _rewrite(d, lambda md: setattr(md, "planner_data", _Evil()))
    with pytest.raises(
        ckpt.InvalidArgumentError, match=r"\.metadata: pickle byte \d+: global 'posix\.system' is not allowed"
    ):
        ckpt.load(_target(saved), d)
    assert not (tmp_path / "PWNED").exists()


def _first_tensor_entry(md: Metadata):
    return next(info for idx, info in md.storage_data.items() if idx.offset is not None)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (
            lambda md: setattr(_first_tensor_entry(md), "offset", "0"),
            ckpt.InvalidArgumentError,
            r"storage of '.*'\.offset: is a str, not a non-negative int",
        ),
        (
            lambda md: setattr(_first_tensor_entry(md), "offset", 10**9),
            ckpt.DataLossError,
            r"is stored at bytes \[1000000000, .*\) of __\d_0\.distcp, which has \d+ bytes",
        ),
        (
            lambda md: setattr(_first_tensor_entry(md), "relative_path", "../../x.distcp"),
            ckpt.InvalidArgumentError,
            r"'\.\./\.\./x\.distcp' is not a plain file name",
        ),
        (
            lambda md: setattr(_first_tensor_entry(md), "transform_descriptors", ["zstd"]),
            ckpt.InvalidArgumentError,
            r"transformed \(e\.g\. compressed\) entries are not supported",
        ),
        (
            lambda md: md.state_dict_metadata.__setitem__("optim.state.0.weight.exp_avg", "not metadata"),
            ckpt.InvalidArgumentError,
            r"entry 'optim\.state\.0\.weight\.exp_avg': is a str, not a TensorStorageMetadata",
        ),
    ],
    ids=[
        "offset is a str",
        "offset past the file",
        "path outside the directory",
        "compressed",
        "wrong entry type",
    ],
)
def test_hostile_metadata_is_refused_with_a_clear_error(saved, tmp_path, change, error, message):
    d = _copy(saved, tmp_path)
    _rewrite(d, change)
    with pytest.raises(error, match=message):
        ckpt.load(_target(saved), d)


def test_ckpt_save_dcp_never_overwrites_and_a_failed_save_leaves_nothing(tmp_path):
    sd = {"w": torch.arange(6.0).reshape(2, 3), "step": 3}
    ckpt.save(sd, tmp_path / "a", format="dcp")
    before = (tmp_path / "a" / ".metadata").read_bytes()
    with pytest.raises(ckpt.AlreadyExistsError, match="already exists"):
        ckpt.save({"w": torch.zeros(2, 3)}, tmp_path / "a", format="dcp")
    assert (tmp_path / "a" / ".metadata").read_bytes() == before
    # A value torch.save cannot pickle fails the save before anything is published.
    with pytest.raises(Exception, match="lambda"):
        ckpt.save({"w": torch.zeros(2), "f": lambda: 0}, tmp_path / "b", format="dcp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    back = {"w": torch.zeros(2, 3), "step": None}
    ckpt.load(back, tmp_path / "a")
    assert torch.equal(back["w"], sd["w"]) and back["step"] == 3
    with pytest.raises(ckpt.InvalidArgumentError, match="format must be 'ckpt' or 'dcp'"):
        ckpt.save(sd, tmp_path / "c", format="safetensors")
