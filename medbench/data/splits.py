"""Seeded k-fold splits that keep groups (patients) together, stored in `splits.json`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medbench.errors import MedbenchError

__all__ = ["load_splits", "make_folds"]


def make_folds(ids: list[str], groups: list[str], num_folds: int, seed: int) -> list[list[str]]:
    """Assign ids to `num_folds` folds so that no group spans two folds.

    Groups are shuffled with `seed`, then each goes to the fold with the fewest ids so far
    (largest groups first, ties broken by the shuffled order), which balances fold sizes.
    Written here rather than with scikit-learn's `GroupKFold` so that the assignment
    depends only on numpy's seeded generator, not on a library version.
    """
    if len(ids) != len(groups):
        raise ValueError("ids and groups must have the same length")
    members: dict[str, list[str]] = {}
    for sample_id, group in zip(ids, groups):
        members.setdefault(group, []).append(sample_id)
    if len(members) < num_folds:
        raise MedbenchError(
            f"Cannot make {num_folds} folds from {len(members)} groups; use fewer folds or more data."
        )
    order = np.random.default_rng(seed).permutation(sorted(members))
    order = sorted(order, key=lambda g: -len(members[g]))  # stable: shuffled among equal sizes
    folds: list[list[str]] = [[] for _ in range(num_folds)]
    for group in order:
        smallest = min(range(num_folds), key=lambda k: len(folds[k]))
        folds[smallest].extend(members[group])
    return [sorted(fold) for fold in folds]


def write_splits(path: Path, folds: list[list[str]], seed: int, grouping: str) -> dict:
    data = {
        "seed": seed,
        "num_folds": len(folds),
        "grouping": grouping,
        "folds": [
            {"fold": k, "train": sorted(i for j, f in enumerate(folds) if j != k for i in f), "val": fold}
            for k, fold in enumerate(folds)
        ],
    }
    path.write_text(json.dumps(data, indent=1))
    return data


def load_splits(path: Path) -> dict:
    """Read `splits.json`, checking that folds do not overlap."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MedbenchError(f"Cannot read splits file {path}: {error}. Delete it to prepare the data again.") from error
    for fold in data["folds"]:
        if set(fold["train"]) & set(fold["val"]):
            raise MedbenchError(f"Splits file {path}: fold {fold['fold']} has ids in both train and val.")
    return data
