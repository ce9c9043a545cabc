"""`compare` and `predict` end to end on real quick runs (2 models x 2 datasets x 2 folds) in a fresh store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from scipy import stats

from medbench.cli import main
from medbench.compare import CHAMPION_ALIAS, CompareConfig, compare
from medbench.data import imageio
from medbench.errors import MedbenchError
from medbench.predict import predict

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("swinunet", "unet")
DATASETS = ("kvasir_seg", "ph2")
FOLDS = (0, 1)
TINY = ["--max-images", "20", "--image-size", "32", "--epochs", "1", "--batch-size", "4"]
REPORT_FILES = ("report.md", "report.html", "comparison.csv", "folds.csv", "paired_tests.csv", "friedman.json",
                "plots/critical_difference.png", "plots/accuracy_latency.png", "plots/gradcam_scores.png",
                *(f"plots/dice_boxplot_{d}.png" for d in DATASETS))


@pytest.fixture(scope="module")
def trained_store(data_root, tmp_path_factory, cache_dir):
    """A fresh SQLite store with one quick run per (dataset, model, fold), created once for this module."""
    folder = tmp_path_factory.mktemp("compare-store")
    patch = pytest.MonkeyPatch()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    patch.setenv("MEDBENCH_CACHE_DIR", str(cache_dir))
    patch.setenv("MEDBENCH_OUTPUT_DIR", str(folder / "outputs"))
    patch.delenv("MLFLOW_RUN_ID", raising=False)
    patch.chdir(folder)
    for dataset in DATASETS:
        for model in MODELS:
            for fold in FOLDS:
                assert main(["train", "--model", model, "--dataset", dataset, "--fold", str(fold), *TINY]) == 0
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    patch.undo()


@pytest.fixture(scope="module")
def compared(trained_store, tmp_path_factory):
    """`medbench compare` over the trained store, run once; returns the report folder."""
    output = tmp_path_factory.mktemp("report") / "report"
    assert main(["compare", "--experiments", "medbench", "--metric", "dice", "--output", str(output)]) == 0
    return output


def training_runs():
    experiment = mlflow.get_experiment_by_name("medbench")
    runs = MlflowClient().search_runs([experiment.experiment_id])
    assert len(runs) == len(MODELS) * len(DATASETS) * len(FOLDS)
    return runs


def group_runs(dataset, model):
    return [r for r in training_runs() if r.data.tags["dataset"] == dataset and r.data.tags["model"] == model]


def per_image_dice(run_id, folder):
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="metrics/per_image_metrics.csv",
                                               dst_path=str(folder))
    return pd.read_csv(path, dtype={"id": str}).set_index("id")["dice"]


def test_compare_table_matches_runs(compared):
    table = pd.read_csv(compared / "comparison.csv").set_index(["dataset", "model"])
    assert len(table) == len(MODELS) * len(DATASETS)
    for dataset in DATASETS:
        for model in MODELS:
            runs = group_runs(dataset, model)
            row = table.loc[(dataset, model)]
            assert set(row["run_ids"].split()) == {r.info.run_id for r in runs}
            assert row["family"] == runs[0].data.tags["family"]
            for metric in ("dice", "iou", "precision", "recall", "hd95"):
                values = np.array([r.data.metrics[f"test/{metric}"] for r in runs])
                assert row[f"{metric}_mean"] == pytest.approx(values.mean())
                assert row[f"{metric}_std"] == pytest.approx(values.std(ddof=1))
            class_name = "polyp" if dataset == "kvasir_seg" else "lesion"
            per_class = np.array([r.data.metrics[f"test/dice/{class_name}"] for r in runs])
            assert row[f"dice/{class_name}_mean"] == pytest.approx(per_class.mean())
            excluded = sum(r.data.metrics["test/hd95_excluded"] for r in runs)
            assert row["hd95_excluded"] == excluded
            assert row["params"] == int(runs[0].data.params["params_measured"])
            assert row["latency_ms"] > 0
            assert row["macs"] > 0

    for dataset in DATASETS:
        means = table.loc[dataset, "dice_mean"]
        assert table.loc[(dataset, means.idxmax()), "rank"] == 1.0
        assert table.loc[(dataset, means.idxmin()), "rank"] == 2.0


def test_compare_writes_every_file(compared, trained_store):
    for name in REPORT_FILES:
        assert (compared / name).is_file(), name
        assert (compared / name).stat().st_size > 0, name
    for name in REPORT_FILES:
        if name.endswith(".png"):
            with Image.open(compared / name) as png:
                assert png.size[0] > 100

    report = (compared / "report.md").read_text()
    page = (compared / "report.html").read_text()
    for run in training_runs():
        assert run.info.run_id in report
        assert run.info.run_id in page
    for name in REPORT_FILES:
        if name.startswith("plots/"):
            assert name in report
            assert name in page
    assert "not independent datasets" in json.loads((compared / "friedman.json").read_text())["blocks"]

    compare_runs = MlflowClient().search_runs([mlflow.get_experiment_by_name("medbench-compare").experiment_id])
    logged = {a.path for a in MlflowClient().list_artifacts(compare_runs[0].info.run_id)}
    assert {"report.md", "report.html", "comparison.csv", "plots"} <= logged


def test_compare_paired_tests_match_scipy(compared, tmp_path):
    tests = pd.read_csv(compared / "paired_tests.csv")
    table = pd.read_csv(compared / "comparison.csv")
    for dataset in DATASETS:
        rows = table[table["dataset"] == dataset]
        best = rows.loc[rows["rank"] == 1.0, "model"].item()
        other = next(m for m in MODELS if m != best)
        scores = {}
        for model in (best, other):
            scores[model] = pd.concat([per_image_dice(r.info.run_id, tmp_path / r.info.run_id)
                                       for r in group_runs(dataset, model)])
        shared = scores[best].dropna().index.intersection(scores[other].dropna().index)
        assert len(shared) == 8  # 2 folds x 4 held-out images
        row = tests[tests["dataset"] == dataset].iloc[0]
        assert row["reference"] == best
        assert row["n_pairs"] == len(shared)
        if np.any(scores[other].loc[shared].to_numpy() != scores[best].loc[shared].to_numpy()):
            expected = stats.wilcoxon(scores[other].loc[shared].to_numpy(), scores[best].loc[shared].to_numpy())
            assert row["pvalue"] == pytest.approx(expected.pvalue)
            assert row["pvalue_holm"] == pytest.approx(expected.pvalue)  # one comparison per dataset


def test_champion_alias_on_best_version(compared):
    table = pd.read_csv(compared / "comparison.csv")
    client = MlflowClient()
    for dataset in DATASETS:
        rows = table[table["dataset"] == dataset]
        best = rows.loc[rows["dice_mean"].idxmax(), "model"]
        runs = group_runs(dataset, best)
        version = client.get_model_version_by_alias(f"medbench-{dataset}-{best}", CHAMPION_ALIAS)
        best_run = max(runs, key=lambda r: r.data.metrics["test/dice"])
        assert version.run_id == best_run.info.run_id
        assert version.tags["champion.metric"] == "dice"
        assert version.tags["champion.dataset"] == dataset
        assert best in version.tags["champion.reason"]
        loser = next(m for m in MODELS if m != best)
        with pytest.raises(mlflow.exceptions.MlflowException):
            client.get_model_version_by_alias(f"medbench-{dataset}-{loser}", CHAMPION_ALIAS)


def copy_kvasir_images(data_root, folder, count=3):
    folder.mkdir()
    sources = sorted((data_root / "kvasir_seg" / "Kvasir-SEG" / "images").glob("*.jpg"))[:count]
    for source in sources:
        shutil.copy(source, folder / source.name)
    return sources


def test_predict_champion_masks_at_original_size(compared, data_root, tmp_path, capsys):
    sources = copy_kvasir_images(data_root, tmp_path / "in")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    name = pd.read_csv(compared / "comparison.csv").query("dataset == 'kvasir_seg' and rank == 1")["model"].item()
    uri = f"models:/medbench-kvasir_seg-{name}@{CHAMPION_ALIAS}"
    assert main(["predict", "--model-uri", uri, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 0
    assert "skipped notes.txt: not an image file" in capsys.readouterr().out

    areas = pd.read_csv(tmp_path / "out" / "class_areas.csv").set_index("file")
    assert len(list((tmp_path / "out").glob("*_mask.png"))) == len(sources)
    for source in sources:
        with Image.open(source) as original:
            size = original.size
        with Image.open(tmp_path / "out" / f"{source.stem}_mask.png") as mask:
            assert mask.size == size
            labels = np.asarray(mask)
        with Image.open(tmp_path / "out" / f"{source.stem}_overlay.png") as overlay:
            assert overlay.size == size
        assert labels.max() <= 1
        row = areas.loc[source.name]
        assert (row["width"], row["height"]) == size
        assert row["background_pixels"] + row["polyp_pixels"] == size[0] * size[1]
        assert row["polyp_pixels"] == int((labels == 1).sum())


def test_predict_skips_image_over_size_limit(compared, data_root, tmp_path, monkeypatch):
    sources = copy_kvasir_images(data_root, tmp_path / "in", count=1)
    small = np.asarray(Image.open(sources[0]).convert("RGB").resize((48, 40)))
    Image.fromarray(small).save(tmp_path / "in" / "small.png")
    monkeypatch.setattr(imageio, "MAX_IMAGE_PIXELS", 100 * 100)
    uri = f"models:/medbench-ph2-unet/1"
    result = predict(uri, tmp_path / "in", tmp_path / "out")
    assert [p.name for p in result.masks] == ["small_mask.png"]
    assert "over the limit" in result.skipped[sources[0].name]

    (tmp_path / "in" / "small.png").unlink()
    with pytest.raises(MedbenchError, match="No image in .* could be segmented"):
        predict(uri, tmp_path / "in", tmp_path / "out2")


@pytest.mark.parametrize(("uri", "message"), [
    ("models:/medbench-kvasir-unet@champion", "Registered model 'medbench-kvasir-unet' not found"),
    ("models:/medbench-ph2-unet@best", "has no alias 'best'"),
    ("models:/medbench-ph2-unet/99", "has no version '99'"),
    ("runs:/abc/model", "not a registry URI"),
])
def test_predict_bad_model_uri(trained_store, tmp_path, uri, message):
    (tmp_path / "in").mkdir()
    with pytest.raises(MedbenchError, match=message):
        predict(uri, tmp_path / "in", tmp_path / "out")


def test_predict_missing_input_folder(trained_store, tmp_path):
    with pytest.raises(MedbenchError, match="does not exist or is not a folder"):
        predict("models:/medbench-ph2-unet/1", tmp_path / "nowhere", tmp_path / "out")


@pytest.mark.parametrize(("fields", "message"), [
    ({"metric": "dise"}, "Unknown metric 'dise'. Did you mean 'dice'"),
    ({"models": ("segformer_b3",)}, "No finished training runs .* kvasir_seg/swinunet"),
    ({"datasets": ("isic2018",)}, "No finished training runs"),
    ({"experiments": ("nope",)}, "Experiment\\(s\\) 'nope' not found"),
])
def test_compare_bad_selection(trained_store, tmp_path, fields, message):
    with pytest.raises(MedbenchError, match=message):
        compare(CompareConfig(output=str(tmp_path / "report"), efficiency=False, **fields))


def test_mlflow_run_compare_entry_point(compared, trained_store, tmp_path):
    # in-process runs above left MLflow's active experiment in MLFLOW_EXPERIMENT_ID
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}
    env.update(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               PYTHONPATH=f"{ROOT}:{os.environ.get('PYTHONPATH', '')}")
    command = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "compare", "--env-manager", "local",
               "--experiment-name", "medbench-compare", "-P", "datasets=ph2", "-P", "metric=hd95",
               "-P", "efficiency=false", "-P", "champion=false", "-P", f"output={tmp_path / 'report'}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "report" / "comparison.csv")
    assert set(table["dataset"]) == {"ph2"}
    assert "latency_ms" not in table
    best = table.loc[table["hd95_mean"].idxmin(), "model"]
    assert table.loc[table["model"] == best, "rank"].item() == 1.0
