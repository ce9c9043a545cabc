"""Optuna studies that give every model the same tuning budget.

One study per (model, dataset, fold) searches the learning rate (and, optionally, the
weight decay) with the same space, trial count, objective and pruner for every model.
Each trial is a full `train` run, recorded as an MLflow child run of the worker's
parent run. Studies live in an Optuna RDB storage (an SQLite file by default, any
SQLAlchemy URL), so several worker processes can share one study and a killed worker
can be restarted.

Budget rules, enforced in `_next_trial`:
- The budget is a number of trials: the grid size for `grid`, `n_trials` for `tpe`.
  Finished trials count, whether COMPLETE, PRUNED or FAIL, and so do RUNNING and
  WAITING ones. Resuming a study therefore never repeats a finished trial, and a failed
  trial is not retried.
- A trial whose worker died (no heartbeat for two heartbeat intervals) is marked FAIL by
  the next worker that looks, and Optuna's `RetryHeartbeatStaleTrialCallback` queues a
  copy with the same parameters, up to `MAX_RETRIES` times. Such a dead trial does not
  count; its retry does.
- Choosing the next trial happens under a lock. With an SQLite file, the lock is a file
  lock next to the database. With PostgreSQL it is an advisory lock in the database.
  Workers that share the study (on one machine for SQLite, on any machine for
  PostgreSQL) then never run a grid point twice or exceed the budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import logging
import math
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from medbench import tracking
from medbench.config import TrainConfig
from medbench.data import prepare_dataset
from medbench.errors import MedbenchError, unknown_name_error
from medbench.training.run import train

__all__ = ["DEFAULT_LR_GRID", "TuneConfig", "TuneResult", "objective_direction", "open_study", "open_study_readonly",
           "trial_objective", "tune"]

log = logging.getLogger(__name__)

# The reference study's learning-rate grid (Borst and Kounev, arXiv 2603.13044).
DEFAULT_LR_GRID = (1e-4, 5e-5, 1e-5)
DEFAULT_STORAGE = "sqlite:///optuna.db"
DEFAULT_TPE_TRIALS = 10
SAMPLERS = ("grid", "tpe")
PRUNERS = ("none", "median")
# Retries of a trial whose worker died; a trial that kills its worker every time stops
# being retried after this many and counts as failed.
MAX_RETRIES = 2
# Seconds between looks at the study while a worker waits for other workers' trials.
WAIT_POLL_S = 5

# Scores an objective may read, and whether higher is better. Per-class forms
# (`val/dice/<class>`) exist for PER_CLASS_SCORES; HD95 is computed only for `test/`.
OBJECTIVE_SCORES = {"dice": "maximize", "iou": "maximize", "precision": "maximize", "recall": "maximize",
                    "loss": "minimize", "hd95": "minimize"}
PER_CLASS_SCORES = ("dice", "iou", "hd95")
OBJECTIVE_SPLITS = ("val", "test")
# Protocol fields that define what a study measures; a study name reused with other
# values is rejected. The tuned fields (lr, weight decay) and runtime options are not here.
STUDY_FIELDS = ("model", "dataset", "data_dir", "preset", "fold", "num_folds", "seed", "split_seed", "epochs",
                "image_size", "batch_size", "patience", "min_delta", "max_images", "pretrained", "weights")
FAIL_REASON_ATTR = "fail_reason"
RUN_ID_ATTR = "mlflow_run_id"
DEFINITION_ATTR = "medbench.definition"


def _parse_metric(metric: str) -> tuple[str, str, str | None]:
    """Split an objective key into (split, score, class or None), or raise with the valid keys."""
    split, _, rest = metric.partition("/")
    score, _, class_name = rest.partition("/")
    valid = [tracking.metric_key(s, n) for s in OBJECTIVE_SPLITS for n in OBJECTIVE_SCORES
             if not (n == "hd95" and s == "val")]
    known = (split in OBJECTIVE_SPLITS and score in OBJECTIVE_SCORES and not (score == "hd95" and split == "val")
             and (not class_name or score in PER_CLASS_SCORES))
    if not known:
        error = unknown_name_error("objective metric", metric, valid)
        raise MedbenchError(f"{error} Per-class forms: <split>/dice/<class>, <split>/iou/<class>, test/hd95/<class>.")
    return split, score, class_name or None


def objective_direction(metric: str) -> str:
    """Return `maximize` or `minimize` for an objective key such as `val/iou` or `test/hd95/polyp`."""
    return OBJECTIVE_SCORES[_parse_metric(metric)[1]]


@dataclass(frozen=True)
class TuneConfig:
    """One tuning study: a training protocol plus the search space, budget and objective.

    Attributes:
        train: the training protocol of every trial; `lr` and `weight_decay` are replaced
            by each trial's values where they are searched.
        study_name: Optuna study name; default `<model>__<dataset>__fold<k>__<sampler>`.
        storage: SQLAlchemy URL of the Optuna storage, e.g. `sqlite:///optuna.db` or
            `postgresql://user@host/db`.
        sampler: `grid` (every point of `lr_grid` x `weight_decay_grid`) or `tpe`
            (Optuna's TPE over `lr_range` and `weight_decay_range`, both log-uniform).
        n_trials: trial budget of `tpe` (default 10); for `grid` it must be unset or
            equal the grid size.
        metric: objective key, `<val|test>/<score>[/<class>]` with score dice, iou,
            precision, recall, loss or hd95 (test only); see `trial_objective` for
            which value of the trial it reads.
        lr_grid: learning rates of the grid sampler.
        weight_decay_grid: weight decays of the grid sampler; empty keeps the protocol's.
        lr_range: (low, high) learning rate range of TPE.
        weight_decay_range: (low, high) weight decay range of TPE.
        pruner: `none`, or `median` (Optuna's MedianPruner with its defaults, fed the
            objective after every epoch; needs a `val/` metric).
        heartbeat_interval: seconds between a running trial's heartbeats; a trial
            without one for twice this long is taken as dead and retried.
        inner_val: train each trial with early stopping, and a `val/` objective, on an
            inner validation split of the training ids, so that tuning never reads the
            fold that `cv` later reports.
    """

    train: TrainConfig
    study_name: str | None = None
    storage: str = DEFAULT_STORAGE
    sampler: str = "grid"
    n_trials: int | None = None
    metric: str = "val/iou"
    lr_grid: tuple[float, ...] = DEFAULT_LR_GRID
    weight_decay_grid: tuple[float, ...] = ()
    lr_range: tuple[float, ...] = (1e-5, 1e-3)
    weight_decay_range: tuple[float, ...] = (1e-4, 1e-1)
    pruner: str = "none"
    heartbeat_interval: int = 30
    inner_val: bool = False

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise unknown_name_error("sampler", self.sampler, SAMPLERS)
        if self.pruner not in PRUNERS:
            raise unknown_name_error("pruner", self.pruner, PRUNERS)
        split, _, _ = _parse_metric(self.metric)
        if self.pruner != "none" and split != "val":
            raise MedbenchError(
                f"Pruner {self.pruner!r} needs a per-epoch objective, but metric {self.metric!r} is computed once "
                "after training. Use a val/ metric or --pruner none."
            )
        if self.heartbeat_interval < 1:
            raise MedbenchError(f"heartbeat_interval must be at least 1 second, got {self.heartbeat_interval}.")
        if self.sampler == "grid":
            _check_grid("lr_grid", self.lr_grid, allow_empty=False)
            _check_grid("weight_decay_grid", self.weight_decay_grid, allow_empty=True)
            size = len(self.lr_grid) * max(1, len(self.weight_decay_grid))
            if self.n_trials is not None and self.n_trials != size:
                raise MedbenchError(
                    f"n_trials is {self.n_trials} but the grid has {size} points; the grid sampler runs each point "
                    "once. Leave --n-trials unset or change the grid."
                )
        else:
            _check_range("lr_range", self.lr_range)
            _check_range("weight_decay_range", self.weight_decay_range)
            if self.n_trials is not None and self.n_trials < 1:
                raise MedbenchError(f"n_trials must be at least 1, got {self.n_trials}.")

    @property
    def name(self) -> str:
        return self.study_name or f"{self.train.model}__{self.train.dataset}__fold{self.train.fold}__{self.sampler}"

    @property
    def budget(self) -> int:
        """Number of trials of the study."""
        if self.sampler == "grid":
            return len(self.lr_grid) * max(1, len(self.weight_decay_grid))
        return self.n_trials or DEFAULT_TPE_TRIALS

    @property
    def direction(self) -> str:
        return objective_direction(self.metric)

    def distributions(self) -> dict[str, BaseDistribution]:
        """Return the search space as Optuna distributions, keyed by `TrainConfig` field."""
        if self.sampler == "grid":
            space = {"lr": CategoricalDistribution(self.lr_grid)}
            if self.weight_decay_grid:
                space["weight_decay"] = CategoricalDistribution(self.weight_decay_grid)
            return space
        return {
            "lr": FloatDistribution(*self.lr_range, log=True),
            "weight_decay": FloatDistribution(*self.weight_decay_range, log=True),
        }

    def search_space(self) -> dict[str, Any]:
        """Return the search space as plain data, for the study's record and the parent run."""
        if self.sampler == "grid":
            return {name: list(d.choices) for name, d in self.distributions().items()}
        return {name: {"low": d.low, "high": d.high, "log": d.log} for name, d in self.distributions().items()}

    def definition(self) -> dict[str, Any]:
        """Everything that must match when a worker joins or resumes a study of this name."""
        protocol = {field: getattr(self.train, field) for field in STUDY_FIELDS}
        return {"sampler": self.sampler, "search_space": self.search_space(), "budget": self.budget,
                "metric": self.metric, "direction": self.direction, "pruner": self.pruner, "inner_val": self.inner_val,
                **protocol}


def _check_grid(name: str, values: tuple[float, ...], allow_empty: bool) -> None:
    if not values and not allow_empty:
        raise MedbenchError(f"{name} is empty; give at least one value, e.g. --{name.replace('_', '-')} 1e-4,5e-5,1e-5.")
    positive = name == "lr_grid"
    if any(not math.isfinite(v) or v < 0 or (positive and v == 0) for v in values):
        raise MedbenchError(f"{name} {list(values)} has values out of range; learning rates must be positive "
                            "and weight decays non-negative.")
    if len(set(values)) != len(values):
        raise MedbenchError(f"{name} {list(values)} lists a value twice; each grid point must be distinct.")


def _check_range(name: str, values: tuple[float, ...]) -> None:
    if len(values) != 2:
        raise MedbenchError(f"{name} needs exactly two values, low and high, got {list(values)}.")
    low, high = values
    if not (0 < low < high and math.isfinite(high)):
        raise MedbenchError(f"{name} ({low}, {high}) is empty or not positive; it is searched on a log scale, "
                            "so it needs 0 < low < high.")


@dataclass(frozen=True)
class TuneResult:
    """Outcome of one worker: its parent run and the study's best trial when it finished."""

    parent_run_id: str
    study_name: str
    best_params: dict[str, float]
    best_value: float
    trial_states: dict[str, int]


# --- storage, lock and study -------------------------------------------------------------


def _safe_url(url: str) -> str:
    """Return the storage URL with any password masked, for logs and MLflow params."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def _storage_error(url: str, error: BaseException) -> MedbenchError:
    return MedbenchError(
        f"Cannot open Optuna storage {_safe_url(url)!r}: {type(error).__name__}: {error}. Give an SQLAlchemy URL "
        "whose database is reachable, such as sqlite:///optuna.db (its folder must exist) or "
        "postgresql://user:password@host/database."
    )


@contextlib.contextmanager
def study_lock(url: str) -> Iterator[None]:
    """Hold an exclusive lock for `url` while a worker reads the trials and creates the next one.

    For an SQLite file the lock is an `fcntl` file lock on `<database>.lock`, which
    serializes the workers of one machine. For PostgreSQL it is a session-level advisory
    lock (`pg_advisory_lock`) in the database itself, which serializes the workers of
    every machine that uses this database.
    """
    # NOTE: other server databases (MySQL) get no lock here, so workers that reach the end
    # of the budget at the same moment can each start one trial too many. Optuna's own row
    # locks still keep each queued retry with a single worker.
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError as error:
        raise _storage_error(url, error) from error
    if parsed.get_backend_name() == "postgresql":
        with _postgres_advisory_lock(url):
            yield
        return
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        yield
        return
    lock_path = Path(parsed.database).expanduser().with_name(Path(parsed.database).name + ".lock")
    try:
        handle = open(lock_path, "a")
    except OSError as error:
        raise _storage_error(url, error) from error
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# Key of the advisory lock that `study_lock` takes in a PostgreSQL storage: any fixed 64-bit
# integer that other applications of the same database do not use ("medbench" in ASCII).
POSTGRES_LOCK_KEY = 0x6D656462656E6368


@functools.cache
def _lock_engine(url: str) -> sqlalchemy.engine.Engine:
    # NullPool: each lock opens its own connection and closes it on release, so a lock
    # never outlives its `with` block in a pooled connection.
    return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)


@contextlib.contextmanager
def _postgres_advisory_lock(url: str) -> Iterator[None]:
    try:
        connection = _lock_engine(url).connect()
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as error:
        raise _storage_error(url, error) from error
    with connection:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": POSTGRES_LOCK_KEY})
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": POSTGRES_LOCK_KEY})
            connection.commit()


class _WorkerGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its end-of-grid `Study.stop()` call.

    That call only works inside `Study.optimize`; this module's ask-and-tell loop stops
    by its own budget rule (`_next_trial`) instead.
    """

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        return None


def _make_sampler(config: TuneConfig, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    if config.sampler == "grid":
        return _WorkerGridSampler(config.search_space(), seed=config.train.seed)
    return optuna.samplers.TPESampler(seed=config.train.seed + seed_offset)


def open_study(config: TuneConfig) -> tuple[optuna.Study, RDBStorage]:
    """Create the study of `config`, or load it and check that it was created with the same definition.

    Call under `study_lock`. Raises `MedbenchError` when the storage cannot be opened or
    when the study name was used with another search space, budget, objective or protocol.
    """
    try:
        with _experimental_api():
            storage = RDBStorage(
                config.storage,
                heartbeat_interval=config.heartbeat_interval,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
            )
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, ImportError, ValueError) as error:
        raise _storage_error(config.storage, error) from error
    pruner = optuna.pruners.MedianPruner() if config.pruner == "median" else optuna.pruners.NopPruner()
    study = optuna.create_study(
        study_name=config.name, storage=storage, sampler=_make_sampler(config), pruner=pruner,
        direction=config.direction, load_if_exists=True,
    )
    # JSON round trip so that tuples compare equal to the lists read back from storage.
    expected = json.loads(json.dumps(config.definition()))
    stored = study.user_attrs.get(DEFINITION_ATTR)
    if stored is None:
        study.set_user_attr(DEFINITION_ATTR, expected)
    elif stored != expected:
        differences = "; ".join(
            f"{key}: stored {stored.get(key)!r}, requested {expected.get(key)!r}"
            for key in sorted(set(stored) | set(expected)) if stored.get(key) != expected.get(key)
        )
        raise MedbenchError(
            f"Study {config.name!r} in {_safe_url(config.storage)} was created with another definition ({differences}). "
            "Choose a new --study-name, or repeat the original settings to resume it."
        )
    return study, storage


def open_study_readonly(study_name: str, storage: str) -> optuna.Study:
    """Load an existing study to read its trials; raise `MedbenchError` if it or its storage is missing."""
    try:
        return optuna.load_study(study_name=study_name, storage=RDBStorage(storage))
    except KeyError as error:
        raise MedbenchError(
            f"Study {study_name!r} does not exist in {_safe_url(storage)}. Check --study-name and --storage, or run "
            "`medbench tune` first."
        ) from error
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, ImportError, ValueError) as error:
        raise _storage_error(storage, error) from error


# --- one worker --------------------------------------------------------------------------


class _Heartbeat:
    """Record a trial's heartbeat every `interval` seconds in a background thread."""

    def __init__(self, storage: RDBStorage, trial_id: int, interval: int) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(storage, trial_id, interval), daemon=True)

    def _beat(self, storage: RDBStorage, trial_id: int, interval: int) -> None:
        while not self._stop.wait(interval):
            storage.record_heartbeat(trial_id)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def _experimental_api() -> Iterator[None]:
    """Silence Optuna's warning for its heartbeat and retry API, experimental since Optuna 2.8 to 2.9."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _dead_trial_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of trials whose worker died and which were queued again under a new number."""
    with _experimental_api():
        return {number for t in trials for number in RetryHeartbeatStaleTrialCallback.retry_history(t)}


def _next_trial(study: optuna.Study, storage: RDBStorage, config: TuneConfig) -> optuna.Trial | None:
    """Create the next trial of the budget, or return `None` once no trial is left or running.

    While the budget is used up but other workers still run trials, this waits: one of
    them may die, and its retry must still be run.
    """
    waited_for: list[int] = []
    while True:
        with study_lock(config.storage):
            with _experimental_api():
                fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False)
            dead = _dead_trial_numbers(trials)
            counted = [t for t in trials if t.number not in dead]
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if waiting or len(counted) < config.budget:
                # A fresh TPE seed per trial: reproducible for one worker, distinct across workers.
                study.sampler = _make_sampler(config, seed_offset=len(trials))
                with warnings.catch_warnings():
                    # _Heartbeat replaces the heartbeat thread of Study.optimize.
                    warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
                    trial = study.ask(config.distributions())
                storage.record_heartbeat(trial._trial_id)
                return trial
            running = [t.number for t in counted if t.state == TrialState.RUNNING]
        if not running:
            return None
        if running != waited_for:
            log.info("Study %s: budget used up; waiting for running trials %s", config.name, running)
            waited_for = running
        time.sleep(min(config.heartbeat_interval, WAIT_POLL_S))


def trial_objective(run_id: str, metric: str) -> float:
    """Read the objective of a finished trial run.

    A `test/` key is the final evaluation of the best checkpoint on the held-out fold. A
    `val/` key is the value at the best epoch, the epoch whose checkpoint was kept (for
    `val/iou`, the value early stopping selected). Undefined scores are NaN.
    """
    split, _, _ = _parse_metric(metric)
    if split == "test":
        return tracking.metric_value(run_id, metric)
    best_epoch = tracking.metric_value(run_id, "best_epoch")
    if math.isnan(best_epoch):
        return math.nan
    return tracking.metric_value(run_id, metric, step=int(best_epoch))


def _run_trial(
    study: optuna.Study, storage: RDBStorage, trial: optuna.Trial, config: TuneConfig, parent_run_id: str
) -> None:
    """Train one trial as a child run and tell the study its value, or FAIL with the reason."""
    trial_config = dataclasses.replace(config.train, register=False, **trial.params)
    split, _, _ = _parse_metric(config.metric)

    def report(metrics: dict[str, float], epoch: int) -> None:
        if config.pruner == "none" or config.metric not in metrics:
            return
        trial.report(metrics[config.metric], epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"{config.metric} {metrics[config.metric]:.4f} at epoch {epoch}")

    log.info("Study %s: trial %d with %s", config.name, trial.number, trial.params)
    tags = {"optuna.study": config.name, "optuna.trial": trial.number}
    with _Heartbeat(storage, trial._trial_id, config.heartbeat_interval):
        try:
            result = train(trial_config, parent_run_id=parent_run_id, run_name=f"{config.name}__trial{trial.number}",
                           tags=tags, inner_val=config.inner_val, on_epoch=report)
        except optuna.TrialPruned as pruned:
            trial.set_user_attr(FAIL_REASON_ATTR, f"pruned: {pruned}")
            study.tell(trial, state=TrialState.PRUNED)
            return
        except KeyboardInterrupt:
            trial.set_user_attr(FAIL_REASON_ATTR, "interrupted by the user")
            study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as error:  # noqa: BLE001 - any training error fails this trial only
            _fail(study, trial, f"{type(error).__name__}: {error}")
            return
    trial.set_user_attr(RUN_ID_ATTR, result.run_id)
    value = trial_objective(result.run_id, config.metric)
    if not math.isfinite(value):
        _fail(study, trial, f"objective {config.metric} is {value} (undefined) in run {result.run_id}")
        return
    study.tell(trial, value)
    log.info("Study %s: trial %d finished with %s %.4f", config.name, trial.number, config.metric, value)


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    log.warning("Study %s: trial %d failed: %s", study.study_name, trial.number, reason)
    trial.set_user_attr(FAIL_REASON_ATTR, reason[:2000])
    study.tell(trial, state=TrialState.FAIL)


def tune(config: TuneConfig) -> TuneResult:
    """Run trials of `config`'s study until its budget is used up, as one worker.

    The worker's parent run (under `mlflow run`, the project's run) records the study,
    budget, search space, objective and pruner as `tune.*` params, and one child run per
    trial it ran. At the end it records the study's best parameters (`best.<field>`
    params, `best/<metric>` metric), trial counts (`trials/<state>`) and all trials as
    `tuning/trials.csv`. Several workers may share one study, and each has its own parent run.

    Raises:
        MedbenchError: invalid space, metric or storage, a study name reused with
            another definition, or a study in which no trial completed.
    """
    with study_lock(config.storage):
        study, storage = open_study(config)
        tracking.create_experiment(config.train.experiment)

    prepared = prepare_dataset(config.train.dataset, config.train.data_dir, config.train.image_size,
                               config.train.max_images, config.train.num_folds, config.train.split_seed)
    class_name = _parse_metric(config.metric)[2]
    if class_name and class_name not in prepared.class_names[1:]:
        raise MedbenchError(f"Objective metric {config.metric!r} names class {class_name!r}, which "
                            f"{config.train.dataset} does not have. Its classes: {', '.join(prepared.class_names[1:])}.")

    tags = {"model": config.train.model, "dataset": config.train.dataset, "fold": config.train.fold,
            "optuna.study": config.name, "code_version": tracking.code_version()}
    with tracking.start_run(config.train.experiment, f"tune__{config.name}", tags) as parent:
        parent.log_params({f"config.{k}": v for k, v in config.train.as_params().items()})
        parent.log_params({
            "tune.study_name": config.name, "tune.storage": _safe_url(config.storage), "tune.sampler": config.sampler,
            "tune.budget": config.budget, "tune.metric": config.metric, "tune.direction": config.direction,
            "tune.pruner": config.pruner, "tune.inner_val": config.inner_val, "tune.search_space": json.dumps(config.search_space()),
        })
        parent.log_dict(config.definition(), "tuning/study_definition.json")

        while (trial := _next_trial(study, storage, config)) is not None:
            _run_trial(study, storage, trial, config, parent.run_id)

        return _record_outcome(parent, study, config)


def _record_outcome(parent: tracking.RunLogger, study: optuna.Study, config: TuneConfig) -> TuneResult:
    trials = study.get_trials(deepcopy=False)
    states = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    parent.log_metrics({f"trials/{state}": count for state, count in states.items()})
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "trials.csv"
        study.trials_dataframe().to_csv(table, index=False)
        parent.log_artifact(table, "tuning")

    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    if not completed:
        reasons = "; ".join(f"trial {t.number}: {t.user_attrs.get(FAIL_REASON_ATTR, t.state.name)}" for t in trials)
        raise MedbenchError(f"No trial of study {config.name!r} completed ({reasons}). Fix the cause, then "
                            "tune again with a new --study-name.")
    best = study.best_trial
    parent.log_params({f"best.{name}": value for name, value in best.params.items()})
    parent.log_params({"best.trial": best.number})
    parent.log_metrics({tracking.metric_key("best", config.metric): best.value})
    return TuneResult(parent.run_id, config.name, dict(best.params), float(best.value), states)
