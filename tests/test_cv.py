"""Cross-validation on real data: fold child runs, statistics over folds, ensemble and inner validation."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

from medbench.cli import main
from medbench.config import TrainConfig
from medbench.cv import CVConfig, cross_validate, summarize_folds
from medbench.errors import MedbenchError

# 20 images, 32x32, one epoch: each fold trains in a few seconds of CPU.
TINY = ["--max-images", "20", "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--register", "false"]
SCORES = ("dice", "iou", "precision", "recall", "hd95")


def runs_of(experiment: str = "medbench"):
    """(parent run, child runs sorted by fold) of the only cross-validation in `experiment`."""
    client = MlflowClient()
    runs = client.search_runs([mlflow.get_experiment_by_name(experiment).experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, sorted(children, key=lambda r: int(r.data.tags["fold"]))


def artifact(run_id: str, path: str) -> Path:
    return Path(MlflowClient().download_artifacts(run_id, path))


def validation_ids(run_id: str) -> list[str]:
    with open(artifact(run_id, "metrics/per_image_metrics.csv")) as handle:
        return sorted(row["id"] for row in csv.DictReader(handle))


@pytest.mark.integration
def test_cv_five_folds_with_ensemble(data_root, mlflow_store):
    command = ["cv", "--model", "swinunet", "--dataset", "kvasir_seg", *TINY, "--test-dataset", "ph2"]
    assert main(command) == 0

    parent, children = runs_of()
    assert parent.info.status == "FINISHED"
    assert [c.data.tags["fold"] for c in children] == ["0", "1", "2", "3", "4"]
    splits = json.loads(artifact(parent.info.run_id, "data/splits.json").read_text())
    for child, fold in zip(children, splits["folds"]):
        assert child.info.status == "FINISHED"
        assert validation_ids(child.info.run_id) == sorted(fold["val"])
        assert child.data.params["early_stopping_split"] == "fold"

    # mean and sample standard deviation over folds, recomputed from the child runs
    metrics = parent.data.metrics
    for key in [f"test/{s}" for s in SCORES] + ["test/dice/polyp", "test/hd95/polyp"]:
        values = [c.data.metrics[key] for c in children if key in c.data.metrics]
        assert len(values) >= 2, key
        assert metrics[f"cv_mean/{key}"] == pytest.approx(statistics.fmean(values)), key
        assert metrics[f"cv_std/{key}"] == pytest.approx(statistics.stdev(values)), key

    # the five fold models' ensemble evaluated on PH2 (20 images)
    assert 0 <= metrics["ensemble/dice"] <= 1
    assert "ensemble/dice/lesion" in metrics
    assert metrics["ensemble/hd95_excluded"] + metrics["ensemble/hd95_worst_case"] <= 20
    assert parent.data.params["cv.test_dataset"] == "ph2"


@pytest.mark.integration
def test_cv_inner_val_with_tuned_params(data_root, mlflow_store, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="tuned", storage=storage, direction="maximize")
    study.add_trial(optuna.create_trial(params={"lr": 5e-5}, distributions={
        "lr": optuna.distributions.CategoricalDistribution([1e-4, 5e-5, 1e-5])}, value=0.5))

    command = ["cv", "--model", "unet", "--dataset", "kvasir_seg", *TINY, "--num-folds", "3", "--inner-val",
               "--study-name", "tuned", "--storage", storage]
    assert main(command) == 0

    parent, children = runs_of()
    assert len(children) == 3
    assert parent.data.params["cv.inner_val"] == "True"
    splits = json.loads(artifact(parent.info.run_id, "data/splits.json").read_text())
    for child, fold in zip(children, splits["folds"]):
        assert child.data.params["config.lr"] == "5e-05"
        assert child.data.params["early_stopping_split"] == "inner_val"
        inner = json.loads(artifact(child.info.run_id, "data/inner_val.json").read_text())["ids"]
        # carved from the training ids only; the reported fold is untouched and evaluated at the end
        assert inner and set(inner) < set(fold["train"])
        assert not set(inner) & set(fold["val"])
        assert int(child.data.params["train_images"]) + len(inner) == len(fold["train"])
        assert validation_ids(child.info.run_id) == sorted(fold["val"])


def test_summarize_folds_by_hand():
    folds = [{"test/dice": 0.5, "test/hd95": 4.0, "val/dice": 0.9},
             {"test/dice": 0.7, "test/hd95": math.nan},
             {"test/dice": 0.9}]
    summary = summarize_folds(folds)
    assert summary["cv_mean/test/dice"] == pytest.approx(0.7)
    assert summary["cv_std/test/dice"] == pytest.approx(0.2)  # sqrt(((-0.2)^2 + 0 + 0.2^2) / 2)
    assert summary["cv_mean/test/hd95"] == 4.0
    assert math.isnan(summary["cv_std/test/hd95"])
    assert summary["cv_folds/test/hd95"] == 1
    assert "cv_folds/test/dice" not in summary
    assert not any("val/" in key for key in summary)


def test_cv_rejects_fold_option(capsys):
    assert main(["cv", "--model", "unet", "--dataset", "kvasir_seg", "--fold", "1"]) == 2
    assert "leave out --fold" in capsys.readouterr().err


def test_cv_test_dataset_is_training_data(data_root, mlflow_store):
    config = CVConfig(train=TrainConfig(model="unet", dataset="kvasir_seg", image_size=32, max_images=20),
                      test_dataset="kvasir_seg")
    with pytest.raises(MedbenchError, match="is the training data"):
        cross_validate(config)


def test_cv_unknown_study(data_root, mlflow_store, tmp_path):
    config = CVConfig(train=TrainConfig(model="unet", dataset="kvasir_seg"), study_name="missing",
                      storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    with pytest.raises(MedbenchError, match="Study 'missing' does not exist"):
        cross_validate(config)
