"""CheckpointingConfig: the fields, defaults and meanings of NeMo AutoModel's
config of the same name, so a recipe's ``checkpoint:`` YAML block builds it
unchanged.

Fields that steer machinery ckpt does differently (or not at all) are
accepted and explained in a warning, never refused.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checkpointer import Checkpointer

__all__ = ["CheckpointingConfig", "SaveConsolidatedMode"]

logger = logging.getLogger(__name__)


class SaveConsolidatedMode(str, Enum):
    """When a consolidated Hugging Face directory is exported."""

    FALSE = "false"
    FINAL = "final"
    EVERY = "every"


def _consolidated_mode(value: Any) -> SaveConsolidatedMode:
    if isinstance(value, SaveConsolidatedMode):
        return value
    if isinstance(value, bool):
        return SaveConsolidatedMode.EVERY if value else SaveConsolidatedMode.FALSE
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("true", "every"):
            return SaveConsolidatedMode.EVERY
        if v == "final":
            return SaveConsolidatedMode.FINAL
        if v == "false":
            return SaveConsolidatedMode.FALSE
    raise ValueError(
        f"checkpoint.save_consolidated: unsupported value {value!r} (use false, final, every, or a boolean)"
    )


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - transformers brings huggingface_hub
        home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
        return os.environ.get("HF_HUB_CACHE", os.path.join(home, "hub"))


def is_cloud_path(path: str | os.PathLike[str]) -> bool:
    """True for ``msc://`` object-storage paths (NeMo's spelling)."""
    return os.fspath(path).startswith("msc://")


@dataclass
class CheckpointingConfig:
    """Checkpointing settings, field for field NeMo AutoModel's.

    Example::

        cfg = CheckpointingConfig.from_yaml("recipe.yaml")   # its checkpoint: block
        cfg = CheckpointingConfig(checkpoint_dir="ckpts/", is_async=True)
    """

    enabled: bool = True
    checkpoint_dir: str | Path = "checkpoints/"
    model_save_format: str = "safetensors"
    model_cache_dir: str | Path | None = None
    model_repo_id: str | None = None
    save_consolidated: bool | str | SaveConsolidatedMode = "final"
    is_peft: bool = False
    model_state_dict_keys: list[str] | None = None
    is_async: bool = False
    wait_for_staging: bool = False
    cpu_offload: bool = False
    allow_legacy_pickle_restore: bool = False
    dequantize_base_checkpoint: bool | None = None
    original_model_root_dir: str | None = None
    skip_task_head_prefixes_for_base_model: list[str] | None = None
    single_rank_consolidation: bool = False
    staging_dir: str | None = None
    v4_compatible: bool = False
    diffusers_compatible: bool = False
    best_metric_key: str = "default"
    consolidation_timeout_minutes: int = 30
    max_recent_checkpoints: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.consolidation_timeout_minutes, bool) or not (
            isinstance(self.consolidation_timeout_minutes, (int, float))
            and self.consolidation_timeout_minutes > 0
        ):
            raise ValueError(
                "checkpoint.consolidation_timeout_minutes must be greater than 0, "
                f"not {self.consolidation_timeout_minutes!r}"
            )
        if not isinstance(self.allow_legacy_pickle_restore, bool):
            raise ValueError(
                "checkpoint.allow_legacy_pickle_restore must be a boolean, "
                f"not {self.allow_legacy_pickle_restore!r}"
            )
        if self.model_cache_dir is None:
            self.model_cache_dir = _hub_cache()
        fmt = str(getattr(self.model_save_format, "value", self.model_save_format)).lower()
        if self.is_peft and fmt == "torch_save":
            _warn(
                "PEFT checkpointing is not supported for `torch_save` format; falling back to "
                "`safetensors` (all other checkpoint settings are preserved)."
            )
            fmt = "safetensors"
            self.save_consolidated = SaveConsolidatedMode.FINAL
        if fmt not in ("safetensors", "torch_save"):
            raise ValueError(
                f"checkpoint.model_save_format: unsupported format {self.model_save_format!r} "
                "(supported: safetensors, torch_save)"
            )
        if fmt == "torch_save":
            _warn(
                "checkpoint.model_save_format=torch_save: ckpt writes model/ as sharded safetensors "
                "(DCP's Hugging Face layout) in every case; torch.distributed.checkpoint and NeMo read it"
            )
        self.model_save_format = fmt
        if self.max_recent_checkpoints is not None and (
            isinstance(self.max_recent_checkpoints, bool)
            or not isinstance(self.max_recent_checkpoints, int)
            or self.max_recent_checkpoints < 1
        ):
            raise ValueError(
                "checkpoint.max_recent_checkpoints must be unset or a positive integer, "
                f"not {self.max_recent_checkpoints!r}"
            )
        self.save_consolidated = _consolidated_mode(self.save_consolidated)
        if self.save_consolidated != SaveConsolidatedMode.FALSE and is_cloud_path(self.checkpoint_dir):
            raise ValueError(
                f"Consolidated safetensors export (save_consolidated={self.save_consolidated.value}) "
                f"is not compatible with cloud storage paths ('{self.checkpoint_dir}'); "
                "set save_consolidated=false"
            )
        for name, why in _NOT_APPLICABLE.items():
            value = getattr(self, name)
            if value != _DEFAULTS[name]:
                _warn(f"checkpoint.{name}={value!r} has no effect in ckpt: {why}")
        if self.wait_for_staging and not self.is_async:
            _warn("checkpoint.wait_for_staging=True has no effect unless is_async=True")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckpointingConfig:
        """Builds the config from a recipe's ``checkpoint:`` mapping. Keys
        this config does not know (a newer NeMo's) are warned about and
        ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in d if k not in known)
        if unknown:
            _warn(f"checkpoint: ignoring keys ckpt does not know: {unknown}")
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_yaml(
        cls, path: str | os.PathLike[str], section: str | None = "checkpoint"
    ) -> CheckpointingConfig:
        """Reads a NeMo recipe YAML and builds the config from its ``checkpoint:``
        block (or the whole file with ``section=None``)."""
        import yaml

        with open(path) as f:
            doc = yaml.safe_load(f) or {}
        if section is not None:
            if not isinstance(doc, dict) or section not in doc:
                raise KeyError(f"{os.fspath(path)}: no '{section}:' block")
            doc = doc[section]
        if not isinstance(doc, dict):
            raise ValueError(f"{os.fspath(path)}: '{section}' is not a mapping")
        return cls.from_dict(doc)

    def build(self, dp_rank: int, tp_rank: int, pp_rank: int, moe_mesh: Any = None) -> Checkpointer:
        """The Checkpointer for this config (NeMo's ``build``)."""
        from .checkpointer import Checkpointer

        return Checkpointer(config=self, dp_rank=dp_rank, tp_rank=tp_rank, pp_rank=pp_rank, moe_mesh=moe_mesh)


# Fields ckpt accepts but whose machinery it does not have; a non-default
# value is explained in a warning.
_NOT_APPLICABLE = {
    "diffusers_compatible": "ckpt names the consolidated index model.safetensors.index.json only",
    "staging_dir": "ckpt stages consolidation output beside the destination and renames it into place",
    "single_rank_consolidation": "ckpt consolidates on every rank of the job",
    "v4_compatible": "config.json is written from the in-memory transformers config",
}
_DEFAULTS = {f.name: f.default for f in fields(CheckpointingConfig)}


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)
    logger.warning(message)
