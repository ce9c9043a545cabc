"""Statistics of a comparison: ranks, paired Wilcoxon tests with Holm correction, Friedman and Nemenyi.

Every function takes plain arrays or pandas objects and returns plain values, so each one
can be checked against SciPy or a hand computation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "FriedmanResult",
    "PairedTest",
    "friedman_nemenyi",
    "holm",
    "nemenyi_critical_difference",
    "paired_tests_against_reference",
    "rank_models",
]


def rank_models(scores: pd.Series, higher_is_better: bool = True) -> pd.Series:
    """Rank 1 for the best score; ties share the mean of their ranks; NaN scores get no rank."""
    return scores.rank(ascending=not higher_is_better, method="average")


def holm(pvalues: list[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of p-values for a family of tests (NaN entries stay NaN).

    The adjusted value of the i-th smallest of m p-values is max over j <= i of
    min(1, (m - j + 1) p_(j)). Hand-written because SciPy ships only the Benjamini-Hochberg
    and Benjamini-Yekutieli procedures (`scipy.stats.false_discovery_control`).
    """
    values = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full_like(values, np.nan)
    valid = np.flatnonzero(~np.isnan(values))
    m = len(valid)
    order = valid[np.argsort(values[valid], kind="stable")]
    running = 0.0
    for step, index in enumerate(order):
        running = max(running, min(1.0, (m - step) * values[index]))
        adjusted[index] = running
    return adjusted


@dataclass(frozen=True)
class PairedTest:
    """A two-sided paired Wilcoxon signed-rank test of one model against the reference model.

    Attributes:
        model: the compared model.
        reference: the best model of the dataset.
        n_pairs: images scored by both models (undefined Dice on either side excluded).
        n_excluded: images of either model left out because they were not paired.
        median_difference: median of model minus reference per-image Dice.
        statistic: Wilcoxon statistic W (NaN when not computed).
        pvalue: unadjusted p-value (NaN when not computed).
        pvalue_holm: Holm-adjusted p-value over the dataset's tests.
        note: why a test was not computed, else empty.
    """

    model: str
    reference: str
    n_pairs: int
    n_excluded: int
    median_difference: float
    statistic: float
    pvalue: float
    pvalue_holm: float
    note: str = ""


def paired_tests_against_reference(per_image: dict[str, pd.Series], reference: str) -> list[PairedTest]:
    """Test every model's per-image scores against `reference`'s on the same images, Holm-corrected.

    Args:
        per_image: model name to a Series of per-image scores indexed by image id. NaN
            (undefined) scores are dropped; only ids scored by both models are paired.
        reference: the model every other model is tested against (a key of `per_image`).

    Returns:
        One `PairedTest` per model other than `reference`, in the order of `per_image`.
    """
    base = per_image[reference].dropna()
    raw = []
    for model, scores in per_image.items():
        if model == reference:
            continue
        scores = scores.dropna()
        common = base.index.intersection(scores.index)
        excluded = len(base.index.union(scores.index)) - len(common)
        differences = scores.loc[common].to_numpy() - base.loc[common].to_numpy()
        median = float(np.median(differences)) if len(common) else math.nan
        statistic, pvalue, note = math.nan, math.nan, ""
        if len(common) == 0:
            note = "no image scored by both models"
        elif not np.any(differences):
            note = "identical per-image scores"
        else:
            result = stats.wilcoxon(scores.loc[common].to_numpy(), base.loc[common].to_numpy())
            statistic, pvalue = float(result.statistic), float(result.pvalue)
        raw.append((model, len(common), excluded, median, statistic, pvalue, note))
    adjusted = holm([row[5] for row in raw])
    return [
        PairedTest(model, reference, n, excluded, median, statistic, pvalue, float(p_holm), note)
        for (model, n, excluded, median, statistic, pvalue, note), p_holm in zip(raw, adjusted)
    ]


def nemenyi_critical_difference(num_models: int, num_blocks: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of average ranks: q_alpha * sqrt(k (k + 1) / (6 N)).

    q_alpha is the studentized range quantile for k groups and infinite degrees of freedom
    divided by sqrt(2) (Demsar, JMLR 7, 2006: 2.343 for k = 3 at alpha 0.05).
    """
    if num_models < 2 or num_blocks < 1:
        raise ValueError(f"need at least 2 models and 1 block, got {num_models} and {num_blocks}")
    q_alpha = stats.studentized_range.ppf(1 - alpha, num_models, np.inf) / math.sqrt(2)
    return float(q_alpha * math.sqrt(num_models * (num_models + 1) / (6 * num_blocks)))


@dataclass(frozen=True)
class FriedmanResult:
    """A Friedman test across blocks, with the Nemenyi critical difference of average ranks.

    Attributes:
        blocks: what one block is, for example `datasets` or `folds (dataset, fold)`.
        block_names: the blocks used, in order.
        average_ranks: model name to its rank averaged over blocks (1 is best).
        statistic: Friedman chi-square (NaN when not computed).
        pvalue: its p-value (NaN when not computed).
        critical_difference: Nemenyi critical difference at `alpha` (NaN when not computed).
        alpha: significance level.
        note: why the test was not computed, else empty.
    """

    blocks: str
    block_names: list[str]
    average_ranks: dict[str, float]
    statistic: float
    pvalue: float
    critical_difference: float
    alpha: float
    note: str = ""


def friedman_nemenyi(
    scores: pd.DataFrame, blocks: str, higher_is_better: bool = True, alpha: float = 0.05
) -> FriedmanResult:
    """Friedman test over `scores` (one row per block, one column per model) and the Nemenyi CD.

    Blocks with a missing score are dropped. The test needs at least 3 models and 3 blocks
    (`scipy.stats.friedmanchisquare` requires 3 groups); otherwise only average ranks are
    returned and `note` gives the reason.
    """
    complete = scores.dropna(axis=0, how="any")
    ranks = complete.apply(lambda row: rank_models(row, higher_is_better), axis=1)
    average = {model: float(ranks[model].mean()) for model in complete.columns} if len(complete) else {}
    num_models, num_blocks = complete.shape[1], complete.shape[0]
    names = [str(b) for b in complete.index]
    if num_models < 3 or num_blocks < 3:
        note = (f"Friedman test not run: it needs at least 3 models and 3 blocks ({blocks}) with a score for "
                f"every model; got {num_models} models and {num_blocks} blocks.")
        return FriedmanResult(blocks, names, average, math.nan, math.nan, math.nan, alpha, note)
    result = stats.friedmanchisquare(*(complete[model].to_numpy() for model in complete.columns))
    cd = nemenyi_critical_difference(num_models, num_blocks, alpha)
    return FriedmanResult(blocks, names, average, float(result.statistic), float(result.pvalue), cd, alpha)
