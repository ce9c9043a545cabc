"""`medbench explain` on a real Kvasir-SEG run in a real MLflow store, and its bad input."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from medbench.cli import main
from medbench.errors import MedbenchError
from medbench.explain import ExplainConfig, explain, explain_run

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--max-images", "20", "--image-size", "64", "--epochs", "1", "--batch-size", "4"]


@pytest.fixture(scope="module")
def store(cache_dir, tmp_path_factory):
    """One SQLite tracking store for the module (creating one takes about 10 s)."""
    folder = tmp_path_factory.mktemp("explain-store")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        patch.setenv("MEDBENCH_CACHE_DIR", str(cache_dir))
        patch.setenv("MEDBENCH_OUTPUT_DIR", str(folder / "outputs"))
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        patch.chdir(folder)
        yield folder
        while mlflow.active_run():
            mlflow.end_run()


@pytest.fixture(scope="module")
def trained_run(data_root, store):
    """A quick Swin-Unet run on Kvasir-SEG that explained 2 + 2 test images at its end."""
    assert main(["train", "--model", "swinunet", "--dataset", "kvasir_seg", *TINY, "--explain", "2",
                 "--experiment", "explain-test"]) == 0
    (run,) = MlflowClient().search_runs([mlflow.get_experiment_by_name("explain-test").experiment_id])
    return run.info.run_id


@pytest.fixture
def other_experiment(store):
    mlflow.set_experiment("explain-bad-input")


def read_scores(local: Path) -> list[dict[str, str]]:
    with open(local / "scores.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_train_explain_logs_artifacts(trained_run):
    client = MlflowClient()
    run = client.get_run(trained_run)
    metrics = run.data.metrics
    for key in ("gradcam/cam_iou", "gradcam/energy_pointing", "gradcam/cam_iou/polyp",
                "gradcam/energy_pointing/polyp", "gradcam/gt_share"):
        assert key in metrics, key
        assert 0.0 <= metrics[key] <= 1.0, key
    assert run.data.tags["gradcam.layer"] == "decoder.2"
    assert run.data.params["config.explain"] == "2"

    local = Path(client.download_artifacts(trained_run, "gradcam"))
    samples = sorted(p.name for p in local.glob("*.png") if p.name != "grid.png")
    assert [name[:9] for name in samples] == ["random_00", "random_01", "worst_00_", "worst_01_"]
    for path in local.glob("*.png"):
        with Image.open(path) as png:
            png.verify()
    with Image.open(local / "grid.png") as grid, Image.open(local / samples[0]) as single:
        assert grid.size[1] > 3 * single.size[1]  # four rows, one per sample

    rows = read_scores(local)
    assert len(rows) == 4
    assert {row["group"] for row in rows} == {"worst", "random"}
    assert {row["class"] for row in rows} == {"polyp"}

    # The worst two are the lowest Dice values of the run's per-image metrics CSV.
    per_image = Path(client.download_artifacts(trained_run, "metrics/per_image_metrics.csv"))
    with open(per_image, newline="") as handle:
        dice = sorted(float(row["dice"]) for row in csv.DictReader(handle))
    worst = sorted(float(row["dice"]) for row in rows if row["group"] == "worst")
    assert worst == pytest.approx(dice[:2])

    # The logged means are the means of the CSV.
    energy = [float(row["energy_pointing"]) for row in rows]
    assert metrics["gradcam/energy_pointing"] == pytest.approx(sum(energy) / len(energy))


def test_mlflow_run_explain_gradcam_pp(trained_run):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("MLFLOW_EXPERIMENT_ID", None)  # set by mlflow.set_experiment; clashes with --experiment-name
    command = [
        sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "explain", "--env-manager", "local",
        "--experiment-name", "medbench-explain", "-P", f"run_id={trained_run}", "-P", "samples=1",
        "-P", "method=gradcam++", "-P", "layer=final_expand",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    run = MlflowClient().get_run(trained_run)
    assert "gradcam_pp/energy_pointing" in run.data.metrics
    assert run.data.tags["gradcam_pp.layer"] == "final_expand"
    local = Path(MlflowClient().download_artifacts(trained_run, "gradcam_pp"))
    assert len(read_scores(local)) == 2
    assert run.info.status == "FINISHED"


def test_explain_model_uri(trained_run):
    result = explain(ExplainConfig(model_uri="models:/medbench-kvasir_seg-swinunet/1", samples=1, seed=3))
    assert result.run_id == trained_run
    assert len(result.rows) == 2
    assert MlflowClient().get_run(trained_run).data.tags["gradcam.model"] == "models:/medbench-kvasir_seg-swinunet/1"


def test_explain_unknown_layer(trained_run, capsys):
    assert main(["explain", "--run-id", trained_run, "--layer", "decoder.7"]) == 2
    error = capsys.readouterr().err
    assert "no module named 'decoder.7'" in error
    assert "Did you mean 'decoder.2'" in error


def test_explain_class_out_of_range(trained_run, capsys):
    assert main(["explain", "--run-id", trained_run, "--classes", "2"]) == 2
    error = capsys.readouterr().err
    assert "Class index 2 is out of range" in error
    assert "1 polyp" in error


def test_explain_unknown_run(other_experiment):
    with pytest.raises(MedbenchError, match=r"Run '0123456789abcdef' was not found in the tracking store"):
        explain_run("0123456789abcdef")


def test_explain_run_without_model(other_experiment):
    with mlflow.start_run() as run:
        mlflow.log_params({f"config.{k}": v for k, v in {
            "model": "unet", "dataset": "kvasir_seg", "data_dir": None, "image_size": 64, "max_images": 20,
            "num_folds": 5, "split_seed": 0, "fold": 0}.items()})
    with pytest.raises(MedbenchError, match=r"has no model: no checkpoints/best\.pt artifact"):
        explain_run(run.info.run_id)


def test_explain_run_not_from_medbench(other_experiment):
    with mlflow.start_run() as run:
        mlflow.log_param("lr", 0.1)
    with pytest.raises(MedbenchError, match=r"has no param 'config\.model'"):
        explain_run(run.info.run_id)
