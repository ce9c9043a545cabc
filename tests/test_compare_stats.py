"""Statistics and tables of `compare` on fixed inputs, against hand computations and SciPy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from medbench.compare.collect import FoldRun
from medbench.compare.plots import pareto_front
from medbench.compare.stats import (
    friedman_nemenyi,
    holm,
    nemenyi_critical_difference,
    paired_tests_against_reference,
    rank_models,
)
from medbench.compare.tables import summary_table
from medbench.errors import MedbenchError


def test_holm_hand_computed():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_keeps_nan():
    adjusted = holm([0.6, math.nan, 0.2])
    assert math.isnan(adjusted[1])
    np.testing.assert_allclose(adjusted[[0, 2]], [0.6, 0.4])
    assert holm([0.7, 0.8]).max() == 1.0


def test_rank_models_ties_and_direction():
    scores = pd.Series({"a": 0.9, "b": 0.7, "c": 0.9})
    assert rank_models(scores).to_dict() == {"a": 1.5, "b": 3.0, "c": 1.5}
    assert rank_models(scores, higher_is_better=False).to_dict() == {"a": 2.5, "b": 1.0, "c": 2.5}


def test_paired_tests_match_scipy_on_shared_ids():
    reference = pd.Series([0.9, 0.8, 0.85, 0.7, 0.95, 0.6, 0.88], index=list("abcdefg"))
    # shuffled order, one undefined score (NaN) and one id the reference lacks
    other = pd.Series([0.5, 0.82, math.nan, 0.65, 0.7, 0.6, 0.7, 0.3], index=list("gbcdeaf") + ["z"])
    worse = reference - 0.1
    tests = paired_tests_against_reference({"ref": reference, "other": other, "worse": worse}, "ref")
    assert [t.model for t in tests] == ["other", "worse"]

    shared = list("abdefg")  # c is NaN in `other`, z is missing from the reference
    expected = stats.wilcoxon(other.loc[shared].to_numpy(), reference.loc[shared].to_numpy())
    first = tests[0]
    assert first.n_pairs == 6
    assert first.n_excluded == 2
    assert first.statistic == pytest.approx(expected.statistic)
    assert first.pvalue == pytest.approx(expected.pvalue)
    assert first.median_difference == pytest.approx(np.median(other.loc[shared] - reference.loc[shared]))

    expected_worse = stats.wilcoxon(worse.to_numpy(), reference.to_numpy())
    assert tests[1].pvalue == pytest.approx(expected_worse.pvalue)
    np.testing.assert_allclose([t.pvalue_holm for t in tests], holm([first.pvalue, tests[1].pvalue]))


def test_paired_tests_identical_scores_not_tested():
    scores = pd.Series([0.5, 0.6, 0.7], index=["x", "y", "z"])
    (test,) = paired_tests_against_reference({"a": scores, "b": scores.copy()}, "a")
    assert test.note == "identical per-image scores"
    assert math.isnan(test.pvalue)


@pytest.mark.parametrize(("k", "q"), [(2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728), (10, 3.164)])
def test_nemenyi_q_matches_demsar_table(k, q):
    # Demsar (JMLR 7, 2006), table 5a: q_0.05 for k classifiers; CD = q sqrt(k (k + 1) / (6 N)).
    n = 14
    assert nemenyi_critical_difference(k, n) == pytest.approx(q * math.sqrt(k * (k + 1) / (6 * n)), abs=2e-3)


def test_friedman_matches_scipy_and_hand_ranks():
    scores = pd.DataFrame(
        {"a": [0.90, 0.80, 0.70, 0.85], "b": [0.85, 0.82, 0.60, 0.80], "c": [0.70, 0.60, 0.65, 0.75]},
        index=["d1", "d2", "d3", "d4"],
    )
    result = friedman_nemenyi(scores, "datasets")
    # ranks per row: d1 1,2,3; d2 2,1,3; d3 1,3,2; d4 1,2,3
    assert result.average_ranks == pytest.approx({"a": 1.25, "b": 2.0, "c": 2.75})
    expected = stats.friedmanchisquare(scores["a"], scores["b"], scores["c"])
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.pvalue == pytest.approx(expected.pvalue)
    assert result.critical_difference == pytest.approx(2.343 * math.sqrt(3 * 4 / (6 * 4)), abs=2e-3)
    assert result.note == ""


def test_friedman_lower_is_better_reverses_ranks():
    scores = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [2.0, 3.0, 4.0], "c": [3.0, 4.0, 5.0]})
    result = friedman_nemenyi(scores, "datasets", higher_is_better=False)
    assert result.average_ranks == {"a": 1.0, "b": 2.0, "c": 3.0}


def test_friedman_two_models_not_run():
    scores = pd.DataFrame({"a": [0.9, 0.8, 0.7], "b": [0.8, 0.9, 0.6]})
    result = friedman_nemenyi(scores, "folds")
    assert "needs at least 3 models" in result.note
    assert math.isnan(result.pvalue)
    assert result.average_ranks == pytest.approx({"a": 4 / 3, "b": 5 / 3})


def test_pareto_front():
    latency = np.array([10.0, 20.0, 15.0, 30.0])
    dice = np.array([0.70, 0.80, 0.60, 0.80])
    assert pareto_front(latency, dice).tolist() == [True, True, False, False]
    assert pareto_front(latency, dice, higher_is_better=False).tolist() == [True, False, True, False]


def fold_run(dataset, model, fold, dice, hd95, family="SMA", **extra):
    metrics = {"dice": dice, "iou": dice / (2 - dice), "hd95": hd95, "hd95_excluded": 1.0,
               "hd95_worst_case": float(fold), **extra}
    return FoldRun(f"{model}-{dataset}-{fold}", dataset, model, family, fold, 0, 64, 2, 1000, fold, metrics)


def test_summary_table_hand_computed():
    runs = [
        fold_run("d1", "m1", 0, 0.8, 10.0, **{"dice/polyp": 0.8}),
        fold_run("d1", "m1", 1, 0.6, 14.0, **{"dice/polyp": 0.6}),
        fold_run("d1", "m2", 0, 0.9, 20.0, family="GP-VM", **{"dice/polyp": 0.9}),
        fold_run("d1", "m2", 1, 0.9, 30.0, family="GP-VM", **{"dice/polyp": 0.9}),
        fold_run("d2", "m1", 0, 0.5, 5.0),
        fold_run("d2", "m2", 0, 0.4, 6.0, family="GP-VM"),
    ]
    table = summary_table(runs, "dice", higher_is_better=True).set_index(["dataset", "model"])
    row = table.loc[("d1", "m1")]
    assert row["dice_mean"] == pytest.approx(0.7)
    assert row["dice_std"] == pytest.approx(math.sqrt(0.02))  # sample std of 0.8, 0.6
    assert row["hd95_excluded"] == 2.0
    assert row["hd95_worst_case"] == 1.0
    assert row["run_ids"] == "m1-d1-0 m1-d1-1"
    assert row["rank"] == 2.0
    assert table.loc[("d2", "m1"), "rank"] == 1.0
    assert table.loc[("d1", "m1"), "average_rank"] == 1.5
    assert math.isnan(table.loc[("d2", "m1"), "dice_std"])  # one fold
    assert math.isnan(table.loc[("d2", "m1"), "dice/polyp_mean"])  # d2 has no polyp class

    by_hd95 = summary_table(runs, "hd95", higher_is_better=False).set_index(["dataset", "model"])
    assert by_hd95.loc[("d1", "m1"), "rank"] == 1.0


def test_summary_table_unknown_metric():
    runs = [fold_run("d1", "m1", 0, 0.8, 10.0), fold_run("d2", "m1", 0, 0.8, 10.0, **{"dice/polyp": 0.8})]
    with pytest.raises(MedbenchError, match="Unknown metric 'dise'. Did you mean 'dice'"):
        summary_table(runs, "dise", True)
    with pytest.raises(MedbenchError, match="--datasets"):
        summary_table(runs, "dice/polyp", True)
