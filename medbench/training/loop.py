"""The training loop shared by every model: AdamW, REX, early stopping, atomic checkpoints."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from medbench.errors import MedbenchError
from medbench.training.checkpoint import load_checkpoint, save_checkpoint
from medbench.training.evaluate import Evaluation, autocast, evaluate
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
) -> float:
    model.train()
    total, batches = 0.0, 0
    for step, (images, masks, _) in enumerate(tqdm(loader, desc=f"epoch {epoch}", leave=False)):
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
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
) -> FitResult:
    """Train for up to `epochs`, evaluating on `val_loader` after each and stopping early.

    The best epoch by validation IoU is saved to `checkpoint_dir/best.pt`, the latest to
    `last.pt` (both atomically). `log_metrics(metrics, epoch)` receives `train/loss`,
    `val/<score>`, `val/<score>/<class>` and `lr` after every epoch.
    """
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = rex_schedule(optimizer, total_steps=epochs * len(train_loader))
    stopper = EarlyStopping(patience, min_delta)
    best_path, best_epoch = checkpoint_dir / "best.pt", -1

    def checkpoint(epoch: int) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "best_value": stopper.best,
            **checkpoint_extra,
        }

    for epoch in range(epochs):
        started = time.perf_counter()

        # train, then evaluate on the validation split
        train_loss = train_one_epoch(model, train_loader, loss_fn, optimizer, scheduler, device, amp, epoch)
        val: Evaluation = evaluate(model, val_loader, len(class_names), class_names, device, loss_fn, amp)
        scores = val.summary()

        # log
        metrics = {"train/loss": train_loss, "lr": scheduler.get_last_lr()[0]}
        metrics.update({f"val/{k}": v for k, v in scores.items()})
        metrics["epoch_seconds"] = time.perf_counter() - started
        log_metrics(metrics, epoch)
        log.info("epoch %d: train/loss %.4f val/dice %.4f val/iou %.4f", epoch, train_loss, scores["dice"], scores["iou"])

        # checkpoint the best and the latest epoch
        if stopper.update(scores[MONITOR]):
            best_epoch = epoch
            save_checkpoint(best_path, checkpoint(epoch))
        save_checkpoint(checkpoint_dir / "last.pt", checkpoint(epoch))

        # stop early
        if stopper.should_stop:
            log.info("Early stopping at epoch %d: no %s gain above %g for %d epochs", epoch, MONITOR, min_delta, patience)
            break

    if best_epoch < 0:
        raise MedbenchError(f"Validation {MONITOR} was undefined in every epoch: the validation split has no foreground.")
    model.load_state_dict(load_checkpoint(best_path)["model"])
    return FitResult(best_epoch, stopper.best, epoch + 1, best_path)
