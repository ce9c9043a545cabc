"""Figures of a comparison as PNG files: box plots, critical difference, accuracy against latency, Grad-CAM scores.

A figure whose data is missing is still written, with a line that states what is missing,
so a report always has the same files.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from medbench.compare.stats import FriedmanResult  # noqa: E402

__all__ = ["FAMILY_COLOURS", "pareto_front", "plot_accuracy_latency", "plot_critical_difference",
           "plot_dice_boxes", "plot_gradcam_scores"]

FAMILY_COLOURS = {"SMA": "tab:blue", "GP-VM": "tab:orange", "peer": "tab:green"}
DPI = 100


def _save(figure: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def _message_figure(path: Path, title: str, message: str) -> Path:
    figure, axis = plt.subplots(figsize=(6, 2.5))
    axis.set_title(title)
    axis.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    axis.axis("off")
    return _save(figure, path)


def plot_dice_boxes(path: Path, dataset: str, per_image: dict[str, pd.Series], families: dict[str, str]) -> Path:
    """Save a box plot of per-image Dice per model on one dataset, boxes coloured by family."""
    models = [m for m in per_image if per_image[m].notna().any()]
    if not models:
        return _message_figure(path, dataset, "No per-image metrics in these runs.")
    figure, axis = plt.subplots(figsize=(1.2 * len(models) + 2, 4))
    boxes = axis.boxplot([per_image[m].dropna().to_numpy() for m in models], patch_artist=True)
    for box, model in zip(boxes["boxes"], models):
        box.set_facecolor(FAMILY_COLOURS.get(families.get(model, ""), "lightgray"))
    axis.set_xticks(range(1, len(models) + 1), models, rotation=30, ha="right")
    families_shown = sorted({families.get(m, "") for m in models} & set(FAMILY_COLOURS))
    axis.legend(handles=[Patch(color=FAMILY_COLOURS[f], label=f) for f in families_shown], fontsize=7)
    axis.set_ylabel("per-image Dice")
    axis.set_ylim(-0.02, 1.02)
    axis.set_title(f"{dataset}: per-image Dice (held-out folds)")
    return _save(figure, path)


def plot_critical_difference(path: Path, result: FriedmanResult) -> Path:
    """Save the average ranks on a line (1 left is best) with the Nemenyi critical difference bar.

    Models whose average ranks differ by less than the critical difference are joined by
    a thick line. Without a Friedman test the ranks are drawn with the reason as title.
    """
    if not result.average_ranks:
        return _message_figure(path, "Critical difference", result.note or "No ranks.")
    ranks = sorted(result.average_ranks.items(), key=lambda item: item[1])
    k = len(ranks)
    figure, axis = plt.subplots(figsize=(7, 1.5 + 0.3 * k))
    axis.set_xlim(0.5, max(k, 2) + 0.5)
    axis.set_ylim(-(k + 2), 2)
    axis.hlines(0, 1, max(k, 2), color="black")
    for tick in range(1, max(k, 2) + 1):
        axis.vlines(tick, 0, 0.2, color="black")
        axis.text(tick, 0.4, str(tick), ha="center")
    for row, (model, rank) in enumerate(ranks, start=1):
        axis.plot([rank, rank], [0, -row], color="gray", lw=0.8)
        axis.text(rank, -row - 0.3, f"{model} ({rank:.2f})", ha="center", va="top", fontsize=8)
    cd = result.critical_difference
    if np.isfinite(cd):
        axis.hlines(1.3, 1, 1 + cd, color="red", lw=2)
        axis.text(1 + cd / 2, 1.5, f"CD = {cd:.2f}", ha="center", color="red")
        for i, (_, low) in enumerate(ranks):
            group = [r for _, r in ranks[i:] if r - low < cd]
            if len(group) > 1:
                axis.hlines(-0.5 - 0.25 * i, low - 0.05, group[-1] + 0.05, color="black", lw=3)
        title = (f"Friedman over {len(result.block_names)} {result.blocks}: chi2 = {result.statistic:.2f}, "
                 f"p = {result.pvalue:.3g}; Nemenyi alpha = {result.alpha}")
    else:
        title = result.note
    axis.set_title(title, fontsize=8, wrap=True)
    axis.axis("off")
    return _save(figure, path)


def pareto_front(cost: np.ndarray, score: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Return a boolean mask of the points that no other point beats on both lower cost and better score."""
    signed = score if higher_is_better else -score
    front = np.ones(len(cost), dtype=bool)
    for i in range(len(cost)):
        dominated = (cost <= cost[i]) & (signed >= signed[i]) & ((cost < cost[i]) | (signed > signed[i]))
        front[i] = not dominated.any()
    return front


def plot_accuracy_latency(path: Path, table: pd.DataFrame, metric: str, higher_is_better: bool) -> Path:
    """Save a plot of mean `metric` against latency per (dataset, model), marking each dataset's Pareto front."""
    if "latency_ms" not in table or table["latency_ms"].isna().all():
        return _message_figure(path, "Accuracy against latency", "No efficiency measurements (run with --efficiency).")
    figure, axis = plt.subplots(figsize=(7, 4.5))
    markers = dict(zip(sorted(table["dataset"].unique()), "osD^v<>p*h"))
    for dataset, group in table.groupby("dataset"):
        group = group.dropna(subset=["latency_ms", f"{metric}_mean"])
        for _, row in group.iterrows():
            axis.scatter(row["latency_ms"], row[f"{metric}_mean"], marker=markers[dataset],
                         color=FAMILY_COLOURS.get(row["family"], "gray"), s=50)
            axis.annotate(row["model"], (row["latency_ms"], row[f"{metric}_mean"]), fontsize=7,
                          xytext=(3, 3), textcoords="offset points")
        front = group[pareto_front(group["latency_ms"].to_numpy(), group[f"{metric}_mean"].to_numpy(),
                                   higher_is_better)].sort_values("latency_ms")
        axis.plot(front["latency_ms"], front[f"{metric}_mean"], ls="--", color="black", lw=1,
                  marker=markers[dataset], mfc="none", ms=12, label=f"{dataset} Pareto front")
    axis.set_xscale("log")
    axis.set_xlabel("latency per image (ms, batch 1)")
    axis.set_ylabel(f"{metric} (mean over folds)")
    axis.legend(fontsize=7)
    axis.set_title("Accuracy against latency (colour: family)")
    return _save(figure, path)


def plot_gradcam_scores(path: Path, table: pd.DataFrame) -> Path:
    """Save box plots of Grad-CAM scores (`gradcam/...` columns) per family, one panel per score.

    Without any such column the figure carries a note instead.
    """
    columns = [c for c in table.columns if c.startswith("gradcam/") and table[c].notna().any()]
    if not columns:
        return _message_figure(path, "Grad-CAM scores per family",
                               "No Grad-CAM scores in these runs (none has gradcam/... metrics).")
    figure, axes = plt.subplots(1, len(columns), figsize=(3.5 * len(columns), 3.5), squeeze=False)
    families = sorted(table["family"].unique())
    for axis, column in zip(axes[0], columns):
        data = [table.loc[table["family"] == f, column].dropna().to_numpy() for f in families]
        parts = axis.boxplot(data, patch_artist=True)
        for box, family in zip(parts["boxes"], families):
            box.set_facecolor(FAMILY_COLOURS.get(family, "lightgray"))
        axis.set_xticks(range(1, len(families) + 1), families)
        axis.set_title(column, fontsize=9)
    return _save(figure, path)
