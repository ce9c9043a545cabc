"""Random-number states that a checkpoint needs so that a resumed run repeats the uninterrupted one.

A deterministic run draws random numbers from five places: Python's `random`, NumPy's
global generator, PyTorch's CPU and CUDA generators (dropout, drop-path, the validation
loader's worker seed), the training loader's own `torch.Generator` (shuffling and worker
seeds) and the augmentation pipeline's generators (albumentations keeps NumPy and Python
generators in the `Compose` and in each transform). All are stored as plain types and tensors, so
the checkpoint still loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from medbench.errors import MedbenchError

__all__ = ["capture_rng_state", "restore_rng_state"]


def _augmentation_steps(loader: DataLoader) -> list[Any]:
    # An albumentations `Compose` and each of its transforms hold their own NumPy and
    # Python generators (seeded alike), so all of them are saved, in pipeline order.
    steps, pending = [], [getattr(loader.dataset, "transform", None)]
    while pending:
        step = pending.pop(0)
        if step is None:
            continue
        if hasattr(step, "random_generator") and hasattr(step, "py_random"):
            steps.append(step)
        pending.extend(getattr(step, "transforms", []))
    return steps


def capture_rng_state(train_loader: DataLoader) -> dict[str, Any]:
    """Collect every random-number state that training on `train_loader` consumes.

    Returns a dict of tensors, ints, strings, lists and tuples, safe for `weights_only` loading.
    """
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {**numpy_state, "state": {"key": numpy_state["state"]["key"].tolist(),
                                           "pos": numpy_state["state"]["pos"]}},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": train_loader.generator.get_state() if train_loader.generator is not None else None,
    }
    state["augmentation"] = [
        {"numpy": step.random_generator.bit_generator.state, "python": step.py_random.getstate()}
        for step in _augmentation_steps(train_loader)
    ]
    return state


def restore_rng_state(state: dict[str, Any], train_loader: DataLoader) -> None:
    """Put back the states of `capture_rng_state`, in place, so shared generators stay shared."""
    random.setstate(_as_tuples(state["python"]))
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {"key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32),
                            "pos": numpy_state["state"]["pos"]}
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state["loader"] is not None and train_loader.generator is not None:
        train_loader.generator.set_state(state["loader"])
    steps = _augmentation_steps(train_loader)
    if len(steps) != len(state["augmentation"]):
        raise MedbenchError(
            f"The checkpoint holds random states of {len(state['augmentation'])} augmentation steps, the "
            f"training pipeline has {len(steps)}; resume with the code version that wrote the checkpoint."
        )
    for step, saved in zip(steps, state["augmentation"]):
        step.random_generator.bit_generator.state = saved["numpy"]
        step.py_random.setstate(_as_tuples(saved["python"]))


def _as_tuples(value: Any) -> Any:
    # `random.setstate` needs tuples; a checkpoint round trip may hand back lists.
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(item) for item in value)
    return value
