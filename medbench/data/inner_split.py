"""Inner validation split for the leakage-free protocol, so that early stopping never reads the reported fold."""

from __future__ import annotations

from medbench.data.prepare import PreparedDataset
from medbench.data.splits import make_folds
from medbench.errors import MedbenchError

__all__ = ["inner_validation_ids"]


def inner_validation_ids(prepared: PreparedDataset, fold: int) -> tuple[list[str], list[str]]:
    """Split the training ids of `fold` into (training ids, inner validation ids).

    A fold entry of `splits.json` that lists `inner_val` ids is used as written. Otherwise
    the training ids are divided with `make_folds` into `max(2, num_folds - 1)` groups,
    seeded with the splits' seed and keeping patients together. The first group becomes
    the inner validation split, so the same prepared dataset always gives the same split. The validation ids of `fold` are never part of either list.
    """
    entry = prepared.splits["folds"][fold]
    held_out = set(entry["val"])
    train_ids = list(entry["train"])
    if "inner_val" in entry:
        inner = sorted(entry["inner_val"])
        stray = (set(inner) - set(train_ids)) | (set(inner) & held_out)
        if stray:
            raise MedbenchError(
                f"splits.json of {prepared.path}: inner_val of fold {fold} lists ids outside the fold's training ids "
                f"({', '.join(sorted(stray)[:5])}). Delete the prepared folder to write the splits again."
            )
    else:
        group_of = {s["id"]: s["group"] for s in prepared.manifest["samples"]}
        parts = max(2, len(prepared.splits["folds"]) - 1)
        inner = make_folds(train_ids, [group_of[i] for i in train_ids], parts, prepared.splits["seed"])[0]
    inner_set = set(inner)
    return [i for i in train_ids if i not in inner_set], inner
