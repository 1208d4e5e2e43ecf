"""Hugging Face model directories as NeMo's Checkpointer meets them: locating
a base model (a local directory or a hub-cache snapshot), its key mapping,
the key-difference report, the ``.hf_metadata/`` artifacts, and recomputing
non-persistent buffers after a load."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

__all__ = [
    "FQN_TO_DTYPE_MAPPING_FILENAME",
    "FQN_TO_FILE_INDEX_MAPPING_FILENAME",
    "apply_key_mapping",
    "base_index",
    "divide_keys_by_size",
    "hf_reference_path",
    "is_bin_checkpoint",
    "is_safetensors_checkpoint",
    "load_bin_state_dict",
    "reinit_non_persistent_buffers",
    "summarize_key_diff",
    "write_hf_metadata",
]

logger = logging.getLogger(__name__)

# NeMo's spelling of the two mapping files in <ckpt>/model/.hf_metadata/.
FQN_TO_FILE_INDEX_MAPPING_FILENAME = "fqn_to_file_index_mapping.json"
FQN_TO_DTYPE_MAPPING_FILENAME = "fqn_to_dtype_mapping.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
DEFAULT_SHARD_BYTES = 5 << 30


def _holds(path: str, suffix: str, index: str) -> bool:
    if os.path.isfile(path):
        return path.endswith(suffix)
    if os.path.isfile(os.path.join(path, index)):
        return True
    return os.path.isdir(path) and any(n.endswith(suffix) for n in os.listdir(path))


def is_safetensors_checkpoint(path: str) -> bool:
    """A directory of ``*.safetensors`` files (or such a file)."""
    return _holds(path, ".safetensors", SAFETENSORS_INDEX)


def is_bin_checkpoint(path: str) -> bool:
    """A ``pytorch_model*.bin`` checkpoint (file, sharded with index, or loose)."""
    return _holds(path, ".bin", BIN_INDEX)


def hf_reference_path(cache_dir: str | os.PathLike[str] | None, repo_id: str | None) -> str | None:
    """The hub-cache snapshot directory of `repo_id` under `cache_dir`
    (``models--org--name/snapshots/<rev>/``), preferring a snapshot that holds
    ``model.safetensors.index.json``; `repo_id` itself when it is a directory;
    None when there is none."""
    if repo_id is None:
        return None
    if os.path.isdir(repo_id):
        return repo_id
    if cache_dir is None:
        return None
    snapshots = os.path.join(os.fspath(cache_dir), "models--" + repo_id.replace("/", "--"), "snapshots")
    if not os.path.isdir(snapshots):
        return None
    revs = sorted(
        (os.path.join(snapshots, r) for r in os.listdir(snapshots)),
        key=lambda d: os.path.getmtime(d),
        reverse=True,
    )
    revs = [r for r in revs if os.path.isdir(r)]
    for r in revs:
        if os.path.isfile(os.path.join(r, SAFETENSORS_INDEX)):
            return r
    return revs[0] if revs else None


def apply_key_mapping(keys: Mapping[str, Any], key_mapping: Mapping[str, str]) -> dict[str, Any]:
    """Renames keys with ``{regex: replacement}`` pairs in order, Python `re`
    semantics (``re.subn``); the first pattern that matches a key renames it
    and the others are not tried (what NeMo and transformers do)."""
    out: dict[str, Any] = {}
    for key, value in keys.items():
        new = key
        for pattern, replacement in key_mapping.items():
            new, n = re.subn(pattern, replacement, key)
            if n:
                break
        out[new] = value
    return out


def summarize_key_diff(expected: Iterable[str], loaded: Iterable[str], limit: int = 10) -> dict[str, Any]:
    """Missing / unexpected key counts with a few sorted examples of each."""
    e, got = set(expected), set(loaded)
    missing, unexpected = sorted(e - got), sorted(got - e)
    return {
        "missing_count": len(missing),
        "unexpected_count": len(unexpected),
        "missing_examples": missing[:limit],
        "unexpected_examples": unexpected[:limit],
    }


def load_bin_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Reads ``pytorch_model.bin`` (single, sharded with index, or loose
    ``*.bin``) with ``torch.load(weights_only=True)``: no code runs."""
    if os.path.isfile(path):
        files = [path]
    elif os.path.isfile(os.path.join(path, BIN_INDEX)):
        with open(os.path.join(path, BIN_INDEX)) as f:
            weight_map = json.load(f).get("weight_map", {})
        files = [os.path.join(path, n) for n in sorted(set(weight_map.values()))]
    else:
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".bin"))
    if not files:
        raise FileNotFoundError(f"{path}: no pytorch_model*.bin files")
    out: dict[str, torch.Tensor] = {}
    for fn in files:
        try:
            part = torch.load(fn, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            raise ValueError(f"{fn}: not a weights-only torch checkpoint: {e}") from e
        if not isinstance(part, dict):
            raise ValueError(f"{fn}: holds a {type(part).__name__}, not a state dict")
        out.update(part)
    return out


def safetensors_dtypes(path: str) -> dict[str, str]:
    """Tensor name -> safetensors dtype name ("BF16", ...) of a Hugging Face
    model directory (read from the file headers)."""
    from .. import api
    from .._state import st_dtype

    out: dict[str, str] = {}
    for name, t in api.inspect(path).tensors.items():
        out[name] = t.dtype if isinstance(t.dtype, str) else st_dtype(t.dtype, name)
    return out


def base_index(reference: str) -> dict[str, int]:
    """FQN -> 1-based file number from a base model's safetensors index."""
    with open(os.path.join(reference, SAFETENSORS_INDEX)) as f:
        weight_map = json.load(f).get("weight_map", {})
    out = {}
    for k, fn in weight_map.items():
        m = re.search(r"-(\d+)-of-\d+\.safetensors$", fn)
        out[k] = int(m.group(1)) if m else 1
    return out


def divide_keys_by_size(keys: list[str], sizes: Mapping[str, int], target_bytes: int) -> dict[str, int]:
    """Assigns keys in order to 1-based files of about `target_bytes`."""
    out: dict[str, int] = {}
    index, used = 1, 0
    for k in keys:
        n = int(sizes.get(k, 0))
        if used and used + n > target_bytes:
            index, used = index + 1, 0
        out[k] = index
        used += n
    return out


def write_hf_metadata(
    directory: str,
    model: torch.nn.Module,
    tokenizer: Any,
    fqn_to_file_index: Mapping[str, int],
    fqn_to_dtype: Mapping[str, str] | None,
) -> None:
    """Writes config.json (and generation_config.json) from the model's
    config, the tokenizer's files and NeMo's two mapping files."""
    os.makedirs(directory, exist_ok=True)
    config = getattr(model, "config", None)
    if config is not None:
        with open(os.path.join(directory, "config.json"), "w") as f:
            if hasattr(config, "to_json_string"):
                f.write(config.to_json_string(use_diff=False))
            else:
                json.dump(dict(config), f, indent=2, default=str)
    gen = getattr(model, "generation_config", None)
    if gen is not None and hasattr(gen, "to_json_string"):
        with open(os.path.join(directory, "generation_config.json"), "w") as f:
            f.write(gen.to_json_string())
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    with open(os.path.join(directory, FQN_TO_FILE_INDEX_MAPPING_FILENAME), "w") as f:
        json.dump(dict(fqn_to_file_index), f, indent=2, sort_keys=True)
    if fqn_to_dtype:
        with open(os.path.join(directory, FQN_TO_DTYPE_MAPPING_FILENAME), "w") as f:
            json.dump(dict(fqn_to_dtype), f, indent=2, sort_keys=True)


def _rope_init(module: torch.nn.Module) -> Any:
    """The function the rotary module computed its ``inv_freq`` with at
    construction: ``rope_init_fn`` (transformers 4), or per ``rope_type``
    the class's ``compute_default_rope_parameters`` or transformers'
    ``ROPE_INIT_FUNCTIONS`` (transformers 5)."""
    fn = getattr(module, "rope_init_fn", None)
    if fn is not None:
        return fn
    rope_type = getattr(module, "rope_type", None)
    if rope_type is None:
        return None
    if rope_type == "default":
        return getattr(module, "compute_default_rope_parameters", None)
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    return ROPE_INIT_FUNCTIONS.get(rope_type)


def reinit_non_persistent_buffers(model: torch.nn.Module) -> list[str]:
    """Recomputes rotary ``inv_freq`` (and ``original_inv_freq``) buffers the
    way the model's own rotary module computes them at construction; they
    are not in checkpoints, and a meta-device or ``to_empty`` model holds
    garbage there. Returns the names of the buffers recomputed."""
    done: list[str] = []
    for name, module in model.named_modules():
        buf = module._buffers.get("inv_freq")
        cfg = getattr(module, "config", None)
        init = _rope_init(module) if buf is not None and cfg is not None else None
        if init is None or buf is None:
            continue
        device = buf.device if buf.device.type != "meta" else torch.device("cpu")
        result = init(cfg, device=device)
        inv_freq = (result[0] if isinstance(result, tuple) else result).to(device)
        module._buffers["inv_freq"] = inv_freq
        if isinstance(result, tuple) and hasattr(module, "attention_scaling"):
            module.attention_scaling = result[1]
        if "original_inv_freq" in module._buffers:
            module._buffers["original_inv_freq"] = inv_freq.clone()
        elif hasattr(module, "original_inv_freq"):
            module.original_inv_freq = inv_freq.clone()
        done.append(f"{name}.inv_freq" if name else "inv_freq")
    return done
