"""ckpt.torch.Checkpointer on FSDP2 ranks against NeMo's files and torch's
own loaders.

checkpointer_nemo.py DIR   (every check in one launch, on any world size)
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from common import TINY_LLAMA, finish, init, same_bits
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

warnings.simplefilter("ignore")
from ckpt.torch import Checkpointer, CheckpointingConfig, StatefulRNG  # noqa: E402

NEMO_RNG_KEYS = {
    "random_rng_state",
    "np_bit_generator",
    "np_keys",
    "np_position",
    "np_has_gauss",
    "np_cached_gaussian",
    "torch_rng_state",
    "cuda_rng_state",
}


def build(seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA))
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def trained(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    model = build(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.5, total_iters=10)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(seed))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    return model, opt, sched


def full(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        v = v.full_tensor() if isinstance(v, DTensor) else v
        out[k] = v.clone() if isinstance(v, torch.Tensor) else v
    return out


def full_optim(model, opt) -> dict:
    return full(
        get_optimizer_state_dict(model, opt, options=StateDictOptions(flatten_optimizer_state_dict=True))
    )


def assert_same(got: dict, want: dict, what: str) -> None:
    assert sorted(got) == sorted(want), (what, set(got) ^ set(want))
    for k, v in want.items():
        if isinstance(v, torch.Tensor):
            assert same_bits(got[k], v), (what, k)
        else:
            assert got[k] == v, (what, k, got[k], v)


class Loader:
    def __init__(self, pos: int) -> None:
        self.pos = pos

    def state_dict(self):
        return {"position": self.pos, "epoch": 3}

    def load_state_dict(self, sd):
        self.pos = sd["position"]


def check_nemo_files(root: str, rank: int, world: int) -> None:
    cfg = CheckpointingConfig(checkpoint_dir=root, save_consolidated=False)
    c = Checkpointer(cfg, dp_rank=rank, tp_rank=0, pp_rank=0)
    model, opt, sched = trained(1)
    path = os.path.join(root, "epoch_0_step_1")
    c.reserve(path)
    c.save_model(model, path)
    c.save_optimizer(opt, model, path, sched)
    rng = StatefulRNG(5 + rank)
    saved_rng = torch.get_rng_state()
    c.save_on_dp_ranks(Loader(10 + rank), "dataloader", path)
    c.save_on_global_ranks(rng, "rng", path)
    c.publish(path)
    assert c.latest() == os.path.normpath(path)
    assert not os.path.exists(os.path.join(path, ".incomplete"))
    want_model, want_optim = full(get_model_state_dict(model)), full_optim(model, opt)

    # optim/ is DCP's own format with NeMo's keys; torch's dcp.load reads it
    names = sorted(os.listdir(os.path.join(path, "optim")))
    assert ".metadata" in names and all(f"__{r}_0.distcp" in names for r in range(world)), names
    fresh, fresh_opt, fresh_sched = trained(2)
    Checkpointer(cfg, rank, 0, 0)  # (constructing one has no side effects on the optimizer)
    template = {
        "optim": get_optimizer_state_dict(
            fresh, fresh_opt, options=StateDictOptions(flatten_optimizer_state_dict=True)
        ),
        "sched": fresh_sched.state_dict(),
    }
    dcp.load(template, checkpoint_id=os.path.join(path, "optim"))
    meta = dcp.FileSystemReader(os.path.join(path, "optim")).read_metadata()
    keys = set(meta.state_dict_metadata)
    assert all(k.startswith(("optim.state.", "optim.param_groups.", "sched.")) for k in keys), sorted(keys)[
        :5
    ]
    assert "optim.state.model.layers.0.self_attn.q_proj.weight.exp_avg" in keys
    assert "optim.param_groups.model.layers.0.self_attn.q_proj.weight.lr" in keys
    assert template["sched"] == sched.state_dict()
    got = {k: (v.full_tensor() if isinstance(v, DTensor) else v) for k, v in template["optim"].items()}
    assert_same(got, want_optim, "dcp.load of optim/")

    # rng/ and dataloader/: torch.save files loadable with weights_only=True
    r = torch.load(os.path.join(path, "rng", f"rng_global_rank_{rank}.pt"), weights_only=True)
    assert set(r) == NEMO_RNG_KEYS and torch.equal(r["torch_rng_state"], saved_rng)
    d = torch.load(os.path.join(path, "dataloader", f"dataloader_dp_rank_{rank}.pt"), weights_only=True)
    assert d == {"position": 10 + rank, "epoch": 3}

    # model/: shards in DCP's Hugging Face layout + .hf_metadata
    mdir = os.path.join(path, "model")
    shards = sorted(n for n in os.listdir(mdir) if n.endswith(".safetensors"))
    assert shards == [f"shard-{r + 1:05d}-model-00001-of-00001.safetensors" for r in range(world)], shards
    meta_files = set(os.listdir(os.path.join(mdir, ".hf_metadata")))
    assert {"config.json", "generation_config.json", "fqn_to_file_index_mapping.json"} <= meta_files, (
        meta_files
    )
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    hf_sd = {k: torch.empty_like(v) for k, v in want_model.items()}
    dcp.load(hf_sd, storage_reader=HuggingFaceStorageReader(mdir), no_dist=True)
    assert_same(hf_sd, want_model, "HuggingFaceStorageReader of model/")

    # the Checkpointer restores everything bit for bit
    fresh_rng_state = StatefulRNG(99)
    c.load_model(fresh, mdir)
    c.load_optimizer(fresh_opt, fresh, path, fresh_sched)
    loader = Loader(0)
    c.load_on_dp_ranks(loader, "dataloader", path)
    c.load_on_global_ranks(fresh_rng_state, "rng", path)
    assert loader.pos == 10 + rank and torch.equal(torch.get_rng_state(), r["torch_rng_state"])
    assert_same(full(get_model_state_dict(fresh)), want_model, "load_model")
    assert_same(full_optim(fresh, fresh_opt), want_optim, "load_optimizer")
    assert fresh_sched.state_dict() == sched.state_dict()

    # distributed custom state: an EMA of the sharded parameters
    class Ema:
        def __init__(self, m: torch.nn.Module, scale: float) -> None:
            self.shadow = {k: v.detach() * scale for k, v in m.named_parameters()}

        def state_dict(self):
            return {"shadow": dict(self.shadow), "decay": 0.999}

        def load_state_dict(self, sd):
            for k, v in sd["shadow"].items():
                self.shadow[k].copy_(v)

    ema = Ema(model, 0.5)
    c.save_distributed_state(ema, "ema", path)
    assert os.path.exists(os.path.join(path, "ema", ".metadata"))
    other_ema = Ema(fresh, 0.0)
    c.load_distributed_state(other_ema, "ema", path)
    assert_same(full(other_ema.shadow), full(ema.shadow), "distributed state")

    # the reverse: optim/ written by NeMo's own call (plain dcp.save) is read
    nemo = os.path.join(root, "nemo_written")
    sd = {
        "optim": get_optimizer_state_dict(
            model, opt, options=StateDictOptions(flatten_optimizer_state_dict=True)
        ),
        "sched": sched.state_dict(),
    }
    dcp.save(sd, checkpoint_id=os.path.join(nemo, "optim"))
    other, other_opt, other_sched = trained(3)
    c.load_optimizer(other_opt, other, nemo, other_sched)
    assert_same(full_optim(other, other_opt), want_optim, "load_optimizer of a dcp.save optim/")
    assert other_sched.state_dict() == sched.state_dict()
    # a hostile .pt is refused with weights_only (NeMo's default)
    if rank == 0:
        with open(os.path.join(path, "dataloader", "dataloader_dp_rank_7.pt"), "wb") as f:
            pickle.dump(Loader(1), f)
    dist.barrier()
    bad = Checkpointer(cfg, dp_rank=7, tp_rank=0, pp_rank=0)
    try:
        bad.load_on_dp_ranks(Loader(0), "dataloader", path)
        raise AssertionError("a pickled object loaded with weights_only")
    except ValueError as e:
        assert "dataloader_dp_rank_7.pt" in str(e) and "allow_legacy_pickle_restore" in str(e), e


def check_async(root: str, rank: int) -> None:
    cfg = CheckpointingConfig(checkpoint_dir=root, is_async=True, save_consolidated=False)
    c = Checkpointer(cfg, dp_rank=rank, tp_rank=0, pp_rank=0)
    model, opt, sched = trained(4)
    want_model, want_optim = full(get_model_state_dict(model)), full_optim(model, opt)
    path = os.path.join(root, "epoch_0_step_2")
    c.reserve(path)
    c.save_model(model, path)
    c.save_optimizer(opt, model, path, sched)
    # the training loop goes on at once: parameters and moments change
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        for st in opt.state.values():
            st["exp_avg"].add_(1.0)
    c.publish(path)
    c.async_wait()
    assert c.latest() == os.path.normpath(path), c.latest()
    fresh, fresh_opt, fresh_sched = trained(5)
    c.load_model(fresh, os.path.join(path, "model"))
    c.load_optimizer(fresh_opt, fresh, path, fresh_sched)
    assert_same(full(get_model_state_dict(fresh)), want_model, "async model")
    assert_same(full_optim(fresh, fresh_opt), want_optim, "async optim")

    # a failing background write surfaces once, and LATEST stays
    broken = os.path.join(root, "epoch_0_step_3")
    c.reserve(broken)
    if rank == 0:
        open(os.path.join(broken, "optim"), "w").close()  # a file where the directory goes
    dist.barrier()
    c.save_model(model, broken)
    c.save_optimizer(opt, model, broken, sched)
    c.publish(broken)
    raised = 0
    try:
        c.async_wait()
    except BaseException:  # DCP raises CheckpointException, a BaseException
        raised += 1
    c.async_wait()  # the error is not raised again
    flags = [None] * dist.get_world_size()
    dist.all_gather_object(flags, raised)
    assert flags[0] == 1, flags  # rank 0's write of .metadata failed at least there
    assert c.latest() == os.path.normpath(path), c.latest()
    c.close()


def check_base_model_under_fsdp2(root: str, rank: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    base = os.path.join(root, "base")
    if rank == 0:
        torch.manual_seed(6)
        src = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA))
        src.to(torch.bfloat16).save_pretrained(base, max_shard_size="100KB")
    dist.barrier()
    want = LlamaForCausalLM.from_pretrained(base, dtype=torch.bfloat16).state_dict()
    model = build(7)
    c = Checkpointer(CheckpointingConfig(checkpoint_dir=root, save_consolidated=False), rank, 0, 0)
    c.load_base_model(model, torch.device("cpu"), "", base)
    got = full(get_model_state_dict(model))
    # FSDP2's parameters stay float32: the bf16 values are cast (exactly) into them
    assert_same(got, {k: v.float() for k, v in want.items() if k in got}, "base model under FSDP2")


def check_peft_under_fsdp2(root: str, rank: int) -> None:
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM

    def lora_model(seed: int) -> torch.nn.Module:
        torch.manual_seed(0)  # the same base weights
        base = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA))
        torch.manual_seed(seed)  # other adapter weights
        lora = peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        )
        return peft.get_peft_model(base, lora)

    model = lora_model(8)
    for layer in model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
    c = Checkpointer(CheckpointingConfig(checkpoint_dir=root, is_peft=True), rank, 0, 0)
    path = os.path.join(root, "peft")
    c.save_model(model, path, peft_config=model.peft_config["default"])
    if rank == 0:
        torch.manual_seed(0)
        plain = peft.PeftModel.from_pretrained(
            LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)), os.path.join(path, "model")
        )
        with torch.no_grad():
            assert torch.equal(plain(input_ids=ids).logits, want)
    fresh = lora_model(9)
    for layer in fresh.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(fresh)
    c.load_model(fresh, os.path.join(path, "model"))
    got, ref = full(fresh.state_dict()), full(model.state_dict())
    assert_same(got, ref, "PEFT under FSDP2")


def main() -> None:
    root = sys.argv[1]
    rank, world = init()
    check_nemo_files(os.path.join(root, "sync"), rank, world)
    check_async(os.path.join(root, "async"), rank)
    check_base_model_under_fsdp2(root, rank)
    check_peft_under_fsdp2(root, rank)
    print(f"OK rank {rank} {json.dumps('checkpointer')}", flush=True)
    finish()


if __name__ == "__main__":
    main()
