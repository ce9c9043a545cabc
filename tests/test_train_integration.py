"""End-to-end training on real data into real MLflow stores (SQLite file and a server)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from medbench.cli import main
from medbench.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
# Small enough for a CPU test: 20 images (5 folds of 4), 64x64, one epoch.
TINY = ["--max-images", "20", "--image-size", "64", "--epochs", "1", "--batch-size", "4"]


def only_run(experiment: str = "medbench"):
    runs = MlflowClient().search_runs(
        [mlflow.get_experiment_by_name(experiment).experiment_id]
    )
    assert len(runs) == 1
    return runs[0]


def assert_complete_run(run, dataset: str, model: str, class_name: str) -> None:
    client = MlflowClient()
    assert run.info.status == "FINISHED"
    assert run.info.run_name == f"{model}__{dataset}__fold0__seed0"
    assert run.data.tags["model"] == model
    assert run.data.tags["dataset"] == dataset
    assert run.data.tags["code_version"]
    assert run.data.params["config.image_size"] == "64"

    # per-epoch and final metrics
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(history) == 1
    assert history[0].step == 0
    metrics = run.data.metrics
    assert 0 < metrics["test/dice"] <= 1
    assert f"test/dice/{class_name}" in metrics
    for key in ("test/iou", "test/precision", "test/recall", "val/dice", "val/iou"):
        assert key in metrics
    excluded, worst = metrics["test/hd95_excluded"], metrics["test/hd95_worst_case"]
    assert excluded + worst <= 4
    assert metrics["test/hd95"] > 0

    # artifacts
    local = Path(client.download_artifacts(run.info.run_id, ""))
    state = load_checkpoint(local / "checkpoints" / "best.pt")
    assert state["config"]["model"] == model
    assert (local / "data" / "splits.json").is_file()
    with open(local / "metrics" / "per_image_metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert {"id", "dice", f"hd95/{class_name}", f"hd95_status/{class_name}"} <= set(rows[0])
    with Image.open(local / "predictions" / "predictions.png") as png:
        assert png.size[0] > 100

    # the registered model loads and predicts a mask at another size
    name = f"medbench-{dataset}-{model}"
    versions = client.search_model_versions(f"name='{name}'")
    assert len(versions) == 1
    assert versions[0].run_id == run.info.run_id
    loaded = mlflow.pytorch.load_model(f"models:/{name}/{versions[0].version}")
    with torch.no_grad():
        logits = loaded(torch.randn(2, 3, 72, 90))
    assert logits.shape == (2, 2, 72, 90)


# One SMA and one GP-VM through MLflow Projects, the peer Swin-Unet through the CLI.
@pytest.mark.parametrize(("model", "dataset", "class_name"), [("unet", "kvasir_seg", "polyp"), ("segformer_b3", "ph2", "lesion")])
def test_mlflow_run_train(data_root, mlflow_store, model, dataset, class_name):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    command = [
        sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "train", "--env-manager", "local",
        "--experiment-name", "medbench", "-P", f"model={model}", "-P", f"dataset={dataset}",
        "-P", "preset=quick", "-P", "max_images=20", "-P", "image_size=64", "-P", "epochs=1", "-P", "batch_size=4",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_complete_run(only_run(), dataset, model, class_name)


def test_cli_train_swinunet(data_root, mlflow_store):
    assert main(["train", "--model", "swinunet", "--dataset", "ph2", *TINY]) == 0
    assert_complete_run(only_run(), "ph2", "swinunet", "lesion")


def test_train_against_mlflow_server(data_root, mlflow_server):
    assert main(["train", "--model", "unet", "--dataset", "kvasir_seg", *TINY]) == 0
    assert_complete_run(only_run(), "kvasir_seg", "unet", "polyp")
