"""Every MLflow call of medbench.

The tracking store is `MLFLOW_TRACKING_URI` if set, else MLflow's own default, an
embedded SQLite file `mlflow.db` in the working folder (the model registry works
without a server). Metric keys are built by `metric_key` only, so the console, MLflow
and local files agree: `train/loss`, `val/dice`, `val/dice/<class>`, `test/hd95/<class>`.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

import medbench
from medbench.errors import MedbenchError

__all__ = [
    "RunLogger",
    "check_tracking_store",
    "code_version",
    "create_experiment",
    "load_model",
    "metric_key",
    "metric_value",
    "start_run",
    "tracking_uri",
]

log = logging.getLogger(__name__)

FAILURE_TAG = "medbench.failure"
# Seconds to wait for a tracking server's /health before giving up.
HEALTH_TIMEOUT_S = 5.0


def metric_key(split: str, name: str, class_name: str | None = None) -> str:
    """The one spelling of a metric key: `<split>/<name>[/<class>]`."""
    return f"{split}/{name}" + (f"/{class_name}" if class_name else "")


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def check_tracking_store() -> str:
    """Fail within seconds, before any training, if a tracking server does not answer."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S) as response:
                response.read()
        except (urllib.error.URLError, OSError) as error:
            raise MedbenchError(
                f"MLflow tracking server {uri} does not answer ({error}). Start it, or unset "
                "MLFLOW_TRACKING_URI to use the local SQLite file mlflow.db."
            ) from error
    return uri


def code_version() -> str:
    """Git commit of the medbench checkout (with `-dirty` for local changes), else the package version."""
    root = Path(medbench.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"medbench-{medbench.__version__}"
    return commit + ("-dirty" if dirty else "")


def _param_value(value: Any) -> str:
    text = "None" if value is None else str(value)
    return text[:6000]  # MLflow's limit for one parameter value


class RunLogger:
    """Logging into one active MLflow run."""

    def __init__(self, run: mlflow.ActiveRun) -> None:
        self.run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        mlflow.log_params({k: _param_value(v) for k, v in params.items()})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log finite metrics asynchronously; NaN values (undefined scores) are left out."""
        finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        if finite:
            mlflow.log_metrics(finite, step=step, synchronous=False)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path)

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifacts(str(folder), artifact_path)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        mlflow.log_dict(data, artifact_file)

    def log_model(
        self,
        model: torch.nn.Module,
        in_channels: int,
        num_classes: int,
        registered_name: str | None,
        metadata: Mapping[str, Any],
    ) -> str | None:
        """Log `model` with a size-agnostic signature; register it if `registered_name` is set.

        The model is pickled (`serialization_format="pickle"`) rather than exported with
        torch.export, MLflow 3's default, whose graph is fixed to the example's image size.
        The medbench package travels with it as code, so it loads where medbench is not
        installed. Returns the registered version, or `None`.
        """
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, in_channels, -1, -1), "image")]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes, -1, -1), "logits")]),
        )
        requirements = [
            f"{name}=={version}"
            for name, version in _installed_versions(
                "torch", "torchvision", "timm", "segmentation-models-pytorch", "transformers", "monai", "einops"
            ).items()
        ]
        info = mlflow.pytorch.log_model(
            model.cpu().eval(),
            name="model",
            signature=signature,
            serialization_format="pickle",
            code_paths=[str(Path(medbench.__file__).resolve().parent)],
            pip_requirements=requirements,
            metadata=dict(metadata),
            registered_model_name=registered_name,
        )
        if registered_name is None:
            return None
        return str(info.registered_model_version)


def _installed_versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


@contextmanager
def start_run(
    experiment: str,
    run_name: str,
    tags: Mapping[str, Any] | None = None,
    nested: bool = False,
    parent_run_id: str | None = None,
) -> Iterator[RunLogger]:
    """Open an MLflow run; on an exception mark it FAILED with the reason as a tag.

    With `parent_run_id`, the run is a child of that run, which must be the active run of
    this process, and goes into the parent's experiment. Otherwise, under `mlflow run`,
    the run that MLflow Projects created (`MLFLOW_RUN_ID`) is used and renamed, and a new
    run starts in `experiment` elsewhere. `MLFLOW_RUN_ID` is removed from the environment
    once used, so that later child runs of this process do not reopen the project's run.
    """
    check_tracking_store()
    project_run = os.environ.pop("MLFLOW_RUN_ID", None) if not nested and parent_run_id is None else None
    if parent_run_id is not None:
        parent = client().get_run(parent_run_id)
        run = mlflow.start_run(
            run_name=run_name, experiment_id=parent.info.experiment_id, nested=True, parent_run_id=parent_run_id
        )
    elif project_run:
        run = mlflow.start_run(run_id=project_run)
        mlflow.set_tag("mlflow.runName", run_name)
    else:
        mlflow.set_experiment(experiment)
        run = mlflow.start_run(run_name=run_name, nested=nested)
    logger = RunLogger(run)
    try:
        if tags:
            logger.set_tags(tags)
        yield logger
    except KeyboardInterrupt:
        mlflow.flush_async_logging()
        mlflow.set_tag(FAILURE_TAG, "interrupted by the user")
        mlflow.end_run("KILLED")
        raise
    except BaseException as error:
        mlflow.flush_async_logging()
        mlflow.set_tag(FAILURE_TAG, f"{type(error).__name__}: {error}"[:5000])
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.flush_async_logging()
        mlflow.end_run("FINISHED")


def create_experiment(experiment: str) -> None:
    """Create `experiment` unless it exists, which also creates the tables of a new SQLite store.

    Workers that share a fresh store call this under a lock first, so that they do not
    race to create the tables or the experiment. Under `mlflow run` (`MLFLOW_RUN_ID` set)
    MLflow Projects has already done both, so nothing happens.
    """
    check_tracking_store()
    if os.environ.get("MLFLOW_RUN_ID") or client().get_experiment_by_name(experiment) is not None:
        return
    client().create_experiment(experiment)


def metric_value(run_id: str, key: str, step: int | None = None) -> float:
    """Return metric `key` of run `run_id`: the latest value, or the value logged at `step`.

    A metric that was never logged (medbench leaves undefined scores out) is NaN.
    """
    if step is None:
        return float(client().get_run(run_id).data.metrics.get(key, math.nan))
    values = [m.value for m in client().get_metric_history(run_id, key) if m.step == step]
    return float(values[-1]) if values else math.nan


def load_model(uri: str) -> torch.nn.Module:
    """Load a logged or registered model (`runs:/...`, `models:/NAME/VERSION`, `models:/NAME@ALIAS`)."""
    try:
        return mlflow.pytorch.load_model(uri, map_location="cpu")
    except mlflow.exceptions.MlflowException as error:
        raise MedbenchError(f"Cannot load model {uri!r} from {tracking_uri()}: {error}") from error


def client() -> MlflowClient:
    return MlflowClient()
