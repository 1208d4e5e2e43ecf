"""ckpt: checkpoints for distributed PyTorch training on a C++ engine.

Every rank saves only its shards; any other set of ranks loads them back in
any layout; a crash at any moment leaves the previous checkpoint intact::

    import ckpt
    ckpt.save(model.state_dict(), "/ckpt/step_100")          # every rank
    stats = ckpt.load(model.state_dict(), "/ckpt/step_100")  # any world size
    ckpt.consolidate("/ckpt/step_100", "/export/hf")         # a Hugging Face dir

Tensors are read and written in place (no copies): CPU tensors of any
safetensors dtype, views with strides, and DTensors (FSDP2, tensor
parallel, 2-D meshes). Ranks coordinate through the job's own
torch.distributed process group.
"""

from __future__ import annotations

from . import _ckpt as _ckpt
from .api import (
    CheckpointInfo,
    ChunkInfo,
    LoadStats,
    SaveFuture,
    TensorInfo,
    async_save,
    consolidate,
    inspect,
    load,
    save,
    verify,
)
from .errors import BY_CODE as _BY_CODE
from .errors import (
    AlreadyExistsError,
    CheckpointError,
    DataLossError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    IOError,
    NotFoundError,
    UnavailableError,
)

_ckpt.register_errors(_BY_CODE)

__version__: str = _ckpt.VERSION


def __getattr__(name: str) -> object:
    # ckpt.dcp imports torch.distributed.checkpoint, ckpt.torch transformers'
    # helpers: only when asked for. (ckpt.torch is not in __all__: a star
    # import must not shadow torch.)
    if name in ("dcp", "safetensors", "torch"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ckpt' has no attribute '{name}'")


__all__ = [
    "AlreadyExistsError",
    "CheckpointError",
    "CheckpointInfo",
    "ChunkInfo",
    "DataLossError",
    "FailedPreconditionError",
    "IOError",
    "InternalError",
    "InvalidArgumentError",
    "LoadStats",
    "NotFoundError",
    "SaveFuture",
    "TensorInfo",
    "UnavailableError",
    "async_save",
    "dcp",
    "consolidate",
    "inspect",
    "load",
    "safetensors",
    "save",
    "verify",
]
