"""Epoch time of `medbench.training.loop.fit` against a bare PyTorch loop, and MLflow's share of it.

    MEDBENCH_DATA_DIR=/path/to/data python benchmarks/fit_overhead.py \\
        [--model swinunet] [--image-size 128] [--max-images 80] [--rounds 3]

Both sides train the same model (a fresh copy of one initialization), on the same prepared
Kvasir-SEG images and batches, with AdamW and the REX schedule, for one epoch followed by a
forward pass over the validation images. `fit` adds what medbench does per epoch: pooled
metrics of the validation predictions, MLflow logging into a temporary SQLite store, the
atomic `last.pt` and `best.pt` checkpoints and reloading the best weights. Rounds alternate
the two. The logging share is the time spent inside the metric-logging call (a synchronous
MLflow `log_metrics`) over the `fit` time.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import _common
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="swinunet", help="registry model name")
    parser.add_argument("--image-size", type=int, default=128, help="square working resolution in pixels")
    parser.add_argument("--max-images", type=int, default=80, help="images of Kvasir-SEG used (5 folds)")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch size")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)

    workspace = Path(tempfile.mkdtemp(prefix="medbench-bench-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workspace / 'mlflow.db'}"
    os.environ.setdefault("MEDBENCH_CACHE_DIR", str(workspace / "cache"))
    from medbench import tracking
    from medbench.config import resolve_train_config
    from medbench.data import prepare_dataset
    from medbench.models import create_model
    from medbench.training.loop import fit
    from medbench.training.losses import SegmentationLoss
    from medbench.training.run import _loaders, seed_everything
    from medbench.training.schedule import rex_schedule

    config = resolve_train_config("quick", model=args.model, dataset="kvasir_seg", image_size=args.image_size,
                                  max_images=args.max_images, batch_size=args.batch_size, epochs=1)
    seed_everything(config.seed, config.deterministic)
    prepared = prepare_dataset("kvasir_seg", None, config.image_size, config.max_images, config.num_folds,
                               config.split_seed, progress=False)
    initial = create_model(config.model, 3, prepared.num_classes)
    train_loader, val_loader, _ = _loaders(config, prepared, inner_val=False)
    loss_fn = SegmentationLoss(prepared.num_classes)
    device = torch.device("cpu")
    logging_seconds: list[float] = []

    def bare_epoch() -> None:
        model = copy.deepcopy(initial)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        scheduler = rex_schedule(optimizer, total_steps=len(train_loader))
        model.train()
        for images, masks, _ in train_loader:
            loss = loss_fn(model(images), masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        with torch.no_grad():
            for images, _, _ in val_loader:
                model(images).argmax(dim=1)

    def medbench_epoch() -> None:
        model = copy.deepcopy(initial)
        fit(model, train_loader, val_loader, loss_fn, epochs=1, lr=config.lr, weight_decay=config.weight_decay,
            patience=config.patience, min_delta=config.min_delta, device=device, amp=False,
            class_names=prepared.class_names, checkpoint_dir=workspace / "checkpoints",
            checkpoint_extra={"config": config.as_params()}, log_metrics=log_metrics)

    def log_metrics(metrics: dict[str, float], epoch: int) -> None:
        started = time.perf_counter()
        run.log_metrics(metrics, step=epoch)
        logging_seconds.append(time.perf_counter() - started)

    # One run for all rounds: opening a run is a per-run cost, not a per-epoch one.
    with tracking.start_run("benchmark", config.run_name) as run:
        bare_epoch()  # warm-up
        seconds = _common.alternate({"bare": bare_epoch, "fit": medbench_epoch}, args.rounds)
        checkpoint_seconds = _time_checkpoint(initial, workspace / "probe")
    bare, medbench = _common.median(seconds["bare"]), _common.median(seconds["fit"])

    print(_common.machine_header())
    print(f"{config.model} at {config.image_size}x{config.image_size}, {len(train_loader.dataset)} training and "
          f"{len(val_loader.dataset)} validation images, batch {config.batch_size}, {args.rounds} alternating rounds")
    print(f"  bare PyTorch epoch  median {bare:7.2f} s  all {[round(s, 2) for s in seconds['bare']]}")
    print(f"  medbench fit epoch  median {medbench:7.2f} s  all {[round(s, 2) for s in seconds['fit']]}")
    print(f"ratio fit / bare: {medbench / bare:.3f} (goal <= 1.03)")
    print(f"  of which writing last.pt and best.pt (one file, a hard link): {checkpoint_seconds:.2f} s")
    share = _common.median(logging_seconds) / medbench
    print(f"MLflow logging share of the fit epoch: {100 * share:.3f} % (goal <= 2 %), "
          f"median {1e3 * _common.median(logging_seconds):.1f} ms per epoch")


def _time_checkpoint(model: torch.nn.Module, folder: Path) -> float:
    """Seconds `fit` spends per epoch on checkpoints: one atomic write with a linked copy."""
    from medbench.training.checkpoint import save_checkpoint

    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 3, 64, 64)).sum().backward()
    optimizer.step()  # fills the moment estimates, so the file has its full size
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": {}}
    started = time.perf_counter()
    save_checkpoint(folder / "last.pt", state, copies=[folder / "best.pt"])
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
