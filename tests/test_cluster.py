"""Two `tune` workers on one PostgreSQL-backed Optuna study, tracked by an `mlflow server` on PostgreSQL.

Needs `MEDBENCH_TEST_POSTGRES_URL`, the SQLAlchemy URL of a PostgreSQL database whose
role may create databases (`.ci/postgres.sh` starts such a server and prints the URL).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import mlflow
import optuna
import pytest
import sqlalchemy
import torch
from conftest import reset_mlflow_state, running_mlflow_server, use_mlflow_server
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from test_tuning import GRID, ROOT, child_runs, parent_runs, trial_lrs, tune_command

from medbench.tuning import study_lock


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get("MEDBENCH_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("MEDBENCH_TEST_POSTGRES_URL must be set in CI; .ci/run sets it from .ci/postgres.sh.")
        pytest.skip("MEDBENCH_TEST_POSTGRES_URL is not set; start a server with .ci/postgres.sh DIR PORT.")
    return url


@pytest.fixture
def databases(postgres_url) -> Iterator[dict[str, str]]:
    """Two fresh databases on the test server, one for MLflow and one for Optuna, dropped afterwards."""
    server = sqlalchemy.engine.make_url(postgres_url)
    admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    suffix = uuid.uuid4().hex[:8]
    names = {"mlflow": f"medbench_mlflow_{suffix}", "optuna": f"medbench_optuna_{suffix}"}
    with admin.connect() as connection:
        for name in names.values():
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    yield {store: server.set(database=name).render_as_string(hide_password=False) for store, name in names.items()}
    with admin.connect() as connection:
        for name in names.values():
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_postgres_study_lock_exclusive(postgres_url):
    order = []

    def take_lock() -> None:
        with study_lock(postgres_url):
            order.append("second")

    waiting = threading.Thread(target=take_lock)
    with study_lock(postgres_url):
        waiting.start()
        waiting.join(timeout=1)
        assert waiting.is_alive(), "a second holder got the lock while the first held it"
        order.append("first")
    waiting.join(timeout=30)
    assert order == ["first", "second"]


@pytest.fixture
def postgres_mlflow_server(databases, tmp_path, monkeypatch, cache_dir) -> Iterator[str]:
    reset_mlflow_state()
    with running_mlflow_server(tmp_path, databases["mlflow"]) as uri:
        use_mlflow_server(uri, tmp_path, monkeypatch, cache_dir)
        yield uri
        reset_mlflow_state()


@pytest.mark.integration
def test_two_workers_on_postgres(data_root, databases, postgres_mlflow_server, tmp_path):
    storage = databases["optuna"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    workers = []
    for name in ("first", "second"):
        with open(tmp_path / f"{name}.log", "w") as log_file:
            command = [sys.executable, "-m", "medbench", *tune_command(storage)]
            workers.append((subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env), name))
    for worker, name in workers:
        assert worker.wait(timeout=900) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]

    # the budget and the grid: exactly 3 trials, one per learning rate
    study = optuna.load_study(study_name="grid", storage=storage)
    assert len(study.trials) == 3
    assert trial_lrs(study, TrialState.COMPLETE) == sorted(GRID)

    # each worker has its own parent run, tagged with its host and process id
    parents = {p.info.run_id: p for p in parent_runs()}
    assert len(parents) == 2
    pids = {p.data.tags["worker.pid"] for p in parents.values()}
    assert pids == {str(worker.pid) for worker, _ in workers}
    assert {p.data.tags["worker.host"] for p in parents.values()} == {socket.gethostname()}

    # every trial is a child run of the parent of the worker that ran it
    children = {c.info.run_id: c for p in parents for c in child_runs(p)}
    assert len(children) == 3
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == set(children)
    for child in children.values():
        parent = parents[child.data.tags["mlflow.parentRunId"]]
        assert child.data.tags["worker.pid"] == parent.data.tags["worker.pid"]
        assert child.info.status == "FINISHED"
    assert all(child_runs(p) for p in parents), "each worker should have run a trial"

    # the best trial's model, registered through the server, loads from the registry
    best_run = study.best_trial.user_attrs["mlflow_run_id"]
    version = mlflow.register_model(f"runs:/{best_run}/model", "medbench-cluster-test")
    assert version.version == "1"
    stored = MlflowClient().get_model_version("medbench-cluster-test", "1")
    assert stored.run_id == best_run
    model = mlflow.pytorch.load_model("models:/medbench-cluster-test/1", map_location="cpu")
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)
