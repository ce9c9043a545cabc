"""Atomic checkpoints that load with `torch.load(weights_only=True)`."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from medbench.errors import MedbenchError

__all__ = ["load_checkpoint", "remove_stale_temporary_files", "save_checkpoint", "save_weights_checkpoint"]


def save_checkpoint(path: Path, state: dict[str, Any], copies: Sequence[Path] = ()) -> None:
    """Write `state` to `path` atomically: a kill mid-write leaves the previous file intact.

    The state is written to a temporary file in the same folder, flushed to disk, then
    renamed over `path` (an atomic replace on POSIX file systems). Each path in `copies`
    (in the same folder) receives the same file, as a hard link where the file system
    allows it, so the state is serialized once; the copies are replaced before `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    written = _temporary_path(path)
    try:
        with open(written, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        for copy in copies:
            _replace_with_copy(written, copy)
        os.replace(written, path)
    except BaseException:
        written.unlink(missing_ok=True)
        raise


def _temporary_path(path: Path) -> Path:
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    return Path(name)


def _replace_with_copy(source: Path, target: Path) -> None:
    staged = _temporary_path(target)
    try:
        staged.unlink()
        try:
            os.link(source, staged)
        except OSError:  # file systems without hard links
            shutil.copyfile(source, staged)
        os.replace(staged, target)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def remove_stale_temporary_files(folder: Path) -> int:
    """Delete temporary files that a killed `save_checkpoint` left in `folder`; return how many.

    Call it only while no other process writes checkpoints into `folder`.
    """
    stale = list(Path(folder).glob(".*.pt.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a medbench checkpoint; files with anything but tensors and plain data are rejected."""
    if not Path(path).is_file():
        raise MedbenchError(f"Checkpoint {path} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle and zip errors surface as several types
        raise MedbenchError(
            f"Checkpoint {path} is not a medbench checkpoint that loads with weights_only=True: {error}"
        ) from error
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise MedbenchError(f"Checkpoint {path} lacks the 'model' and 'config' entries of a medbench checkpoint.")
    return state


# Entries only a resumed training needs; the logged best checkpoint leaves them out, which
# makes it about a third of the size (AdamW keeps two tensors per parameter).
TRAINING_STATE_KEYS = ("optimizer", "scheduler", "rng", "history")


def save_weights_checkpoint(source: Path, target: Path) -> Path:
    """Write `source` without its training state (`TRAINING_STATE_KEYS`) to `target`, atomically."""
    state = load_checkpoint(source)
    save_checkpoint(target, {k: v for k, v in state.items() if k not in TRAINING_STATE_KEYS})
    return target
