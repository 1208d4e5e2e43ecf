"""Checkpoint directories' lifecycle, as NeMo lays it out: a checkpoint is
reserved with an ``.incomplete`` marker, published by pointing ``LATEST`` at
it (a relative symlink swapped atomically; ``LATEST.txt`` where symlinks
fail) and then clearing the marker; the last K are kept."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import uuid

__all__ = [
    "INCOMPLETE",
    "is_incomplete",
    "latest",
    "lowest_val",
    "prune",
    "publish",
    "read_metric",
    "reserve",
    "update_pointer",
]

logger = logging.getLogger(__name__)

INCOMPLETE = ".incomplete"
_STEP = re.compile(r"^epoch_(\d+)_step_(\d+)$")


def is_incomplete(path: str) -> bool:
    return os.path.exists(os.path.join(path, INCOMPLETE))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def reserve(path: str) -> None:
    """Creates `path` holding ``.incomplete`` (staged under a hidden name and
    renamed into place). A leftover of an interrupted save is replaced; a
    published checkpoint is refused."""
    if os.path.exists(path):
        if not is_incomplete(path):
            raise FileExistsError(f"{path}: already holds a published checkpoint; it is never overwritten")
        logger.warning("replacing %s, left behind by an interrupted save", path)
        shutil.rmtree(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(path)}.reserve-{uuid.uuid4().hex}")
    os.makedirs(staging)
    open(os.path.join(staging, INCOMPLETE), "w").close()
    os.rename(staging, path)
    _fsync_dir(parent)


def update_pointer(root: str, name: str, target: str) -> None:
    """Points `root/name` at `target` atomically (relative symlink renamed
    over the old one; `name.txt` holding the relative path where symlinks
    cannot be made)."""
    rel = os.path.relpath(os.path.abspath(target), os.path.abspath(root))
    link, text = os.path.join(root, name), os.path.join(root, name + ".txt")
    tmp = os.path.join(root, f".{name}.tmp-{uuid.uuid4().hex}")
    try:
        os.symlink(rel, tmp)
    except OSError:
        with open(tmp, "x") as f:
            f.write(rel)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, text)
        if os.path.lexists(link):
            os.remove(link)
    else:
        os.replace(tmp, link)
        if os.path.exists(text):
            os.remove(text)
    _fsync_dir(root)


def publish(
    root: str,
    path: str,
    keep: int | None = None,
    val_metric: float | None = None,
    metric_key: str | None = None,
) -> None:
    """Points ``LATEST`` at the (complete, durable) checkpoint `path`, then
    clears its marker, then moves ``LOWEST_VAL`` to it when `val_metric` is
    finite and lower than the metric of the checkpoint ``LOWEST_VAL`` names
    (read from its ``losses.json``), then keeps only the newest `keep`
    checkpoints (and those a pointer names)."""
    update_pointer(root, "LATEST", path)
    marker = os.path.join(path, INCOMPLETE)
    if os.path.exists(marker):
        os.remove(marker)
        _fsync_dir(path)
    if val_metric is not None:
        if not math.isfinite(val_metric):
            logger.warning("ignoring the non-finite validation metric %s of %s", val_metric, path)
        else:
            best = lowest_val(root)
            best_metric = read_metric(best, metric_key) if best is not None else None
            if best_metric is None or val_metric < best_metric:
                update_pointer(root, "LOWEST_VAL", path)
    if keep is not None:
        prune(root, keep)


def read_metric(checkpoint: str, metric_key: str | None) -> float | None:
    """The finite validation metric in `checkpoint`/losses.json under
    `metric_key`, ``val_loss`` or ``default`` (the first present), or None."""
    try:
        with open(os.path.join(checkpoint, "losses.json")) as f:
            losses = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(losses, dict):
        return None
    for key in ([metric_key] if metric_key else []) + ["val_loss", "default"]:
        try:
            value = float(losses[key])
        except (KeyError, TypeError, ValueError, OverflowError):
            continue
        if math.isfinite(value):
            return value
    return None


def latest(root: str) -> str | None:
    """The checkpoint ``LATEST`` names under `root` (a complete one), or None."""
    return _pointer(root, "LATEST")


def lowest_val(root: str) -> str | None:
    """The checkpoint ``LOWEST_VAL`` names under `root` (a complete one), or None."""
    return _pointer(root, "LOWEST_VAL")


def _pointer(root: str, name: str) -> str | None:
    link, text = os.path.join(root, name), os.path.join(root, name + ".txt")
    if os.path.islink(link):
        target = os.path.join(root, os.readlink(link))
    elif os.path.isfile(text):
        with open(text) as f:
            target = os.path.join(root, f.read().strip())
    else:
        return None
    target = os.path.normpath(target)
    return target if os.path.isdir(target) and not is_incomplete(target) else None


def _pointed(root: str) -> set[str]:
    return {p for p in (latest(root), lowest_val(root)) if p is not None}


def prune(root: str, keep: int) -> None:
    """Removes complete ``epoch_E_step_S`` checkpoints older than the newest
    `keep`, sparing the ones a pointer names."""
    found = []
    for n in os.listdir(root):
        m = _STEP.match(n)
        p = os.path.join(root, n)
        if m and os.path.isdir(p) and not os.path.islink(p) and not is_incomplete(p):
            found.append((int(m.group(2)), int(m.group(1)), p))
    found.sort(reverse=True)
    spared = _pointed(root)
    for _, _, p in found[keep:]:
        if os.path.normpath(p) not in spared:
            shutil.rmtree(p, ignore_errors=True)
