"""ckpt for PyTorch training loops: the Checkpointer of NeMo AutoModel, on
ckpt's engine. Switch a NeMo script by its import::

    from ckpt.torch import Checkpointer, CheckpointingConfig
"""

from __future__ import annotations

from .checkpointer import Checkpointer, save_config, save_losses, to_empty_parameters_only
from .config import CheckpointingConfig, SaveConsolidatedMode, is_cloud_path
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
