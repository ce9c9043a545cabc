"""Preparing the real datasets, the `prepare` command into MLflow, and training on NeoPolyp."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from medbench.cli import main
from medbench.data import prepare_dataset

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


def test_neopolyp_real_classes_and_duplicates(data_root, cache_dir, monkeypatch):
    # All 1,000 images are checked for duplicates; 200 are decoded, to keep the test short
    # (the full-set card is in BENCHMARKS.md: 4.64 % neoplastic, 0.67 % non-neoplastic).
    monkeypatch.setenv("MEDBENCH_CACHE_DIR", str(cache_dir))
    prepared = prepare_dataset("neopolyp_small", image_size=64, max_images=200, progress=False)
    assert prepared.manifest["source_images"] == 1000
    duplicates = prepared.manifest["duplicates"]
    assert sum(d["reason"] == "identical bytes" for d in duplicates) == 4
    assert len(duplicates) >= 10
    assert all(d["kept"] not in {x["id"] for x in duplicates} for d in duplicates)
    share = dict(zip(prepared.class_names, prepared.manifest["class_pixel_share"]))
    assert prepared.class_names == ["background", "non-neoplastic", "neoplastic"]
    assert 0.03 < share["neoplastic"] < 0.065
    assert 0 < share["non-neoplastic"] < 0.01
    assert prepared.manifest["images_with_class"][1] > 20
    assert max(s["ambiguous_share"] for s in prepared.manifest["samples"]) < 0.01
    assert len(prepared.splits["folds"]) == 5


def test_prepare_cli_logs_card(data_root, mlflow_store, capsys):
    assert main(["prepare", "--dataset", "dsb2018", "--image-size", "32", "--test-fraction", "0.1"]) == 0
    assert "class pixel shares: background" in capsys.readouterr().out
    experiment = mlflow.get_experiment_by_name("medbench-data")
    (run,) = MlflowClient().search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("prepare__dsb2018__")
    assert run.data.params["config.test_fraction"] == "0.1"
    assert run.data.metrics["data/source_images"] == 670
    assert 0 < run.data.metrics["data/pixel_share/nucleus"] < 0.5
    local = Path(MlflowClient().download_artifacts(run.info.run_id, "dataset"))
    card = json.loads((local / "dataset_card.json").read_text())
    assert card["counts"]["source_images"] == 670
    assert card["counts"]["prepared_images"] == 670 - card["counts"]["duplicates_removed"]
    assert card["counts"]["test_images"] == round(0.1 * card["counts"]["prepared_images"])
    assert card["original_sizes"]["most_common"][0] == {"size": "96x96", "images": card["counts"]["prepared_images"]}
    splits = json.loads((local / "splits.json").read_text())
    assert all(len(f["inner_val"]) > 0 for f in splits["folds"])
    with Image.open(local / "dataset_card.png") as png:
        assert png.size[0] > 200


@pytest.mark.parametrize("dataset", ["kvasir_seg", "ph2"])
def test_prepare_real_binary(data_root, cache_dir, monkeypatch, dataset):
    monkeypatch.setenv("MEDBENCH_CACHE_DIR", str(cache_dir))
    prepared = prepare_dataset(dataset, image_size=64, max_images=20, progress=False)
    assert len(prepared.ids) == 20
    assert 0.05 < prepared.manifest["class_pixel_share"][1] < 0.6
    assert (prepared.path / "dataset_card.png").is_file()


def test_mlflow_run_prepare(data_root, mlflow_store):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               PYTHONPATH=f"{ROOT}:{os.environ.get('PYTHONPATH', '')}")
    env.pop("MLFLOW_EXPERIMENT_ID", None)  # set by earlier runs in this process; --experiment-name chooses
    command = [
        sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "prepare", "--env-manager", "local",
        "--experiment-name", "medbench-data", "-P", "dataset=ph2", "-P", "image_size=32", "-P", "max_images=20",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = MlflowClient().search_runs([mlflow.get_experiment_by_name("medbench-data").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["data/images"] == 20
    assert run.data.tags["dataset"] == "ph2"


def test_train_neopolyp_per_class_dice(data_root, mlflow_store):
    tiny = ["--max-images", "20", "--image-size", "64", "--epochs", "1", "--batch-size", "4"]
    assert main(["train", "--model", "swinunet", "--dataset", "neopolyp_small", *tiny]) == 0
    (run,) = MlflowClient().search_runs([mlflow.get_experiment_by_name("medbench").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["augmentation"] == "endoscopy"
    assert run.data.params["num_classes"] == "3"
    metrics = run.data.metrics
    assert 0 <= metrics["test/dice/neoplastic"] <= 1
    assert "test/dice" in metrics
    local = Path(MlflowClient().download_artifacts(run.info.run_id, "data"))
    recipe = json.loads((local / "augmentation.json").read_text())
    assert recipe["name"] == "endoscopy"
    names = [t["__class_fullname__"] for t in recipe["transform"]["transform"]["transforms"]]
    assert "HueSaturationValue" in names
