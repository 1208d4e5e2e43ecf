"""ckpt's Checkpointer with the API of NeMo AutoModel's: a training script
written for NeMo's switches by changing its import, and keeps its
checkpoint directories.

Model weights go through ckpt's engine (sharded safetensors in DCP's Hugging
Face layout, any-layout loads, consolidation); ``optim/`` and distributed
custom state use DCP's own format, as NeMo's do; per-rank state files are
``torch.save`` files with NeMo's names.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from typing import Any

import torch
import torch.distributed as dist

from .. import api
from . import hf, lifecycle
from ._dcp_io import dcp_async_save, dcp_load, dcp_save
from ._ranks import (
    all_sizes,
    atomic_torch_save,
    barrier,
    ensure_dirs,
    raise_everywhere,
    rank,
    save_config,
    warn_once,
)
from .config import CheckpointingConfig, SaveConsolidatedMode
from .model_state import (
    assert_materialized,
    lm_head_tied_to_embeddings,
    match_checkpoint_dtypes,
    model_state_dict,
    optimizer_state_dict,
    set_optimizer_state,
    to_empty_parameters_only,
)

__all__ = ["Checkpointer"]

logger = logging.getLogger(__name__)

_HF_METADATA_PENDING = ".hf_metadata.pending"


class Checkpointer:
    """Saves and loads models, optimizers and per-rank state like NeMo
    AutoModel's Checkpointer, on ckpt's engine.

    Example::

        from ckpt.torch import Checkpointer, CheckpointingConfig
        ckptr = Checkpointer(CheckpointingConfig(checkpoint_dir="ckpts"), dp_rank, 0, 0)
        path = "ckpts/epoch_0_step_100"
        ckptr.save_model(model, path)
        ckptr.save_optimizer(opt, model, path, scheduler)
        ...
        ckptr.load_model(model, os.path.join(path, "model"))
        ckptr.load_optimizer(opt, model, path, scheduler)
    """

    def __init__(
        self,
        config: CheckpointingConfig,
        dp_rank: int,
        tp_rank: int,
        pp_rank: int,
        moe_mesh: Any = None,
        process_group: Any = None,
    ) -> None:
        self.config = config
        self.dp_rank, self.tp_rank, self.pp_rank = dp_rank, tp_rank, pp_rank
        self.moe_mesh = moe_mesh
        self.process_group = process_group
        self._model_future: api.SaveFuture | None = None
        self._optim_future: Any = None
        self._optim_group: Any = None
        self._pending_model: tuple[str, str | None] | None = None  # (model_dir, consolidated_dir)
        self._publisher: threading.Thread | None = None
        self._publish_error: BaseException | None = None
        self._lock = threading.Lock()
        if config.is_async and dist.is_initialized():
            # DCP's background writes of optim/ run collectives on a group of their own.
            self._optim_group = dist.new_group(backend="gloo")
        if config.save_consolidated == SaveConsolidatedMode.EVERY and not config.is_peft and rank() == 0:
            logger.warning(
                "checkpoint.save_consolidated=every exports a Hugging Face directory at every save; "
                "save_consolidated=final, or false and `ckpt consolidate <checkpoint>/model OUT` "
                "after training, keeps saves short"
            )
        if moe_mesh is not None:
            warn_once(
                "moe_mesh: expert-parallel ranks load only their experts through ckpt's chunk "
                "reads; the mesh itself is not needed"
            )

    # ----------------------------------------------------------------- model

    @torch.no_grad()
    def save_model(
        self,
        model: torch.nn.Module,
        weights_path: str,
        peft_config: Any = None,
        tokenizer: Any = None,
        is_final_checkpoint: bool = False,
    ) -> None:
        """Saves the weights to ``weights_path/model`` (collective).

        PEFT runs write ``adapter_model.safetensors`` + ``adapter_config.json``
        from rank 0. Otherwise every rank writes its shards; rank 0 writes
        ``.hf_metadata/`` and, per ``save_consolidated``, ``consolidated/``
        is exported. With ``is_async`` this returns once the tensors are
        copied into staging memory."""
        model_dir = os.path.join(weights_path, "model")
        if self.config.is_peft:
            from .peft import adapter_state, save_adapter

            self.async_wait()
            ensure_dirs(model_dir, group=self.process_group)
            adapter = adapter_state(model)  # every rank: gathering sharded adapters is collective
            if rank() == 0:
                save_adapter(model, model_dir, adapter, peft_config, tokenizer)
            barrier(self.process_group)
            return
        assert_materialized(model)
        self.async_wait()
        consolidate = self.config.save_consolidated == SaveConsolidatedMode.EVERY or (
            self.config.save_consolidated == SaveConsolidatedMode.FINAL and is_final_checkpoint
        )
        sd = model_state_dict(model, cpu_offload=self.config.cpu_offload)
        ensure_dirs(weights_path, group=self.process_group)
        pending = os.path.join(weights_path, _HF_METADATA_PENDING)
        # Expert-parallel ranks hold different keys: the maps cover every rank's.
        sizes = all_sizes(sd, self.process_group)
        err: BaseException | None = None
        if rank() == 0:
            try:
                self._stage_hf_metadata(pending, model, tokenizer, sizes)
            except BaseException as e:
                err = e
        raise_everywhere(err, f"writing {pending}", self.process_group)
        consolidated_dir = os.path.join(model_dir, "consolidated") if consolidate else None
        if self.config.is_async:
            self._model_future = api.async_save(sd, model_dir, process_group=self.process_group)
            self._pending_model = (model_dir, consolidated_dir)
            return
        api.save(sd, model_dir, process_group=self.process_group)
        self._pending_model = (model_dir, consolidated_dir)
        self._finish_model_files()
        barrier(self.process_group)
        self._consolidate()

    def _stage_hf_metadata(
        self, pending: str, model: torch.nn.Module, tokenizer: Any, sizes: dict[str, int]
    ) -> None:
        """Rank 0: writes ``.hf_metadata`` beside the model directory, to be
        moved in once that directory is complete."""
        reference = self._reference_path()
        if reference is not None and os.path.isfile(os.path.join(reference, hf.SAFETENSORS_INDEX)):
            index = hf.base_index(reference)
            last = max(index.values(), default=1)
            mapping = {k: index.get(k, last) for k in sizes}
        else:
            mapping = hf.divide_keys_by_size(list(sizes), sizes, hf.DEFAULT_SHARD_BYTES)
        dtypes = None
        if reference is not None:
            base = hf.safetensors_dtypes(reference)
            dtypes = {k: base[k] for k in sizes if k in base} or None
        if os.path.exists(pending):
            shutil.rmtree(pending)
        hf.write_hf_metadata(pending, model, tokenizer, mapping, dtypes)

    def _reference_path(self) -> str | None:
        return hf.hf_reference_path(self.config.model_cache_dir, self.config.model_repo_id)

    def _finish_model_files(self) -> None:
        """Rank 0: moves the staged ``.hf_metadata`` into the (now complete)
        model directory."""
        if self._pending_model is None or rank() != 0:
            return
        model_dir = self._pending_model[0]
        pending = os.path.join(os.path.dirname(model_dir), _HF_METADATA_PENDING)
        target = os.path.join(model_dir, ".hf_metadata")
        if os.path.isdir(pending) and not os.path.exists(target):
            os.rename(pending, target)

    def _consolidate(self) -> None:
        """Collective: exports ``consolidated/`` when this save asked for it."""
        pending, self._pending_model = self._pending_model, None
        if pending is None or pending[1] is None:
            return
        model_dir, out = pending[0], pending[1]
        reference = self._reference_path()
        api.consolidate(
            model_dir,
            out,
            process_group=self.process_group,
            base_model_dir=reference if reference and hf.is_safetensors_checkpoint(reference) else None,
            timeout=60.0 * float(self.config.consolidation_timeout_minutes),
        )
        if rank() == 0:
            meta = os.path.join(model_dir, ".hf_metadata")
            skip = {hf.FQN_TO_FILE_INDEX_MAPPING_FILENAME, hf.FQN_TO_DTYPE_MAPPING_FILENAME}
            for name in sorted(os.listdir(meta)) if os.path.isdir(meta) else []:
                src, dst = os.path.join(meta, name), os.path.join(out, name)
                if name in skip or os.path.exists(dst):
                    continue
                if os.path.isdir(src):
                    shutil.copytree(src, dst)
                else:
                    shutil.copy2(src, dst)
        barrier(self.process_group)

    @torch.no_grad()
    def load_model(
        self,
        model: torch.nn.Module,
        model_path: str,
        is_init_step: bool = False,
        use_checkpoint_id: bool = True,
        key_mapping: dict[str, str] | None = None,
        allow_checkpoint_key_subset: bool = False,
    ) -> None:
        """Loads weights from `model_path` (collective): a ckpt or NeMo
        checkpoint's ``model/`` in any layout, or (``is_init_step``) a Hugging
        Face model directory of safetensors or ``.bin`` files. `key_mapping`
        renames checkpoint keys with Python `re` (first match wins).
        Missing/unexpected keys are reported in a warning, as NeMo does."""
        if not os.path.exists(model_path):
            raise FileNotFoundError(f"Model path {model_path} does not exist")
        if self.config.is_peft and not is_init_step:
            from .peft import load_adapter

            load_adapter(model, model_path)
            return
        assert_materialized(model)
        tied = lm_head_tied_to_embeddings(model)
        if is_init_step and hf.is_bin_checkpoint(model_path) and not hf.is_safetensors_checkpoint(model_path):
            self._load_bin(model, model_path, key_mapping, tied)
            return
        cast = False
        if is_init_step and hf.is_safetensors_checkpoint(model_path):
            stored = hf.safetensors_dtypes(model_path)
            if key_mapping:
                stored = hf.apply_key_mapping(stored, key_mapping)
            match_checkpoint_dtypes(model, stored, None)
            sd = model_state_dict(model, cpu_offload=False)
            kept = [k for k, v in sd.items() if k in stored and v.is_floating_point() and _st(v) != stored[k]]
            if kept:
                # Sharded (FSDP2) parameters and views of fused experts keep
                # their dtype: the checkpoint's values are cast into them.
                cast = True
                warn_once(
                    f"{model_path}: {len(kept)} tensors keep the model's dtype (e.g. {kept[0]} "
                    f"{sd[kept[0]].dtype}, {stored[kept[0]]} in the checkpoint); the values are cast"
                )
        else:
            sd = model_state_dict(model, cpu_offload=False)
        expected = set(sd)
        stats = api.load(
            sd,
            model_path,
            process_group=self.process_group,
            allow_missing=allow_checkpoint_key_subset or is_init_step,
            allow_unexpected=True,
            key_mapping=key_mapping,
            skip_prefixes=list(self.config.skip_task_head_prefixes_for_base_model or [])
            if is_init_step
            else [],
            tie_word_embeddings=tied,
            cast_floats=cast,
            dequantize_fp8=bool(self.config.dequantize_base_checkpoint) and is_init_step,
        )
        missing = set(stats.missing_keys)
        # (A checkpoint holding none of the keys is refused by the engine.)
        if allow_checkpoint_key_subset and stats.unexpected_keys:
            raise RuntimeError(
                f"Checkpoint {model_path} has {len(stats.unexpected_keys)} keys absent from the model "
                f"(examples={sorted(stats.unexpected_keys)[:5]}); the model was likely built with the "
                "wrong architecture for this checkpoint"
            )
        if allow_checkpoint_key_subset and missing:
            logger.warning(
                "Checkpoint %s is missing %d requested model keys; keeping their current values "
                "(allow_checkpoint_key_subset=True, examples=%s)",
                model_path,
                len(missing),
                sorted(missing)[:10],
            )
            missing = set()
        _warn_key_diff(model, model_path, expected, (expected - missing) | set(stats.unexpected_keys))

    def _load_bin(
        self, model: torch.nn.Module, path: str, key_mapping: dict[str, str] | None, tied: bool
    ) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        full = hf.load_bin_state_dict(path)
        if key_mapping:
            full = hf.apply_key_mapping(full, key_mapping)
        expected = set(model_state_dict(model, cpu_offload=False))
        if tied and "lm_head.weight" not in full and "model.embed_tokens.weight" in full:
            full["lm_head.weight"] = full["model.embed_tokens.weight"]
        match_checkpoint_dtypes(model, {k: v.dtype for k, v in full.items()}, None)
        set_model_state_dict(model, dict(full), options=StateDictOptions(full_state_dict=True, strict=False))
        _warn_key_diff(model, path, expected, set(full))

    def load_base_model(
        self,
        model: torch.nn.Module,
        device: torch.device,
        root_dir: str,
        model_name: str | None,
        load_base_model: bool = True,
    ) -> None:
        """Initializes `model` from a Hugging Face base checkpoint: `model_name`
        is a directory or a repo id found in the hub cache `root_dir`; then
        recomputes non-persistent buffers (rotary ``inv_freq``)."""
        if load_base_model:
            if model_name is None:
                raise ValueError("load_base_model: model_name is required when loading the base model")
            path = model_name if os.path.exists(model_name) else hf.hf_reference_path(root_dir, model_name)
            if path is None:
                raise FileNotFoundError(
                    f"{model_name}: not a directory, and no hub-cache snapshot under {root_dir} "
                    f"(looked for models--{model_name.replace('/', '--')}/snapshots/*)"
                )
            mapping = getattr(model, "_checkpoint_conversion_mapping", None) or None
            self.load_model(model, path, is_init_step=True, key_mapping=mapping)
        hf.reinit_non_persistent_buffers(model)
        self.config.original_model_root_dir = root_dir
        _tie(model)

    @staticmethod
    def initialize_model_weights(
        model: torch.nn.Module, device: torch.device, peft_init_method: str | None = None
    ) -> None:
        """Materializes meta-device parameters and buffers on `device`, runs the
        model's own weight initialization, recomputes rotary buffers and
        re-ties tied embeddings."""
        if any(p.device.type == "meta" for p in model.parameters()):
            to_empty_parameters_only(model, device)
        for module in model.modules():
            for key, buf in list(module._buffers.items()):
                if buf is not None and buf.device.type == "meta":
                    module._buffers[key] = torch.empty_like(buf, device=device)
        for module in model.modules():
            if hasattr(module, "_is_hf_initialized"):
                setattr(module, "_is_hf_initialized", False)  # noqa: B010 (a plain attribute, not a buffer)
        init: Any = getattr(model, "initialize_weights", None) or getattr(model, "init_weights", None)
        if callable(init):
            init()
        else:
            logger.warning(
                "%s has no initialize_weights method; parameters stay uninitialized", type(model).__name__
            )
        hf.reinit_non_persistent_buffers(model)
        _tie(model)
        if peft_init_method is not None:
            warn_once(
                f"peft_init_method={peft_init_method!r}: adapters keep the initialization "
                "the peft library gave them"
            )

    # ------------------------------------------------------------- optimizer

    @torch.no_grad()
    def save_optimizer(
        self,
        optimizer: torch.optim.Optimizer,
        model: torch.nn.Module,
        weights_path: str,
        scheduler: Any = None,
    ) -> None:
        """Saves optimizer (and scheduler) state to ``weights_path/optim`` in
        DCP's format with NeMo's keys (``optim.state.<fqn>.<name>``,
        ``optim.param_groups.<fqn>.<key>``, ``sched.<key>``)."""
        path = os.path.join(weights_path, "optim")
        sd: dict[str, Any] = {"optim": optimizer_state_dict(model, optimizer, self.config.cpu_offload)}
        if scheduler is not None:
            sd["sched"] = scheduler.state_dict()
        if self.config.is_async:
            if self._optim_future is not None:
                self._wait_optim()
            self._optim_future = dcp_async_save(sd, path, self._optim_group)
        else:
            dcp_save(sd, path, self.process_group)

    def load_optimizer(
        self,
        optimizer: torch.optim.Optimizer,
        model: torch.nn.Module,
        weights_path: str,
        scheduler: Any = None,
    ) -> None:
        """Loads what :meth:`save_optimizer` (or NeMo's) wrote, into any layout."""
        path = os.path.join(weights_path, "optim")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: no optimizer checkpoint")
        sd: dict[str, Any] = {"optim": optimizer_state_dict(model, optimizer, False, materialize=True)}
        if scheduler is not None:
            sd["sched"] = scheduler.state_dict()
        dcp_load(sd, path, self.process_group)
        set_optimizer_state(model, optimizer, sd["optim"])
        if scheduler is not None:
            scheduler.load_state_dict(sd["sched"])

    # ------------------------------------------------------ per-rank state

    def save_on_dp_ranks(self, state: Any, state_name: str, path: str) -> None:
        """``path/<name>/<name>_dp_rank_<D>.pt`` via ``torch.save``, written by
        the tp=0, pp=0 rank of each data-parallel rank."""
        d = os.path.join(path, state_name)
        ensure_dirs(d, group=self.process_group)
        if self.tp_rank == 0 and self.pp_rank == 0:
            atomic_torch_save(state.state_dict(), os.path.join(d, f"{state_name}_dp_rank_{self.dp_rank}.pt"))

    def load_on_dp_ranks(self, state: Any, state_name: str, path: str) -> None:
        """Loads this data-parallel rank's file (weights_only unless
        ``allow_legacy_pickle_restore``)."""
        d = os.path.join(path, state_name)
        state.load_state_dict(self._torch_load(os.path.join(d, f"{state_name}_dp_rank_{self.dp_rank}.pt")))

    def save_on_global_ranks(self, state: Any, state_name: str, path: str) -> None:
        """``path/<name>/<name>_global_rank_<G>.pt``, one per global rank."""
        d = os.path.join(path, state_name)
        ensure_dirs(d, group=self.process_group)
        atomic_torch_save(state.state_dict(), os.path.join(d, f"{state_name}_global_rank_{rank()}.pt"))

    def load_on_global_ranks(self, state: Any, state_name: str, path: str) -> None:
        """Loads this global rank's file, falling back to its data-parallel one."""
        d = os.path.join(path, state_name)
        f = os.path.join(d, f"{state_name}_global_rank_{rank()}.pt")
        if not os.path.exists(f):
            f = os.path.join(d, f"{state_name}_dp_rank_{self.dp_rank}.pt")
        state.load_state_dict(self._torch_load(f))

    def _torch_load(self, f: str) -> Any:
        if not os.path.exists(f):
            raise FileNotFoundError(f"{f}: no such state file")
        try:
            return torch.load(f, map_location="cpu", weights_only=not self.config.allow_legacy_pickle_restore)
        except Exception as e:
            if self.config.allow_legacy_pickle_restore:
                raise
            raise ValueError(
                f"{f}: not loadable with weights_only=True ({e}); set "
                "checkpoint.allow_legacy_pickle_restore=True only for a trusted checkpoint"
            ) from e

    def save_distributed_state(self, state: Any, state_name: str, path: str) -> None:
        """Saves an object whose state holds sharded tensors (an EMA of FSDP2
        parameters, say) to ``path/<name>/`` in DCP's format: every rank
        writes its shards."""
        dcp_save(state.state_dict(), os.path.join(path, state_name), self.process_group)

    def load_distributed_state(self, state: Any, state_name: str, path: str) -> None:
        """Loads what :meth:`save_distributed_state` wrote, into any layout."""
        sd = state.state_dict()
        dcp_load(sd, os.path.join(path, state_name), self.process_group)
        state.load_state_dict(sd)

    @staticmethod
    def save_config(config: dict[str, Any], weights_path: str) -> None:
        save_config(config, weights_path)

    # ------------------------------------------------------------ lifecycle

    def reserve(self, weights_path: str) -> None:
        """Collective: creates the checkpoint directory marked ``.incomplete``
        (NeMo's recipe does this before saving a step)."""
        err: BaseException | None = None
        if rank() == 0:
            try:
                lifecycle.reserve(weights_path)
            except BaseException as e:
                err = e
        raise_everywhere(err, f"reserving {weights_path}", self.process_group)

    def publish(self, weights_path: str, best_val_metric: float | None = None) -> None:
        """Collective: every rank has written its files; ``LATEST`` moves to
        `weights_path` once they are durable: now for synchronous saves, in
        the background when the asynchronous writes complete. A finite
        `best_val_metric` lower than the best so far (``losses.json`` of the
        checkpoint ``LOWEST_VAL`` names, key ``best_metric_key``) moves
        ``LOWEST_VAL`` too; then ``max_recent_checkpoints`` are kept."""
        barrier(self.process_group)
        root = os.fspath(self.config.checkpoint_dir)
        key = self.config.best_metric_key

        def do_publish() -> None:
            lifecycle.publish(root, weights_path, self.config.max_recent_checkpoints, best_val_metric, key)

        if not self.config.is_async or (self._model_future is None and self._optim_future is None):
            err: BaseException | None = None
            if rank() == 0:
                try:
                    do_publish()
                except BaseException as e:
                    err = e
            raise_everywhere(err, f"publishing {weights_path}", self.process_group)
            return
        if rank() != 0:
            return
        model_future, optim_future = self._model_future, self._optim_future

        def run() -> None:
            try:
                if model_future is not None:
                    model_future.result()
                if optim_future is not None:
                    optim_future.result()
                with self._lock:
                    self._finish_model_files()
                do_publish()
            except BaseException as e:  # surfaced by async_wait
                self._publish_error = e

        self._publisher = threading.Thread(target=run, name="ckpt-publish", daemon=True)
        self._publisher.start()

    def latest(self) -> str | None:
        """The newest published checkpoint under ``checkpoint_dir``, or None."""
        return lifecycle.latest(os.fspath(self.config.checkpoint_dir))

    # ---------------------------------------------------------------- async

    def maybe_wait_for_staging(self) -> None:
        """Asynchronous saves return only after their tensors are staged, so
        there is nothing left to wait for."""

    def _wait_optim(self) -> None:
        fut, self._optim_future = self._optim_future, None
        if fut is not None:
            fut.result()

    def async_wait(self) -> None:
        """Waits for the asynchronous saves in flight (and their publication
        and consolidation); raises their error once."""
        errors: list[BaseException] = []
        fut, self._model_future = self._model_future, None
        try:
            if fut is not None:
                fut.result()
        except BaseException as e:
            errors.append(e)
        try:
            self._wait_optim()
        except BaseException as e:
            errors.append(e)
        if self._publisher is not None:
            self._publisher.join()
            self._publisher = None
        if self._publish_error is not None:
            if not errors:
                errors.append(self._publish_error)
            self._publish_error = None
        if errors:
            self._pending_model = None
            raise errors[0]
        if self._pending_model is not None:
            with self._lock:
                self._finish_model_files()
            barrier(self.process_group)
            self._consolidate()

    def close(self) -> None:
        """Finishes what is in flight and releases the background group."""
        try:
            self.async_wait()
        finally:
            if self._optim_group is not None and dist.is_initialized():
                dist.destroy_process_group(self._optim_group)
            self._optim_group = None

    def finalize(self) -> None:
        self.close()


def _warn_key_diff(model: torch.nn.Module, path: str, expected: set[str], loaded: set[str]) -> None:
    """NeMo's missing/unexpected key report: a warning, not an error."""
    diff = hf.summarize_key_diff(expected, loaded)
    if diff["missing_count"] or diff["unexpected_count"]:
        warn_once(
            f"Checkpoint key mismatch for {type(model).__name__} loading {path}: "
            f"missing={diff['missing_count']} unexpected={diff['unexpected_count']} "
            f"(missing examples={diff['missing_examples']}, "
            f"unexpected examples={diff['unexpected_examples']})"
        )


def _tie(model: torch.nn.Module) -> None:
    """Re-ties tied embeddings the way the model's own code does."""
    tie: Any = getattr(model, "tie_weights", None)
    if callable(tie):
        tie()


def _st(t: torch.Tensor) -> str:
    from .._state import st_dtype

    return st_dtype(t.dtype, "")
