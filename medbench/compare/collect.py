"""Read the training runs of a comparison from the tracking store."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medbench import tracking
from medbench.compare.config import CompareConfig
from medbench.errors import MedbenchError

__all__ = ["FoldRun", "PER_IMAGE_ARTIFACT", "collect_runs"]

log = logging.getLogger(__name__)

PER_IMAGE_ARTIFACT = "metrics/per_image_metrics.csv"
# Run tags that every training run carries and a comparison groups by.
REQUIRED_TAGS = ("model", "dataset", "fold")


@dataclass(frozen=True)
class FoldRun:
    """One finished training run: a model evaluated on one held-out fold of one dataset.

    Attributes:
        metrics: final metrics without the `test/` prefix (`dice`, `hd95/<class>`, ...),
            plus `gradcam/...` scores when the run has them.
        per_image: per-image metrics indexed by image id, or `None` if the run has no CSV.
    """

    run_id: str
    dataset: str
    model: str
    family: str
    fold: int
    seed: int
    image_size: int
    num_classes: int
    params_measured: int | None
    start_time: int
    metrics: dict[str, float]
    per_image: pd.DataFrame | None = field(default=None, compare=False, repr=False)


def _fold_run(run, per_image: pd.DataFrame | None) -> FoldRun:
    tags, params = run.data.tags, run.data.params
    metrics = {k.removeprefix("test/"): v for k, v in run.data.metrics.items()
               if k.startswith(("test/", "gradcam/"))}
    measured = params.get("params_measured")
    return FoldRun(
        run_id=run.info.run_id,
        dataset=tags["dataset"],
        model=tags["model"],
        family=tags.get("family", "unknown"),
        fold=int(tags["fold"]),
        seed=int(tags.get("seed", 0)),
        image_size=int(params.get("config.image_size", 0)),
        num_classes=int(params.get("num_classes", 2)),
        params_measured=int(measured) if measured not in (None, "None") else None,
        start_time=run.info.start_time or 0,
        metrics=metrics,
        per_image=per_image,
    )


def _read_per_image(run_id: str) -> pd.DataFrame | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = tracking.download_run_artifact(run_id, PER_IMAGE_ARTIFACT, Path(tmp))
        if path is None:
            return None
        return pd.read_csv(path, dtype={"id": str}).set_index("id")


def collect_runs(config: CompareConfig) -> list[FoldRun]:
    """Return the latest finished training run per (dataset, model, fold, seed) that `config` selects.

    A training run is a FINISHED run with `model`, `dataset` and `fold` tags and a
    `test/dice` metric; child runs of a cross-validation parent qualify too. Grad-CAM
    scores (`gradcam/...` metrics) of other runs with the same tags, such as explain
    runs, are merged into the matching training run.

    Raises:
        MedbenchError: no run matches; the message lists the datasets and models found.
    """
    runs = tracking.find_runs(list(config.experiments))
    tagged = [r for r in runs if all(t in r.data.tags for t in REQUIRED_TAGS)]
    selected = [
        r for r in tagged
        if (not config.datasets or r.data.tags["dataset"] in config.datasets)
        and (not config.models or r.data.tags["model"] in config.models)
    ]
    training = [r for r in selected if "test/dice" in r.data.metrics]
    if not training:
        found = sorted({(r.data.tags["dataset"], r.data.tags["model"]) for r in tagged if "test/dice" in r.data.metrics})
        listing = ", ".join(f"{d}/{m}" for d, m in found) or "none"
        raise MedbenchError(
            f"No finished training runs in experiment(s) {', '.join(config.experiments)} match "
            f"datasets {list(config.datasets) or 'any'} and models {list(config.models) or 'any'}. "
            f"Dataset/model pairs with runs there: {listing}. Train them with `medbench train` or change the selection."
        )
    for kind, wanted in (("dataset", config.datasets), ("model", config.models)):
        missing = sorted(set(wanted) - {r.data.tags[kind] for r in training})
        if missing:
            log.warning("No training runs for %s(s) %s; they are left out.", kind, ", ".join(missing))

    # the latest run per (dataset, model, fold, seed); a rerun replaces an earlier one
    latest: dict[tuple, object] = {}
    for run in sorted(training, key=lambda r: r.info.start_time or 0):
        tags = run.data.tags
        key = (tags["dataset"], tags["model"], tags["fold"], tags.get("seed", "0"))
        if key in latest:
            log.info("Run %s replaces the earlier run %s of %s.", run.info.run_id, latest[key].info.run_id, key)
        latest[key] = run

    scores = _gradcam_scores(selected)
    result = []
    for key, run in sorted(latest.items()):
        merged = _fold_run(run, _read_per_image(run.info.run_id))
        merged.metrics.update({k: v for k, v in scores.get(key, {}).items() if k not in merged.metrics})
        result.append(merged)
    return result


def _gradcam_scores(runs) -> dict[tuple, dict[str, float]]:
    scores: dict[tuple, dict[str, float]] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        tags = run.data.tags
        found = {k: v for k, v in run.data.metrics.items() if k.startswith("gradcam/")}
        if found:
            scores.setdefault((tags["dataset"], tags["model"], tags["fold"], tags.get("seed", "0")), {}).update(found)
    return scores
