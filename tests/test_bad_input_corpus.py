"""Every entry point against a table of bad inputs: a clear error each, and no half-written output.

Each `Case` runs one command line through `medbench.cli.main` in a fresh folder and
expects exit code 2 with a message that names the bad value or file. After every case
the corpus checks that nothing was left half-written: no MLflow run still RUNNING, no
prepared-data staging folder or prepared folder without its manifest, no checkpoint
temporary file. To cover a new entry point, add its cases to `CASES`.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from medbench.cli import main

# A dataset builder that the older bad-input tests already use.
from test_bad_input import make_folder


@dataclass(frozen=True)
class Case:
    """One bad input: the command line (built in a workspace folder) and the expected error.

    Attributes:
        id: test id, `<entry point>-<what is wrong>`.
        argv: arguments of `medbench`, or a function of the workspace returning them.
        message: regular expression that stderr must match; it names the bad value.
    """

    id: str
    argv: list[str] | Callable[[Path], list[str]]
    message: str


def folder_train(setup: Callable[[Path], Path], *extra: str) -> Callable[[Path], list[str]]:
    """Command line training `unet` on the generic folder that `setup(workspace)` builds."""

    def argv(workspace: Path) -> list[str]:
        folder = setup(workspace)
        return ["train", "--model", "unet", "--dataset", "folder", "--data-dir", str(folder),
                "--image-size", "32", "--max-images", "10", "--epochs", "1", "--batch-size", "2", *extra]

    return argv


def dataset(mask_fn=None, spec=None, change: Callable[[Path], None] | None = None) -> Callable[[Path], Path]:
    def build(workspace: Path) -> Path:
        folder = make_folder(workspace / "ds", mask_fn=mask_fn, spec=spec)
        if change is not None:
            change(folder)
        return folder

    return build


def write_bytes(name: str, data: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        path = folder / name
        path.write_bytes(data(path.read_bytes()))

    return change


def png_claiming_size(original: bytes, width: int = 40_000, height: int = 40_000) -> bytes:
    """The PNG `original` with its header rewritten to claim `width` x `height` pixels."""
    header = original[16:29]  # IHDR data: width, height, then 5 bytes of format
    patched = struct.pack(">II", width, height) + header[8:]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + patched))
    return original[:16] + patched + crc + original[33:]


def symlink_outside(folder: Path) -> None:
    # An image that resolves to a text file outside the data folder.
    outside = folder.parent / "notes.txt"
    outside.write_text("not an image")
    target = folder / "images" / "img04.png"
    target.unlink()
    target.symlink_to(outside)


def rgb_label_mask(folder: Path) -> None:
    Image.new("RGB", (40, 32), (1, 1, 1)).save(folder / "masks" / "img06.png")


def remove_images(folder: Path) -> None:
    for path in (folder / "images").iterdir():
        path.unlink()
    for path in (folder / "masks").iterdir():
        path.unlink()


def zero_one(index: int, mask: np.ndarray) -> np.ndarray:
    return (mask > 0).astype(np.uint8)


LABELS = {"class_names": ["background", "a"], "mask_format": "labels"}
TRAIN = ["train", "--model", "unet", "--dataset", "kvasir_seg"]

CASES = [
    # train: corrupt, truncated and empty files
    Case("train-corrupt-image", folder_train(dataset(change=write_bytes("images/img07.png", lambda b: b"\x89PNG garbage"))),
         r"Cannot read image .*img07\.png"),
    Case("train-truncated-image", folder_train(dataset(change=write_bytes("images/img01.png", lambda b: b[:200]))),
         r"img01\.png"),
    Case("train-empty-image-file", folder_train(dataset(change=write_bytes("images/img02.png", lambda b: b""))),
         r"Cannot read image .*img02\.png"),
    Case("train-truncated-mask", folder_train(dataset(change=write_bytes("masks/img03.png", lambda b: b[:60]))),
         r"img03\.png"),
    Case("train-empty-folder", folder_train(dataset(change=remove_images)), r"No images found in .*images"),
    Case("train-invalid-json-spec", folder_train(dataset(change=lambda f: (f / "medbench.json").write_text("{oops"))),
         r"Invalid JSON in .*medbench\.json"),
    # train: mislabelled masks
    Case("train-mask-values-outside-classes",
         folder_train(dataset(mask_fn=lambda i, m: zero_one(i, m) * (5 if i == 2 else 1), spec=LABELS)),
         r"img02\.png holds values \[5\] outside the classes 0\.\.1"),
    Case("train-mask-without-image", folder_train(dataset(change=lambda f: (f / "images" / "img05.png").unlink())),
         r"have no image .*img05"),
    Case("train-mask-size-differs", folder_train(dataset(mask_fn=lambda i, m: m[:, :30] if i == 5 else m)),
         r"Mask .*img05\.png is 30x32"),
    Case("train-unknown-mask-format", folder_train(dataset(spec={"mask_format": "rle"})), r"got 'rle'"),
    # train: oversized and wrong-mode files
    Case("train-oversized-image", folder_train(dataset(change=write_bytes("images/img08.png", png_claiming_size))),
         r"Image .*img08\.png is over the limit of \d+ pixels"),
    Case("train-rgb-label-mask", folder_train(dataset(mask_fn=zero_one, spec=LABELS, change=rgb_label_mask)),
         r"img06\.png has 3 channels"),
    # train: paths outside the data folder
    Case("train-data-dir-missing", lambda w: [*TRAIN, "--data-dir", str(w / "nowhere")], r"Data folder .*nowhere for dataset 'kvasir_seg' does not exist"),
    Case("train-data-dir-is-data-root", lambda w: [*TRAIN[:-1], "folder", "--data-dir", str(w)],
         r"Missing images folder .*images"),
    Case("train-image-links-outside", folder_train(dataset(change=symlink_outside)), r"Cannot read image .*img04\.png"),
    Case("train-weights-missing", folder_train(dataset(), "--model", "swinunet", "--weights", "../elsewhere/w.pt"),
         r"Weight file \.\./elsewhere/w\.pt does not exist"),
    # train: parameter types
    Case("train-epochs-not-int", [*TRAIN, "--epochs", "three"], r"--epochs: invalid int value: 'three'"),
    Case("train-lr-not-float", [*TRAIN, "--lr", "fast"], r"--lr: invalid float value: 'fast'"),
    Case("train-image-size-fraction", [*TRAIN, "--image-size", "64.5"], r"invalid int value: '64.5'"),
    Case("train-amp-not-bool", [*TRAIN, "--amp", "maybe"], r"expected true or false, got 'maybe'"),
    Case("train-unknown-flag", [*TRAIN, "--epocs", "3"], r"unrecognized arguments: --epocs 3"),
    # train: parameter ranges and names
    Case("train-fold-out-of-range", [*TRAIN, "--fold", "9"], r"fold must be in 0\.\.4, got 9"),
    Case("train-num-folds-one", [*TRAIN, "--num-folds", "1"], r"num_folds must be at least 2, got 1"),
    Case("train-batch-size-zero", [*TRAIN, "--batch-size", "0"], r"batch_size must be at least 1, got 0"),
    Case("train-epochs-negative", [*TRAIN, "--epochs", "-1"], r"epochs must be at least 1, got -1"),
    Case("train-image-size-huge", [*TRAIN, "--image-size", "100000"], r"image_size must be at most 4096 pixels, got 100000"),
    Case("train-image-size-tiny", [*TRAIN, "--image-size", "8"], r"image_size must be at least 32 pixels, got 8"),
    Case("train-max-images-too-few", [*TRAIN, "--max-images", "3"], r"max_images must be at least .* got 3"),
    Case("train-lr-zero", [*TRAIN, "--lr", "0"], r"lr must be positive, got 0"),
    Case("train-weight-decay-negative", [*TRAIN, "--weight-decay", "-1"], r"weight_decay must be non-negative, got -1"),
    Case("train-min-delta-negative", [*TRAIN, "--min-delta", "-0.1"], r"min_delta must be non-negative, got -0\.1"),
    Case("train-patience-zero", [*TRAIN, "--patience", "0"], r"patience must be at least 1, got 0"),
    Case("train-num-workers-negative", [*TRAIN, "--num-workers", "-2"], r"num_workers must be non-negative, got -2"),
    Case("train-device-unknown", [*TRAIN, "--device", "tpu"], r"device must be .* got 'tpu'"),
    Case("train-device-absent", [*TRAIN, "--device", "cuda:7"], r"Device 'cuda:7' is not available"),
    Case("train-preset-unknown", [*TRAIN, "--preset", "fast"], r"invalid choice: 'fast'"),
    Case("train-model-unknown", ["train", "--model", "unet3d", "--dataset", "kvasir_seg"], r"Unknown model 'unet3d'"),
    Case("train-dataset-unknown", ["train", "--model", "unet", "--dataset", "isic"], r"Unknown dataset 'isic'"),
    Case("train-resume-unknown-run", [*TRAIN, "--resume", "0123456789abcdef"], r"run '0123456789abcdef'.* not found"),
    Case("train-resume-nothing-to-resume", [*TRAIN, "--resume", "last"],
         r"No unfinished run named 'unet__kvasir_seg__fold0__seed0'"),
    # train: a run that starts and fails must end FAILED, not RUNNING
    Case("train-loss-diverges", folder_train(dataset(), "--lr", "1e30"), r"Training loss is .* at epoch 0, step"),
    # models and datasets
    Case("models-unknown-family", ["models", "--family", "CNN"], r"invalid choice: 'CNN'"),
    Case("models-unknown-flag", ["models", "--jsn"], r"unrecognized arguments: --jsn"),
    Case("datasets-unknown-flag", ["datasets", "--all"], r"unrecognized arguments: --all"),
    Case("unknown-command", ["trian"], r"invalid choice: 'trian'"),
    # prepare
    Case("prepare-dataset-unknown", ["prepare", "--dataset", "isic"], r"Unknown dataset 'isic'. Did you mean 'isic2018'"),
    Case("prepare-image-size-tiny", ["prepare", "--dataset", "kvasir_seg", "--image-size", "8"],
         r"image_size must be at least 32 pixels, got 8"),
    Case("prepare-split-unknown", ["prepare", "--dataset", "kvasir_seg", "--split", "random"],
         r"split must be 'kfold' or 'official', got 'random'"),
    # tune
    Case("tune-sampler-unknown", ["tune", "--model", "unet", "--dataset", "kvasir_seg", "--sampler", "random"],
         r"Unknown sampler 'random'"),
    Case("tune-metric-unknown", ["tune", "--model", "unet", "--dataset", "kvasir_seg", "--metric", "val/foo"],
         r"Unknown objective metric 'val/foo'"),
    Case("tune-storage-unopenable", ["tune", "--model", "unet", "--dataset", "kvasir_seg", "--storage", "nosuchdb://x"],
         r"Cannot open Optuna storage 'nosuchdb://x'"),
    Case("tune-resume-given", ["tune", "--model", "unet", "--dataset", "kvasir_seg", "--resume", "last"],
         r"tune does not take --resume: run a worker again with the same --study-name"),
    # cv
    Case("cv-fold-given", ["cv", "--model", "unet", "--dataset", "kvasir_seg", "--fold", "1"], r"cv trains every fold"),
    Case("cv-resume-given", ["cv", "--model", "unet", "--dataset", "kvasir_seg", "--resume", "last"],
         r"cv does not take --resume"),
    # explain
    Case("explain-run-unknown", ["explain", "--run-id", "0123456789abcdef"], r"Run '0123456789abcdef' was not found"),
    Case("explain-no-target", ["explain"], r"Pass exactly one of --run-id and --model-uri"),
    # compare
    Case("compare-experiment-unknown", ["compare", "--experiments", "nosuch"], r"Experiment\(s\) 'nosuch' not found"),
    # predict
    Case("predict-model-unknown", lambda w: ["predict", "--model-uri", "models:/nope@champion", "--input", str(w),
                                             "--output", str(w / "out")], r"Registered model 'nope' not found"),
    Case("predict-input-missing", lambda w: ["predict", "--model-uri", "models:/x/1", "--input", str(w / "none"),
                                             "--output", str(w / "out")], r"Input folder .*none does not exist"),
]


def run_cli(argv: list[str]) -> int:
    """`medbench.cli.main` with argparse's exit turned into its exit code."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code)


def assert_no_half_written_output(workspace: Path, tracking_db: Path) -> None:
    prepared = workspace / "cache" / "prepared"
    if prepared.exists():
        for folder in prepared.glob("*/*"):
            assert ".tmp" not in folder.name, f"staging folder left behind: {folder}"
            assert (folder / "manifest.json").is_file(), f"prepared folder without manifest: {folder}"
    outputs = workspace / "outputs"
    if outputs.exists():
        assert not list(outputs.rglob("*.tmp")), "checkpoint temporary file left behind"
    if tracking_db.exists():
        client = MlflowClient(f"sqlite:///{tracking_db}")
        experiments = [e.experiment_id for e in client.search_experiments()]
        running = [r.info.run_id for r in client.search_runs(experiments) if r.info.status == "RUNNING"]
        assert not running, f"runs left RUNNING: {running}"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case, tmp_path, mlflow_store, monkeypatch, capsys):
    monkeypatch.setenv("MEDBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDBENCH_DATA_DIR", str(tmp_path / "data-root"))
    argv = case.argv(tmp_path) if callable(case.argv) else case.argv

    code = run_cli(argv)

    error = capsys.readouterr().err
    assert code == 2, error[-2000:]
    assert "Traceback" not in error
    assert re.search(case.message, error), error[-2000:]
    assert_no_half_written_output(tmp_path, tmp_path / "mlflow.db")


def test_corpus_covers_every_entry_point():
    from medbench.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    covered = {case.id.split("-")[0] for case in CASES}
    assert set(commands) <= covered, f"entry points without bad-input cases: {set(commands) - covered}"


def test_oversized_png_helper_changes_only_size(tmp_path):
    path = tmp_path / "a.png"
    Image.new("L", (3, 2)).save(path)
    path.write_bytes(png_claiming_size(path.read_bytes(), 7, 5))
    with Image.open(path) as image:
        assert image.size == (7, 5)
        assert image.mode == "L"
