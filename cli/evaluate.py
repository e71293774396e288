"""`fesaug evaluate` and `fesaug evaluate-synthesis`: the subject-independent benchmark of balancing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fesaug.cli.params import DEVICE, add_options, aligned_table, balance_options, show_progress_log
from fesaug.synthesis.config import PRESETS

if TYPE_CHECKING:
    from fesaug.balance import BalanceConfig
    from fesaug.evaluate import EvaluateConfig


def _folds(ctx: click.Context, param: click.Parameter, value: str) -> list[int] | None:
    if value.strip().lower() == "all":
        return None
    try:
        folds = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        folds = []
    if not folds or min(folds) < 0:
        raise click.BadParameter(f"{value!r} is neither 'all' nor a list of fold numbers such as 0,1,2")
    return folds


def _conditions(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    return tuple(v.strip().lower() for v in value.split(",") if v.strip())


# The options `fesaug evaluate` and `fesaug evaluate-synthesis` share, in groups, in the order of --help.
DATA_OPTIONS = [
    click.option(
        "--manifest",
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="Manifest of real images with subject-independent folds (fesaug ingest --folds K).",
    ),
    click.option(
        "--out",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Folder for the evaluation: fold-K/ caches, results.json, report.md, recall.png.",
    ),
    click.option(
        "--folds",
        default="all",
        show_default=True,
        callback=_folds,
        metavar="all|K,K,...",
        help="Test folds to run; the report covers every fold finished in --out.",
    ),
]
DOWNSTREAM_OPTIONS = [
    click.option(
        "--model",
        type=click.Choice(["small-cnn", "resnet18"]),
        default="small-cnn",
        show_default=True,
        help="Downstream classifier, trained from scratch for every condition.",
    ),
    click.option(
        "--epochs",
        type=click.IntRange(min=1),
        default=80,
        show_default=True,
        help="Downstream training epochs (the best validation epoch is kept).",
    ),
    click.option(
        "--label-smoothing",
        type=click.FloatRange(0, 1, max_open=True),
        default=0.1,
        show_default=True,
        help="Label smoothing of the downstream classifier's loss (0 finishes an evaluation made before "
        "it was the default).",
    ),
    click.option(
        "--image-size",
        type=click.IntRange(min=16),
        default=64,
        show_default=True,
        help="Side of the images the downstream classifier sees.",
    ),
    click.option(
        "--precision",
        type=click.Choice(["float32", "bfloat16"]),
        default="float32",
        show_default=True,
        help="Arithmetic of the downstream classifier: bfloat16 is about twice as fast on CPUs with bfloat16 "
        "units (recent Xeons) and slower on others; its scores differ slightly from float32's.",
    ),
    click.option(
        "--retune-head",
        is_flag=True,
        help="After each downstream training, fit a new last layer on the fold's real training faces "
        "(class-balanced; decoupled training, Kang et al. 2020), kept where validation prefers it.",
    ),
]
GENERATOR_OPTIONS = [
    click.option(
        "--preset",
        type=click.Choice(list(PRESETS)),
        default="cpu",
        show_default=True,
        help="FERSNet preset for the generator of each fold.",
    ),
    click.option(
        "--generator-epochs",
        type=click.IntRange(min=1),
        default=30,
        show_default=True,
        help="FERSNet training epochs per fold.",
    ),
    click.option(
        "--generator-config",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        metavar="YAML",
        help="FERSNet training config (fesaug train --config format: loss weights, model, ...) applied "
        "over --preset; --generator-epochs and --generator-batch-size still win.",
    ),
    click.option(
        "--generator-batch-size",
        type=click.IntRange(min=1),
        metavar="N",
        help="FERSNet batch size (default: the preset's; lower it for folds of few images).",
    ),
]
# fesaug balance's options that each fold's balance step takes (BalanceConfig fields of the same
# names), then the judges' gates among them.
BALANCE_STEP = (
    "target_per_class",
    "min_confidence",
    "max_attempts",
    "intensity",
    "source_order",
    "synthetic_share",
    "synthetic_weight",
    "synthetic_labels",
    "soft_label_source",
    "soft_gamma",
)
BALANCE_STEP_GATES = ("min_judge_confidence", "min_judge_margin", "calibrate_intensity")
JUDGE_OPTIONS = [
    click.option(
        "--judge",
        is_flag=True,
        help="Also gate synthetic images with a classifier trained on the fold's real training images "
        "(not the one that scores them).",
    ),
    click.option(
        "--expression-judge",
        is_flag=True,
        help="Train FERSNet's expression loss against that judge (the fold's second real-data "
        "classifier) instead of its own FER branch.",
    ),
    balance_options(*BALANCE_STEP_GATES),
    click.option(
        "--judges",
        default="auto",
        show_default=True,
        metavar="auto|none|LIST",
        help="Models trained elsewhere that also score the synthetic images: identity (dlib), fer2013 "
        "(expression), perceptual (ST-LPIPS); auto = every one installed (identity and perceptual "
        "need pip install 'fesaug[judges]').",
    ),
    click.option(
        "--au-check",
        "au_checkpoint",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        metavar="CHECKPOINT",
        help="Emotion + AU model (fesaug train --tasks emotion,au): report the AU "
        "consistency of the synthetic images per target class.",
    ),
]
RUN_OPTIONS = [
    click.option(
        "--val-fraction",
        type=click.FloatRange(0, 0.5, min_open=True),
        default=0.15,
        show_default=True,
        help="Share of training subjects kept for validation (model selection).",
    ),
    click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
    DEVICE,
    click.option("--overwrite", is_flag=True, help="Discard an evaluation with other settings in --out."),
]
_common = add_options(
    *DATA_OPTIONS,
    *DOWNSTREAM_OPTIONS,
    *GENERATOR_OPTIONS,
    balance_options(*BALANCE_STEP),
    *JUDGE_OPTIONS,
    *RUN_OPTIONS,
)


@click.command("evaluate")
@_common
@click.option(
    "--conditions",
    default="real,oversample,fes",
    show_default=True,
    callback=_conditions,
    metavar="LIST",
    help="Conditions to compare: real, oversample, fes, mixed (each class's shortfall half synthetic, half "
    "real repeats), truth and truth-half (demo set only: the exact counterfactuals of the same sources, at their "
    "own and at half intensity: what a perfect generator earns), fersnet (FERSNet's FER branch), "
    "fersnet+fes (that branch fine-tuned on real + synthetic, the paper's recipe), fersnet+oversample (the same "
    "fine-tuning on real images oversampled to the same counts: the control for fersnet+fes).",
)
@click.option(
    "--truth-intensity",
    type=click.FloatRange(0, 2, min_open=True),
    default=1.0,
    show_default=True,
    metavar="S",
    help="The truth condition's exact faces show their expression at S times their source's own intensity "
    "(truth-half at S/2).",
)
@click.option(
    "--downstream-seeds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="N",
    help="Train each downstream condition N times per fold (seeds --seed ... --seed + N - 1) and average "
    "their test scores per fold: one training's seed moves a fold's score by points.",
)
@click.option("--no-synthesis", is_flag=True, help="Skip the synthesis-quality scores.")
@click.option(
    "--test-manifest",
    type=click.Path(path_type=Path),
    metavar="MANIFEST|FOLDER",
    help="Cross-dataset: train on all of --manifest (no folds needed) and test on this other dataset, a "
    "manifest of real images or a folder of class folders (ingested into --out); one split, cached "
    "in --out/cross/.",
)
@click.option(
    "--test-subject-pattern",
    metavar="REGEX",
    help="Subject ids of a --test-manifest folder from its file names (as fesaug ingest --subject-pattern); "
    "without it each image is its own subject.",
)
@click.option(
    "--generators-from",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Copy each fold's trained FERSNet from another evaluation of the same manifest and generator "
    "settings instead of training it again: compare downstream or balance settings on the same "
    "generators.",
)
def evaluate_command(
    conditions: tuple[str, ...],
    truth_intensity: float,
    downstream_seeds: int,
    no_synthesis: bool,
    test_manifest: Path | None,
    test_subject_pattern: str | None,
    generators_from: Path | None,
    **options,
) -> None:
    """Does FES balancing help a downstream classifier? Subject-independent k-fold, on real data.

    For each test fold: a classifier on the real training images (real), on randomly oversampled
    ones (oversample) and on real + FERSNet-synthesized ones (fes); validation subjects choose
    every model, the test fold only scores it. Interrupted runs resume when run again. With
    --test-manifest: one split instead, all of --manifest trains and the other dataset tests.

    \b
    Examples:
      fesaug evaluate --manifest ck.parquet --out eval-ck
      fesaug evaluate --manifest ck.parquet --out eval-ck --folds 0,1 --model resnet18 --device cuda
      fesaug evaluate --manifest ck.parquet --test-manifest jaffe.parquet --out ck-to-jaffe --downstream-seeds 3
      fesaug evaluate --manifest ck.parquet --out eval-ck-e80 --epochs 80 --generators-from eval-ck
    """
    _run(
        conditions,
        not no_synthesis,
        truth_intensity=truth_intensity,
        downstream_seeds=downstream_seeds,
        test_manifest=test_manifest,
        test_subject_pattern=test_subject_pattern,
        generators_from=generators_from,
        **options,
    )


@click.command("evaluate-synthesis")
@_common
def evaluate_synthesis_command(**options) -> None:
    """Score the synthetic images per fold: recognised by a real-data classifier, classification
    accuracy score, Fréchet distance and precision/recall in that classifier's features,
    memorisation, exact scores on the demo dataset, AU consistency with --au-check.

    Shares its fold caches with `fesaug evaluate` on the same --out.
    """
    _run(("real",), True, **options)


def _run(
    conditions: tuple[str, ...],
    synthesis: bool,
    *,
    manifest: Path,
    out: Path,
    folds: list[int] | None,
    overwrite: bool,
    test_manifest: Path | None = None,
    test_subject_pattern: str | None = None,
    generators_from: Path | None = None,
    **settings: Any,
) -> None:
    from fesaug.balance import BalanceConfig
    from fesaug.evaluate import evaluate

    balance = {name: settings.pop(name) for name in (*BALANCE_STEP, *BALANCE_STEP_GATES)}
    balance["target_per_class"] = balance["target_per_class"] or "max"
    balance_config = BalanceConfig(**balance, seed=settings["seed"])
    config = _evaluate_config(conditions, synthesis, balance_config, **settings)
    show_progress_log("fesaug.evaluate")
    show_progress_log("fesaug.synthesis.training")  # FERSNet's epochs: minutes per fold on a CPU
    result = evaluate(
        manifest,
        out,
        config,
        folds=folds,
        overwrite=overwrite,
        test_manifest=test_manifest,
        test_subject_pattern=test_subject_pattern,
        generators_from=generators_from,
    )
    click.echo(format_summary(result.results))
    click.echo(f"wrote {out / 'results.json'}, {result.report}, {out / 'recall.png'}")


def _evaluate_config(
    conditions: tuple[str, ...],
    synthesis: bool,
    balance: BalanceConfig,
    *,
    model: str,
    epochs: int,
    label_smoothing: float,
    image_size: int,
    precision: str,
    retune_head: bool,
    preset: str,
    generator_config: Path | None,
    generator_epochs: int,
    generator_batch_size: int | None,
    judge: bool,
    expression_judge: bool,
    judges: str,
    au_checkpoint: Path | None,
    val_fraction: float,
    seed: int,
    device: str,
    downstream_seeds: int = 1,
    truth_intensity: float = 1.0,
) -> EvaluateConfig:
    """The evaluation the options describe, with ``balance`` as each fold's balance step."""
    from fesaug.evaluate import EvaluateConfig
    from fesaug.evaluate.downstream import DownstreamConfig
    from fesaug.judges import resolve_judges
    from fesaug.synthesis.config import resolve_config

    generator = resolve_config(
        preset=preset,
        config_file=generator_config,
        overrides={"epochs": generator_epochs, "device": device}
        | ({"batch_size": generator_batch_size} if generator_batch_size else {}),
    )
    return EvaluateConfig(
        conditions=conditions,
        synthesis=synthesis,
        downstream=DownstreamConfig(
            model=model,
            epochs=epochs,
            label_smoothing=label_smoothing,
            image_size=image_size,
            seed=seed,
            device=device,
            precision=precision,
        ),
        generator=generator,
        balance=balance,
        val_fraction=val_fraction,
        seed=seed,
        au_checkpoint=None if au_checkpoint is None else str(au_checkpoint),
        judge=judge,
        expression_judge=expression_judge,
        downstream_seeds=downstream_seeds,
        judges=resolve_judges(judges),
        truth_intensity=truth_intensity,
        retune_head=retune_head,
    )


def format_summary(results: dict) -> str:
    def ms(stat: dict) -> str:
        if stat["mean"] is None:
            return "-"
        return f"{stat['mean']:.3f} ± {stat['std']:.3f}" if stat["n"] > 1 else f"{stat['mean']:.3f}"

    from fesaug.evaluate.report import is_cross_dataset

    unit = "seed" if is_cross_dataset(results) else "fold"
    seeds = results["protocol"]["downstream"].get("seeds_per_fold", 1) > 1
    rows = [
        [
            name,
            len(s[f"{unit}s"]),
            *(["/".join(map(str, s["seeds_per_fold"]))] if seeds else []),
            ms(s["accuracy"]),
            ms(s["macro_f1"]),
            ms(s["minority_recall"]),
        ]
        for name, s in results["conditions"].items()
    ]
    lines = aligned_table(
        ["condition", f"{unit}s", *(["seeds"] if seeds else []), "accuracy", "macro-F1", "minority recall"], rows
    )
    for name, comp in results["comparisons"].items():
        c = comp["macro_f1"]
        p = "" if c["wilcoxon_p"] is None else f", Wilcoxon p = {c['wilcoxon_p']:.3f}"
        lines.append(
            f"{name.replace('_', ' ')}: macro-F1 {c['mean_difference']:+.3f} "
            f"(won {c['wins']}, lost {c['losses']} of {c[f'n_{unit}s']} {unit}s{p})"
        )
    for name, g in (results.get("gap_closed") or {}).items():
        share = "-" if g["overall"] is None else f"{g['overall']:.0%}"
        per = ", ".join("-" if v is None else f"{v:.0%}" for v in g[f"per_{unit}"].values())
        lines.append(
            f"{name} closes {share} of the gap between oversample and truth (macro-F1 {g['minus_oversample']:+.3f} "
            f"of {g['truth_minus_oversample']:+.3f}; per {unit}: {per})"
        )
    if results.get("verdict"):
        from fesaug.evaluate.report import verdict_text

        lines.append(f"verdict: {verdict_text(results['verdict'])}")
        lines += [f"caution: {c}" for c in results["verdict"]["cautions"]]
    syn = results.get("synthesis") or {}
    if syn:
        lines.append(
            f"synthetic images recognised as their target by the real classifier: {ms(syn['recognised'])} "
            f"(its real test faces of those classes: {ms(syn['real_test_recognised'])})"
        )
        if syn.get("judges"):
            from fesaug.evaluate.report_synthesis import judges_summary

            lines += judges_summary(syn["judges"])
    return "\n".join(lines)
