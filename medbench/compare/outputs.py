"""Files of a comparison: CSV tables, JSON statistics, PNG figures, Grad-CAM grids and the report."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from medbench import tracking
from medbench.compare import plots
from medbench.compare.collect import FoldRun
from medbench.compare.config import CompareConfig
from medbench.compare.report import Section, format_mean_std, write_reports
from medbench.compare.stats import FriedmanResult, PairedTest
from medbench.compare.tables import COUNT_METRICS, fold_table, table_metrics

__all__ = ["write_outputs"]

log = logging.getLogger(__name__)

# Grad-CAM grid images copied into the report per (dataset, model): those of its first run.
GRADCAM_FOLDER = "gradcam"


def write_outputs(
    folder: Path,
    config: CompareConfig,
    compare_run_id: str,
    runs: list[FoldRun],
    table: pd.DataFrame,
    per_image: dict[str, dict[str, pd.Series | None]],
    tests: dict[str, list[PairedTest]],
    friedman: FriedmanResult,
    champions: dict,
) -> None:
    """Write every file of the comparison into `folder` (which exists and has a `plots/` subfolder)."""
    table.to_csv(folder / "comparison.csv", index=False)
    fold_table(runs).to_csv(folder / "folds.csv", index=False)
    test_rows = pd.DataFrame([{"dataset": d, **asdict(t)} for d, rows in tests.items() for t in rows],
                             columns=["dataset", *PairedTest.__dataclass_fields__])
    test_rows.to_csv(folder / "paired_tests.csv", index=False)
    (folder / "friedman.json").write_text(json.dumps(_jsonable(asdict(friedman)), indent=2))

    families = dict(zip(table["model"], table["family"]))
    figures = {}
    for dataset, scores in per_image.items():
        usable = {m: s for m, s in scores.items() if s is not None}
        figures[f"boxplot_{dataset}"] = plots.plot_dice_boxes(
            folder / "plots" / f"dice_boxplot_{dataset}.png", dataset, usable, families)
    figures["critical_difference"] = plots.plot_critical_difference(folder / "plots" / "critical_difference.png",
                                                                    friedman)
    figures["accuracy_latency"] = plots.plot_accuracy_latency(folder / "plots" / "accuracy_latency.png", table,
                                                              config.metric, config.higher_is_better)
    figures["gradcam_scores"] = plots.plot_gradcam_scores(folder / "plots" / "gradcam_scores.png", table)
    grids = _copy_gradcam_grids(folder, runs)

    sections = _sections(config, compare_run_id, runs, table, tests, friedman, champions, figures, grids, folder)
    write_reports(folder, sections, "medbench comparison")


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _copy_gradcam_grids(folder: Path, runs: list[FoldRun]) -> list[Path]:
    grids, seen = [], set()
    for run in runs:
        if (run.dataset, run.model) in seen:
            continue
        images = [p for p in tracking.list_run_artifacts(run.run_id, GRADCAM_FOLDER) if p.endswith(".png")]
        if not images:
            continue
        seen.add((run.dataset, run.model))
        target = folder / GRADCAM_FOLDER / f"{run.dataset}__{run.model}__{run.run_id}"
        for artifact in images:
            grids.append(tracking.download_run_artifact(run.run_id, artifact, target))
    return grids


def _display_table(rows: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    shown = pd.DataFrame({"family": rows["family"], "model": rows["model"], "folds": rows["folds"]})
    for name in metrics:
        if rows[f"{name}_mean"].notna().any():
            shown[name] = [format_mean_std(m, s) for m, s in zip(rows[f"{name}_mean"], rows[f"{name}_std"])]
    for name in COUNT_METRICS:
        if name in rows:
            shown[name] = rows[name].astype("Int64")
    shown["rank"] = rows["rank"]
    shown["average rank"] = rows["average_rank"].round(2)
    shown["run ids"] = rows["run_ids"]
    return shown


def _sections(config, compare_run_id, runs, table, tests, friedman, champions, figures, grids, folder):
    relative = {key: str(path.relative_to(folder)) for key, path in figures.items()}
    metrics = table_metrics(runs)
    sections = [Section("Source", (
        f"Compare run {compare_run_id} in {tracking.tracking_uri()}, written "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by code version {tracking.code_version()}.",
        f"Experiments: {', '.join(config.experiments)}. {len(runs)} training runs. Ranking metric: "
        f"{config.metric} ({'higher' if config.higher_is_better else 'lower'} is better).",
        "Every table row lists the run ids it is computed from; folds.csv holds each run's own metrics. "
        "Scores are pooled over all pixels of a held-out fold with background excluded, then reported as "
        "mean ± sample standard deviation over folds; hd95_excluded and hd95_worst_case are image counts "
        "summed over folds.",
    ))]
    for dataset, rows in table.groupby("dataset"):
        sections.append(Section(f"{dataset}: results", table=_display_table(rows, metrics)))
        dataset_tests = pd.DataFrame([asdict(t) for t in tests.get(dataset, [])])
        reference = tests[dataset][0].reference if tests.get(dataset) else rows.sort_values("rank")["model"].iloc[0]
        sections.append(Section(
            f"{dataset}: paired tests against {reference}",
            (f"Two-sided Wilcoxon signed-rank test of per-image Dice on the same images, Holm-corrected over "
             f"the {len(dataset_tests)} comparisons on {dataset}.",),
            table=dataset_tests.round(6) if len(dataset_tests) else None,
            images=(relative[f"boxplot_{dataset}"],), level=3,
        ))
    friedman_text = friedman.note or (
        f"Friedman chi-square {friedman.statistic:.4f}, p = {friedman.pvalue:.4g}, over "
        f"{len(friedman.block_names)} {friedman.blocks}; Nemenyi critical difference {friedman.critical_difference:.4f} "
        f"at alpha {friedman.alpha}.")
    ranks = pd.DataFrame(sorted(friedman.average_ranks.items(), key=lambda item: item[1]),
                         columns=["model", f"average rank over {friedman.blocks}"])
    sections.append(Section("Across datasets", (friedman_text,), table=ranks,
                            images=(relative["critical_difference"],)))
    if "latency_ms" in table:
        efficiency = table[["dataset", "model", "efficiency_size", "params", "macs", "latency_ms", "peak_memory_mb"]]
        sections.append(Section("Efficiency", (
            "Parameters as measured by the training run; MACs, latency (median, batch 1) and peak memory of one "
            "forward pass measured by medbench.efficiency on this machine.",), table=efficiency.round(3),
            images=(relative["accuracy_latency"],)))
    else:
        sections.append(Section("Efficiency", ("Not measured (efficiency disabled).",),
                                images=(relative["accuracy_latency"],)))
    sections.append(Section("Grad-CAM", (
        "Grad-CAM scores per family from gradcam/... metrics, and the Grad-CAM grids of each model's first run.",),
        images=(relative["gradcam_scores"], *(str(g.relative_to(folder)) for g in grids))))
    if champions:
        sections.append(Section("Champions", (
            "The registry alias champion points at these versions; the reason is in each version's tags.",),
            table=pd.DataFrame([{"dataset": c.dataset, "uri": c.uri, "version": c.version, "run id": c.run_id,
                                 f"{c.metric} mean": round(c.mean, 6), f"{c.metric} of run": round(c.run_value, 6)}
                                for c in champions.values()])))
    sections.append(Section("Runs", table=fold_table(runs).round(6)))
    return sections
