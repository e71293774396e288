"""The dataset card (``README.md``) written beside a balanced manifest, and the summaries read back from it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fesaug.audit.report import Group
from fesaug.balance.config import BalanceConfig, BalanceResult
from fesaug.balance.gates import GATE_NAMES
from fesaug.balance.plan import Plan
from fesaug.data.manifest import read_manifest
from fesaug.utils.tables import markdown_table


def dataset_card(r: BalanceResult, plan: Plan, meta: Mapping[str, Any], held_out: Sequence[Group] = ()) -> str:
    """The ``README.md`` written next to a balanced manifest; ``held_out``: the rows it left
    unchanged, counted per group (:attr:`fesaug.audit.report.AuditReport.held_out`)."""
    gen = plan.generator
    lines = [
        "# Balanced facial-expression dataset (fesaug balance)",
        "",
        f"Made from `{plan.manifest.path}` with the FERSNet checkpoint `{gen.checkpoint}` "
        f"(sha256 `{gen.checkpoint_sha256[:16]}…`, epoch {gen.epoch}).",
        f"Command: `{meta['provenance']['command']}`",
        "",
        *_counts(r, plan, held_out),
        "",
        "## How the synthetic images were made",
        "",
        *_how(r, plan),
        f"- Synthetic images are {plan.output_size}×{plan.output_size} "
        f"{'colour (RGB)' if plan.manifest.channels == 3 else 'gray'} PNGs under `images/<class>/`, as the real ones "
        f"read (the manifest's `channels`: {plan.manifest.channels}).",
        "- Each synthetic row keeps its parent's `subject_id`, `split` and `fold`, and names its `parent_id`.",
        *_reviewed(r),
        "",
        "## Using it safely",
        "",
        *_use(r, plan),
        "",
        "The synthetic images derive from the source dataset's faces and fall under its licence.",
        "",
    ]
    return "\n".join(lines)


def _counts(r: BalanceResult, plan: Plan, held_out: Sequence[Group]) -> list[str]:
    columns = ("real", "target", "synthesized", "acceptance", "shortfall", "after") + (
        ("weighted",) if r.weighted else ()
    )
    header = ["class", *columns, *(f"held out: {g.value}" for g in held_out)]
    rows = [[*row, *(g.classes[row[0]].total for g in held_out)] for row in r.class_rows(columns, blank="—")]
    cfg = plan.config
    return [
        *markdown_table(header, rows, align="l" + "r" * (len(header) - 1)),
        "",
        "Counts are over the *working set*: real rows of split(s) "
        + ", ".join(f"`{s}`" for s in cfg.splits)
        + (f" outside fold(s) {', '.join(map(str, plan.holdout_folds))}" if plan.holdout_folds else "")
        + ". All other real rows are in the manifest unchanged"
        + (" and counted apart (*held out*, by split, or by fold of a balanced split)" if held_out else "")
        + ".",
    ]


def _how(r: BalanceResult, plan: Plan) -> list[str]:
    cfg = plan.config
    sources = (
        f"- Sources: real images of the other classes, round-robin over subjects, subjects lacking the target class "
        f"first; seed {cfg.seed}. "
        + (
            "Subjects, and each subject's images, whose expression the checkpoint's FER branch finds closest to the "
            "target are tried first (`--source-order similar`). "
            if cfg.source_order == "similar"
            else ""
        )
        + "Reused sources are mirrored or jittered (`source_transform` column)."
        + (
            f" Each edit is scaled by an intensity drawn uniformly from {cfg.intensity[0]:g}..{cfg.intensity[1]:g} "
            "(`intensity` column; 1 = the generator's learnt translation, above 1 exaggerated)."
            if cfg.intensity
            else ""
        )
    )
    gate = (
        "- Quality gate: kept when the checkpoint's FER branch gives the target class at least "
        f"{cfg.min_confidence:g}, at most {cfg.max_attempts} attempt(s) per image. This judge is optimistic (the "
        "generator was trained against it); judge the images with an independent classifier (`fesaug evaluate`) "
        "before trusting them."
    )
    header, rows = gate_table(r)
    rates = ["", "Share of candidates each gate passed, per class:", ""]
    rates += markdown_table(header, rows, align="l" + "r" * (len(header) - 1))
    return [sources, gate, *_gate_bullets(cfg, plan), *(rates if r.gate_passed else [])]


def _gate_bullets(cfg: BalanceConfig, plan: Plan) -> list[str]:
    bullets = []
    if cfg.au_checkpoint:
        bullets.append(
            f"- AU check: also kept only when the emotion + AU model `{cfg.au_checkpoint}` gives the target's "
            f"prototype AUs a mean probability of at least {cfg.min_au_consistency:g} (`au_consistency` column)."
        )
    if cfg.judge_checkpoint:
        bullets.append(
            f"- Independent judge: also kept only when the classifier `{cfg.judge_checkpoint}`, trained on real faces "
            f"apart from the generator, gives the target at least {cfg.min_judge_confidence:g} "
            "(`judge_confidence` column)."
        )
    if cfg.calibrate_intensity or cfg.class_intensity:
        chosen = "calibrated on the judge" if cfg.calibrate_intensity else "given"
        gains = ", ".join(f"{plan.manifest.classes[k]} {g:g}" for k, g in sorted(plan.gains.items()))
        bullets.append(f"- Edit gains per target class ({chosen}; `intensity` column): {gains}.")
    if cfg.min_judge_margin is not None:
        bullets.append(
            f"- Judge margin: also kept only when the judge's probability of the target exceeds that of the source's "
            f"class by at least {cfg.min_judge_margin:g} (`judge_margin` column): the weakest edits are dropped."
        )
    if cfg.soft:
        how = (
            "the edit's intensity (capped at 1)"
            if cfg.soft_label_source == "intensity"
            else "the judge's probability of the target over it plus that of the source's class"
        )
        bullets.append(
            f"- Soft labels: each synthetic image puts a share of its label on its target (`target_mass` column: "
            f"{how}, to the power {cfg.soft_gamma:g}) and the rest on its source's class (`source_label`); read them "
            "with `ManifestDataset(..., soft_labels=True)`."
        )
    if cfg.max_identity_distance is not None:
        bullets.append(
            f"- Identity: also kept only when dlib's face-recognition embedding of the image lies at most "
            f"{cfg.max_identity_distance:g} from its source face's (0.6 is dlib's same-person threshold; "
            "`identity_distance` column); a face it cannot align is rejected."
        )
    if cfg.external_judge:
        bullets.append(
            f"- External judge: also kept only when the {cfg.external_judge.upper()} expression classifier, trained "
            f"on another dataset, gives the target at least {cfg.min_external_confidence:g} "
            "(`external_confidence` column); classes it does not know pass untouched."
        )
    return bullets


def _reviewed(r: BalanceResult) -> list[str]:
    """A line on the faces a person rejected (``fesaug review``, ``fesaug balance --reject``), if any."""
    rejected = {c: n for c, n in r.rejected_by_person.items() if n}
    if not rejected:
        return []
    return [
        f"- Reviewed by a person: {sum(rejected.values())} synthetic face(s) rejected on the review page "
        f"({', '.join(f'{c} {n}' for c, n in rejected.items())}) and replaced by new candidates from other sources "
        "through the same gates; a replacement names the row it replaces (`replaces` column), and the footer's "
        "`balance.rejections` lists every round."
    ]


def _use(r: BalanceResult, plan: Plan) -> list[str]:
    gen, cfg = plan.generator, plan.config
    lines = [
        f"The generator was trained on fold(s) {', '.join(map(str, gen.training_folds)) or '(none recorded)'}"
        + (f" and never saw fold {gen.holdout_fold}" if gen.holdout_fold is not None else "")
        + ". Test only on folds the generator never saw, and never train on synthetic images whose parents are test "
        "subjects. `fesaug audit manifest.parquet` checks both.",
        "",
        "```python",
        "from fesaug.data import ManifestDataset",
        f'train = ManifestDataset("manifest.parquet", image_size={plan.output_size})',
    ]
    if not r.weighted:
        return [*lines, "```"]
    return [
        *lines,
        "from torch.utils.data import DataLoader, WeightedRandomSampler",
        "sampler = WeightedRandomSampler(train.weights, num_samples=len(train))  # draws classes as balanced",
        "loader = DataLoader(train, batch_size=64, sampler=sampler)",
        "```",
        "",
        f"Synthesis filled {cfg.synthetic_share:.0%} of each class's shortfall and each synthetic row counts "
        f"{cfg.synthetic_weight:g}; the `weight` column makes up the rest on the class's real rows (the *weighted* "
        "column above), as repeating them would. Sample rows in proportion to `weight` (above) or weight the loss "
        "by it: read without weights, the classes are not balanced.",
    ]


def gate_table(r: BalanceResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per class, the share of candidates each gate passed (for the dataset
    card and the CLI summary)."""
    rates = r.gate_pass_rates
    header = ["class", *(GATE_NAMES.get(g, g) for g in rates)]
    rows = [
        [c, *("–" if rates[g][c] is None else f"{rates[g][c]:.0%}" for g in rates)]
        for c in r.counts_before
        if r.attempts.get(c)
    ]
    return header, rows


def summary_from(out: Path) -> BalanceResult:
    """The result of the finished run in ``out``, read back from its manifest's footer."""
    meta = read_manifest(out / "manifest.parquet").meta["balance"]
    return BalanceResult(
        out,
        out / "manifest.parquet",
        meta["counts_before"],
        meta["targets"],
        meta["to_generate"],
        meta["generated"],
        meta["removed"],
        meta["attempts"],
        meta["shortfall"],
        0.0,
        gate_passed=meta["gate_passed"],
        weighted=meta.get("weighted"),
        rejected_by_person=meta.get("rejected_by_person", {}),
        mean_target_mass=meta.get("mean_target_mass"),
    )
