"""Configuration of a comparison; field names are the `medbench compare` flags and MLproject parameters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from medbench.errors import MedbenchError

__all__ = ["CompareConfig"]


@dataclass(frozen=True)
class CompareConfig:
    """What to compare and where the results go.

    Attributes:
        experiments: MLflow experiments whose finished training runs are read.
        datasets: datasets to include; empty for every dataset found.
        models: registry model names to include; empty for every model found.
        metric: table metric that ranks models and picks the champion: `dice`, `iou`,
            `precision`, `recall`, `hd95`, `dice/<class>` or `hd95/<class>` (HD95 ranks
            lower values first).
        alpha: significance level of the Nemenyi critical difference.
        efficiency: measure parameters, MACs, latency and peak memory of every model.
        efficiency_size: image side for the efficiency measurements; `None` for the
            image size the model's runs were trained at.
        device: device of the efficiency measurements: `cpu`, `cuda` or `cuda:N`.
        champion: set the registry alias `champion` on the best version per dataset.
        output: local folder for the report, plots and CSV files.
        experiment: MLflow experiment of the `compare` run that stores the same files.
    """

    experiments: tuple[str, ...] = ("medbench",)
    datasets: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    metric: str = "dice"
    alpha: float = 0.05
    efficiency: bool = True
    efficiency_size: int | None = None
    device: str = "cpu"
    champion: bool = True
    output: str = "compare_report"
    experiment: str = "medbench-compare"

    def __post_init__(self) -> None:
        if not self.experiments:
            raise MedbenchError("experiments must name at least one MLflow experiment.")
        if not 0 < self.alpha < 1:
            raise MedbenchError(f"alpha must be between 0 and 1, got {self.alpha}.")
        if self.efficiency_size is not None and self.efficiency_size < 32:
            raise MedbenchError(f"efficiency_size must be at least 32 pixels, got {self.efficiency_size}.")

    @property
    def higher_is_better(self) -> bool:
        """Whether a higher value of `metric` is better (all but the HD95 distances)."""
        return not self.metric.startswith("hd95")

    def as_params(self) -> dict[str, Any]:
        return {k: ",".join(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
