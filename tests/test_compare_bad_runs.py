"""`compare` over runs that lack per-image metrics, in a fresh store with hand-made runs."""

from __future__ import annotations

import logging

import mlflow
import numpy as np
import pytest

from medbench.compare import CompareConfig, compare
from medbench.errors import MedbenchError


def log_run(model, fold, dice, per_image=None, gradcam=None):
    mlflow.set_experiment("medbench")
    with mlflow.start_run(run_name=f"{model}__d__fold{fold}"):
        mlflow.set_tags({"model": model, "family": "SMA", "dataset": "toy", "fold": fold, "seed": 0})
        mlflow.log_params({"config.image_size": 32, "num_classes": 2, "params_measured": 10})
        mlflow.log_metrics({"test/dice": dice, "test/iou": dice / (2 - dice), "test/hd95": 3.0,
                            "test/hd95_excluded": 0, "test/hd95_worst_case": 0})
        if gradcam is not None:
            mlflow.log_metric("gradcam/energy_pointing", gradcam)
            mlflow.log_image(np.full((8, 8, 3), 200, np.uint8), "gradcam/worst_samples.png")
        if per_image is not None:
            mlflow.log_text("id,dice\n" + "".join(f"{i},{v}\n" for i, v in per_image.items()),
                            "metrics/per_image_metrics.csv")


def test_runs_without_per_image_metrics(mlflow_store, tmp_path, caplog):
    log_run("alpha", 0, 0.8, {"a": 0.9, "b": 0.7})
    log_run("alpha", 1, 0.6, {"c": 0.5, "d": 0.7})
    log_run("beta", 0, 0.5, gradcam=0.25)
    log_run("beta", 1, 0.4, gradcam=0.75)
    with caplog.at_level(logging.WARNING):
        result = compare(CompareConfig(output=str(tmp_path / "report"), efficiency=False, champion=False))
    (test,) = result.tests["toy"]
    assert test.model == "beta"
    assert test.reference == "alpha"
    assert "no per-image metrics" in test.note
    assert "have no metrics/per_image_metrics.csv" in caplog.text
    row = result.table.set_index("model").loc["alpha"]
    assert row["dice_mean"] == pytest.approx(0.7)
    assert (tmp_path / "report" / "plots" / "dice_boxplot_toy.png").is_file()
    report = (tmp_path / "report" / "report.md").read_text()
    assert "no per-image metrics" in report

    # Grad-CAM scores and grids of the runs reach the table and the report
    assert result.table.set_index("model").loc["beta", "gradcam/energy_pointing"] == pytest.approx(0.5)
    grids = list((tmp_path / "report" / "gradcam").rglob("worst_samples.png"))
    assert len(grids) == 1
    assert str(grids[0].relative_to(tmp_path / "report")) in report


def test_reference_without_per_image_metrics(mlflow_store, tmp_path):
    log_run("alpha", 0, 0.8)
    log_run("beta", 0, 0.5, {"a": 0.4})
    result = compare(CompareConfig(output=str(tmp_path / "report"), efficiency=False, champion=False))
    (test,) = result.tests["toy"]
    assert test.note == "reference alpha has no per-image metrics (metrics/per_image_metrics.csv)"

    # a second comparison replaces the earlier report but leaves any other folder alone
    again = compare(CompareConfig(output=str(tmp_path / "report"), efficiency=False, champion=False))
    assert (again.folder / "report.md").is_file()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    with pytest.raises(MedbenchError, match="is not empty and holds no earlier medbench report"):
        compare(CompareConfig(output=str(tmp_path / "mine"), efficiency=False, champion=False))
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"
