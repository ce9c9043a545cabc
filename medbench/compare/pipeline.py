"""The `compare` pipeline: runs to table, statistics, efficiency, plots and report, then the champion alias."""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medbench import tracking
from medbench.compare.collect import PER_IMAGE_ARTIFACT, FoldRun, collect_runs
from medbench.compare.config import CompareConfig
from medbench.compare.outputs import write_outputs
from medbench.compare.stats import FriedmanResult, PairedTest, friedman_nemenyi, paired_tests_against_reference
from medbench.compare.tables import fold_table, summary_table
from medbench.efficiency import Efficiency, measure_efficiency
from medbench.errors import MedbenchError

__all__ = ["CHAMPION_ALIAS", "CompareResult", "compare", "registered_model_name"]

log = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
# Per-image score of the paired tests and box plots.
PAIRED_SCORE = "dice"


def registered_model_name(dataset: str, model: str) -> str:
    """Registry name of the models that `medbench train` registers."""
    from medbench.training.run import registered_model_name as name

    return name(dataset, model)


@dataclass(frozen=True)
class Champion:
    """The registry version that got the `champion` alias for one dataset, and why."""

    dataset: str
    model: str
    registered_model: str
    version: str
    run_id: str
    metric: str
    mean: float
    run_value: float

    @property
    def uri(self) -> str:
        return f"models:/{self.registered_model}@{CHAMPION_ALIAS}"


@dataclass(frozen=True)
class CompareResult:
    """Everything `compare` produced; `folder` contains the same files as the `compare` run's artifacts."""

    run_id: str
    folder: Path
    table: pd.DataFrame
    tests: dict[str, list[PairedTest]]
    friedman: FriedmanResult
    champions: dict[str, Champion]


def compare(config: CompareConfig) -> CompareResult:
    """Compare the training runs that `config` selects and record the result in a `compare` run.

    Writes into `config.output` (and logs as artifacts): `comparison.csv` (the table),
    `folds.csv` (one row per run), `paired_tests.csv`, `friedman.json`, `report.md`,
    `report.html` and PNG figures under `plots/`. Sets the `champion` alias per dataset when
    `config.champion` is set.

    Raises:
        MedbenchError: no matching runs, an unknown experiment, an unknown metric, or an
            output folder that is neither empty nor an earlier report.
    """
    runs = collect_runs(config)
    table = summary_table(runs, config.metric, config.higher_is_better)
    folder = _fresh_output(Path(config.output).expanduser())

    if config.efficiency:
        table = _add_efficiency(table, runs, config)
    per_image = _per_image_scores(runs)
    tests = _paired_tests(table, per_image, runs)
    friedman = _friedman(table, runs, config)

    tags = {"medbench.kind": "compare", "code_version": tracking.code_version()}
    with tracking.start_run(config.experiment, "compare", tags) as run:
        run.log_params({f"config.{k}": v for k, v in config.as_params().items()})
        run.log_params({"runs_compared": len(runs)})
        champions = _set_champions(table, runs, config, run.run_id) if config.champion else {}
        write_outputs(folder, config, run.run_id, runs, table, per_image, tests, friedman, champions)
        run.log_metrics({"datasets": table["dataset"].nunique(), "models": table["model"].nunique()})
        run.log_artifacts(folder)
    log.info("Comparison of %d runs written to %s and run %s.", len(runs), folder, run.run_id)
    return CompareResult(run.run_id, folder, table, tests, friedman, champions)


def _fresh_output(folder: Path) -> Path:
    """Create `folder/plots`, replacing an earlier report there but never another folder's files."""
    if folder.exists() and any(folder.iterdir()):
        if not (folder / "report.md").is_file():
            raise MedbenchError(
                f"Output folder {folder} is not empty and holds no earlier medbench report (report.md). "
                "Pass --output with a new or empty folder."
            )
        shutil.rmtree(folder)
    (folder / "plots").mkdir(parents=True)
    return folder


def _add_efficiency(table: pd.DataFrame, runs: list[FoldRun], config: CompareConfig) -> pd.DataFrame:
    measured: dict[tuple, Efficiency | None] = {}
    rows = []
    for _, row in table.iterrows():
        group = [r for r in runs if r.dataset == row["dataset"] and r.model == row["model"]]
        size = config.efficiency_size or max(r.image_size for r in group)
        key = (row["model"], group[0].num_classes, size)
        if key not in measured:
            log.info("Measuring %s at %dx%d with %d classes on %s.", key[0], size, size, key[1], config.device)
            try:
                measured[key] = measure_efficiency(key[0], size, key[1], config.device)
            except MedbenchError as error:  # a model no longer in the registry keeps its accuracy rows
                log.warning("Efficiency of %s not measured: %s", key[0], error)
                measured[key] = None
        found = measured[key]
        params = next((r.params_measured for r in group if r.params_measured), found.params if found else None)
        rows.append({"params": params, "macs": found.macs if found else math.nan,
                     "latency_ms": found.latency_ms if found else math.nan,
                     "peak_memory_mb": found.peak_memory_mb if found else math.nan, "efficiency_size": size})
    return pd.concat([table, pd.DataFrame(rows, index=table.index)], axis=1)


def _per_image_scores(runs: list[FoldRun]) -> dict[str, dict[str, pd.Series | None]]:
    """Dataset -> model -> per-image Dice indexed by image id (mean over seeds), `None` if a run lacks the CSV."""
    scores: dict[str, dict[str, pd.Series | None]] = {}
    for (dataset, model), group in _groups(runs).items():
        if any(r.per_image is None for r in group):
            scores.setdefault(dataset, {})[model] = None
            continue
        combined = pd.concat([r.per_image[PAIRED_SCORE] for r in group])
        scores.setdefault(dataset, {})[model] = combined.groupby(level=0).mean()
    return scores


def _groups(runs: list[FoldRun]) -> dict[tuple[str, str], list[FoldRun]]:
    groups: dict[tuple[str, str], list[FoldRun]] = {}
    for run in runs:
        groups.setdefault((run.dataset, run.model), []).append(run)
    return groups


def _paired_tests(table: pd.DataFrame, per_image: dict, runs: list[FoldRun]) -> dict[str, list[PairedTest]]:
    tests = {}
    for dataset, rows in table.groupby("dataset"):
        reference = rows.sort_values(["rank", "model"])["model"].iloc[0]
        scores = per_image[dataset]
        missing = {m for m, s in scores.items() if s is None}
        for model in sorted(missing):
            lacking = [r.run_id for r in runs if r.dataset == dataset and r.model == model and r.per_image is None]
            log.warning("Runs %s of %s on %s have no %s; the paired test leaves %s out.",
                        ", ".join(lacking), model, dataset, PER_IMAGE_ARTIFACT, model)
        if reference in missing:
            note = f"reference {reference} has no per-image metrics ({PER_IMAGE_ARTIFACT})"
            tests[dataset] = [_untested(m, reference, note) for m in scores if m != reference]
            continue
        usable = {m: s for m, s in scores.items() if s is not None}
        tests[dataset] = paired_tests_against_reference(usable, reference) + [
            _untested(m, reference, f"no per-image metrics ({PER_IMAGE_ARTIFACT}) in its runs")
            for m in sorted(missing)
        ]
    return tests


def _untested(model: str, reference: str, note: str) -> PairedTest:
    return PairedTest(model, reference, 0, 0, math.nan, math.nan, math.nan, math.nan, note)


def _friedman(table: pd.DataFrame, runs: list[FoldRun], config: CompareConfig) -> FriedmanResult:
    metric = config.metric
    if table["dataset"].nunique() >= 3:
        scores = table.pivot(index="dataset", columns="model", values=f"{metric}_mean")
        return friedman_nemenyi(scores, "datasets", config.higher_is_better, config.alpha)
    # Fewer than 3 datasets: the folds are the blocks, which share training data and so
    # are not independent samples; the report says so.
    folds = fold_table(runs)
    folds["block"] = folds["dataset"] + "/fold" + folds["fold"].astype(str)
    scores = folds.pivot_table(index="block", columns="model", values=metric, aggfunc="mean")
    return friedman_nemenyi(scores, "folds (dataset/fold blocks, not independent datasets)",
                            config.higher_is_better, config.alpha)


def _set_champions(table: pd.DataFrame, runs: list[FoldRun], config: CompareConfig, compare_run_id: str) -> dict:
    champions = {}
    for dataset, rows in table.groupby("dataset"):
        ordered = rows.sort_values(["rank", "model"])
        best = ordered.iloc[0]
        name = registered_model_name(dataset, best["model"])
        group = {r.run_id: r for r in runs if r.dataset == dataset and r.model == best["model"]}
        versions = [v for v in tracking.model_versions(name) if v.run_id in group]
        if not versions:
            log.warning("No registered version of %s comes from runs %s; no champion for %s.",
                        name, ", ".join(group), dataset)
            continue
        sign = 1 if config.higher_is_better else -1
        chosen = max(versions, key=lambda v: (sign * group[v.run_id].metrics[config.metric], int(v.version)))
        value = group[chosen.run_id].metrics[config.metric]
        mean = float(best[f"{config.metric}_mean"])
        runner_up = (f"; runner-up {ordered.iloc[1]['model']} "
                     f"{float(ordered.iloc[1][f'{config.metric}_mean']):.4f}") if len(ordered) > 1 else ""
        tracking.set_model_alias(name, CHAMPION_ALIAS, str(chosen.version), {
            "champion.dataset": dataset,
            "champion.metric": config.metric,
            "champion.model_mean": f"{mean:.6g}",
            "champion.run_value": f"{value:.6g}",
            "champion.compare_run_id": compare_run_id,
            "champion.reason": (
                f"{best['model']} ranks first on {dataset} by mean {config.metric} over {int(best['runs'])} runs "
                f"({mean:.4f}{runner_up}); this version's run {chosen.run_id} has the "
                f"{'highest' if config.higher_is_better else 'lowest'} {config.metric} of them ({value:.4f})."
            ),
        })
        for other in ordered["model"].iloc[1:]:
            if tracking.remove_model_alias(registered_model_name(dataset, other), CHAMPION_ALIAS):
                log.info("Removed the earlier %s alias from %s.", CHAMPION_ALIAS, registered_model_name(dataset, other))
        champions[dataset] = Champion(dataset, best["model"], name, str(chosen.version), chosen.run_id,
                                      config.metric, mean, value)
        log.info("Champion of %s: %s version %s (%s %.4f).", dataset, name, chosen.version, config.metric, mean)
    return champions
