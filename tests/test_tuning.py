"""Optuna tuning on real data into real MLflow and Optuna SQLite stores, with real worker processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from medbench.cli import main
from medbench.config import TrainConfig
from medbench.errors import MedbenchError
from medbench.tuning import TuneConfig, open_study, study_lock, trial_objective

ROOT = Path(__file__).resolve().parent.parent
# 20 images (5 folds of 4), 32x32, one epoch: a few seconds of CPU per trial.
TINY = ["--max-images", "20", "--image-size", "32", "--epochs", "1", "--batch-size", "4"]
GRID = {1e-4, 5e-5, 1e-5}


def tune_command(storage: str, *extra: str) -> list[str]:
    return ["tune", "--model", "swinunet", "--dataset", "kvasir_seg", *TINY, "--storage", storage,
            "--study-name", "grid", *extra]


def worker_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


def start_worker(storage: str, log_path: Path, *extra: str) -> subprocess.Popen:
    with open(log_path, "w") as log_file:
        return subprocess.Popen([sys.executable, "-m", "medbench", *tune_command(storage, *extra)],
                                stdout=log_file, stderr=subprocess.STDOUT, env=worker_env())


def parent_runs():
    experiment = mlflow.get_experiment_by_name("medbench")
    runs = MlflowClient().search_runs([experiment.experiment_id])
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


def child_runs(parent_run_id: str):
    experiment = mlflow.get_experiment_by_name("medbench")
    return MlflowClient().search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")


def trial_lrs(study: optuna.Study, state: TrialState) -> list[float]:
    return sorted(t.params["lr"] for t in study.get_trials(states=(state,)))


@pytest.fixture
def storage(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


@pytest.mark.integration
def test_grid_tune_records_trials(data_root, mlflow_store, storage):
    assert main(tune_command(storage)) == 0

    (parent,) = parent_runs()
    children = child_runs(parent.info.run_id)
    assert len(children) == 3
    assert {float(c.data.params["config.lr"]) for c in children} == GRID
    assert all(c.info.status == "FINISHED" for c in children)

    # the objective is val/iou at the best epoch, read back by hand from each child run
    history = MlflowClient().get_metric_history
    values = {}
    for child in children:
        best_epoch = int(child.data.metrics["best_epoch"])
        (at_best,) = [m.value for m in history(child.info.run_id, "val/iou") if m.step == best_epoch]
        values[float(child.data.params["config.lr"])] = at_best
        assert trial_objective(child.info.run_id, "val/iou") == at_best
    best_value = max(values.values())
    assert parent.data.metrics["best/val/iou"] == pytest.approx(best_value)
    assert values[float(parent.data.params["best.lr"])] == best_value

    assert parent.data.params["tune.budget"] == "3"
    assert parent.data.params["tune.sampler"] == "grid"
    assert json.loads(parent.data.params["tune.search_space"]) == {"lr": [1e-4, 5e-5, 1e-5]}
    assert parent.data.metrics["trials/complete"] == 3

    study = optuna.load_study(study_name="grid", storage=storage)
    assert trial_lrs(study, TrialState.COMPLETE) == sorted(GRID)
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {c.info.run_id for c in children}


@pytest.mark.integration
def test_failing_trial_recorded(data_root, mlflow_store, storage):
    # lr 1e30 makes the training loss non-finite within the first epoch, a real training error.
    # The median pruner only starts pruning after 5 trials, so here it just receives reports.
    assert main(tune_command(storage, "--lr-grid", "1e30,1e-4", "--pruner", "median")) == 0

    study = optuna.load_study(study_name="grid", storage=storage)
    (failed,) = study.get_trials(states=(TrialState.FAIL,))
    assert failed.params["lr"] == 1e30
    assert "NonFiniteLossError" in failed.user_attrs["fail_reason"]
    assert trial_lrs(study, TrialState.COMPLETE) == [1e-4]
    (complete,) = study.get_trials(states=(TrialState.COMPLETE,))
    assert complete.intermediate_values == {0: complete.value}

    (parent,) = parent_runs()
    assert parent.info.status == "FINISHED"
    assert parent.data.params["best.lr"] == "0.0001"
    statuses = sorted(c.info.status for c in child_runs(parent.info.run_id))
    assert statuses == ["FAILED", "FINISHED"]


@pytest.mark.integration
def test_tpe_tune_samples_space(data_root, mlflow_store, storage):
    command = tune_command(storage, "--sampler", "tpe", "--n-trials", "2", "--lr-range", "1e-5,1e-3",
                           "--weight-decay-range", "1e-3,1e-1")
    assert main(command) == 0

    study = optuna.load_study(study_name="grid", storage=storage)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    assert trials[0].params != trials[1].params
    for trial in trials:
        assert 1e-5 <= trial.params["lr"] <= 1e-3
        assert 1e-3 <= trial.params["weight_decay"] <= 1e-1
    (parent,) = parent_runs()
    assert parent.data.params["tune.budget"] == "2"
    children = child_runs(parent.info.run_id)
    assert {float(c.data.params["config.weight_decay"]) for c in children} == {
        t.params["weight_decay"] for t in trials
    }


@pytest.mark.integration
def test_two_workers_share_grid(data_root, mlflow_store, storage, tmp_path):
    # One worker as an MLflow Project run, one plain, both at once on one study. MLflow
    # Projects creates its run before medbench code runs, so the tracking store must exist.
    MlflowClient().create_experiment("medbench")
    command = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "tune", "--env-manager", "local",
               "--experiment-name", "medbench", "-P", "model=swinunet", "-P", "dataset=kvasir_seg",
               "-P", "max_images=20", "-P", "image_size=32", "-P", "epochs=1", "-P", "batch_size=4",
               "-P", f"storage={storage}", "-P", "study_name=grid"]
    with open(tmp_path / "project.log", "w") as log_file:
        project = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=worker_env())
    plain = start_worker(storage, tmp_path / "plain.log")
    for worker, log_name in ((project, "project.log"), (plain, "plain.log")):
        assert worker.wait(timeout=900) == 0, (tmp_path / log_name).read_text()[-3000:]

    study = optuna.load_study(study_name="grid", storage=storage)
    assert len(study.trials) == 3
    assert trial_lrs(study, TrialState.COMPLETE) == sorted(GRID)

    parents = parent_runs()
    assert len(parents) == 2
    (project_parent,) = [p for p in parents if p.data.tags.get("mlflow.project.entryPoint") == "tune"]
    children = [c for p in parents for c in child_runs(p.info.run_id)]
    assert sorted(float(c.data.params["config.lr"]) for c in children) == sorted(GRID)
    assert all(child_runs(p.info.run_id) for p in parents), "each worker should have run a trial"
    assert project_parent.data.params["tune.study_name"] == "grid"
    # both workers waited for the whole grid, so both record the same best trial
    assert len({p.data.params["best.trial"] for p in parents}) == 1


@pytest.mark.integration
def test_killed_worker_resumes(data_root, mlflow_store, storage, tmp_path):
    worker = start_worker(storage, tmp_path / "killed.log", "--heartbeat-interval", "1")
    deadline = time.monotonic() + 600
    study = None
    while True:
        assert worker.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the worker did not finish a trial in time"
        try:
            study = optuna.load_study(study_name="grid", storage=storage)
            states = [t.state for t in study.get_trials(deepcopy=False)]
        except KeyError:  # the worker has not created the study yet
            states = []
        if TrialState.COMPLETE in states and TrialState.RUNNING in states:
            break
        time.sleep(0.5)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    (finished,) = study.get_trials(states=(TrialState.COMPLETE,))
    (killed,) = study.get_trials(states=(TrialState.RUNNING,))

    assert main(tune_command(storage, "--heartbeat-interval", "1")) == 0

    study = optuna.load_study(study_name="grid", storage=storage)
    assert trial_lrs(study, TrialState.COMPLETE) == sorted(GRID)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert [t.number for t in complete if t.params["lr"] == finished.params["lr"]] == [finished.number]
    assert study.trials[killed.number].state == TrialState.FAIL
    retries = [t for t in complete if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1
    assert retries[0].params == killed.params


# --- bad input: one clear error each, without training --------------------------------------


def base_config() -> TrainConfig:
    return TrainConfig(model="unet", dataset="kvasir_seg")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lr_grid": ()}, "lr_grid is empty"),
        ({"lr_grid": (1e-4, 1e-4)}, "lists a value twice"),
        ({"lr_grid": (1e-4, 0.0)}, "out of range"),
        ({"weight_decay_grid": (-1.0,)}, "out of range"),
        ({"n_trials": 5}, "the grid has 3 points"),
        ({"sampler": "tpe", "lr_range": (1e-3, 1e-5)}, r"lr_range \(0.001, 1e-05\) is empty"),
        ({"sampler": "tpe", "weight_decay_range": (0.1,)}, "exactly two values"),
        ({"sampler": "random"}, "Unknown sampler 'random'"),
        ({"metric": "val/iuo"}, "Did you mean 'val/iou'"),
        ({"metric": "val/hd95"}, "Unknown objective metric 'val/hd95'"),
        ({"metric": "test/precision/polyp"}, "Unknown objective metric"),
        ({"pruner": "median", "metric": "test/dice"}, "needs a per-epoch objective"),
    ],
)
def test_invalid_study_settings(fields, message):
    with pytest.raises(MedbenchError, match=message):
        TuneConfig(train=base_config(), **fields)


def test_empty_grid_cli(capsys):
    assert main(["tune", "--model", "unet", "--dataset", "kvasir_seg", "--lr-grid", ""]) == 2
    assert "lr_grid is empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    "url", ["sqlite:////nonexistent-folder/optuna.db", "nosuchdatabase://somewhere/optuna", "not a url"]
)
def test_storage_cannot_open(url):
    config = TuneConfig(train=base_config(), storage=url)
    with pytest.raises(MedbenchError, match="Cannot open Optuna storage"):
        with study_lock(url):
            open_study(config)


def test_study_name_reused_with_other_space(storage):
    first = TuneConfig(train=base_config(), storage=storage, study_name="reused")
    with study_lock(storage):
        open_study(first)
        # the same definition loads the study again
        study, _ = open_study(first)
    assert study.study_name == "reused"

    other = TuneConfig(train=base_config(), storage=storage, study_name="reused", lr_grid=(1e-3, 1e-4))
    with pytest.raises(MedbenchError, match=r"another definition \(budget: stored 3, requested 2; search_space"):
        open_study(other)
    other_model = TuneConfig(train=TrainConfig(model="swinunet", dataset="kvasir_seg"), storage=storage,
                             study_name="reused")
    with pytest.raises(MedbenchError, match="model: stored 'unet', requested 'swinunet'"):
        open_study(other_model)


def test_objective_of_run_without_metric(mlflow_store):
    client = MlflowClient()
    run = client.create_run(client.create_experiment("objective"))
    client.log_metric(run.info.run_id, "best_epoch", 0)
    client.set_terminated(run.info.run_id)
    assert math.isnan(trial_objective(run.info.run_id, "val/iou"))
    assert math.isnan(trial_objective(run.info.run_id, "test/dice"))
