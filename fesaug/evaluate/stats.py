"""Statistics of ``fesaug evaluate``: a condition's scores over seeds and folds, the paired
comparison of two conditions over folds (or, with one train/test split, over downstream seeds),
and the :func:`verdict` those comparisons give.

Plain numbers in, plain numbers out: this module imports nothing of fesaug, so the statistics can
be read, tested and reused (``bench/compare_evaluations.py``) without the fold runner.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

# The verdict's test: the two-sided Wilcoxon signed-rank test over paired folds at this level. With
# fewer than MIN_VERDICT_FOLDS folds its exact p-value cannot fall below it (5 folds: 0.0625).
VERDICT_ALPHA = 0.05
MIN_VERDICT_FOLDS = 6


def fold_scores(record: Mapping[str, Any]) -> dict[str, Any]:
    """A condition's accuracy, macro-F1 and per-class recall on one fold: the mean over its seeds."""
    tests = [record["test"], *(s["test"] for s in record.get("seeds", ()))]
    return {
        "accuracy": float(np.mean([t["accuracy"] for t in tests])),
        "macro_f1": float(np.mean([t["macro_f1"] for t in tests])),
        "recall": {c: float(np.mean([t["recall"][c] for t in tests])) for c in tests[0]["recall"]},
    }


def fold_seconds(record: Mapping[str, Any]) -> float | None:
    """Wall time of a condition on one fold, all its seeds together."""
    times = [record.get("seconds"), *(s.get("seconds") for s in record.get("seeds", ()))]
    return None if times[0] is None else float(sum(t for t in times if t is not None))


def mean_std(values: Sequence[float]) -> dict[str, float | int | None]:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def paired_comparison(a: Sequence[float], b: Sequence[float], unit: str = "fold") -> dict[str, Any]:
    """``a − b`` over paired folds (``unit``: what is paired, ``fold`` or ``seed``; it names the
    count, ``n_folds``/``n_seeds``): mean difference, pairs won, and two-sided Wilcoxon
    signed-rank and paired t-test p-values (scipy; None with fewer than 2 pairs or no differences)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    out: dict[str, Any] = {
        f"n_{unit}s": int(d.size),
        "mean_difference": float(d.mean()) if d.size else None,
        "differences": d.tolist(),
        "wins": int((d > 0).sum()),
        "losses": int((d < 0).sum()),
        "wilcoxon_p": None,
        "ttest_p": None,
    }
    # Equal differences in every fold (zero variance) make the t statistic infinite and its
    # p-value a meaningless 0; the signed-rank test still answers.
    if d.size >= 2 and np.any(d != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small-sample and tie warnings: the p-value says enough
            out["wilcoxon_p"] = float(stats.wilcoxon(d).pvalue)
            p = stats.ttest_rel(a, b).pvalue if np.ptp(d) > 1e-12 else np.nan
            out["ttest_p"] = float(p) if np.isfinite(p) else None
    return out


def fold_metric(record: Mapping[str, Any], metric: str, minority: Sequence[str]) -> float:
    test = fold_scores(record)
    return float(np.mean([test["recall"][c] for c in minority])) if metric == "minority_recall" else float(test[metric])


def verdict(comparisons: Mapping[str, Any], seeds_per_fold: int = 1, unit: str = "fold") -> dict[str, Any] | None:
    """The question ``fesaug evaluate`` is run for: does the FES-balanced training set beat the
    real data alone, and random oversampling (the cheap alternative)? ``seeds_per_fold``: the
    fewest downstream seeds any compared condition has on a fold (one draws a caution).

    Judged on test macro-F1 paired over folds: ``better``/``worse`` when the two-sided Wilcoxon
    signed-rank p-value is below :data:`VERDICT_ALPHA`, else ``no clear difference``. The
    ``recommendation`` follows from the comparison with ``oversample`` when it ran (synthesis
    must earn its cost against it), else from the one with ``real``. ``None`` when neither
    comparison ran.

    ``unit`` ``seed``: the comparisons pair downstream seeds of one train/test split (the
    cross-dataset mode). Those share their training and test images, so their spread is training
    noise only, not the variation over subjects that a claim of a difference needs: the verdict
    tests nothing, its outcome only says which way the mean went (``higher``/``lower``/``equal``),
    and a caution says why.
    """
    n_key = f"n_{unit}s"
    against: dict[str, Any] = {}
    for base in ("real", "oversample"):
        c = comparisons.get(f"fes_vs_{base}", {}).get("macro_f1")
        if not c or c["mean_difference"] is None:
            continue
        p, d = c["wilcoxon_p"], c["mean_difference"]
        if unit == "fold":
            outcome = "no clear difference" if p is None or p >= VERDICT_ALPHA else "better" if d > 0 else "worse"
        else:
            outcome = "higher" if d > 0 else "lower" if d < 0 else "equal"
        against[base] = {
            "outcome": outcome,
            **{k: c[k] for k in ("mean_difference", "wins", "losses", n_key, "wilcoxon_p")},
        }
    if not against:
        return None
    n = min(a[n_key] for a in against.values())
    if unit == "fold":
        test = f"two-sided Wilcoxon signed-rank over paired folds, alpha {VERDICT_ALPHA}"
        cautions, recommendation = _fold_verdict(against, n, seeds_per_fold)
    else:
        test = "no test: one train/test split; the mean over paired downstream seeds"
        cautions, recommendation = _split_verdict(against, n)
    return {
        "metric": "macro_f1",
        "test": test,
        "against": against,
        "recommendation": recommendation,
        "cautions": cautions,
    }


def _fold_verdict(against: Mapping[str, Any], n_folds: int, seeds_per_fold: int) -> tuple[list[str], str]:
    cautions = []
    if n_folds < MIN_VERDICT_FOLDS:
        cautions.append(
            f"{n_folds} fold(s): the signed-rank test needs at least {MIN_VERDICT_FOLDS} to reach "
            f"p < {VERDICT_ALPHA}; evaluate more folds"
        )
    if seeds_per_fold == 1:
        cautions.append(
            "one downstream seed per fold: a training's seed alone moves a fold's score by points; "
            "--downstream-seeds 3 gives a firmer answer"
        )
    if "oversample" in against:
        o = against["oversample"]
        return cautions, {
            "better": "use the FES-balanced manifest: it beats random oversampling on this data",
            "worse": "use random oversampling: it beats the FES-balanced manifest on this data",
        }.get(
            o["outcome"],
            "no evidence that synthesis beats random oversampling on this data; oversampling is the "
            "cheaper choice" + (" and scored higher on average" if o["mean_difference"] < 0 else ""),
        )
    r = against["real"]
    return cautions, {
        "better": "the FES-balanced manifest beats the real data alone; add the `oversample` condition to compare "
        "it with the cheap alternative",
        "worse": "do not use the FES-balanced manifest: the real data alone scores higher",
    }.get(r["outcome"], "no evidence that the FES-balanced manifest beats the real data alone")


def _split_verdict(against: Mapping[str, Any], n_seeds: int) -> tuple[list[str], str]:
    cautions = [
        "one train/test split: no test across subjects or datasets exists, and the seeds share their "
        "training and test images, so their spread is training noise only; confirm a difference with "
        "`fesaug evaluate` k-fold on each dataset or on more test datasets"
    ]
    if n_seeds == 1:
        cautions.append(
            "one downstream seed: a training's seed alone moves the score by points; --downstream-seeds 3 or more"
        )
    if "oversample" in against:
        if against["oversample"]["outcome"] == "higher":
            return cautions, (
                "synthesis scored above random oversampling on the test data, on one split and "
                "without a test: not evidence that it helps"
            )
        return (
            cautions,
            "no sign that synthesis beats random oversampling across these datasets; oversampling is the cheaper "
            "choice",
        )
    if against["real"]["outcome"] == "higher":
        return cautions, (
            "the FES-balanced training set scored above the real data alone on the test data, on one "
            "split and without a test; add the `oversample` condition to compare it with the cheap alternative"
        )
    return cautions, "no sign that the FES-balanced training set beats the real data alone across these datasets"


COUNTS = ("n", "not_judged", "n_real_test")
SETTINGS = ("threshold",)


def across_folds(values: Sequence[Any], key: str | None = None) -> Any:
    """Per-fold records of one nesting → that nesting with mean ± std over folds at each number
    (sums for counts); names, flags and lists are the same in every fold and kept once."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, Mapping) for v in present):
        return {k: across_folds([v.get(k) for v in present], k) for k in dict.fromkeys(k for v in present for k in v)}
    if key in SETTINGS:
        return present[0]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return int(sum(present)) if key in COUNTS and all(isinstance(v, int) for v in present) else mean_std(present)
    if all(isinstance(v, list) for v in present):
        return list(dict.fromkeys(x for v in present for x in v))
    return present[0]


def stat_text(stat: Mapping[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
    """A :func:`mean_std` record as text: ``mean ± std`` (``mean`` alone for one value, ``–`` for none), scaled."""
    if not stat or stat.get("mean") is None:
        return "–"
    if stat.get("n", 0) > 1:
        return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"
    return f"{stat['mean'] * scale:.{digits}f}"
