"""Compare trained models across datasets: queries, statistics, tables, plots and reports."""

from medbench.compare.config import CompareConfig
from medbench.compare.pipeline import CHAMPION_ALIAS, CompareResult, compare

__all__ = ["CHAMPION_ALIAS", "CompareConfig", "CompareResult", "compare"]
