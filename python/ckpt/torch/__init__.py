"""ckpt for PyTorch training loops: the Checkpointer of NeMo AutoModel, on
ckpt's engine. Switch a NeMo script by its import::

    from ckpt.torch import Checkpointer, CheckpointingConfig
"""

from __future__ import annotations

from ._ranks import save_config, save_losses
from .checkpointer import Checkpointer
from .config import CheckpointingConfig, SaveConsolidatedMode, is_cloud_path
from .model_state import to_empty_parameters_only
from .stateful import StatefulRNG

__all__ = [
    "Checkpointer",
    "CheckpointingConfig",
    "SaveConsolidatedMode",
    "StatefulRNG",
    "is_cloud_path",
    "save_config",
    "save_losses",
    "to_empty_parameters_only",
]
