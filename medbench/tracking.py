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
import socket
import subprocess
import time
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
    "download_run_artifact",
    "find_run_to_resume",
    "find_runs",
    "get_run",
    "list_run_artifacts",
    "load_model",
    "log_dataset_card",
    "log_to_run",
    "metric_key",
    "metric_value",
    "model_metadata",
    "model_source_run",
    "model_version_by_alias",
    "model_versions",
    "remove_model_alias",
    "resolve_registered_model",
    "set_model_alias",
    "start_run",
    "tracking_uri",
    "worker_tags",
]

log = logging.getLogger(__name__)

FAILURE_TAG = "medbench.failure"
# Seconds to wait for a tracking server's /health before giving up.
HEALTH_TIMEOUT_S = 5.0


def metric_key(split: str, name: str, class_name: str | None = None) -> str:
    """Build the one spelling of a metric key: `<split>/<name>[/<class>]`."""
    return f"{split}/{name}" + (f"/{class_name}" if class_name else "")


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def check_tracking_store() -> str:
    """Fail within seconds, before any training, if a tracking server does not respond."""
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
        """Log finite metrics; NaN values (undefined scores) are left out.

        Logging is synchronous: medbench logs once per epoch, so one round trip to the store
        per call costs little. MLflow's asynchronous queue instead added about 1.3 s to
        the end of every run (its logging thread polls with a 1 s timeout, mlflow 3.17).
        """
        finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        if finite:
            mlflow.log_metrics(finite, step=step)

    def log_missing_metrics(self, history: list[Mapping[str, float]]) -> int:
        """Log the entries of `history` (one metrics dict per epoch, epoch = index) that the run lacks.

        A process killed after saving a checkpoint but before logging that epoch's metrics
        leaves them out. A resumed run calls this with the history from its checkpoint. Returns how many
        (metric, epoch) values were logged.
        """
        store = client()
        logged = 0
        for key in sorted({key for metrics in history for key in metrics}):
            steps = {m.step for m in store.get_metric_history(self.run_id, key)}
            for epoch, metrics in enumerate(history):
                if key in metrics and epoch not in steps:
                    self.log_metrics({key: metrics[key]}, step=epoch)
                    logged += 1
        return logged

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


# Statuses of a run that ended without finishing (RUNNING: the process was killed).
UNFINISHED_STATUSES = ("RUNNING", "FAILED", "KILLED")


def find_run_to_resume(experiment: str, run_name: str, resume: str) -> str:
    """Return the id of the run to continue: `resume` is `last` or an MLflow run id.

    `last` is the most recently started run named `run_name` in `experiment` whose status
    is RUNNING (its process was killed), FAILED or KILLED. Raises `MedbenchError` when
    there is no such run, the id is unknown, or the run has FINISHED.
    """
    store = client()
    if resume == "last":
        found = mlflow.get_experiment_by_name(experiment)
        # MLflow's search accepts no list of statuses, so the newest unfinished one is picked here.
        candidates = [] if found is None else store.search_runs(
            [found.experiment_id],
            filter_string=f"tags.mlflow.runName = '{run_name}' and attributes.status != 'FINISHED'",
            order_by=["attributes.start_time DESC"],
        )
        runs = [run for run in candidates if run.info.status in UNFINISHED_STATUSES]
        if not runs:
            raise MedbenchError(
                f"No unfinished run named {run_name!r} in experiment {experiment!r} at {tracking_uri()} to "
                "resume. Start without --resume, or pass the run id."
            )
        return runs[0].info.run_id
    try:
        run = store.get_run(resume)
    except mlflow.exceptions.MlflowException as error:
        raise MedbenchError(f"Cannot resume run {resume!r}: it was not found at {tracking_uri()} ({error}).") from error
    if run.info.status not in UNFINISHED_STATUSES:
        raise MedbenchError(
            f"Cannot resume run {resume!r}: its status is {run.info.status}, not one of "
            f"{', '.join(UNFINISHED_STATUSES)}. Start a new run instead."
        )
    if run.info.run_name != run_name:
        raise MedbenchError(
            f"Cannot resume run {resume!r} as {run_name!r}: it is named {run.info.run_name!r}. Pass the "
            "model, dataset, fold and seed of that run."
        )
    return resume


@contextmanager
def start_run(
    experiment: str,
    run_name: str,
    tags: Mapping[str, Any] | None = None,
    nested: bool = False,
    parent_run_id: str | None = None,
    run_id: str | None = None,
) -> Iterator[RunLogger]:
    """Open an MLflow run; on an exception mark it FAILED with the reason as a tag.

    With `run_id`, that existing run is reopened (its status returns to RUNNING). With
    `parent_run_id`, the run is a child of that run, which must be the active run of this
    process, and goes into the parent's experiment. Otherwise, under `mlflow run`, the run
    that MLflow Projects created (`MLFLOW_RUN_ID`) is used and renamed, and a new run
    starts in `experiment` elsewhere. `MLFLOW_RUN_ID` is removed from the environment once
    used, so that later child runs of this process do not reopen the project's run.
    """
    check_tracking_store()
    project_run = os.environ.pop("MLFLOW_RUN_ID", None) if not nested and parent_run_id is None else None
    if run_id:
        # NOTE: under `mlflow run`, the run that MLflow Projects created stays empty.
        run = mlflow.start_run(run_id=run_id, nested=parent_run_id is not None)
        if FAILURE_TAG in run.data.tags:  # the reason of the earlier failure no longer applies
            client().delete_tag(run_id, FAILURE_TAG)
    elif parent_run_id is not None:
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
        logger.set_tags({**worker_tags(), **(tags or {})})
        yield logger
    except KeyboardInterrupt:
        mlflow.set_tag(FAILURE_TAG, "interrupted by the user")
        mlflow.end_run("KILLED")
        raise
    except BaseException as error:
        mlflow.set_tag(FAILURE_TAG, f"{type(error).__name__}: {error}"[:5000])
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


def worker_tags() -> dict[str, str]:
    """Tags naming the process that creates a run, to tell apart the workers that share one study or server."""
    return {"worker.host": socket.gethostname(), "worker.pid": str(os.getpid())}


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


def log_dataset_card(
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, Any],
    card: Mapping[str, Any],
    files: list[Path],
) -> str:
    """Record a prepared dataset in its own run: params, `data/...` metrics and `files` under `dataset/`.

    Metrics: `data/images`, `data/source_images`, `data/duplicates_removed`, and per class
    `data/pixel_share/<class>` and `data/images_with_class/<class>`. Returns the run id.
    """
    counts = card["counts"]
    metrics = {
        metric_key("data", "images"): counts["prepared_images"],
        metric_key("data", "source_images"): counts["source_images"],
        metric_key("data", "duplicates_removed"): counts["duplicates_removed"],
    }
    for name, share in card["class_pixel_share"].items():
        metrics[metric_key("data", "pixel_share", name)] = share
    for name, images in card["images_with_class"].items():
        metrics[metric_key("data", "images_with_class", name)] = images
    with start_run(experiment, run_name, tags) as run:
        run.log_params({f"config.{k}": v for k, v in params.items()})
        run.log_metrics(metrics)
        for path in files:
            run.log_artifact(path, "dataset")
        return run.run_id


def client() -> MlflowClient:
    return MlflowClient()


# --- queries for `compare` and `predict` -------------------------------------------------


def find_runs(experiments: list[str], filter_string: str = "") -> list[mlflow.entities.Run]:
    """Return the FINISHED runs of the named experiments that match `filter_string`.

    Raises `MedbenchError` naming the missing experiments if none of them exists.
    """
    client = MlflowClient()
    ids, missing = [], []
    for name in experiments:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            missing.append(name)
        else:
            ids.append(experiment.experiment_id)
    if missing:
        known = sorted(e.name for e in client.search_experiments())
        raise MedbenchError(
            f"Experiment(s) {', '.join(repr(m) for m in missing)} not found in {tracking_uri()}. "
            f"Existing experiments: {', '.join(known) or 'none'}. Pass --experiments with one of them, "
            "or set MLFLOW_TRACKING_URI to the store that holds the runs."
        )
    query = "attributes.status = 'FINISHED'" + (f" and {filter_string}" if filter_string else "")
    runs, token = [], None
    while True:
        page = client.search_runs(ids, query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def download_run_artifact(run_id: str, artifact_path: str, destination: Path) -> Path | None:
    """Download one artifact file or folder of a run into `destination`; `None` if the run lacks it."""
    folder, _, name = artifact_path.rpartition("/")
    listed = {Path(f.path).name for f in MlflowClient().list_artifacts(run_id, folder or None)}
    if name not in listed:
        return None
    destination.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                    dst_path=str(destination)))


def list_run_artifacts(run_id: str, folder: str) -> list[str]:
    """Artifact paths directly under `folder` of a run (empty if the folder does not exist)."""
    return [f.path for f in MlflowClient().list_artifacts(run_id, folder) if not f.is_dir]


def model_versions(name: str) -> list[mlflow.entities.model_registry.ModelVersion]:
    """Every version of registered model `name` (an empty list if the model does not exist)."""
    return list(MlflowClient().search_model_versions(f"name = '{name}'"))


def set_model_alias(name: str, alias: str, version: str, tags: Mapping[str, Any]) -> None:
    """Point `alias` of registered model `name` at `version` and write `tags` on that version."""
    client = MlflowClient()
    client.set_registered_model_alias(name, alias, version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def remove_model_alias(name: str, alias: str) -> bool:
    """Delete `alias` from registered model `name`; return whether it existed."""
    client = MlflowClient()
    try:
        client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return False
    client.delete_registered_model_alias(name, alias)
    return True


def model_version_by_alias(name: str, alias: str) -> mlflow.entities.model_registry.ModelVersion | None:
    """The version that `alias` of registered model `name` points at, or `None`."""
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def resolve_registered_model(uri: str) -> mlflow.entities.model_registry.ModelVersion:
    """Resolve `models:/NAME@ALIAS` or `models:/NAME/VERSION` to its model version.

    Raises `MedbenchError` that names the missing model, alias or version and lists what exists.
    """
    if not uri.startswith("models:/"):
        raise MedbenchError(f"Model URI {uri!r} is not a registry URI; use models:/NAME@ALIAS or models:/NAME/VERSION.")
    reference = uri[len("models:/"):]
    if "@" in reference:
        name, _, alias = reference.partition("@")
    else:
        name, _, version = reference.partition("/")
        alias = None
    client = MlflowClient()
    versions = model_versions(name) if name else []
    if not versions:
        names = sorted(m.name for m in client.search_registered_models())
        raise MedbenchError(
            f"Registered model {name!r} not found in {tracking_uri()}. Registered models: "
            f"{', '.join(names) or 'none'}. Check the name, or set MLFLOW_TRACKING_URI to the store that holds it."
        )
    if alias is not None:
        found = model_version_by_alias(name, alias)
        if found is None:
            aliases = sorted(a for v in versions for a in (v.aliases or []))
            raise MedbenchError(
                f"Registered model {name!r} has no alias {alias!r}. Its aliases: {', '.join(aliases) or 'none'}; "
                f"run `medbench compare` to set `champion`, or use models:/{name}/VERSION."
            )
        return found
    for candidate in versions:
        if str(candidate.version) == version:
            return candidate
    raise MedbenchError(
        f"Registered model {name!r} has no version {version!r}. Versions: "
        f"{', '.join(sorted((str(v.version) for v in versions), key=int))}."
    )


def model_metadata(uri: str) -> dict[str, Any]:
    """The metadata dictionary stored with a logged or registered model (empty if none)."""
    try:
        return dict(mlflow.models.get_model_info(uri).metadata or {})
    except mlflow.exceptions.MlflowException as error:
        raise MedbenchError(f"Cannot read model {uri!r} from {tracking_uri()}: {error}") from error


def get_run(run_id: str) -> mlflow.entities.Run:
    """Return run `run_id` of the tracking store; a missing run raises `MedbenchError`."""
    check_tracking_store()
    try:
        return client().get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        raise MedbenchError(
            f"Run {run_id!r} was not found in the tracking store {tracking_uri()}. Check the id in the "
            "MLflow UI, or set MLFLOW_TRACKING_URI to the store that holds the run."
        ) from error


def model_source_run(uri: str) -> str:
    """Return the id of the run that logged model `uri` (`models:/NAME/VERSION`, `models:/NAME@ALIAS`, `runs:/ID/...`)."""
    check_tracking_store()
    if uri.startswith("runs:/"):
        return uri.removeprefix("runs:/").split("/", 1)[0]
    if not uri.startswith("models:/"):
        raise MedbenchError(
            f"Model URI {uri!r} is not supported; use models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/model."
        )
    reference = uri.removeprefix("models:/").rstrip("/")
    try:
        if "@" in reference:
            name, alias = reference.split("@", 1)
            version = client().get_model_version_by_alias(name, alias)
        else:
            name, _, number = reference.partition("/")
            version = client().get_model_version(name, number)
    except mlflow.exceptions.MlflowException as error:
        raise MedbenchError(f"Model {uri!r} was not found in the registry of {tracking_uri()}: {error}") from error
    if not version.run_id:
        raise MedbenchError(f"Model {uri!r} was registered without a source run; medbench explains runs it trained.")
    return version.run_id


def log_to_run(
    run_id: str,
    metrics: Mapping[str, float],
    tags: Mapping[str, Any],
    artifacts: Path | None = None,
    artifact_path: str | None = None,
) -> None:
    """Log finite metrics, tags and a folder of artifacts to run `run_id`, active or finished.

    The run's status and end time stay as they are.
    """
    timestamp = int(time.time() * 1000)
    finite = [
        mlflow.entities.Metric(key, float(value), timestamp, 0)
        for key, value in metrics.items() if value is not None and math.isfinite(float(value))
    ]
    client().log_batch(
        run_id, metrics=finite, tags=[mlflow.entities.RunTag(k, str(v)) for k, v in tags.items()]
    )
    if artifacts is not None:
        client().log_artifacts(run_id, str(artifacts), artifact_path)
