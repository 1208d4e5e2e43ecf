"""torch.distributed.checkpoint storage on ckpt's engine.

Existing DCP code changes one argument::

    import torch.distributed.checkpoint as dcp
    dcp.save(state_dict, storage_writer=ckpt.dcp.StorageWriter("/ckpt/step_100"))
    dcp.load(state_dict, storage_reader=ckpt.dcp.StorageReader("/ckpt/step_100"))

DCP plans (which rank writes which chunk, replicas deduplicated) and
gathers results as usual; ckpt writes each rank's chunks into one
safetensors file of the DCP Hugging Face layout (``shard-0000R-model-00001-
of-00001.safetensors`` with ``DCP_SHARDING_INFO``), records per-chunk XXH64
checksums and a manifest, and publishes the directory atomically when the
coordinator finishes: a failed or interrupted save leaves nothing at the
path. torch's own ``HuggingFaceStorageReader`` reads the result, and
``StorageReader`` reads torch's ``HuggingFaceStorageWriter`` output.

Writers and readers hold configuration only, so ``dcp.async_save`` with
either executor (thread or process) can take them.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    SavePlan,
    SavePlanner,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader as _StorageReader
from torch.distributed.checkpoint.storage import StorageWriter as _StorageWriter
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from . import _ckpt
from ._state import Chunk, TensorDesc, _local_cpu, _strides, st_dtype, torch_dtype
from .api import inspect_files
from .errors import InvalidArgumentError

__all__ = ["StorageReader", "StorageWriter"]


@dataclass(frozen=True)
class _Written:
    """Where a rank's items went (carried to the coordinator in WriteResults)."""

    file: str
    size: int
    header_hash: str


@dataclass(frozen=True)
class _Value:
    """A non-tensor item's bytes, carried to the coordinator."""

    data: bytes


def _local_path(checkpoint_id: str | os.PathLike[str]) -> str:
    p = os.fspath(checkpoint_id)
    if "://" in p:
        raise InvalidArgumentError(f"checkpoint id '{p}' is not a local path")
    return os.path.abspath(p)


def _staging_token(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()[:16]


def _staging_path(path: str) -> str:
    parent, name = os.path.split(path)
    return os.path.join(parent, f".{name}.tmp-{_staging_token(path)}")


class StorageWriter(_StorageWriter):
    """Writes a DCP checkpoint as ckpt's sharded directory.

    ``path`` is where the checkpoint appears once complete (a
    ``checkpoint_id`` given to ``dcp.save`` replaces it). It must not exist,
    or be an empty directory: a checkpoint is never overwritten.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self.path = _local_path(path) if path is not None else None
        self.is_coordinator = False
        self._staging: str | None = None

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id is not None:
            self.path = _local_path(checkpoint_id)

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator
        if self.path is None:
            raise InvalidArgumentError("StorageWriter needs a path or a checkpoint_id")
        self._staging = _staging_path(self.path)
        if is_coordinator:
            # Every rank derives the same staging name from the path, so the
            # plans carry nothing that changes between saves (DCP may cache
            # them). Staging an earlier save left behind is removed here.
            if os.path.isdir(self.path) and not os.path.islink(self.path) and not os.listdir(self.path):
                os.rmdir(self.path)  # an empty directory made ahead of the save
            made = _ckpt.create_staging_dir(self.path, _staging_token(self.path))
            assert made == self._staging, (made, self._staging)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return [
            replace(p, storage_data={"file": f"shard-{i + 1:05d}-model-00001-of-00001.safetensors"})
            for i, p in enumerate(plans)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        assert self._staging is not None
        staging = self._staging
        tensors: list[TensorDesc] = []
        keep: list[torch.Tensor] = []
        tensor_items = []
        values: list[tuple[Any, bytes]] = []
        for item in plan.items:
            data = planner.resolve_data(item)
            if item.type == WriteItemType.BYTE_IO:
                buf = data.getvalue() if isinstance(data, io.BytesIO) else bytes(data)
                values.append((item, buf))
                continue
            td = item.tensor_data
            assert td is not None and isinstance(data, torch.Tensor)
            fqn = item.index.fqn
            t = data.detach()
            if t.device.type != "cpu":
                t = t.cpu()
            t = _local_cpu(t, fqn, for_load=False)
            keep.append(t)
            chunk: Chunk = (list(td.chunk.offsets), list(td.chunk.sizes), t.data_ptr(), _strides(t))
            tensors.append((fqn, st_dtype(t.dtype, f"tensor '{fqn}'"), list(td.size), [chunk]))
            tensor_items.append((item, t.numel() * t.element_size()))
        results: list[WriteResult] = []
        if tensors:
            file, size, header_hash = _ckpt.write_shard_file(staging, plan.storage_data["file"], tensors)
            ref = _Written(file, size, header_hash)
            results += [
                WriteResult(index=i.index, size_in_bytes=n, storage_data=ref) for i, n in tensor_items
            ]
        results += [
            WriteResult(index=i.index, size_in_bytes=len(b), storage_data=_Value(b)) for i, b in values
        ]
        del keep
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        assert self.path is not None
        shards: dict[str, _Written] = {}
        raw: dict[str, bytes] = {}
        for rank_results in results:
            for r in rank_results:
                if isinstance(r.storage_data, _Written):
                    shards[r.storage_data.file] = r.storage_data
                elif isinstance(r.storage_data, _Value):
                    raw[r.index.fqn] = r.storage_data.data
        staging = self._staging
        if staging is None:
            raise InvalidArgumentError(f"{self.path}: finish() without set_up_storage_writer()")
        _ckpt.publish_staging_dir(
            staging,
            self.path,
            [(s.file, s.size, s.header_hash) for s in sorted(shards.values(), key=lambda s: s.file)],
            len(results),
            {},
            raw,
        )

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=self.path)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return "://" not in os.fspath(checkpoint_id)


class StorageReader(_StorageReader):
    """Reads a sharded checkpoint (ckpt's, torch's HuggingFaceStorageWriter
    output, or a plain Hugging Face model directory) for ``dcp.load``, into
    any layout, reading only the byte ranges each rank needs."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, verify_checksums: bool = True) -> None:
        super().__init__()
        self.path = _local_path(path) if path is not None else None
        self.verify_checksums = verify_checksums
        self._shapes: dict[str, list[int]] = {}

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id is not None:
            self.path = _local_path(checkpoint_id)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if self.path is None:
            raise InvalidArgumentError("StorageReader needs a path or a checkpoint_id")
        info = inspect_files(self.path)
        sd_md: dict[str, Any] = {}
        storage: dict[MetadataIndex, Any] = {}
        for t in info["tensors"]:
            fqn = t["fqn"]
            chunks = [
                ChunkStorageMetadata(offsets=torch.Size(c["offsets"]), sizes=torch.Size(c["shape"]))
                for c in t["chunks"]
            ]
            sd_md[fqn] = TensorStorageMetadata(
                properties=TensorProperties(dtype=torch_dtype(t["dtype"])),
                size=torch.Size(t["shape"]),
                chunks=chunks,
            )
            for i, c in enumerate(t["chunks"]):
                storage[MetadataIndex(fqn, c["offsets"], i)] = c["file"]
        texts, raw = _ckpt.read_extra_state(self.path)
        for k in texts:
            sd_md[k] = BytesStorageMetadata()
            storage[MetadataIndex(k)] = "json"
        for k in raw:
            sd_md[k] = BytesStorageMetadata()
            storage[MetadataIndex(k)] = "bytes"
        md = Metadata(state_dict_metadata=sd_md, storage_data=storage)
        md.storage_meta = StorageMeta(checkpoint_id=self.path)
        return md

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        self._shapes = {
            k: list(v.size)
            for k, v in metadata.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)
        }

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        assert self.path is not None
        by_fqn: dict[str, tuple[str, list[Chunk]]] = {}
        targets = []
        value_items = []
        for req in plan.items:
            if req.type == LoadItemType.BYTE_IO:
                value_items.append(req)
                continue
            fqn = req.storage_index.fqn
            target = planner.resolve_tensor(req).detach()
            if list(target.shape) != list(req.lengths):
                raise InvalidArgumentError(
                    f"tensor '{fqn}': the planner resolved a {list(target.shape)} tensor for a "
                    f"{list(req.lengths)} read"
                )
            dest = target
            if target.device.type != "cpu" or _overlaps(target):
                dest = torch.empty(target.shape, dtype=target.dtype)
            base = req.storage_index.offset or [0] * len(req.lengths)
            offsets = [int(a) + int(b) for a, b in zip(base, req.storage_offsets, strict=True)]
            dtype = st_dtype(dest.dtype, f"tensor '{fqn}'")
            entry = by_fqn.setdefault(fqn, (dtype, []))
            if dest.numel() > 0:
                entry[1].append((offsets, list(dest.shape), dest.data_ptr(), _strides(dest)))
            targets.append((req, target, dest))
        if by_fqn:
            tensors: list[TensorDesc] = [(f, dt, self._shapes[f], ch) for f, (dt, ch) in by_fqn.items()]
            o = _ckpt.LoadOptions()
            o.allow_unexpected = True
            o.cast_floats = True
            o.verify_checksums = self.verify_checksums
            _ckpt.load(_ckpt.Communicator.single(), self.path, tensors, o)
        for req, target, dest in targets:
            if dest is not target:
                target.copy_(dest)
            planner.commit_tensor(req, target)
        if value_items:
            texts, raw = _ckpt.read_extra_state(self.path)
            for req in value_items:
                k = req.storage_index.fqn
                data = raw[k] if k in raw else _json_as_torch_bytes(texts[k])
                planner.load_bytes(req, io.BytesIO(data))
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return "://" not in os.fspath(checkpoint_id)


def _json_as_torch_bytes(text: str) -> bytes:
    # Values ckpt.save stored as JSON, handed to DCP as it stores objects.
    import json

    buf = io.BytesIO()
    torch.save(json.loads(text), buf)
    return buf.getvalue()


def _overlaps(t: torch.Tensor) -> bool:
    from ._state import _overlapping

    return not t.is_contiguous() and t.numel() > 0 and _overlapping(t)
