"""Atomic checkpoints that load with `torch.load(weights_only=True)`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from medbench.errors import MedbenchError

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: a kill mid-write leaves the previous file intact.

    The state is written to a temporary file in the same folder, flushed to disk, then
    renamed over `path` (an atomic replace on POSIX file systems).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


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
