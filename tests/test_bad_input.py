"""Bad input gets one clear error each, naming the value or file and the fix."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from medbench.cli import main
from medbench.config import resolve_train_config
from medbench.data import prepare_dataset
from medbench.errors import MedbenchError


def make_folder(root, n=12, size=(32, 40), mask_fn=None, spec=None):
    """A generic-folder dataset with `n` random images and square masks."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / "images" / f"img{i:02d}.png")
        mask = np.zeros(size, np.uint8)
        mask[4:20, 4:20] = 255
        if mask_fn is not None:
            mask = mask_fn(i, mask)
        Image.fromarray(mask).save(root / "masks" / f"img{i:02d}.png")
    if spec is not None:
        (root / "medbench.json").write_text(json.dumps(spec))
    return root


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDBENCH_DATA_DIR", str(tmp_path / "data-root"))


def test_unknown_model_cli(capsys):
    assert main(["train", "--model", "segformer", "--dataset", "kvasir_seg"]) == 2
    error = capsys.readouterr().err
    assert "Unknown model 'segformer'" in error
    assert "segformer_b3" in error


def test_unknown_dataset_cli(capsys):
    assert main(["train", "--model", "unet", "--dataset", "kvasir"]) == 2
    assert "Did you mean 'kvasir_seg'" in capsys.readouterr().err


def test_missing_data_folder(tmp_path):
    with pytest.raises(MedbenchError, match="does not exist"):
        prepare_dataset("kvasir_seg", data_dir=tmp_path / "nowhere")


def test_missing_ph2_under_data_root():
    with pytest.raises(MedbenchError, match="MEDBENCH_DATA_DIR"):
        prepare_dataset("ph2")


def test_image_without_mask(tmp_path):
    folder = make_folder(tmp_path / "ds")
    (folder / "masks" / "img03.png").unlink()
    with pytest.raises(MedbenchError, match=r"1 images .* have no mask.*img03"):
        prepare_dataset("folder", data_dir=folder, image_size=32)


def test_mask_size_differs_from_image(tmp_path):
    def smaller(i, mask):
        return mask[:, :30] if i == 5 else mask

    folder = make_folder(tmp_path / "ds", mask_fn=smaller)
    with pytest.raises(MedbenchError, match=r"img05\.png is 30x32 but its image .* is 40x32"):
        prepare_dataset("folder", data_dir=folder, image_size=32)


def test_mask_values_outside_classes(tmp_path):
    def labels(i, mask):
        return (mask > 0).astype(np.uint8) * (3 if i == 2 else 1)

    spec = {"class_names": ["background", "a", "b"], "mask_format": "labels"}
    folder = make_folder(tmp_path / "ds", mask_fn=labels, spec=spec)
    with pytest.raises(MedbenchError, match=r"img02\.png holds values \[3\] outside the classes 0..2"):
        prepare_dataset("folder", data_dir=folder, image_size=32)


def test_unreadable_image(tmp_path):
    folder = make_folder(tmp_path / "ds")
    (folder / "images" / "img07.png").write_bytes(b"not a png at all")
    with pytest.raises(MedbenchError, match=r"Cannot read image .*img07\.png"):
        prepare_dataset("folder", data_dir=folder, image_size=32)


def test_truncated_image(tmp_path):
    folder = make_folder(tmp_path / "ds")
    path = folder / "images" / "img01.png"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(MedbenchError, match=r"img01\.png"):
        prepare_dataset("folder", data_dir=folder, image_size=32)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("fold", 5, "fold must be in 0..4"), ("epochs", 0, "epochs must be at least 1"), ("lr", -1.0, "lr must be positive")],
)
def test_invalid_config_values(field, value, message):
    with pytest.raises(MedbenchError, match=message):
        resolve_train_config("quick", model="unet", dataset="ph2", **{field: value})


def test_unknown_preset():
    with pytest.raises(MedbenchError, match="Unknown preset 'fast'"):
        resolve_train_config("fast", model="unet", dataset="ph2")


def test_failed_run_marked_with_reason(tmp_path, mlflow_store):
    # An absurd learning rate drives the loss to infinity after the run has started; the
    # run must end FAILED with the epoch and step in its reason.
    folder = make_folder(tmp_path / "ds")
    code = main(["train", "--model", "unet", "--dataset", "folder", "--data-dir", str(folder), "--lr", "1e30",
                 "--max-images", "10", "--image-size", "32", "--epochs", "1", "--batch-size", "2"])
    assert code == 2
    runs = MlflowClient().search_runs([mlflow.get_experiment_by_name("medbench").experiment_id])
    assert len(runs) == 1
    assert runs[0].info.status == "FAILED"
    assert "at epoch 0, step" in runs[0].data.tags["medbench.failure"]
