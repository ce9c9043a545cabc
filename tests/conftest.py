"""Shared test settings: offline hubs, one CPU thread per test process, the real data root."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# An accidental hub download must fail at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(max(1, int(os.environ.get("MEDBENCH_TEST_THREADS", "2"))))


def real_data_root() -> Path | None:
    """Return `MEDBENCH_DATA_DIR` if it holds the shared real datasets, else `None`."""
    root = os.environ.get("MEDBENCH_DATA_DIR")
    if root and Path(root, "kvasir_seg").is_dir():
        return Path(root)
    return None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data root; CI must have it, elsewhere tests that need it are skipped."""
    root = real_data_root()
    if root is None:
        if os.environ.get("CI"):
            pytest.fail("MEDBENCH_DATA_DIR must point at the real datasets in CI.")
        pytest.skip("MEDBENCH_DATA_DIR does not point at the real datasets.")
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One prepared-data cache for the whole session, so tests reuse prepared datasets."""
    return tmp_path_factory.mktemp("medbench-cache")


def reset_mlflow_state() -> None:
    """Forget the active run and experiment of earlier tests.

    `mlflow.set_experiment` stores the experiment id in a module global and in the
    `MLFLOW_EXPERIMENT_ID` environment variable, which would leak into the next test's
    store and into `mlflow run` subprocesses.
    """
    import mlflow
    from mlflow.tracking import fluent

    while mlflow.active_run():
        mlflow.end_run()
    fluent._active_experiment_id = None
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        os.environ.pop(name, None)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch, cache_dir) -> str:
    """A fresh SQLite tracking store and output folder for one test."""
    reset_mlflow_state()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MEDBENCH_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("MEDBENCH_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    yield uri
    reset_mlflow_state()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_mlflow_server(folder: Path, backend_store_uri: str) -> Iterator[str]:
    """Run a real `mlflow server` on 127.0.0.1 with `backend_store_uri` and artifacts under `folder`; yield its URL."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    log_path = folder / "mlflow-server.log"
    with open(log_path, "w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server",
             "--backend-store-uri", backend_store_uri,
             "--artifacts-destination", str(folder / "artifacts"),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env,
        )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"mlflow server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
    try:
        yield uri
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def use_mlflow_server(uri: str, tmp_path: Path, monkeypatch, cache_dir: Path) -> None:
    """Point this test's MLflow client, caches and outputs at `uri` and `tmp_path`."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MEDBENCH_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("MEDBENCH_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def mlflow_server(tmp_path, monkeypatch, cache_dir):
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend and a local artifact folder."""
    reset_mlflow_state()
    with running_mlflow_server(tmp_path, f"sqlite:///{tmp_path / 'server.db'}") as uri:
        use_mlflow_server(uri, tmp_path, monkeypatch, cache_dir)
        yield uri
        reset_mlflow_state()
