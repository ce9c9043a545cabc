"""The shared tracking stack files: the compose file validates, nothing secret is committed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"


def test_compose_file_validates(tmp_path):
    if shutil.which("docker-compose") is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose must be installed in CI (.ci/run installs it).")
        pytest.skip("docker-compose is not installed")
    env_file = tmp_path / "stack.env"
    shutil.copy(DOCKER / "stack.env.example", env_file)
    result = subprocess.run(
        ["docker-compose", "-f", str(DOCKER / "compose.yaml"), "--env-file", str(env_file), "config"],
        capture_output=True, text=True, env=dict(os.environ, STACK_ENV_FILE=str(env_file)), timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert {"postgres", "minio", "mlflow", "optuna-dashboard"} <= set(config["services"])
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            published = port if isinstance(port, str) else f"{port.get('host_ip')}:{port.get('published')}"
            assert str(published).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    mlflow_command = " ".join(config["services"]["mlflow"]["command"]) if isinstance(
        config["services"]["mlflow"]["command"], list) else config["services"]["mlflow"]["command"]
    assert "postgresql://" in mlflow_command
    assert "s3://mlflow" in mlflow_command


def test_compose_requires_credentials():
    text = (DOCKER / "compose.yaml").read_text()
    assert "POSTGRES_PASSWORD:?" in text
    assert "MINIO_ROOT_PASSWORD:?" in text
    assert "docker/stack.env" in (ROOT / ".gitignore").read_text()


def test_kubernetes_files_consistent():
    backend = yaml.safe_load((DOCKER / "kubernetes" / "backend-config.json").read_text())
    template = DOCKER.parent / backend["kube-job-template-path"]
    assert template.is_file()
    job = yaml.safe_load(template.read_text())
    assert job["kind"] == "Job"
    assert job["spec"]["template"]["spec"]["containers"][0]["image"].startswith("{replaced")
