"""Cross-validation: every fold of `splits.json` as a child run, summarized over folds.

The parent run stores the mean and sample standard deviation over folds of every final
`test/...` metric (per class too). Options: the learning rate and weight decay can come
from a tuning study. Early stopping can use an inner validation split, so that the
reported fold never influences training (the leakage-free protocol). The ensemble of the
fold models can be evaluated on another dataset.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from torch import nn
from torch.utils.data import DataLoader

from medbench import tracking
from medbench.config import TrainConfig
from medbench.data import SegmentationDataset, get_source, prepare_dataset
from medbench.errors import MedbenchError
from medbench.models import create_model
from medbench.training.checkpoint import load_checkpoint
from medbench.training.evaluate import evaluate
from medbench.training.losses import SegmentationLoss
from medbench.training.run import TrainResult, resolve_device, train
from medbench.tuning import DEFAULT_STORAGE, open_study_readonly

__all__ = ["CVConfig", "CVResult", "FoldEnsemble", "cross_validate", "summarize_folds"]

log = logging.getLogger(__name__)

# Prefixes of the parent run's metrics: statistics over folds and the ensemble's scores.
MEAN, STD, FOLDS, ENSEMBLE = "cv_mean", "cv_std", "cv_folds", "ensemble"


@dataclass(frozen=True)
class CVConfig:
    """A cross-validated run: a training protocol applied to every fold.

    Attributes:
        train: the protocol of every fold; its `fold` is replaced per child run.
        study_name: take `lr` and `weight_decay` from the best trial of this Optuna
            study instead of `train`; unset uses `train` as given.
        storage: SQLAlchemy URL of the study's storage.
        inner_val: stop early on an inner validation split carved from the training
            folds (`medbench.data.inner_split`); the reported fold is only evaluated at
            the end.
        test_dataset: evaluate the ensemble of the fold models (mean of their softmax
            probabilities) on every image of this dataset. It must have the same classes
            and must not be the training data.
        test_data_dir: folder of `test_dataset`; default `<data root>/<test_dataset>`.
    """

    train: TrainConfig
    study_name: str | None = None
    storage: str = DEFAULT_STORAGE
    inner_val: bool = False
    test_dataset: str | None = None
    test_data_dir: str | None = None

    @property
    def run_name(self) -> str:
        return f"cv__{self.train.model}__{self.train.dataset}__seed{self.train.seed}"


@dataclass(frozen=True)
class CVResult:
    parent_run_id: str
    fold_run_ids: list[str]
    summary: dict[str, float]
    ensemble: dict[str, float]


def summarize_folds(fold_metrics: list[Mapping[str, float]]) -> dict[str, float]:
    """Mean and sample standard deviation (n - 1) over folds of every `test/...` metric.

    Keys are `cv_mean/<key>` and `cv_std/<key>`. A metric undefined (NaN or missing) in
    some folds is summarized over the others, and `cv_folds/<key>` stores over how many.
    The standard deviation of a single fold is NaN.
    """
    keys = sorted({key for metrics in fold_metrics for key in metrics if key.startswith("test/")})
    summary: dict[str, float] = {}
    for key in keys:
        values = [float(m[key]) for m in fold_metrics if key in m and math.isfinite(float(m[key]))]
        if not values:
            continue
        summary[tracking.metric_key(MEAN, key)] = statistics.fmean(values)
        summary[tracking.metric_key(STD, key)] = statistics.stdev(values) if len(values) > 1 else math.nan
        if len(values) < len(fold_metrics):
            summary[tracking.metric_key(FOLDS, key)] = float(len(values))
    return summary


class FoldEnsemble(nn.Module):
    """Average the softmax probabilities of several models; return their log as logits (B, K, H, W)."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([m(images).float().softmax(dim=1) for m in self.members]).mean(dim=0)
        return probabilities.clamp_min(torch.finfo(torch.float32).tiny).log()


def _tuned_params(config: CVConfig) -> dict[str, float]:
    if config.study_name is None:
        return {}
    study = open_study_readonly(config.study_name, config.storage)
    try:
        best = study.best_trial
    except ValueError as error:
        raise MedbenchError(f"Study {config.study_name!r} has no completed trial yet; run `medbench tune` first.") from error
    log.info("Using the best parameters of study %s (trial %d): %s", config.study_name, best.number, best.params)
    return dict(best.params)


def _check_test_dataset(config: CVConfig, num_classes: int) -> None:
    if config.test_dataset is None:
        return
    source = get_source(config.test_dataset)
    same_folder = source.folder(config.test_data_dir) == get_source(config.train.dataset).folder(config.train.data_dir)
    if config.test_dataset == config.train.dataset and same_folder:
        raise MedbenchError(
            f"test_dataset {config.test_dataset!r} is the training data, which every fold model has partly seen. "
            "Give another dataset, or another folder with --test-data-dir."
        )
    if source.num_classes != num_classes:
        raise MedbenchError(
            f"test_dataset {config.test_dataset!r} has {source.num_classes} classes but {config.train.dataset!r} "
            f"has {num_classes}; the fold models can only be tested on data with the same classes."
        )


def cross_validate(config: CVConfig) -> CVResult:
    """Train every fold of `config.train` as child runs of one parent run, and summarize them.

    The parent run (under `mlflow run`, the project's run) stores the fold runs' protocol
    as `config.*` params, `cv.*` params for the options, the statistics of
    `summarize_folds`, `cv/folds.json` with every fold's metrics, and with a test dataset
    `ensemble/<score>[/<class>]` metrics.
    """
    base = dataclasses.replace(config.train, **_tuned_params(config))
    prepared = prepare_dataset(base.dataset, base.data_dir, base.image_size, base.max_images, base.num_folds,
                               base.split_seed)
    _check_test_dataset(config, prepared.num_classes)

    tags = {"model": base.model, "dataset": base.dataset, "seed": base.seed, "preset": base.preset,
            "code_version": tracking.code_version()}
    with tracking.start_run(base.experiment, config.run_name, tags) as parent:
        parent.log_params({f"config.{k}": v for k, v in base.as_params().items() if k != "fold"})
        parent.log_params({"cv.num_folds": base.num_folds, "cv.inner_val": config.inner_val,
                           "cv.study_name": config.study_name, "cv.test_dataset": config.test_dataset})
        parent.log_artifact(prepared.path / "splits.json", "data")

        results: list[TrainResult] = []
        for fold in range(base.num_folds):
            log.info("Cross-validation %s: fold %d of %d", config.run_name, fold + 1, base.num_folds)
            fold_config = dataclasses.replace(base, fold=fold)
            results.append(train(fold_config, parent_run_id=parent.run_id, inner_val=config.inner_val))

        summary = summarize_folds([r.metrics for r in results])
        parent.log_metrics(summary)
        parent.log_dict([{"fold": k, "run_id": r.run_id, **r.metrics} for k, r in enumerate(results)], "cv/folds.json")

        ensemble = _evaluate_ensemble(config, base, prepared.num_classes, results) if config.test_dataset else {}
        parent.log_metrics(ensemble)
        return CVResult(parent.run_id, [r.run_id for r in results], summary, ensemble)


def _evaluate_ensemble(
    config: CVConfig, base: TrainConfig, num_classes: int, results: list[TrainResult]
) -> dict[str, float]:
    """Scores of the fold models' ensemble on every image of the test dataset, keyed `ensemble/...`."""
    test = prepare_dataset(config.test_dataset, config.test_data_dir, base.image_size, base.max_images,
                           base.num_folds, base.split_seed)
    models = []
    for result in results:
        model = create_model(base.model, 3, num_classes)
        model.load_state_dict(load_checkpoint(Path(result.checkpoint))["model"])
        models.append(model)
    device = resolve_device(base.device)
    ensemble = FoldEnsemble(models).to(device)
    loader = DataLoader(SegmentationDataset(test, range(len(test.ids))), batch_size=base.batch_size, shuffle=False,
                        num_workers=base.num_workers)
    evaluation = evaluate(ensemble, loader, num_classes, test.class_names, device, SegmentationLoss(num_classes),
                          with_hd95=True)
    log.info("Ensemble of %d fold models on %s (%d images): %s", len(models), config.test_dataset, len(test.ids),
             json.dumps({k: round(v, 4) for k, v in evaluation.summary().items() if k in ("dice", "iou", "hd95")}))
    return {tracking.metric_key(ENSEMBLE, key): value for key, value in evaluation.summary().items()}
