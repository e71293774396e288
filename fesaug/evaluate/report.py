"""The human side of ``fesaug evaluate``: ``report.md`` and the per-class recall plot, rendered
from ``results.json`` alone (so a report can be re-rendered without re-running anything)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fesaug.balance.targets import describe_target
from fesaug.evaluate.conditions import REGISTRY, SYNTHETIC_ONLY_NOTE
from fesaug.evaluate.report_synthesis import synthesis_section
from fesaug.evaluate.stats import stat_text as _ms
from fesaug.utils.plots import new_figure, save_figure
from fesaug.utils.tables import markdown_table

EXPRESSION_JUDGE = "the fold's judge classifier"  # protocol value when --expression-judge is on


def condition_note(name: str) -> str:
    """A condition's one-line description in the report."""
    return REGISTRY[name].note if name in REGISTRY else SYNTHETIC_ONLY_NOTE if name == "synthetic-only" else ""


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def render_report(results: Mapping[str, Any], classes: Sequence[str]) -> str:
    """``report.md``: protocol, scores per condition, the gap closed toward the truth ceiling,
    paired comparisons, per fold (or per seed of a cross-dataset split), synthesis."""
    proto = results["protocol"]
    cross = is_cross_dataset(results)
    unit = "seed" if cross else "fold"
    sibling = proto["generator"].get("expression_loss_judge") == EXPRESSION_JUDGE
    prov = results["provenance"]
    lines = [
        "# fesaug evaluate",
        "",
        *_protocol_lines(proto, classes, cross),
        "",
        *_verdict_section(results.get("verdict")),
        *_scores_section(results, classes, cross),
        *_gap_section(results.get("gap_closed") or {}, unit),
        *_retune_section(results.get("retune_head") or {}),
        *_comparisons_section(results["comparisons"], cross),
        *_per_unit_section(results, cross),
        *synthesis_section(results.get("synthesis") or {}, classes, sibling_trained=sibling, cross=cross),
        "",
        "## How this was made",
        "",
        f"- Command: `{prov['command']}`",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in prov['versions'].items())}",
        f"- Created: {prov['created_at']} on {prov['platform']}",
        "",
    ]
    return "\n".join(lines)


def _protocol_lines(proto: Mapping[str, Any], classes: Sequence[str], cross: bool) -> list[str]:
    d = proto["downstream"]
    data = (
        _cross_dataset_data(proto)
        if cross
        else [
            f"- Data: `{proto['manifest']}` (sha256 `{proto['manifest_sha256'][:12]}`), {proto['n_images']} images, "
            f"{proto['n_subjects']} subjects, classes {', '.join(classes)}.",
            f"- Protocol: subject-independent folds; test folds {', '.join(map(str, proto['evaluated_folds']))} of "
            f"{', '.join(map(str, proto['folds']))}, each used for the final score only. Validation: "
            f"{proto['validation']}.",
        ]
    )
    g = proto["generator"]
    return [
        *data,
        f"- Downstream classifier: `{d['model']}` from scratch, {d['epochs']} epochs, batch {d['batch_size']}, lr "
        f"{d['lr']}, {d['image_size']}×{d['image_size']} px, augmentation {'on' if d['augment'] else 'off'}, "
        f"{_seeds_text(d)}, {d['selection']}; the same for every condition.",
        f"- Generator: FERSNet `{g['preset']}` preset, {g['epochs']} epochs "
        f"{'on the training subjects' if cross else 'per fold'}, {g['checkpoint']}, expression loss judged by "
        f"{g.get('expression_loss_judge', 'FERSNet’s own FER branch')}. Balance: {_balance_text(proto['balance'])}.",
        f"- Minority classes (below the median count{' of the training data; scored ones' if cross else ''}): "
        f"{', '.join(proto['minority_classes']) or 'none'}.",
    ]


def _scores_section(results: Mapping[str, Any], classes: Sequence[str], cross: bool) -> list[str]:
    proto, conditions = results["protocol"], results["conditions"]
    unit = "seed" if cross else "fold"
    scored = proto.get("scored_classes", classes)
    seeds = proto["downstream"].get("seeds_per_fold", 1) > 1  # a column only where some condition has several
    rows = [
        [
            f"`{name}`",
            str(len(s[f"{unit}s"])),
            *([_seed_counts(s)] if seeds else []),
            _ms(s["accuracy"]),
            _ms(s["macro_f1"]),
            _ms(s["minority_recall"]),
            condition_note(name),
        ]
        for name, s in conditions.items()
    ]
    header = ["condition", f"{unit}s", *(["seeds per fold"] if seeds else []), "accuracy", "macro-F1"]
    header += ["minority recall", "what it is"]
    title = (
        "## Test scores (%, mean ± std over downstream seeds)"
        if cross
        else "## Test-fold scores (%, mean ± std over folds)"
    )
    return [
        title,
        "",
        *markdown_table(header, rows),
        "",
        "Recall per class (%):",
        "",
        *markdown_table(
            ["condition", *scored],
            [[f"`{name}`", *(_ms(s["recall"][c], digits=0) for c in scored)] for name, s in conditions.items()],
        ),
    ]


def _gap_section(gap: Mapping[str, Any], unit: str) -> list[str]:
    """How much of the gap between ``oversample`` and the ``truth`` ceiling each synthetic condition closes."""
    if not gap:
        return []
    rows = [
        [
            f"`{name}`",
            _points(g["minus_oversample"]),
            _points(g["truth_minus_oversample"]),
            _share(g["overall"]),
            ", ".join(f"{k}: {_share(v)}" for k, v in g[f"per_{unit}"].items()),
        ]
        for name, g in gap.items()
    ]
    return [
        "",
        "## Gap closed toward the truth ceiling (macro-F1)",
        "",
        "gap closed = (condition − oversample) / (truth − oversample): 0 % is no better than random oversampling, "
        f"100 % as good as the exact counterfactuals of the same sources. Overall from the means over {unit}s; "
        f"per {unit} only where truth and oversample differ by half a point or more.",
        "",
        *markdown_table(
            ["condition", "− oversample", "truth − oversample", "gap closed", f"per {unit}"], rows, align="lrrrl"
        ),
    ]


def _retune_section(retune: Mapping[str, Any]) -> list[str]:
    """What ``--retune-head`` changed: each condition's test macro-F1 with the trained and the kept last layer."""
    if not retune:
        return []
    rows = [
        [
            f"`{name}`",
            f"{r['trained_macro_f1']['mean'] * 100:.1f}",
            f"{r['kept_macro_f1']['mean'] * 100:.1f}",
            _points(r["kept_macro_f1"]["mean"] - r["trained_macro_f1"]["mean"]),
            f"{r['applied_share']:.0%}",
        ]
        for name, r in retune.items()
    ]
    return [
        "",
        "## The re-tuned last layer (macro-F1)",
        "",
        "Each network scored with the last layer it was trained with and with the one the run kept (re-fitted on "
        "the real training faces where validation preferred it; the scores above are the kept ones).",
        "",
        *markdown_table(["condition", "trained layer", "kept layer", "change", "re-tune applied"], rows, align="lrrrr"),
    ]


def _points(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:+.1f}"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _comparisons_section(comparisons: Mapping[str, Any], cross: bool) -> list[str]:
    if not comparisons:
        return []
    unit = "seed" if cross else "fold"
    if cross:
        intro = [
            "## Paired comparison over downstream seeds (percentage points)",
            "",
            "Differences are per seed: both conditions trained with that seed, tested on the same images. With one "
            "train/test split no test across folds exists: the seeds share their training and test images, so the "
            "p-values (two-sided, over seeds) say only whether a difference exceeds training noise on these two "
            "datasets, not that it would hold for other subjects.",
        ]
    else:
        intro = [
            "## Paired comparison over folds (percentage points)",
            "",
            "Differences are per fold (same test subjects); p-values are two-sided.",
        ]
    rows = []
    for comp, by_metric in comparisons.items():
        for metric in ("macro_f1", "accuracy", "minority_recall"):
            c = by_metric.get(metric)
            if c is None:  # no minority class
                continue
            mean = "–" if c["mean_difference"] is None else f"{c['mean_difference'] * 100:+.1f}"
            won = f"{c['wins']}/{c['losses']}"
            rows.append(
                [comp.replace("_", " "), metric.replace("_", " "), mean, won, _p(c["wilcoxon_p"]), _p(c["ttest_p"])]
            )
    header = ["comparison", "metric", "mean difference", f"{unit}s won/lost", "Wilcoxon p", "paired t p"]
    return ["", *intro, "", *markdown_table(header, rows)]


def _per_unit_section(results: Mapping[str, Any], cross: bool) -> list[str]:
    unit = "seed" if cross else "fold"
    per_unit = results.get(f"per_{unit}")
    if not per_unit:
        return []
    names, first_seed = list(results["conditions"]), results["protocol"]["downstream"]["seed"]
    rows = [
        [
            str(first_seed + int(k)) if cross else k,
            *(f"{r[n]['macro_f1'] * 100:.1f}" if n in r else "–" for n in names),
        ]
        for k, r in per_unit.items()
    ]
    return ["", f"## Per {unit}: macro-F1 (%)", "", *markdown_table([unit, *names], rows)]


def is_cross_dataset(results: Mapping[str, Any]) -> bool:
    """Whether ``results`` (``results.json``) come from one train/test split of two datasets."""
    return results["protocol"].get("mode") == "cross-dataset"


def _cross_dataset_data(proto: Mapping[str, Any]) -> list[str]:
    """The data and protocol lines of a cross-dataset evaluation."""
    x = proto["cross_dataset"]
    train, test = x["train"], x["test"]
    if test["kind"] == "folder":
        pattern = f"subject ids by `{test['subject_pattern']}`" if test.get("subject_pattern") else "no subject ids"
        given = (
            f"folder `{test['path']}` (class folders, ingested as `{test['manifest']}`, {pattern}; rows sha256 "
            f"`{test['folder_rows_sha256'][:12]}`)"
        )
    else:
        given = f"`{test['path']}` (sha256 `{test['manifest_sha256'][:12]}`)"
    unnamed = test["n_without_subject_id"]
    excluded = ", ".join(f"{c} ({n} images)" for c, n in x["excluded_from_test"].items())
    return [
        f"- Training data: `{proto['manifest']}` (sha256 `{proto['manifest_sha256'][:12]}`), all of it: "
        f"{train['n_images']} "
        f"images, {train['n_subjects']} subjects, classes {', '.join(proto['classes'])}; "
        f"{train['n_train_subjects']} training "
        f"subjects ({train['n_train_images']} images) and {train['n_validation_subjects']} validation subjects "
        f"({train['n_validation_images']} images). Its folds and splits are not used.",
        f"- Test data: {given}, all of it: {test['n_images']} images of {test['n_subjects']} subjects"
        + (f" ({unnamed} images without a subject id, each counted as one)" if unnamed else "")
        + ", used for the final score only.",
        f"- Protocol: cross-dataset, one train/test split. Validation: {proto['validation']}. Classes scored: "
        f"{', '.join(x['scored_classes'])}; trained but not tested (no test images): "
        f"{', '.join(x['not_tested']) or 'none'}; "
        f"left out of the test (classes the training data lacks): {excluded or 'none'}. No subject id and no image "
        "file is "
        "in both datasets (checked)"
        + (f"; the {unnamed} test images without a subject id could be checked by file only" if unnamed else "")
        + ".",
        f"- Image sizes: {proto['image_size']}.",
    ]


def verdict_text(v: Mapping[str, Any]) -> str:
    """The verdict of :func:`fesaug.evaluate.run.verdict` as one sentence."""

    def part(base: str, a: Mapping[str, Any]) -> str:
        outcome = {
            "better": f"beats `{base}`",
            "worse": f"loses to `{base}`",
            "higher": f"scores above `{base}`",
            "lower": f"scores below `{base}`",
            "equal": f"scores the same as `{base}`",
        }.get(a["outcome"], f"shows no clear difference from `{base}`")
        if "n_seeds" in a:  # one split: the p-value over seeds is no test of the verdict (evaluation_stats.verdict)
            return f"{outcome} ({a['mean_difference'] * 100:+.1f} points, won {a['wins']} of {a['n_seeds']} seeds)"
        return (
            f"{outcome} ({a['mean_difference'] * 100:+.1f} points, won {a['wins']} of {a['n_folds']} folds, "
            f"p {_p(a['wilcoxon_p'])})"
        )

    parts = " and ".join(part(base, a) for base, a in v["against"].items())
    return f"`fes` {parts} on test macro-F1 ({v['test']}): {v['recommendation']}."


def _verdict_section(v: Mapping[str, Any] | None) -> list[str]:
    if not v:
        return []
    return [
        "## Verdict",
        "",
        verdict_text(v),
        "",
        *(f"- Caution: {c}." for c in v["cautions"]),
        *([""] if v["cautions"] else []),
    ]


def _seeds_text(d: Mapping[str, Any]) -> str:
    if "seeds" in d:  # a cross-dataset split: the seeds are what the comparison pairs
        n = d["seeds"]
        return (
            f"seed {d['seed']}"
            if n == 1
            else f"{n} seeds ({d['seed']} … {d['seed'] + n - 1}; the oversampling draw too)"
        )
    n = d.get("seeds_per_fold", 1)
    if n == 1:
        return f"seed {d['seed']}"
    return (
        f"up to {n} seeds per condition and fold ({d['seed']} … {d['seed'] + n - 1}; the oversampling draw too), "
        "test scores averaged over a fold's seeds before the comparison over folds"
    )


def _seed_counts(summary: Mapping[str, Any]) -> str:
    return "/".join(map(str, summary.get("seeds_per_fold", [1])))


def _balance_text(b: Mapping[str, Any]) -> str:
    text = describe_target(b["target_per_class"])
    judge = (
        f" and at least {b.get('min_judge_confidence', 0.5)} from an independent real-data classifier (seed + 1)"
        if b.get("judge")
        else ""
    )
    order = ", sources closest to the target expression first" if b.get("source_order") == "similar" else ""
    return (
        f"{text} (sampling strategy {b['sampling_strategy'] or 'default'}), quality gate min confidence "
        f"{b['min_confidence']} on the FER branch{judge}, {b['max_attempts']} attempts{order}, seed {b['seed']}"
    )


def plot_recall(results: Mapping[str, Any], classes: Sequence[str], path: str | os.PathLike) -> Path:
    """Grouped bars: test recall per class (``classes``: the scored ones) for each condition,
    with the std over folds (or seeds of one split)."""
    conditions = {n: s for n, s in results["conditions"].items() if n != "synthetic-only"}
    fig = new_figure(max(6.0, 1.1 * len(classes) + 2), 3.6)
    ax = fig.add_subplot()
    width = 0.8 / max(len(conditions), 1)
    x = np.arange(len(classes))
    for i, (name, s) in enumerate(conditions.items()):
        means = [s["recall"][c]["mean"] or 0.0 for c in classes]
        stds = [s["recall"][c]["std"] or 0.0 for c in classes]
        ax.bar(x + (i - (len(conditions) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=name)
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylabel("test recall")
    ax.set_ylim(0, 1.05)
    if is_cross_dataset(results):
        n = max((len(s["seeds"]) for s in conditions.values()), default=0)
        ax.set_title(f"Per-class recall on the test dataset (mean ± std over {n} downstream seed(s))", fontsize=10)
    else:
        n = max((len(s["folds"]) for s in conditions.values()), default=0)
        ax.set_title(f"Per-class recall on the test folds (mean ± std over {n} fold(s))", fontsize=10)
    ax.legend(fontsize=8, ncol=len(conditions), loc="lower right")
    return save_figure(fig, path)
