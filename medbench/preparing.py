"""The `prepare` pipeline: prepare a dataset, write its card, and record the card in MLflow."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from medbench import tracking
from medbench.config import PrepareConfig
from medbench.data import PreparedDataset, prepare_dataset
from medbench.data.card import CARD_JSON, CARD_PNG

__all__ = ["PrepareResult", "prepare"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareResult:
    prepared: PreparedDataset
    card: dict
    run_id: str | None


def prepare(config: PrepareConfig, progress: bool = True) -> PrepareResult:
    """Prepare `config.dataset` (or reuse its cache) and record its dataset card.

    The card (`dataset_card.json`, `dataset_card.png`) lies in the prepared folder; with
    `config.log_run` it is also logged, with the manifest and `splits.json`, to a run
    named `prepare__<dataset>__<prepared key>` in `config.experiment`.
    """
    prepared = prepare_dataset(
        config.dataset, config.data_dir, config.image_size, config.max_images, config.num_folds,
        config.split_seed, progress, split=config.split, test_fraction=config.test_fraction,
        inner_val_fraction=config.inner_val_fraction, near_duplicate_distance=config.near_duplicate_distance,
    )
    card = json.loads((prepared.path / CARD_JSON).read_text())
    run_id = None
    if config.log_run:
        tags = {"dataset": config.dataset, "prepared_dataset": prepared.path.name,
                "code_version": tracking.code_version()}
        files = [prepared.path / name for name in (CARD_JSON, CARD_PNG, "manifest.json", "splits.json")]
        run_id = tracking.log_dataset_card(
            config.experiment, f"prepare__{config.dataset}__{prepared.path.name}", config.as_params(), tags, card, files
        )
    return PrepareResult(prepared, card, run_id)
