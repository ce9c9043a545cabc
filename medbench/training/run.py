"""One training run, end to end: data, model, fit, final evaluation, MLflow records."""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from medbench import tracking
from medbench.config import TrainConfig
from medbench.data import NORMALIZATION, PreparedDataset, SegmentationDataset, augmentation, prepare_dataset
from medbench.data import describe_augmentation
from medbench.data.dataset import seed_worker_augmentation
from medbench.data.inner_split import inner_validation_ids
from medbench.errors import MedbenchError
from medbench.models import create_model, get_model_info
from medbench.training.evaluate import Evaluation, evaluate
from medbench.training.losses import SegmentationLoss
from medbench.training import distributed
from medbench.training.checkpoint import load_checkpoint, remove_stale_temporary_files, save_weights_checkpoint
from medbench.training.loop import fit
from medbench.visualize import save_prediction_grid

__all__ = ["TrainResult", "output_dir", "registered_model_name", "seed_everything", "train"]

log = logging.getLogger(__name__)

# Samples drawn in the predictions PNG: the worst by Dice and the first in id order.
PREVIEW_WORST = 4
PREVIEW_FIRST = 4


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    metrics: dict[str, float]
    model_version: str | None
    checkpoint: Path


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when available, else the CPU), `cpu`, `cuda`, `cuda:N` or `mps`, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise MedbenchError(
            f"Device {name!r} is not available here ({torch.cuda.device_count()} CUDA devices). "
            "Pass --device cpu or --device auto."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise MedbenchError(f"Device {name!r} is not available here. Pass --device cpu or --device auto.")
    return device


def registered_model_name(dataset: str, model: str) -> str:
    return f"medbench-{dataset}-{model}"


def output_dir() -> Path:
    """Local folder for checkpoints and reports: `MEDBENCH_OUTPUT_DIR`, else `./outputs`."""
    return Path(os.environ.get("MEDBENCH_OUTPUT_DIR", "outputs")).expanduser()


def _loaders(
    config: TrainConfig, prepared: PreparedDataset, inner_val: bool
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Loaders for training, for early stopping, and for the final evaluation on the held-out fold.

    Early stopping uses the held-out fold unless `inner_val` is set; then it uses an inner
    validation split of the training ids, and the held-out fold is only evaluated at the end.
    """
    train_indices, val_indices = prepared.fold_indices(config.fold)
    generator = torch.Generator().manual_seed(config.seed)
    common = {"num_workers": config.num_workers, "pin_memory": torch.cuda.is_available(),
              "worker_init_fn": seed_worker_augmentation}
    val_loader = DataLoader(SegmentationDataset(prepared, val_indices), batch_size=config.batch_size, shuffle=False,
                            **common)
    stop_loader = val_loader
    if inner_val:
        position = {sample_id: i for i, sample_id in enumerate(prepared.ids)}
        train_ids, inner_ids = inner_validation_ids(prepared, config.fold)
        train_indices = [position[i] for i in train_ids]
        stop_loader = DataLoader(SegmentationDataset(prepared, [position[i] for i in inner_ids]),
                                 batch_size=config.batch_size, shuffle=False, **common)
    train_set = SegmentationDataset(prepared, train_indices, augmentation(prepared.augmentation, config.seed))
    train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True,
                              drop_last=len(train_set) > config.batch_size, generator=generator, **common)
    return train_loader, stop_loader, val_loader


def train(
    config: TrainConfig,
    *,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    inner_val: bool = False,
    on_epoch: Callable[[dict[str, float], int], None] | None = None,
) -> TrainResult:
    """Train `config.model` on fold `config.fold` of `config.dataset` and record it in MLflow.

    The run holds the resolved configuration as `config.<field>` params, per-epoch metrics,
    the final `test/...` metrics of the best checkpoint on the held-out fold (with HD95),
    the checkpoint, the splits, a per-image metrics CSV, a predictions PNG and the model,
    registered as `medbench-<dataset>-<model>` when `config.register` is set.

    Args:
        config: the run's configuration.
        parent_run_id: make the run a child of this active MLflow run (tuning trials, folds).
        run_name: MLflow run name; default `config.run_name`.
        tags: extra run tags.
        inner_val: stop early on an inner validation split of the training ids
            (`inner_validation_ids`) instead of the held-out fold, which then serves only
            the final `test/...` evaluation.
        on_epoch: called with each epoch's metrics and the epoch number after they are
            logged; an exception it raises (such as a pruning signal) ends the run as FAILED.

    Under `torchrun` (after `distributed.process_group`), every rank calls `train`, and
    only rank 0 opens the MLflow run and returns a complete result. The other ranks train
    their shard and return a result with an empty `run_id`.
    """
    # Checks that need no data come first, so a bad store or run id wastes no preparation.
    tracking.check_tracking_store()
    info = get_model_info(config.model)
    ctx = distributed.context()
    if ctx is not None and config.resume:
        # NOTE: resuming would need rank 0's last.pt on every rank; not implemented yet.
        raise MedbenchError("--resume is not supported under torchrun. Resume the run in a single process.")
    device = ctx.device if ctx is not None else resolve_device(config.device)
    run_name = run_name or config.run_name
    resume_id = None
    if config.resume:
        resume_id = tracking.find_run_to_resume(config.experiment, run_name, config.resume)
    seed_everything(config.seed, config.deterministic)
    amp = config.amp and info.allow_amp and device.type == "cuda"

    with distributed.main_rank_first(ctx):  # one rank fills the prepared-data cache
        prepared = prepare_dataset(
            config.dataset, config.data_dir, config.image_size, config.max_images, config.num_folds, config.split_seed
        )
    model = create_model(config.model, 3, prepared.num_classes, pretrained=config.pretrained, weights=config.weights)
    train_loader, stop_loader, val_loader = _loaders(config, prepared, inner_val)
    if ctx is not None:
        train_loader = distributed.shard_loader(train_loader, ctx, config.seed)
    loss_fn = SegmentationLoss(prepared.num_classes)
    fit_options = {
        "epochs": config.epochs, "lr": config.lr, "weight_decay": config.weight_decay, "patience": config.patience,
        "min_delta": config.min_delta, "device": device, "amp": amp, "class_names": prepared.class_names,
        "channels_last": config.channels_last, "compile": config.compile, "distributed": ctx,
    }
    if ctx is not None and not ctx.is_main:
        result = fit(model, train_loader, stop_loader, loss_fn, checkpoint_dir=output_dir(), checkpoint_extra={},
                     log_metrics=lambda metrics, epoch: None, **fit_options)
        return TrainResult("", {}, None, result.best_checkpoint)
    tags = {
        "model": config.model,
        "family": info.family,
        "dataset": config.dataset,
        "fold": config.fold,
        "seed": config.seed,
        "preset": config.preset,
        "code_version": tracking.code_version(),
        **(tags or {}),
    }

    with tracking.start_run(config.experiment, run_name, tags, parent_run_id=parent_run_id, run_id=resume_id) as run:
        # Resolved values under `config.<field>`: under `mlflow run`, MLflow Projects has
        # already logged the raw parameters (empty for "use the preset") under the plain names.
        # A resumed run keeps its first `config.resume` (MLflow params cannot change).
        run.log_params({f"config.{k}": v for k, v in config.as_params().items() if not (resume_id and k == "resume")})
        run.log_params({
            "num_classes": prepared.num_classes,
            "class_names": ",".join(prepared.class_names),
            "train_images": len(train_loader.dataset),
            "val_images": len(val_loader.dataset),
            "early_stopping_split": "inner_val" if inner_val else "fold",
            "early_stopping_images": len(stop_loader.dataset),
            "prepared_dataset": prepared.path.name,
            "augmentation": prepared.augmentation,
            "normalization_mean": NORMALIZATION["mean"],
            "normalization_std": NORMALIZATION["std"],
            "device_used": str(device),
            "amp_used": amp,
            "params_measured": sum(p.numel() for p in model.parameters()),
            "world_size": ctx.world_size if ctx is not None else 1,
        })
        run.log_artifact(prepared.path / "splits.json", "data")
        run.log_dict(describe_augmentation(prepared.augmentation, config.seed), "data/augmentation.json")
        if inner_val:
            run.log_dict({"fold": config.fold, "ids": [prepared.ids[i] for i in stop_loader.dataset.indices]},
                         "data/inner_val.json")
        checkpoint_dir = output_dir() / run_name / run.run_id
        resume_from = _resume_checkpoint(checkpoint_dir, config) if resume_id else None
        if resume_from is not None:
            run.set_tags({"medbench.resumed_from_epoch": resume_from["epoch"]})
            run.log_missing_metrics(resume_from["history"])
        extra = {
            "config": dataclasses.asdict(config),
            "model_name": config.model,
            "in_channels": 3,
            "num_classes": prepared.num_classes,
            "class_names": prepared.class_names,
            "normalization": {k: list(v) for k, v in NORMALIZATION.items()},
            "code_version": tags["code_version"],
        }

        def log_epoch(metrics: dict[str, float], epoch: int) -> None:
            run.log_metrics(metrics, step=epoch)
            if on_epoch is not None:
                on_epoch(metrics, epoch)

        result = fit(
            model, train_loader, stop_loader, loss_fn, checkpoint_dir=checkpoint_dir, checkpoint_extra=extra,
            log_metrics=log_epoch, resume_from=resume_from, **fit_options,
        )
        run.log_metrics({"best_epoch": result.best_epoch, "epochs_run": result.epochs_run})
        with tempfile.TemporaryDirectory() as tmp:
            run.log_artifact(save_weights_checkpoint(result.best_checkpoint, Path(tmp) / "best.pt"), "checkpoints")

        # final evaluation of the best checkpoint on the held-out fold
        final = evaluate(model, val_loader, prepared.num_classes, prepared.class_names, device, loss_fn, amp,
                         with_hd95=True)
        scores = {f"test/{k}": v for k, v in final.summary().items()}
        run.log_metrics(scores)
        _log_reports(run, final, prepared)

        version = run.log_model(
            model, 3, prepared.num_classes,
            registered_model_name(config.dataset, config.model) if config.register else None,
            metadata={"class_names": prepared.class_names, "image_size": config.image_size,
                      "normalization": extra["normalization"], "run_name": run_name},
        )
        if config.explain:
            from medbench.explain import explain_run  # imported here: medbench.explain imports this module

            explain_run(run.run_id, config.explain, device=config.device)
        return TrainResult(run.run_id, scores, version, result.best_checkpoint)


def _resume_checkpoint(checkpoint_dir: Path, config: TrainConfig) -> dict | None:
    """Load `last.pt` of the run being resumed, after checking it was written with `config`."""
    removed = remove_stale_temporary_files(checkpoint_dir)
    if removed:
        log.info("Removed %d temporary files of an interrupted checkpoint write in %s", removed, checkpoint_dir)
    path = checkpoint_dir / "last.pt"
    if not path.is_file():
        log.warning("The resumed run has no checkpoint %s yet; training starts again at epoch 0 in that run", path)
        return None
    state = load_checkpoint(path)
    saved = state["config"]
    current = dataclasses.asdict(config)
    differing = sorted(k for k in current if k != "resume" and saved.get(k) != current[k])
    if differing:
        changes = ", ".join(f"{k}={saved.get(k)!r} (now {current[k]!r})" for k in differing)
        raise MedbenchError(
            f"Checkpoint {path} was written with other settings: {changes}. Resume with the options of "
            "the interrupted run."
        )
    log.info("Resuming run from %s after epoch %d (step %d)", path, state["epoch"], state["step"])
    return state


def _log_reports(run: tracking.RunLogger, final: Evaluation, prepared: PreparedDataset) -> None:
    """Log the per-image metrics CSV and the predictions PNG."""
    rows = final.per_image(prepared.ids)
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "per_image_metrics.csv"
        with open(csv_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        run.log_artifact(csv_path, "metrics")

        dice_per_image = np.array([r["dice"] for r in rows], dtype=np.float64)
        order = np.argsort(np.nan_to_num(dice_per_image, nan=np.inf))
        chosen = list(dict.fromkeys([*order[:PREVIEW_WORST].tolist(), *range(min(PREVIEW_FIRST, len(rows)))]))
        images, masks = prepared.images, prepared.masks
        png = save_prediction_grid(
            Path(tmp) / "predictions.png",
            images=[np.asarray(images[final.indices[i]]) for i in chosen],
            targets=[np.asarray(masks[final.indices[i]]) for i in chosen],
            predictions=[final.predictions[i] for i in chosen],
            titles=[f"{rows[i]['id']}  Dice {rows[i]['dice']:.3f}" for i in chosen],
            class_names=prepared.class_names,
        )
        run.log_artifact(png, "predictions")
