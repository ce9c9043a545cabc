"""Training survives faults: kills, interrupted checkpoint writes, an absent tracking server, NaN losses."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medbench import tracking
from medbench.cli import main
from medbench.errors import MedbenchError
from medbench.training.checkpoint import load_checkpoint, save_checkpoint
from medbench.training.loop import NonFiniteLossError, fit
from medbench.training.losses import SegmentationLoss

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--model", "swinunet", "--dataset", "kvasir_seg", "--max-images", "20", "--image-size", "64",
        "--batch-size", "4", "--register", "false"]


def subprocess_env(store: Path, outputs: Path, cache: Path) -> dict[str, str]:
    """Environment of a `python -m medbench` child: this checkout, its own store, one thread."""
    return dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        MLFLOW_TRACKING_URI=f"sqlite:///{store}",
        MEDBENCH_OUTPUT_DIR=str(outputs),
        MEDBENCH_CACHE_DIR=str(cache),
        OMP_NUM_THREADS="1",  # one thread in both runs keeps the float sums in the same order
        MLFLOW_DISABLE_TELEMETRY="true",
    )


def final_metrics(store: Path) -> tuple[str, dict[str, float], str]:
    """Run id, `test/...` metrics and status of the only run in the SQLite file `store`."""
    client = MlflowClient(f"sqlite:///{store}")
    (run,) = client.search_runs([client.get_experiment_by_name("medbench").experiment_id])
    return run.info.run_id, {k: v for k, v in run.data.metrics.items() if k.startswith("test/")}, run.info.status


def test_resume_after_sigkill_matches_uninterrupted(data_root, tmp_path, cache_dir):
    command = [sys.executable, "-m", "medbench", "train", *TINY, "--epochs", "3"]
    reference_env = subprocess_env(tmp_path / "reference.db", tmp_path / "reference", cache_dir)
    killed_env = subprocess_env(tmp_path / "killed.db", tmp_path / "killed", cache_dir)

    # The uninterrupted run goes alongside the one that is killed (each uses one core).
    reference = subprocess.Popen(command, env=reference_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    victim = subprocess.Popen(command, env=killed_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "killed").glob("*/*/last.pt")):
        assert victim.poll() is None, "the run ended before writing its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.2)
    time.sleep(1.5)  # into epoch 1 of 3
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    (last,) = (tmp_path / "killed").glob("*/*/last.pt")
    assert load_checkpoint(last)["epoch"] in (0, 1), "the kill came after the last epoch"
    run_id, _, status = final_metrics(tmp_path / "killed.db")
    assert status == "RUNNING"

    resumed = subprocess.run([*command, "--resume", "last"], env=killed_env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert reference.wait(timeout=600) == 0, reference.stderr.read().decode()[-3000:]

    resumed_id, resumed_metrics, resumed_status = final_metrics(tmp_path / "killed.db")
    _, reference_metrics, _ = final_metrics(tmp_path / "reference.db")
    assert resumed_id == run_id
    assert resumed_status == "FINISHED"
    assert resumed_metrics["test/dice"] == reference_metrics["test/dice"]
    assert resumed_metrics == reference_metrics

    history = MlflowClient(f"sqlite:///{tmp_path / 'killed.db'}").get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == [0, 1, 2]


WRITER = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from medbench.training.checkpoint import save_checkpoint
    path, generation = Path(sys.argv[1]), 0
    weights = torch.randn(4_000_000)  # 16 MB, so a write takes a while
    while True:
        generation += 1
        save_checkpoint(path, {"model": {"w": weights}, "config": {}, "epoch": generation})
        print(generation, flush=True)
    """
)


def test_kill_during_checkpoint_write_keeps_previous(tmp_path):
    path = tmp_path / "last.pt"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    rng = random.Random(0)
    for attempt in range(3):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env, stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip()  # at least one complete checkpoint
        time.sleep(rng.uniform(0.05, 0.5))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        state = load_checkpoint(path)
        assert state["epoch"] >= 1, f"attempt {attempt}"
        assert state["model"]["w"].numel() == 4_000_000


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends


def test_unreachable_tracking_server_fails_fast(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("MEDBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDBENCH_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("MEDBENCH_DATA_DIR", str(tmp_path / "data"))
    started = time.monotonic()
    code = main(["train", *TINY, "--epochs", "1"])
    elapsed = time.monotonic() - started

    assert code == 2
    error = capsys.readouterr().err
    assert "does not answer" in error
    assert "127.0.0.1" in error
    assert elapsed < 15
    assert not (tmp_path / "cache").exists(), "data was prepared before the store was checked"
    assert not (tmp_path / "outputs").exists()


class SquaresDataset(Dataset):
    """Random images whose mask is a bright square: enough for a loss that decreases."""

    def __init__(self, count: int, size: int = 16) -> None:
        generator = torch.Generator().manual_seed(count)
        self.images = torch.randn(count, 3, size, size, generator=generator)
        self.masks = torch.zeros(count, size, size, dtype=torch.int64)
        self.masks[:, 4:12, 4:12] = 1
        self.images[:, :, 4:12, 4:12] += 2

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.masks[index], index


class LossTurningNaN(nn.Module):
    """The real segmentation loss, turned NaN from the `at_call`-th training call on (a fault injection)."""

    def __init__(self, at_call: int) -> None:
        super().__init__()
        self.loss, self.at_call, self.training_calls = SegmentationLoss(2), at_call, 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        value = self.loss(logits, target)
        if torch.is_grad_enabled():  # evaluation runs under no_grad and is not counted
            self.training_calls += 1
            if self.training_calls >= self.at_call:
                return value * float("nan")
        return value


def fit_tiny(checkpoint_dir: Path, loss_fn: nn.Module, log_metrics, **options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))
    train_loader = DataLoader(SquaresDataset(8), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    val_loader = DataLoader(SquaresDataset(4), batch_size=4)
    return model, fit(
        model, train_loader, val_loader, loss_fn, epochs=3, lr=1e-2, weight_decay=0.0, patience=5, min_delta=0.0,
        device=torch.device("cpu"), amp=False, class_names=["background", "square"], checkpoint_dir=checkpoint_dir,
        checkpoint_extra={"config": {"model": "tiny"}}, log_metrics=log_metrics, **options,
    )


def test_nonfinite_loss_fails_run_keeps_best(mlflow_store, tmp_path):
    # Two training batches per epoch: the third call is epoch 1, step 0.
    with pytest.raises(NonFiniteLossError, match=r"at epoch 1, step 0"):
        with tracking.start_run("medbench", "tiny__squares__fold0__seed0") as run:
            fit_tiny(tmp_path / "ckpt", LossTurningNaN(at_call=3),
                     lambda metrics, epoch: run.log_metrics(metrics, step=epoch))

    (failed,) = MlflowClient().search_runs([mlflow.get_experiment_by_name("medbench").experiment_id])
    assert failed.info.status == "FAILED"
    assert "at epoch 1, step 0" in failed.data.tags[tracking.FAILURE_TAG]
    best = load_checkpoint(tmp_path / "ckpt" / "best.pt")
    assert best["epoch"] == 0
    assert not list((tmp_path / "ckpt").glob(".*.tmp"))


def test_channels_last_fit_matches_default(tmp_path):
    _, plain = fit_tiny(tmp_path / "plain", SegmentationLoss(2), lambda metrics, epoch: None)
    model, channels_last = fit_tiny(tmp_path / "cl", SegmentationLoss(2), lambda metrics, epoch: None,
                                    channels_last=True)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert channels_last.best_epoch == plain.best_epoch
    assert channels_last.best_value == pytest.approx(plain.best_value, abs=1e-4)


def test_fit_resumes_from_last_checkpoint(tmp_path):
    # In-process twin of the SIGKILL test: stop after epoch 1 (a failure), resume, compare.
    logged: list[int] = []
    _, uninterrupted = fit_tiny(tmp_path / "full", SegmentationLoss(2), lambda metrics, epoch: None)
    with pytest.raises(NonFiniteLossError):
        fit_tiny(tmp_path / "cut", LossTurningNaN(at_call=5), lambda metrics, epoch: logged.append(epoch))
    last = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (last["epoch"], last["step"]) == (1, 4)
    model, resumed = fit_tiny(tmp_path / "cut", SegmentationLoss(2), lambda metrics, epoch: logged.append(epoch),
                              resume_from=last)
    assert logged == [0, 1, 2]
    assert resumed == type(resumed)(uninterrupted.best_epoch, uninterrupted.best_value, 3, tmp_path / "cut" / "best.pt")
    full = load_checkpoint(tmp_path / "full" / "best.pt")["model"]
    assert all(torch.equal(full[k], v) for k, v in model.state_dict().items())


def test_save_checkpoint_writes_best_as_copy(tmp_path):
    save_checkpoint(tmp_path / "last.pt", {"model": {}, "config": {}, "epoch": 4}, copies=[tmp_path / "best.pt"])
    save_checkpoint(tmp_path / "last.pt", {"model": {}, "config": {}, "epoch": 5})
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 4
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


class NotATensor:
    """Any class outside torch's weights-only allowlist."""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"model": {}, "config": {}, "extra": NotATensor()}, "weights_only"),
        ({"weights": torch.ones(2)}, "lacks the 'model' and 'config' entries"),
        ([torch.ones(2)], "lacks the 'model' and 'config' entries"),
    ],
    ids=["pickled-object", "foreign-dict", "list"],
)
def test_load_checkpoint_rejects_other_content(tmp_path, content, message):
    path = tmp_path / "best.pt"
    torch.save(content, path)
    with pytest.raises(MedbenchError, match=message):
        load_checkpoint(path)


def test_load_checkpoint_rejects_truncated_file(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(1000)}, "config": {}})
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(MedbenchError, match=r"best\.pt is not a medbench checkpoint"):
        load_checkpoint(path)


def test_resume_finds_only_unfinished_runs(mlflow_store):
    name = "unet__ph2__fold0__seed0"
    with pytest.raises(MedbenchError, match="No unfinished run named"):
        tracking.find_run_to_resume("medbench", name, "last")
    with tracking.start_run("medbench", name) as finished:
        pass
    with pytest.raises(MedbenchError, match="its status is FINISHED"):
        tracking.find_run_to_resume("medbench", name, finished.run_id)
    with pytest.raises(MedbenchError, match="not found"):
        tracking.find_run_to_resume("medbench", name, "0" * 32)
    with pytest.raises(RuntimeError):
        with tracking.start_run("medbench", name) as failed:
            raise RuntimeError("disk full")
    assert tracking.find_run_to_resume("medbench", name, "last") == failed.run_id
    with pytest.raises(MedbenchError, match="it is named"):
        tracking.find_run_to_resume("medbench", "unet__ph2__fold1__seed0", failed.run_id)

    with tracking.start_run("medbench", name, run_id=failed.run_id) as reopened:
        assert reopened.run_id == failed.run_id
    run = MlflowClient().get_run(failed.run_id)
    assert run.info.status == "FINISHED"
    assert tracking.FAILURE_TAG not in run.data.tags
