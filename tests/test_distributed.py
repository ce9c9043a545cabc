"""`train` under `torchrun` with two CPU ranks (Gloo): one MLflow run, from rank 0 only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from medbench.models import create_model
from medbench.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.integration
def test_torchrun_two_ranks_one_run(data_root, mlflow_store, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "-m", "medbench", "train", "--model", "swinunet", "--dataset", "kvasir_seg", "--device", "cpu",
               "--max-images", "20", "--image-size", "32", "--epochs", "1", "--batch-size", "2"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    experiment = mlflow.get_experiment_by_name("medbench")
    (run,) = MlflowClient().search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2"
    # 20 images in 5 folds: 16 training images, 8 per rank, 4 steps of batch 2 on each rank
    assert run.data.params["train_images"] == "16"
    assert run.data.tags["worker.pid"].isdigit()
    for key in ("train/loss", "val/iou", "test/dice", "test/iou", "best_epoch"):
        assert key in run.data.metrics, key
    assert run.data.metrics["epochs_run"] == 1
    (loss,) = MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert loss.step == 0

    best = tmp_path / "outputs" / run.info.run_name / run.info.run_id / "best.pt"
    state = load_checkpoint(best)
    assert state["epoch"] == 0
    assert state["step"] == 4
    model = create_model("swinunet", 3, state["num_classes"])
    model.load_state_dict(state["model"])  # plain keys: the DDP wrapper's `module.` prefix is not saved
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 2, 32, 32)
    # no rank but 0 wrote checkpoints into the output folder
    assert sorted(p.name for p in (tmp_path / "outputs").rglob("*.pt")) == ["best.pt", "last.pt"]
