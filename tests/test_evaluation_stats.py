"""The statistics of fesaug evaluate: the paired comparison over folds against scipy, and the
verdict it gives."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fesaug.evaluate.stats import paired_comparison, verdict


def test_paired_comparison_matches_scipy() -> None:
    a = [0.80, 0.70, 0.90, 0.65, 0.75, 0.60]
    b = [0.70, 0.72, 0.80, 0.60, 0.70, 0.61]
    d = np.subtract(a, b)
    c = paired_comparison(a, b)
    assert c["n_folds"] == 6
    assert c["differences"] == pytest.approx(d.tolist())
    assert c["mean_difference"] == pytest.approx(d.mean())
    assert (c["wins"], c["losses"]) == (4, 2)
    assert c["wilcoxon_p"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert c["ttest_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert 0 < c["wilcoxon_p"] < 1 and 0 < c["ttest_p"] < 1
    # The order matters: b − a mirrors it.
    assert paired_comparison(b, a)["mean_difference"] == pytest.approx(-d.mean())
    assert (paired_comparison(b, a)["wins"], paired_comparison(b, a)["losses"]) == (2, 4)


@pytest.mark.parametrize(
    "a, b",
    [
        ([0.7], [0.5]),  # one fold: no test
        ([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]),  # no differences
    ],
    ids=["one-fold", "no-differences"],
)
def test_paired_comparison_has_no_p_value_where_a_test_is_undefined(a: list, b: list) -> None:
    c = paired_comparison(a, b)
    assert c["n_folds"] == len(a)
    assert c["mean_difference"] == pytest.approx(float(np.mean(np.subtract(a, b))))
    assert c["differences"] == pytest.approx(np.subtract(a, b).tolist())
    assert c["wilcoxon_p"] is None and c["ttest_p"] is None


def test_paired_comparison_drops_zero_differences_in_the_signed_rank_test() -> None:
    a, b = [0.75, 0.5, 0.625, 0.5], [0.5, 0.25, 0.375, 0.5]  # three exact +0.25 and one tie
    c = paired_comparison(a, b)
    assert (c["wins"], c["losses"]) == (3, 0)
    assert c["wilcoxon_p"] == pytest.approx(stats.wilcoxon(np.subtract(a, b)).pvalue)
    assert c["wilcoxon_p"] == pytest.approx(0.25)  # 3 positive ranks out of 3 non-zero: 2 / 2**3


def _comparisons(**pairs: tuple[list[float], list[float]]) -> dict:
    return {f"fes_vs_{base}": {"macro_f1": paired_comparison(a, b)} for base, (a, b) in pairs.items()}


BASE = [0.70, 0.72, 0.68, 0.75, 0.71, 0.69, 0.73, 0.74]
UP = [0.76, 0.80, 0.71, 0.79, 0.80, 0.73, 0.78, 0.76]  # + in all 8 folds: p = 2 / 2**8
MIXED = [0.72, 0.70, 0.70, 0.73, 0.73, 0.67, 0.74, 0.735]  # +/−: no clear difference


@pytest.mark.parametrize(
    "over_oversample, outcome, advice",
    [
        ((UP, BASE), "better", "use the FES-balanced manifest"),
        ((BASE, UP), "worse", "use random oversampling"),
        ((MIXED, BASE), "no clear difference", "no evidence that synthesis beats random oversampling"),
    ],
    ids=["beats", "loses", "unclear"],
)
def test_verdict_answers_from_the_paired_test_against_oversampling(
    over_oversample: tuple, outcome: str, advice: str
) -> None:
    v = verdict(_comparisons(real=(UP, BASE), oversample=over_oversample), seeds_per_fold=3)
    assert v["against"]["real"]["outcome"] == "better"
    o = v["against"]["oversample"]
    assert o["outcome"] == outcome
    assert o["wilcoxon_p"] == pytest.approx(stats.wilcoxon(np.subtract(*over_oversample)).pvalue)
    assert v["recommendation"].startswith(advice)
    assert v["cautions"] == []
    # A mean lead without significance is said, not taken for a win.
    if outcome == "no clear difference":
        assert "scored higher" not in v["recommendation"]
        assert "scored higher on average" in verdict(_comparisons(oversample=(BASE, MIXED)), 3)["recommendation"]


def test_verdict_without_oversampling_judges_against_real_data_and_says_what_is_missing() -> None:
    v = verdict(_comparisons(real=(UP, BASE)), seeds_per_fold=3)
    assert list(v["against"]) == ["real"]
    assert "add the `oversample` condition" in v["recommendation"]
    assert verdict(_comparisons(real=(BASE, UP)), 3)["recommendation"].startswith("do not use")
    assert verdict({}, 3) is None


def test_verdict_warns_where_the_test_cannot_reach_significance() -> None:
    # Five folds all in favour: the exact two-sided signed-rank p is 2 / 2**5 = 0.0625.
    v = verdict(_comparisons(oversample=(UP[:5], BASE[:5])), seeds_per_fold=1)
    assert v["against"]["oversample"]["wilcoxon_p"] == pytest.approx(0.0625)
    assert v["against"]["oversample"]["outcome"] == "no clear difference"
    assert any("at least 6" in c for c in v["cautions"])
    assert any("--downstream-seeds" in c for c in v["cautions"])


def _over_seeds(**pairs: tuple[list[float], list[float]]) -> dict:
    return {f"fes_vs_{base}": {"macro_f1": paired_comparison(a, b, "seed")} for base, (a, b) in pairs.items()}


def test_over_the_seeds_of_one_split_the_verdict_tests_nothing_and_says_which_way_the_mean_went() -> None:
    # Eight seeds all in favour would be p 0.008 over folds; over seeds of one split it is no evidence.
    c = paired_comparison(UP, BASE, "seed")
    assert c["n_seeds"] == 8 and "n_folds" not in c and c["wilcoxon_p"] == pytest.approx(2 / 2**8)
    v = verdict(_over_seeds(real=(UP, BASE), oversample=(UP, BASE)), unit="seed")
    assert {a["outcome"] for a in v["against"].values()} == {"higher"}
    assert v["against"]["oversample"]["n_seeds"] == 8
    assert v["test"].startswith("no test: one train/test split")
    assert v["recommendation"].endswith("on one split and without a test: not evidence that it helps")
    assert len(v["cautions"]) == 1 and "training noise only" in v["cautions"][0]
    lower = verdict(_over_seeds(oversample=(BASE, UP)), unit="seed")
    assert lower["against"]["oversample"]["outcome"] == "lower"
    assert lower["recommendation"].startswith("no sign that synthesis beats random oversampling")
    one = verdict(_over_seeds(real=([0.6], [0.6])), unit="seed")
    assert one["against"]["real"]["outcome"] == "equal" and any("one downstream seed" in c for c in one["cautions"])
    assert one["recommendation"].startswith("no sign that the FES-balanced training set beats the real data alone")
