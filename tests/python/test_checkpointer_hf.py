"""ckpt.torch's Checkpointer on one process: NeMo's config and recipe YAML,
base models from Hugging Face directories (.bin, sharded safetensors, the
hub-cache layout), key mapping with Python `re` semantics, dtype
preservation, rotary buffers, tied embeddings, and PEFT adapters that
`peft.PeftModel.from_pretrained` loads."""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from conftest import bits
from jobs.common import TINY_LLAMA

transformers = pytest.importorskip("transformers")
from ckpt.torch import Checkpointer, CheckpointingConfig, SaveConsolidatedMode  # noqa: E402
from ckpt.torch.hf import apply_key_mapping  # noqa: E402

HERE = Path(__file__).resolve().parent
COMMON = TINY_LLAMA
INPUT = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]])


def llama(seed: int, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON, **kw)).eval()


def ckptr(**kw) -> Checkpointer:
    kw.setdefault("save_consolidated", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Checkpointer(CheckpointingConfig(**kw), dp_rank=0, tp_rank=0, pp_rank=0)


def assert_same_params(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(bits(sa[k]), bits(sb[k])), k


# ---------------------------------------------------------------- config


def test_the_config_has_nemos_fields_and_defaults():
    cfg = CheckpointingConfig()
    assert cfg.save_consolidated is SaveConsolidatedMode.FINAL
    assert (cfg.is_async, cfg.wait_for_staging, cfg.cpu_offload, cfg.allow_legacy_pickle_restore) == (
        False,
        False,
        False,
        False,
    )
    assert cfg.consolidation_timeout_minutes == 30
    assert cfg.model_save_format == "safetensors"
    assert cfg.checkpoint_dir == "checkpoints/"
    assert cfg.dequantize_base_checkpoint is None and cfg.model_state_dict_keys is None
    assert cfg.v4_compatible is False and cfg.max_recent_checkpoints is None
    assert cfg.model_cache_dir  # the hub cache, as NeMo resolves it


def test_a_nemo_recipe_yaml_checkpoint_block_parses():
    cfg = CheckpointingConfig.from_yaml(HERE / "data" / "nemo_recipe_llama_sft.yaml")
    assert cfg.enabled is True and cfg.checkpoint_dir == "checkpoints/"
    assert cfg.save_consolidated is SaveConsolidatedMode.EVERY  # `true` is NeMo's legacy spelling of every
    assert cfg.is_async is True and cfg.consolidation_timeout_minutes == 45
    assert cfg.max_recent_checkpoints == 3 and cfg.dequantize_base_checkpoint is False


def test_fields_ckpt_cannot_apply_warn_and_bad_values_name_the_field():
    with pytest.warns(UserWarning, match="diffusers_compatible"):
        CheckpointingConfig(diffusers_compatible=True)
    with pytest.warns(UserWarning, match="torch_save"):
        CheckpointingConfig(model_save_format="torch_save")
    with pytest.raises(ValueError, match="consolidation_timeout_minutes.*0"):
        CheckpointingConfig(consolidation_timeout_minutes=0)
    with pytest.raises(ValueError, match="save_consolidated.*'sometimes'"):
        CheckpointingConfig(save_consolidated="sometimes")
    with pytest.raises(ValueError, match="model_save_format.*'npz'"):
        CheckpointingConfig(model_save_format="npz")


# ------------------------------------------------------------ key mapping


def test_key_mapping_has_python_re_semantics_and_the_first_matching_pattern_wins():
    keys = {"language_model.model.layers.0.w": 1, "lm_head.weight": 2, "vision.x": 3}
    mapping = {
        r"^language_model\.model\.(.*)$": r"model.language_model.\1",
        r"^lm_": "head_",
        r"^(\w+)\.x": r"\1.y",
    }
    got = apply_key_mapping(keys, mapping)
    assert got == {"model.language_model.layers.0.w": 1, "head_head.weight": 2, "vision.y": 3}
    # once a pattern changed a key the later ones are not applied to it
    assert apply_key_mapping({"ab": 0}, {"a": "b", "b": "c"}) == {"bb": 0}


# ------------------------------------------------------------ base models


def test_a_base_model_loads_from_sharded_safetensors_in_a_hub_cache_keeping_bf16(tmp_path):
    src = llama(1).to(torch.bfloat16)
    snap = tmp_path / "hub" / "models--acme--tiny-llama" / "snapshots" / "0123abcd"
    src.save_pretrained(snap, max_shard_size="100KB")
    assert (snap / "model.safetensors.index.json").exists() and len(list(snap.glob("*.safetensors"))) > 1
    dst = llama(2)  # float32, other values
    c = ckptr()
    c.load_base_model(dst, torch.device("cpu"), str(tmp_path / "hub"), "acme/tiny-llama")
    assert dst.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16  # the checkpoint's dtype
    assert_same_params(dst, src)
    # logits as transformers' own loader gives them (it keeps inv_freq in float32, as the load does)
    want = transformers.AutoModelForCausalLM.from_pretrained(snap).eval()
    with torch.no_grad():
        assert torch.equal(dst(INPUT).logits, want(INPUT).logits)


def test_a_base_model_loads_from_pytorch_model_bin_files(tmp_path):
    src = llama(3)
    sd = src.state_dict()
    keys = sorted(sd)
    half = len(keys) // 2
    # a sharded .bin checkpoint as older transformers wrote it
    parts = {"pytorch_model-00001-of-00002.bin": keys[:half], "pytorch_model-00002-of-00002.bin": keys[half:]}
    for name, ks in parts.items():
        torch.save({k: sd[k].clone() for k in ks}, tmp_path / name)
    index = {"metadata": {}, "weight_map": {k: n for n, ks in parts.items() for k in ks}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    src.config.save_pretrained(tmp_path)
    dst = llama(4)
    ckptr().load_base_model(dst, torch.device("cpu"), "", str(tmp_path))
    assert_same_params(dst, src)


def test_a_bin_file_holding_code_is_refused_naming_the_file(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"model.embed_tokens.weight": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: not a weights-only"):
        ckptr().load_model(llama(0), str(tmp_path), is_init_step=True)


def test_renamed_checkpoint_keys_load_through_key_mapping_and_a_missing_key_is_warned(tmp_path, caplog):
    import safetensors.torch as st

    src = llama(5)
    renamed = {k.replace("model.", "backbone.", 1): v.contiguous() for k, v in src.state_dict().items()}
    renamed.pop("backbone.norm.weight")
    st.save_file(renamed, str(tmp_path / "model.safetensors"))
    dst = llama(6)
    before = dst.model.norm.weight.clone()
    with caplog.at_level(logging.WARNING):
        ckptr().load_model(
            dst, str(tmp_path), is_init_step=True, key_mapping={r"^backbone\.(.*)$": r"model.\1"}
        )
    assert torch.equal(
        dst.model.layers[1].self_attn.q_proj.weight, src.model.layers[1].self_attn.q_proj.weight
    )
    assert torch.equal(dst.model.norm.weight, before)  # absent from the checkpoint: kept
    assert "missing=1" in caplog.text and "model.norm.weight" in caplog.text


def test_a_meta_device_model_is_materialized_loaded_and_its_rotary_buffers_recomputed(tmp_path):
    src = llama(7)
    src.save_pretrained(tmp_path)
    with torch.device("meta"):
        dst = transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON))
    c = ckptr()
    with pytest.raises(ValueError, match="meta device.*initialize_model_weights"):
        c.load_model(dst, str(tmp_path), is_init_step=True)
    Checkpointer.initialize_model_weights(dst, torch.device("cpu"))
    rotary = dst.model.rotary_emb
    rotary.inv_freq.fill_(float("nan"))  # what to_empty leaves is garbage
    c.load_base_model(dst, torch.device("cpu"), "", str(tmp_path))
    assert torch.equal(rotary.inv_freq, src.model.rotary_emb.inv_freq)
    with torch.no_grad():
        assert torch.equal(dst.eval()(INPUT).logits, src(INPUT).logits)


def test_tied_embeddings_are_saved_once_and_stay_tied_after_a_load(tmp_path):
    src = llama(8, tie_word_embeddings=True)
    assert src.lm_head.weight is src.model.embed_tokens.weight
    c = ckptr(checkpoint_dir=str(tmp_path))
    c.save_model(src, str(tmp_path / "step"))
    import ckpt

    names = set(ckpt.inspect(tmp_path / "step" / "model").tensors)
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    dst = llama(9, tie_word_embeddings=True)
    c.load_model(dst, str(tmp_path / "step" / "model"))
    assert dst.lm_head.weight is dst.model.embed_tokens.weight
    assert_same_params(dst, src)


def test_save_model_writes_hf_metadata_and_a_consolidated_dir_from_pretrained_loads(tmp_path):
    base = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "r1"
    src = llama(10).to(torch.bfloat16)
    src.save_pretrained(base, max_shard_size="100KB")
    model = llama(11)
    c = ckptr(
        checkpoint_dir=str(tmp_path / "ck"),
        model_cache_dir=str(tmp_path / "hub"),
        model_repo_id="acme/tiny",
        save_consolidated="final",
    )
    c.load_base_model(model, torch.device("cpu"), str(tmp_path / "hub"), "acme/tiny")
    tok_dir = tmp_path / "tok"
    _tiny_tokenizer(tok_dir)
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    path = tmp_path / "ck" / "epoch_0_step_1"
    c.save_model(model, str(path), tokenizer=tok, is_final_checkpoint=True)
    meta = path / "model" / ".hf_metadata"
    assert json.loads((meta / "config.json").read_text())["model_type"] == "llama"
    assert (meta / "tokenizer_config.json").exists()
    index = json.loads((meta / "fqn_to_file_index_mapping.json").read_text())
    base_index = json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index) == set(model.state_dict())
    for k, f in base_index.items():
        assert index[k] == int(f.split("-")[1]), k  # the base model's file layout is kept
    dtypes = json.loads((meta / "fqn_to_dtype_mapping.json").read_text())
    assert set(dtypes.values()) == {"BF16"}
    out = path / "model" / "consolidated"
    assert not (out / "fqn_to_file_index_mapping.json").exists() and (out / "tokenizer_config.json").exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
    assert_same_params(hf, model)
    with torch.no_grad():
        assert torch.equal(hf(INPUT).logits, model(INPUT).logits)


def _tiny_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(250)} | {"[UNK]": 250}
    t = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]").save_pretrained(path)


# ------------------------------------------------------------------- PEFT


def test_a_lora_adapter_saves_as_peft_files_that_peft_model_from_pretrained_loads(tmp_path):
    peft = pytest.importorskip("peft")
    base = llama(12)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(base, lora)
    c = ckptr(is_peft=True)
    path = tmp_path / "epoch_0_step_5"
    c.save_model(model, str(path), peft_config=lora)
    adapter_dir = path / "model"
    assert {p.name for p in adapter_dir.iterdir()} >= {
        "adapter_model.safetensors",
        "adapter_config.json",
        "automodel_peft_config.json",
    }
    import safetensors

    with safetensors.safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert not f.metadata()
    assert keys and all(k.startswith("base_model.model.") and "lora_" in k for k in keys)
    loaded = peft.PeftModel.from_pretrained(llama(12), str(adapter_dir)).eval()
    with torch.no_grad():
        want = model.eval()(INPUT).logits
        assert torch.equal(loaded(INPUT).logits, want)
    # and the Checkpointer reads its own adapter back
    fresh = peft.get_peft_model(
        llama(12), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    c.load_model(fresh, str(adapter_dir))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(INPUT).logits, want)
    shutil.rmtree(tmp_path)


# -------------------------------------------------------------------- MoE


@pytest.mark.parametrize("kind", ["mixtral", "qwen3_moe"])
def test_moe_models_save_per_expert_tensors_and_load_from_save_pretrained_dirs(kind, tmp_path):
    import ckpt

    small = dict(COMMON, hidden_size=32, intermediate_size=64, vocab_size=128)
    if kind == "mixtral":
        cfg = transformers.MixtralConfig(**small, num_local_experts=4, num_experts_per_tok=2)
        expert = "model.layers.1.block_sparse_moe.experts.3.w3.weight"
    else:
        cfg = transformers.Qwen3MoeConfig(
            **small, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, head_dim=8
        )
        expert = "model.layers.1.mlp.experts.3.up_proj.weight"
    torch.manual_seed(0)
    src = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    src.save_pretrained(tmp_path / "hf")
    torch.manual_seed(1)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    c = ckptr(checkpoint_dir=str(tmp_path), save_consolidated="every")
    c.load_base_model(model, torch.device("cpu"), "", str(tmp_path / "hf"))
    assert_same_params(model, src)
    # a bf16 base checkpoint: the fused experts keep float32 (values cast), the rest turns bf16
    import copy

    copy.deepcopy(src).to(torch.bfloat16).save_pretrained(tmp_path / "hf16")
    other = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with pytest.warns(UserWarning, match="keep the model's dtype"):
        c.load_base_model(other, torch.device("cpu"), "", str(tmp_path / "hf16"))
    fused = other.model.layers[0].mlp.experts.gate_up_proj
    assert (
        fused.dtype == torch.float32 and other.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    )
    assert torch.equal(fused, src.model.layers[0].mlp.experts.gate_up_proj.to(torch.bfloat16).float())
    c.save_model(model, str(tmp_path / "step"))
    info = ckpt.inspect(tmp_path / "step" / "model")
    assert expert in info.tensors and not any("gate_up_proj" in k for k in info.tensors)
    up = src.model.layers[1].mlp.experts.gate_up_proj[3]
    assert info.tensors[expert].shape == [up.shape[0] // 2, up.shape[1]]
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "step" / "model" / "consolidated"
    ).eval()
    assert_same_params(hf, src)
    with torch.no_grad():
        assert torch.equal(hf(INPUT).logits, src(INPUT).logits)


# -------------------------------------------------------------- lifecycle


def test_publish_moves_latest_and_lowest_val_and_keeps_the_newest_checkpoints(tmp_path):
    from ckpt.torch import save_config, save_losses

    c = ckptr(checkpoint_dir=str(tmp_path), max_recent_checkpoints=2, best_metric_key="val_loss")
    model = llama(13)
    metrics = {1: 3.0, 2: 2.0, 3: float("nan"), 4: 2.5, 5: 2.25}
    for step, metric in metrics.items():
        path = tmp_path / f"epoch_0_step_{step}"
        c.reserve(str(path))
        assert (path / ".incomplete").exists()
        c.save_model(model, str(path))
        save_losses({"val_loss": metric}, str(path))
        save_config({"step": step, "lr": 1e-3}, str(path))
        c.publish(str(path), best_val_metric=metric)
        assert c.latest() == str(path) and not (path / ".incomplete").exists()
    assert os.readlink(tmp_path / "LATEST") == "epoch_0_step_5"
    assert os.readlink(tmp_path / "LOWEST_VAL") == "epoch_0_step_2"  # 2.0; NaN ignored
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("epoch_"))
    assert kept == ["epoch_0_step_2", "epoch_0_step_4", "epoch_0_step_5"]  # newest 2 + LOWEST_VAL's
    import yaml

    assert yaml.safe_load((tmp_path / "epoch_0_step_5" / "config.yaml").read_text()) == {
        "step": 5,
        "lr": 1e-3,
    }
    # a published checkpoint is never overwritten; an interrupted one is replaced
    with pytest.raises(FileExistsError, match="epoch_0_step_5: already holds a published checkpoint"):
        c.reserve(str(tmp_path / "epoch_0_step_5"))
    half = tmp_path / "epoch_0_step_6"
    c.reserve(str(half))
    (half / "junk").write_text("left by a killed save")
    c.reserve(str(half))
    assert sorted(p.name for p in half.iterdir()) == [".incomplete"]
    assert c.latest() == str(tmp_path / "epoch_0_step_5")


def test_task_head_prefixes_are_skipped_when_loading_a_base_model(tmp_path):
    src = llama(14)
    src.save_pretrained(tmp_path)
    dst = llama(15)
    head = dst.lm_head.weight.clone()
    ckptr(skip_task_head_prefixes_for_base_model=["lm_head."]).load_base_model(
        dst, torch.device("cpu"), "", str(tmp_path)
    )
    assert torch.equal(dst.lm_head.weight, head)  # kept: a new task head
    assert torch.equal(dst.model.embed_tokens.weight, src.model.embed_tokens.weight)


def test_a_checkpoint_key_subset_loads_only_when_allowed_and_never_a_foreign_architecture(tmp_path, caplog):
    import ckpt

    src = llama(16)
    part = {k: v for k, v in src.state_dict().items() if not k.startswith("lm_head.")}
    ckpt.save(part, tmp_path / "partial")
    c = ckptr()
    with pytest.raises(ckpt.CheckpointError, match="lm_head.weight"):
        c.load_model(llama(17), str(tmp_path / "partial"))
    dst = llama(17)
    head = dst.lm_head.weight.clone()
    with caplog.at_level(logging.WARNING):
        c.load_model(dst, str(tmp_path / "partial"), allow_checkpoint_key_subset=True)
    assert "missing 1 requested model keys" in caplog.text and "lm_head.weight" in caplog.text
    assert torch.equal(dst.lm_head.weight, head)
    assert torch.equal(dst.model.norm.weight, src.model.norm.weight)
    extra = dict(part, **{"vision_tower.proj.weight": torch.zeros(2, 2)})
    ckpt.save(extra, tmp_path / "foreign")
    with pytest.raises(
        RuntimeError, match=r"1 keys absent from the model \(examples=\['vision_tower.proj.weight'\]"
    ):
        c.load_model(llama(17), str(tmp_path / "foreign"), allow_checkpoint_key_subset=True)
    ckpt.save({"unrelated": torch.zeros(1)}, tmp_path / "none")
    with pytest.raises(ckpt.CheckpointError, match="no state-dict key is in the checkpoint"):
        c.load_model(llama(17), str(tmp_path / "none"), allow_checkpoint_key_subset=True)
