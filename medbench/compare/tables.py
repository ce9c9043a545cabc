"""The comparison table: one row per (dataset, model), mean and standard deviation over folds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medbench.compare.collect import FoldRun
from medbench.compare.stats import rank_models
from medbench.errors import MedbenchError, unknown_name_error

__all__ = ["COUNT_METRICS", "available_metrics", "fold_table", "summary_table", "table_metrics"]

# Metrics summed over folds (numbers of images), not averaged.
COUNT_METRICS = ("hd95_excluded", "hd95_worst_case")
# Overlap scores first, in the order of the reference study's tables.
_ORDER = ("dice", "iou", "precision", "recall")


def _sort_key(name: str) -> tuple:
    base = name.split("/")[0]
    return (base not in _ORDER, _ORDER.index(base) if base in _ORDER else 0, name)


def _averaged(names: set[str]) -> list[str]:
    return sorted((m for m in names if m not in COUNT_METRICS and m != "loss" and not m.startswith("gradcam/")),
                  key=_sort_key)


def available_metrics(runs: list[FoldRun]) -> list[str]:
    """Metric names that every run has, so they can rank models: `dice`, `iou`, `hd95`, ..."""
    return _averaged(set.intersection(*(set(r.metrics) for r in runs)))


def table_metrics(runs: list[FoldRun]) -> list[str]:
    """Metric names the table averages: those of any run, per-class ones (`dice/<class>`) included."""
    return _averaged(set.union(*(set(r.metrics) for r in runs)))


def fold_table(runs: list[FoldRun]) -> pd.DataFrame:
    """Build one row per run: dataset, model, family, fold, seed, run_id and every metric."""
    rows = [{"dataset": r.dataset, "model": r.model, "family": r.family, "fold": r.fold, "seed": r.seed,
             "run_id": r.run_id, **r.metrics} for r in runs]
    return pd.DataFrame(rows)


def summary_table(runs: list[FoldRun], metric: str, higher_is_better: bool) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof 1, NaN for one fold) over folds per (dataset, model).

    Columns: dataset, family, model, folds, runs, and run_ids (space-separated, the row's
    sources). Then `<metric>_mean` and `<metric>_std` for every metric of any run, with
    `hd95_excluded` and `hd95_worst_case` summed over folds and `gradcam/...` means when
    present. Last come `rank` per dataset by `metric` (1 is best, ties share the mean
    rank) and `average_rank` over the datasets the model was run on. Rows are sorted by
    dataset, then family, then rank.

    Raises:
        MedbenchError: `metric` is not a metric of every run; the message lists the valid names.
    """
    if metric not in available_metrics(runs):
        error = unknown_name_error("metric", metric, available_metrics(runs))
        raise MedbenchError(f"{error} A per-class metric (dice/<class>) is valid only when every compared "
                            "dataset has that class; select such datasets with --datasets.")
    metrics = table_metrics(runs)
    folds = fold_table(runs)
    gradcam = sorted(c for c in folds.columns if c.startswith("gradcam/"))
    rows = []
    for (dataset, model), group in folds.groupby(["dataset", "model"], sort=True):
        row = {
            "dataset": dataset,
            "family": group["family"].iloc[0],
            "model": model,
            "folds": int(group["fold"].nunique()),
            "runs": len(group),
            "run_ids": " ".join(group.sort_values(["fold", "seed"])["run_id"]),
        }
        for name in metrics:
            values = group[name] if name in group else pd.Series(dtype=float)
            row[f"{name}_mean"] = float(values.mean()) if values.notna().any() else np.nan
            row[f"{name}_std"] = float(values.std(ddof=1)) if values.notna().sum() > 1 else np.nan
        for name in COUNT_METRICS:
            if name in group:
                row[name] = float(group[name].sum())
        for name in gradcam:
            row[name] = float(group[name].mean())
        rows.append(row)
    table = pd.DataFrame(rows)
    table["rank"] = table.groupby("dataset")[f"{metric}_mean"].transform(
        lambda scores: rank_models(scores, higher_is_better)
    )
    table["average_rank"] = table.groupby("model")["rank"].transform("mean")
    return table.sort_values(["dataset", "family", "rank", "model"], ignore_index=True)
