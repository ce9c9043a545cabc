"""Seeded k-fold splits that keep groups (patients) together, stored in `splits.json`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medbench.errors import MedbenchError

__all__ = ["build_splits", "load_splits", "make_folds", "split_off_groups", "write_splits"]


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


def split_off_groups(ids: list[str], groups: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split ids into (kept, held out) with about `fraction` of the ids held out, by whole groups.

    Groups are shuffled with `seed` and held out in that order until at least
    `round(fraction * len(ids))` ids are held out (at least one group when `fraction > 0`).
    `fraction` must be in [0, 1). Both lists come back sorted.
    """
    if not 0 <= fraction < 1:
        raise MedbenchError(f"A held-out fraction must be in [0, 1), got {fraction}.")
    if fraction == 0:
        return sorted(ids), []
    members: dict[str, list[str]] = {}
    for sample_id, group in zip(ids, groups, strict=True):
        members.setdefault(group, []).append(sample_id)
    target = max(1, round(fraction * len(ids)))
    held: list[str] = []
    for group in np.random.default_rng(seed).permutation(sorted(members)):
        held.extend(members[group])
        if len(held) >= target:
            break
    if len(held) == len(ids):
        raise MedbenchError(
            f"Holding out {fraction} of {len(ids)} ids in {len(members)} groups leaves nothing; use a smaller fraction."
        )
    held_set = set(held)
    return sorted(i for i in ids if i not in held_set), sorted(held)


def build_splits(
    ids: list[str],
    groups: list[str],
    num_folds: int,
    seed: int,
    test_fraction: float = 0.0,
    inner_val_fraction: float = 0.1,
    official: dict[str, str] | None = None,
) -> dict:
    """Build the content of `splits.json`.

    With `official=None` (k-fold mode) a share `test_fraction` of the groups is held out
    as `test` first, then the rest goes into `num_folds` grouped folds. With `official`
    (id -> `train`, `validation` or `test`) there is one fold: train on `train`, validate
    on `validation`, and `test` is the official test subset. In both modes every fold also
    gets `inner_train` and `inner_val`: a grouped share `inner_val_fraction` of its
    training ids, seeded with `seed + fold`, for early stopping that never sees `val`.
    """
    group_of = dict(zip(ids, groups, strict=True))
    if official is None:
        pool, test = split_off_groups(ids, groups, test_fraction, seed)
        folds = make_folds(pool, [group_of[i] for i in pool], num_folds, seed)
        pairs = [(sorted(i for j, f in enumerate(folds) if j != k for i in f), fold) for k, fold in enumerate(folds)]
        mode = "kfold"
    else:
        by_subset = {name: sorted(i for i in ids if official[i] == name) for name in ("train", "validation", "test")}
        if not by_subset["train"] or not by_subset["validation"]:
            raise MedbenchError(
                "The official split needs training and validation samples; found "
                f"{len(by_subset['train'])} and {len(by_subset['validation'])}. Add the official validation "
                "folders or use the k-fold split."
            )
        pairs, test, mode = [(by_subset["train"], by_subset["validation"])], by_subset["test"], "official"

    entries = []
    for k, (train, val) in enumerate(pairs):
        inner_train, inner_val = split_off_groups(train, [group_of[i] for i in train], inner_val_fraction, seed + k)
        entries.append({"fold": k, "train": train, "val": val, "inner_train": inner_train, "inner_val": inner_val})
    grouping = "patient" if any(group_of[i] != i for i in ids) else "image"
    return {
        "seed": seed,
        "mode": mode,
        "num_folds": len(entries),
        "grouping": grouping,
        "test_fraction": test_fraction if official is None else None,
        "inner_val_fraction": inner_val_fraction,
        "test": test,
        "folds": entries,
    }


def write_splits(path: Path, splits: dict) -> dict:
    path.write_text(json.dumps(splits, indent=1))
    return splits


def load_splits(path: Path) -> dict:
    """Read `splits.json`, checking that no id is in two of train, val and test, and inner_val is in train."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MedbenchError(f"Cannot read splits file {path}: {error}. Delete it to prepare the data again.") from error
    test = set(data.get("test", []))
    for fold in data["folds"]:
        train, val = set(fold["train"]), set(fold["val"])
        if train & val or (train | val) & test:
            raise MedbenchError(
                f"Splits file {path}: fold {fold['fold']} shares ids between train, val and test. "
                "Delete the prepared folder to split again."
            )
        if not set(fold.get("inner_val", [])) <= train:
            raise MedbenchError(f"Splits file {path}: fold {fold['fold']} has inner_val ids outside its train ids.")
    return data
