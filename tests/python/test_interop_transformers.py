"""transformers 5 `save_pretrained` / `from_pretrained` of tiny Llama, Mixtral
and Qwen3-MoE models (built from configs, no hub) against ckpt's CLI and
package, every tensor bit for bit and logits identical."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ckpt
import pytest
import safetensors.torch as st
import torch
from conftest import bits, cli

transformers = pytest.importorskip("transformers")

COMMON = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=64,
)
MODELS = ("llama", "mixtral", "qwen3_moe")
INPUT = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]])


def config(kind: str):
    if kind == "llama":
        return transformers.LlamaConfig(**COMMON)
    if kind == "mixtral":
        return transformers.MixtralConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2)
    return transformers.Qwen3MoeConfig(
        **COMMON, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, head_dim=8
    )


def read_dir(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(st.load_file(str(f)))
    return out


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], where: str) -> None:
    assert sorted(got) == sorted(want), where
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, (where, k)
        assert torch.equal(bits(got[k]), bits(v)), (where, k)


def logits(model_dir: Path) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir))
    model.eval()
    with torch.no_grad():
        return model(INPUT).logits


class Saved:
    def __init__(self, root: Path, kind: str):
        torch.manual_seed(1234)
        self.kind = kind
        self.model = transformers.AutoModelForCausalLM.from_config(config(kind)).eval()
        with torch.no_grad():
            self.logits = self.model(INPUT).logits
        self.single, self.sharded, self.bin, self.bin_sharded = (
            root / kind / d for d in ("single", "sharded", "bin", "bin_sharded")
        )
        self.model.save_pretrained(str(self.single))
        self.model.save_pretrained(str(self.sharded), max_shard_size="20KB")
        self.model.save_pretrained(str(self.bin), safe_serialization=False)
        # What is on disk (per-expert names for MoE models), not the fused
        # in-memory layout of transformers 5.
        self.disk = read_dir(self.single)
        # transformers 5 ignores safe_serialization=False (it writes
        # model.safetensors); write the .bin files older versions wrote.
        self.bin_ignored = (self.bin / "model.safetensors").exists()
        for f in self.bin.glob("*.safetensors"):
            f.unlink()
        torch.save(self.disk, self.bin / "pytorch_model.bin")
        shutil.copytree(self.sharded, self.bin_sharded)
        index = json.loads((self.sharded / "model.safetensors.index.json").read_text())
        for f in self.bin_sharded.glob("*.safetensors*"):
            f.unlink()
        names = {}
        for f in sorted(self.sharded.glob("*.safetensors")):
            names[f.name] = f.name.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
            torch.save(st.load_file(str(f)), self.bin_sharded / names[f.name])
        index["weight_map"] = {k: names[v] for k, v in index["weight_map"].items()}
        (self.bin_sharded / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Saved]:
    root = tmp_path_factory.mktemp("transformers")
    return {kind: Saved(root, kind) for kind in MODELS}


@pytest.mark.parametrize("kind", MODELS)
def test_save_pretrained_directories_inspect_with_every_tensor_and_verify(saved, kind):
    s = saved[kind]
    assert len(list(s.sharded.glob("model-*-of-*.safetensors"))) > 3
    for d in (s.single, s.sharded, s.bin, s.bin_sharded):
        info = json.loads(cli("inspect", "--json", d).stdout)
        got = {t["name"]: t for t in info["tensors"]}
        assert sorted(got) == sorted(s.disk), d
        for k, v in s.disk.items():
            assert got[k]["shape"] == list(v.shape), (d, k)
            assert got[k]["dtype"] == "F32", (d, k)
        assert info["total_bytes"] == sum(v.numel() * 4 for v in s.disk.values())
        verdict = json.loads(cli("verify", "--json", d).stdout)
        assert verdict["valid"] is True, (d, verdict)


def test_transformers_5_ignores_safe_serialization_false(saved):
    # A finding, kept as a test so a transformers upgrade that restores .bin
    # writing is noticed (then the hand-written .bin files can go).
    assert all(s.bin_ignored for s in saved.values())


@pytest.mark.parametrize("kind", MODELS)
def test_ckpt_load_reads_save_pretrained_directories_bit_for_bit(saved, kind):
    s = saved[kind]
    for d in (s.single, s.sharded):
        dst = {k: torch.zeros_like(v) for k, v in s.disk.items()}
        stats = ckpt.load(dst, d)
        assert not stats.missing_keys, stats.missing_keys
        assert_same(dst, s.disk, str(d))


def test_ckpt_load_fills_a_llama_models_own_state_dict_in_place_with_identical_logits(saved):
    s = saved["llama"]
    torch.manual_seed(99)
    other = transformers.AutoModelForCausalLM.from_config(config("llama")).eval()
    sd = other.state_dict()
    ckpt.load(sd, s.sharded)
    assert_same(dict(other.state_dict()), dict(s.model.state_dict()), "llama")
    with torch.no_grad():
        assert torch.equal(other(INPUT).logits, s.logits)


@pytest.mark.parametrize("kind", MODELS)
def test_ckpt_convert_turns_bin_archives_into_safetensors_that_from_pretrained_loads(saved, kind, tmp_path):
    s = saved[kind]
    for d in (s.bin, s.bin_sharded):
        out = tmp_path / d.name
        cli("convert", "--max-shard-size", "30000", d, out)
        assert_same(read_dir(out), s.disk, str(out))
        assert len(list(out.glob("*.safetensors"))) > 1
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert sorted(index["weight_map"]) == sorted(s.disk)
        if not (out / "config.json").exists():
            shutil.copy(s.single / "config.json", out)
        assert torch.equal(logits(out), s.logits), out


@pytest.mark.parametrize("kind", MODELS)
def test_ckpt_consolidation_of_a_ckpt_save_loads_with_from_pretrained_and_identical_logits(
    saved, kind, tmp_path
):
    s = saved[kind]
    sd = s.model.state_dict()  # transformers 5's in-memory names (fused experts)
    ckpt.save(dict(sd), tmp_path / "ck")
    ckpt.consolidate(tmp_path / "ck", tmp_path / "hf", max_shard_size=40_000)
    shutil.copy(s.single / "config.json", tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    assert_same(dict(model.state_dict()), dict(sd), kind)
    with torch.no_grad():
        assert torch.equal(model(INPUT).logits, s.logits)


@pytest.mark.parametrize("kind", ["mixtral", "qwen3_moe"])
def test_moe_grouped_conversion_matches_transformers_fused_experts_and_round_trips(saved, kind, tmp_path):
    s = saved[kind]
    src = tmp_path / "src"
    shutil.copytree(s.sharded, src)
    cli("convert", "--adapter", kind, "--to", "grouped", src, tmp_path / "grouped")
    grouped = read_dir(tmp_path / "grouped")
    fused = s.model.state_dict()
    for layer in range(COMMON["num_hidden_layers"]):
        prefix = f"model.layers.{layer}.mlp.experts."
        # ckpt's grouped layout is [experts, in, out]; transformers 5 fuses
        # [experts, out, in] in memory: the same numbers, transposed.
        assert torch.equal(
            grouped[prefix + "gate_and_up_projs"].transpose(1, 2), fused[prefix + "gate_up_proj"]
        )
        assert torch.equal(grouped[prefix + "down_projs"].transpose(1, 2), fused[prefix + "down_proj"])
    cli("convert", "--adapter", kind, "--to", "hf", tmp_path / "grouped", tmp_path / "hf")
    assert_same(read_dir(tmp_path / "hf"), s.disk, kind)
    if not (tmp_path / "hf" / "config.json").exists():
        shutil.copy(s.single / "config.json", tmp_path / "hf")
    assert torch.equal(logits(tmp_path / "hf"), s.logits)


def test_qwen3_moe_grouped_conversion_reads_the_config_json_transformers_5_writes(saved, tmp_path):
    s = saved["qwen3_moe"]
    cfg = json.loads((s.sharded / "config.json").read_text())
    assert "num_local_experts" in cfg and "num_experts" not in cfg  # what transformers 5.24 writes
    cli("convert", "--adapter", "qwen3_moe", "--to", "grouped", s.sharded, tmp_path / "grouped")
    assert "model.layers.0.mlp.experts.down_projs" in read_dir(tmp_path / "grouped")
