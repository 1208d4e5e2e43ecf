"""torch 2.13's HuggingFaceStorageWriter / Reader and consolidation against ckpt.

One torchrun job per world size (4, then 2, then 1) writes torch's and ckpt's
sharded directories and reads every directory back in other layouts, and
those of the previous world size (jobs/interop_hf_storage.py). The tests here
then read the same directories in one process, through the CLI and the
package, and compare ckpt's consolidation with torch's, tensor for tensor.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import ckpt
import pytest
import safetensors.torch as st
import torch
from conftest import ST_NAMES, bits, cli, run_ranks
from torch.distributed.checkpoint._consolidate_hf_safetensors import consolidate_safetensors_files

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "jobs"))
from interop_hf_storage import ALL, FLOATS, MAPPING, VARIANTS, full  # noqa: E402

WORLDS = (4, 2, 1)


def header(path: Path) -> dict:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


def sharded_dir(root: Path, variant: str) -> Path:
    return root / variant / "sharded" if VARIANTS[variant][2] else root / variant


def read_dir(path: Path) -> dict[str, tuple[str, torch.Tensor]]:
    """Every tensor of a Hugging Face directory: name -> (file, tensor)."""
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        for k, v in st.load_file(str(f)).items():
            assert k not in out, f"{k} in two files"
            out[k] = (f.name, v)
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[int, Path]:
    roots: dict[int, Path] = {}
    prev: list[str] = []
    for world in WORLDS:
        roots[world] = tmp_path_factory.mktemp(f"hf_storage_{world}")
        out = run_ranks(world, "interop_hf_storage.py", str(roots[world]), *prev)
        assert out[0].count(f"of {world}") == world, out[0][-3000:]
        prev = [str(roots[world])]
    return roots


def test_torch_sharded_saves_from_1_2_and_4_ranks_load_into_other_layouts_and_world_sizes(saved):
    # The jobs did the work (each fails the test on any mismatch); here the
    # files show that each world size really wrote one shard file per rank
    # (and per mapped output file).
    for world, root in saved.items():
        for variant, (_, mapping, _) in VARIANTS.items():
            files = sorted(p.name for p in sharded_dir(root, variant).glob("*.safetensors"))
            n = max(mapping.values()) if mapping else 1
            want = sorted(
                f"shard-{r:05}-model-{i:05}-of-{n:05}.safetensors"
                for r in range(1, world + 1)
                for i in range(1, n + 1)
            )
            assert files == want, (world, variant)


@pytest.mark.parametrize("world", WORLDS)
def test_ckpt_inspect_json_reports_global_shapes_and_chunks_of_torch_shards_and_verify_accepts_them(
    saved, world
):
    for variant, (names, _, _) in VARIANTS.items():
        path = sharded_dir(saved[world], variant)
        info = json.loads(cli("inspect", "--json", path).stdout)
        got = {t["name"]: t for t in info["tensors"]}
        assert sorted(got) == sorted(names), variant
        for name in names:
            shape, dtype, save_pl, _ = ALL[name]
            assert got[name]["shape"] == list(shape), (variant, name)
            assert got[name]["dtype"] == ST_NAMES[dtype], (variant, name)
            assert got[name]["bytes"] == full(name).numel() * full(name).element_size()
            if save_pl == "r":  # replicated: written once
                assert got[name]["chunks"] == 1, (variant, name)
            elif name == "dim0":
                assert got[name]["chunks"] == world, (variant, name)
        proc = cli("verify", "--json", path)
        verdict = json.loads(proc.stdout)
        assert verdict["valid"] is True and verdict["num_tensors"] == len(names), verdict


@pytest.mark.parametrize("world", WORLDS)
def test_ckpt_load_in_one_process_reads_torch_shards_and_consolidated_output_bit_for_bit(saved, world):
    for variant, (names, _, consolidate) in VARIANTS.items():
        paths = [sharded_dir(saved[world], variant)] + ([saved[world] / variant] if consolidate else [])
        for path in paths:
            sd = {n: torch.zeros(ALL[n][0], dtype=ALL[n][1]) for n in names}
            stats = ckpt.load(sd, path)
            assert not stats.missing_keys, stats.missing_keys
            for n in names:
                assert torch.equal(bits(sd[n]), bits(full(n))), (path, n)


def assert_same_hf_dirs(ours: Path, theirs: Path, same_files: bool) -> None:
    a, b = read_dir(ours), read_dir(theirs)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k][1].dtype == b[k][1].dtype and a[k][1].shape == b[k][1].shape, k
        assert torch.equal(bits(a[k][1]), bits(b[k][1])), k
        assert torch.equal(bits(a[k][1]), bits(full(k))), k
        if same_files:
            assert a[k][0] == b[k][0], k
    ia = json.loads((ours / "model.safetensors.index.json").read_text())
    ib = json.loads((theirs / "model.safetensors.index.json").read_text())
    if same_files:
        assert ia["weight_map"] == ib["weight_map"]
    assert ia["metadata"]["total_size"] == ib["metadata"]["total_size"]


@pytest.mark.parametrize("world", WORLDS)
def test_ckpt_consolidate_equals_torch_consolidate_safetensors_files_tensor_for_tensor(
    saved, world, tmp_path
):
    float_map = {k: v for k, v in MAPPING.items() if k in FLOATS}
    for variant, (_, mapping, consolidate) in VARIANTS.items():
        if not consolidate:  # torch consolidated these (float) saves in finish()
            continue
        src = sharded_dir(saved[world], variant)
        theirs = saved[world] / variant  # written by torch's writer in finish()
        ours = tmp_path / f"{variant}_ours"
        cli("consolidate", src, ours)
        assert_same_hf_dirs(ours, theirs, same_files=mapping is None)
        # With the torch output as the layout to follow, the files match too.
        ours_based = tmp_path / f"{variant}_based"
        cli("consolidate", "--base", theirs, src, ours_based)
        assert_same_hf_dirs(ours_based, theirs, same_files=True)
    # torch's function and ckpt's package on ckpt's own float shards, with a
    # mapping over three files.
    theirs = tmp_path / "torch_out"
    theirs.mkdir()  # torch's function does not create it
    consolidate_safetensors_files(str(saved[world] / "ckpt_float"), str(theirs), float_map)
    ours = tmp_path / "ckpt_out"
    ckpt.consolidate(saved[world] / "ckpt_float", ours, base_model_dir=theirs)
    assert_same_hf_dirs(ours, theirs, same_files=True)


def test_torch_consolidation_of_ckpt_shards_writes_unpadded_headers_without_metadata(saved, tmp_path):
    out = tmp_path / "t"
    out.mkdir()
    consolidate_safetensors_files(str(saved[4] / "ckpt_float"), str(out), dict.fromkeys(FLOATS, 1))
    h = header(out / "model-00001-of-00001.safetensors")
    assert "__metadata__" not in h
    n = struct.unpack("<Q", (out / "model-00001-of-00001.safetensors").read_bytes()[:8])[0]
    assert n == len(json.dumps({k: v for k, v in h.items()}).encode())  # no padding
    cli("verify", out)
    info = json.loads(cli("inspect", "--json", out).stdout)
    assert info["num_tensors"] == len(FLOATS)


@pytest.mark.parametrize("source", ["plain", "ckpt"])
def test_torch_2_13_consolidation_fails_on_integer_tensors_where_ckpt_consolidates_them(
    saved, source, tmp_path
):
    src = saved[2] / source
    (tmp_path / "torch").mkdir()
    with pytest.raises(TypeError, match="finfo|floating"):
        consolidate_safetensors_files(str(src), str(tmp_path / "torch"), dict.fromkeys(ALL, 1))
    ckpt.consolidate(src, tmp_path / "ours")
    got = read_dir(tmp_path / "ours")
    assert sorted(got) == sorted(ALL)
    for k, (_, v) in got.items():
        assert torch.equal(bits(v), bits(full(k))), k


def test_torch_hf_storage_metadata_holds_only_the_keys_the_format_notes_name(saved):
    # Probe of what torch 2.13 writes: DCP_SHARDING_INFO / DCP_VERSION / format,
    # no logical_fqn or storage_key, zero-size chunks of uneven shardings with
    # offsets at the end of the dimension, and JSON with spaces.
    seen_empty = False
    for f in sorted((saved[4] / "plain").glob("*.safetensors")):
        h = header(f)
        meta = h.pop("__metadata__")
        assert sorted(meta) == ["DCP_SHARDING_INFO", "DCP_VERSION", "format"], meta
        assert meta["DCP_VERSION"] == "1.0" and meta["format"] == "pt"
        info = json.loads(meta["DCP_SHARDING_INFO"])
        assert sorted(info) == sorted(h)
        assert all(list(v) == ["saved_offsets"] for v in info.values()), info
        for name, entry in h.items():
            if 0 in entry["shape"]:
                seen_empty = True
                dim = entry["shape"].index(0)
                assert info[name]["saved_offsets"][dim] == ALL[name][0][dim], (name, info[name])
    assert seen_empty, "expected torch to write the empty chunk of an uneven Shard on 4 ranks"


def test_ckpt_shards_read_by_torch_carry_ckpt_checksums_next_to_torch_keys(saved):
    for f in sorted((saved[4] / "ckpt").glob("*.safetensors")):
        meta = header(f)["__metadata__"]
        assert {"DCP_SHARDING_INFO", "DCP_VERSION", "format"} <= set(meta), meta
        assert meta["DCP_VERSION"] == "1.0"
