"""The training loop shared by every model: AdamW, REX, early stopping, atomic checkpoints."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from medbench.errors import MedbenchError
from medbench.training.checkpoint import load_checkpoint, save_checkpoint
from medbench.training.distributed import DistributedContext
from medbench.training.evaluate import Evaluation, autocast, evaluate
from medbench.training.resume import capture_rng_state, restore_rng_state
from medbench.training.schedule import rex_schedule

__all__ = ["EarlyStopping", "FitResult", "NonFiniteLossError", "fit"]

log = logging.getLogger(__name__)

# The quantity early stopping and checkpoint selection follow (the reference study's choice).
MONITOR = "iou"


class NonFiniteLossError(MedbenchError):
    """The training loss became NaN or infinite."""


@dataclass
class EarlyStopping:
    """Stop after `patience` epochs without an increase of at least `min_delta`."""

    patience: int
    min_delta: float
    best: float = -math.inf
    bad_epochs: int = 0

    def update(self, value: float) -> bool:
        """Record `value`; return whether it is a new best."""
        if value > self.best + self.min_delta or (self.best == -math.inf and not math.isnan(value)):
            self.best, self.bad_epochs = value, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


@dataclass(frozen=True)
class FitResult:
    best_epoch: int
    best_value: float
    epochs_run: int
    best_checkpoint: Path


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    amp: bool,
    epoch: int,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> float:
    model.train()
    total, batches = 0.0, 0
    # disable=None: a progress bar on a terminal, none in log files.
    for step, (images, masks, _) in enumerate(tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None)):
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        masks = masks.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)  # (B, K, H, W)
        loss = loss_fn(logits, masks)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"Training loss is {loss.item()} at epoch {epoch}, step {step}. Lower --lr or check the data; "
                "the last good checkpoint is kept."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item()
        batches += 1
    return total / max(batches, 1)


@dataclass
class _TrainingState:
    """What `last.pt` stores besides the weights so that training continues where it stopped."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    stopper: EarlyStopping
    train_loader: DataLoader
    best_epoch: int = -1
    history: list[dict[str, float]] = field(default_factory=list)

    def to_checkpoint(self, epoch: int, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "step": self.scheduler.last_epoch,  # optimizer steps taken so far
            "best_value": self.stopper.best,
            "bad_epochs": self.stopper.bad_epochs,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "rng": capture_rng_state(self.train_loader),
            **extra,
        }

    def restore(self, checkpoint: dict[str, Any]) -> int:
        """Load `checkpoint` (a `last.pt`) into the model, optimizer and state; return the next epoch."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.stopper.best, self.stopper.bad_epochs = checkpoint["best_value"], checkpoint["bad_epochs"]
        self.best_epoch = checkpoint["best_epoch"]
        self.history = list(checkpoint["history"])
        restore_rng_state(checkpoint["rng"], self.train_loader)
        return checkpoint["epoch"] + 1


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    loss_fn: nn.Module,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    patience: int,
    min_delta: float,
    device: torch.device,
    amp: bool,
    class_names: list[str],
    checkpoint_dir: Path,
    checkpoint_extra: dict[str, Any],
    log_metrics: Callable[[dict[str, float], int], None],
    resume_from: dict[str, Any] | None = None,
    channels_last: bool = False,
    compile: bool = False,
    distributed: DistributedContext | None = None,
) -> FitResult:
    """Train for up to `epochs`, evaluating on `val_loader` after each and stopping early.

    The best epoch by validation IoU is saved to `checkpoint_dir/best.pt`, the latest to
    `last.pt` (both atomically), with the optimizer, schedule, early-stopping and random
    states and the metric history. `resume_from` (a loaded `last.pt`) continues after its
    epoch. `log_metrics(metrics, epoch)` receives `train/loss`, `val/<score>`,
    `val/<score>/<class>`, `lr` and `epoch_seconds` after every epoch. `channels_last`
    and `compile` select the memory format and `torch.compile` for the forward passes.

    With `distributed` (a `torchrun` launch), `train_loader` must read through a
    `DistributedSampler` and every rank calls `fit`: the model trains wrapped in DDP,
    `train/loss` is the mean over the ranks, and only rank 0 evaluates, writes
    checkpoints and calls `log_metrics`. It broadcasts its early-stopping decision. The
    other ranks return a `FitResult` without a best epoch (-1).
    """
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    forward = torch.compile(model) if compile else model
    train_forward = forward
    if distributed is not None:
        train_forward = distributed.wrap(model)
        train_forward = torch.compile(train_forward) if compile else train_forward
    is_main = distributed is None or distributed.is_main
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = rex_schedule(optimizer, total_steps=epochs * len(train_loader))
    state = _TrainingState(model, optimizer, scheduler, EarlyStopping(patience, min_delta), train_loader)
    start_epoch = state.restore(resume_from) if resume_from is not None else 0
    best_path, epochs_run = checkpoint_dir / "best.pt", start_epoch

    for epoch in range(start_epoch, epochs):
        if state.stopper.should_stop:  # a resumed run that had already stopped early
            break
        started = time.perf_counter()

        # train, then evaluate on the validation split
        if distributed is not None:
            train_loader.sampler.set_epoch(epoch)
        train_loss = train_one_epoch(
            train_forward, train_loader, loss_fn, optimizer, scheduler, device, amp, epoch, memory_format
        )
        epochs_run = epoch + 1
        if distributed is not None:
            train_loss = distributed.mean(train_loss)
        if not is_main:  # rank 0 evaluates, checkpoints, logs and decides whether to stop
            if distributed.broadcast_flag(False):
                break
            continue
        val: Evaluation = evaluate(forward, val_loader, len(class_names), class_names, device, loss_fn, amp)
        scores = val.summary()

        metrics = {"train/loss": train_loss, "lr": scheduler.get_last_lr()[0]}
        metrics.update({f"val/{k}": v for k, v in scores.items()})
        metrics["epoch_seconds"] = time.perf_counter() - started
        state.history.append(metrics)

        # checkpoint the latest epoch, and the best one as a copy of it
        is_best = state.stopper.update(scores[MONITOR])
        if is_best:
            state.best_epoch = epoch
        save_checkpoint(checkpoint_dir / "last.pt", state.to_checkpoint(epoch, checkpoint_extra),
                        copies=[best_path] if is_best else [])

        # log after the checkpoint, so every logged epoch can be resumed from
        log_metrics(metrics, epoch)
        log.info("epoch %d: train/loss %.4f val/dice %.4f val/iou %.4f", epoch, train_loss, scores["dice"], scores["iou"])

        # stop early, on every rank at once
        if distributed is not None:
            distributed.broadcast_flag(state.stopper.should_stop)
        if state.stopper.should_stop:
            log.info("Early stopping at epoch %d: no %s gain above %g for %d epochs", epoch, MONITOR, min_delta, patience)
            break

    if not is_main:
        return FitResult(-1, math.nan, epochs_run, best_path)
    if state.best_epoch < 0:
        raise MedbenchError(f"Validation {MONITOR} was undefined in every epoch: the validation split has no foreground.")
    if state.best_epoch != epochs_run - 1:  # otherwise the weights in memory are the best ones
        model.load_state_dict(load_checkpoint(best_path)["model"])
    return FitResult(state.best_epoch, state.stopper.best, epochs_run, best_path)
