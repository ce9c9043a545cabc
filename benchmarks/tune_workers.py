"""Trials per hour of one Optuna study on PostgreSQL, run by two `tune` workers against one.

    MEDBENCH_DATA_DIR=/path/to/data python benchmarks/tune_workers.py \\
        --postgres-url postgresql+psycopg2://medbench:medbench@127.0.0.1:55440/medbench \\
        [--trials 4] [--rounds 1] [--model swinunet] [--image-size 64] [--max-images 40] [--epochs 1]

Each measurement creates two fresh databases on the server: one for the Optuna study, one
for the MLflow tracking store (MLflow's SQLAlchemy store, no server process). It starts
the workers as `python -m medbench tune` processes with one torch thread each
(`OMP_NUM_THREADS=1`). It takes the wall-clock time from their start until the last one
exits, process start included.
The study is a grid of `--trials` learning rates, so both setups run the same trials.
Each worker process pays a fixed cost of about 10 s on a 2-core CPU (imports, opening
both stores, ending its runs), which two workers cannot share. Trials much shorter than
that, as at one epoch on a few images, make the ratio measure this fixed cost more than
the shared study. `--epochs` lengthens the trials toward those of a real study.
Rounds alternate one worker and two workers. The URL's role must be allowed to create
databases (`.ci/postgres.sh` grants it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import _common
import sqlalchemy
import torch

WORKER_COUNTS = (1, 2)


def _create_database(admin: sqlalchemy.engine.Engine, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    return name


def _drop_database(admin: sqlalchemy.engine.Engine, name: str) -> None:
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _check_study(storage: str, trials: int) -> float:
    """Raise unless the study ran exactly `trials` complete trials, each with another learning rate.

    Returns the summed seconds of the trials, from Optuna's start and completion times.
    """
    import optuna

    study = optuna.load_study(study_name="bench", storage=storage)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    rates = {trial.params["lr"] for trial in complete}
    if len(study.trials) != trials or len(complete) != trials or len(rates) != trials:
        raise SystemExit(f"study ran {len(study.trials)} trials, {len(complete)} complete with {len(rates)} "
                         f"distinct learning rates; expected {trials} of each")
    return sum((trial.datetime_complete - trial.datetime_start).total_seconds() for trial in complete)


def run_study(args: argparse.Namespace, workers: int, workspace: Path) -> tuple[float, float]:
    """Run one study of `args.trials` trials with `workers` concurrent workers.

    Returns the wall-clock seconds of the study and the summed seconds of its trials.
    """
    server = sqlalchemy.engine.make_url(args.postgres_url)
    admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    names = [_create_database(admin, "bench_optuna"), _create_database(admin, "bench_mlflow")]
    optuna_url, mlflow_url = (server.set(database=name).render_as_string(hide_password=False) for name in names)
    grid = ",".join(f"{10 ** (-3 - i / 2):.6g}" for i in range(args.trials))
    command = [sys.executable, "-m", "medbench", "tune", "--model", args.model, "--dataset", "kvasir_seg",
               "--image-size", str(args.image_size), "--max-images", str(args.max_images), "--epochs", str(args.epochs),
               "--batch-size", "4", "--lr-grid", grid, "--storage", optuna_url, "--study-name", "bench"]
    env = dict(os.environ, PYTHONPATH=str(_common.ROOT), OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=mlflow_url,
               MEDBENCH_OUTPUT_DIR=str(workspace / "outputs"))
    try:
        started = time.perf_counter()
        processes = []
        for index in range(workers):
            log_path = workspace / f"worker-{workers}-{index}.log"
            with open(log_path, "w") as log_file:
                # cwd: MLflow's default artifact root is ./mlruns, which must land in the workspace.
                processes.append((subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                                   cwd=workspace), log_path))
        for process, log_path in processes:
            if process.wait() != 0:
                raise SystemExit(f"worker failed; the end of its log:\n{log_path.read_text()[-2000:]}")
        elapsed = time.perf_counter() - started
        return elapsed, _check_study(optuna_url, args.trials)
    finally:
        for name in names:
            _drop_database(admin, name)
        admin.dispose()
        # Each trial logs its model and checkpoint (about 150 MB for Swin-Unet).
        for folder in ("mlruns", "outputs"):
            shutil.rmtree(workspace / folder, ignore_errors=True)


def measure(args: argparse.Namespace, workspace: Path) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    """Run the alternating rounds; return the study seconds and summed trial seconds per worker count."""
    os.environ.setdefault("MEDBENCH_CACHE_DIR", str(workspace / "cache"))
    # Prepare the data once, so that neither setup pays for it.
    subprocess.run([sys.executable, "-m", "medbench", "prepare", "--dataset", "kvasir_seg", "--image-size",
                    str(args.image_size), "--max-images", str(args.max_images)],
                   env=dict(os.environ, PYTHONPATH=str(_common.ROOT),
                            MLFLOW_TRACKING_URI=f"sqlite:///{workspace / 'prepare.db'}"),
                   cwd=workspace, check=True, capture_output=True)

    seconds: dict[int, list[float]] = {count: [] for count in WORKER_COUNTS}
    trial_seconds: dict[int, list[float]] = {count: [] for count in WORKER_COUNTS}
    for _ in range(args.rounds):
        for count in WORKER_COUNTS:
            elapsed, trials_total = run_study(args, count, workspace)
            seconds[count].append(elapsed)
            trial_seconds[count].append(trials_total)
    return seconds, trial_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres-url", default=os.environ.get("MEDBENCH_TEST_POSTGRES_URL"),
                        help="SQLAlchemy URL of a PostgreSQL database whose role may create databases")
    parser.add_argument("--trials", type=int, default=4, help="trials of the study (learning rates of the grid)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of one and two workers")
    parser.add_argument("--model", default="swinunet", help="registry model name")
    parser.add_argument("--image-size", type=int, default=64, help="square working resolution in pixels")
    parser.add_argument("--max-images", type=int, default=40, help="images of Kvasir-SEG used (5 folds)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs per trial")
    args = parser.parse_args()
    if not args.postgres_url:
        raise SystemExit("Give --postgres-url or set MEDBENCH_TEST_POSTGRES_URL; .ci/postgres.sh starts a server.")

    torch.set_num_threads(1)  # as in the workers, so the machine header reports their thread count
    workspace = Path(tempfile.mkdtemp(prefix="medbench-bench-workers-"))
    try:
        seconds, trial_seconds = measure(args, workspace)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)

    print(_common.machine_header())
    print(f"study: {args.trials} trials of {args.model} at {args.image_size}x{args.image_size}, "
          f"{args.max_images} Kvasir-SEG images, {args.epochs} epoch(s), batch 4, one torch thread per worker")
    rates = {}
    for count in WORKER_COUNTS:
        median = _common.median(seconds[count])
        rates[count] = args.trials / median * 3600
        rounds = ", ".join(f"{s:.1f}" for s in seconds[count])
        # Each worker's time outside its trials: process start, opening the stores, ending its runs.
        mean_trial = sum(trial_seconds[count]) / (args.trials * args.rounds)
        outside = sum(count * wall - trials for wall, trials in zip(seconds[count], trial_seconds[count]))
        outside /= count * args.rounds
        print(f"{count} worker(s): median {median:.1f} s per study ({rounds}), {rates[count]:.0f} trials per hour; "
              f"mean trial {mean_trial:.1f} s, mean time outside trials {outside:.1f} s per worker")
    print(f"ratio two workers / one worker: {rates[2] / rates[1]:.2f} (goal at least 1.8)")


if __name__ == "__main__":
    main()
