"""The job `make demo` runs: everything fesaug does, end to end, on the embedded demo dataset.

Generate the demo dataset, train a small FERSNet on it (holding out fold 0), balance the other
folds to the largest class, audit the result, and leave one folder a user can look through::

    demo-output/
      data/              the demo dataset (images + manifest.parquet)
      run/               the training run (checkpoints, metrics.jsonl, sample grids)
      balanced/          the balanced dataset (manifest.parquet, images/, README.md, histogram.png)
      histogram_before.png, histogram_after.png, synthesis.png (source, synthetic and what changed, per class)
      audit.json         the audit of the balanced manifest
      summary.txt        the one-screen summary the command prints
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fesaug.audit.report import AuditReport, audit, plot_report
from fesaug.data.demo import make_demo_dataset
from fesaug.data.manifest import Manifest, read_manifest
from fesaug.utils.errors import FesaugError
from fesaug.utils.files import atomic_write_text
from fesaug.utils.locking import output_lock
from fesaug.utils.plots import change_map, image_axis, new_figure, save_figure, show_image

DEMO_OUTPUTS = (
    "data",
    "run",
    "balanced",
    "histogram_before.png",
    "histogram_after.png",
    "synthesis.png",
    "audit.json",
    "summary.txt",
)
DEMO_EPOCHS = 20  # about 6 minutes on two CPU cores, installation included (docs/guide/demo.md)
# What the demo's short run changes from `fesaug train`'s defaults. Twice the paired loss pulls
# a short run's edits closer to the subjects' own other expressions, and the wider inference dead
# zone leaves the pixels it barely moves as they were; together they beat the defaults on the demo's
# exact truth on both held-out folds tried (bench/results/synthesis_make_demo_recipe.md). The
# defaults stay until a CK+48 comparison says the same of them.
DEMO_RECIPE = {"loss": {"paired": 20.0}, "model": {"flow_threshold": 0.2, "mask_threshold": 0.05}}


@dataclass
class DemoResult:
    out_dir: Path
    manifest: Path
    before: AuditReport
    after: AuditReport
    balanced: Path
    checkpoint: Path
    summary: str
    seconds: dict[str, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def run_demo(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    epochs: int = DEMO_EPOCHS,
    min_confidence: float = 0.5,
    overwrite: bool = False,
    color: bool = False,
) -> DemoResult:
    """Demo data → train → balance → audit → pictures, in ``out_dir``; ``color``: on the demo
    faces in colour (``fesaug demo-data --color``), which the model then takes in colour."""
    from fesaug.balance import BalanceConfig, balance
    from fesaug.synthesis.training import TrainConfig, train

    out = Path(out_dir)
    with output_lock(out):
        if out.exists() and any(out.iterdir()):
            if not overwrite:
                raise FesaugError(
                    f"{out} already exists and is not empty; pass --overwrite to replace it or choose another --out"
                )
            # Only ever delete a folder this command made (a demo stopped early has no manifest yet);
            # anything else might be the user's.
            if not (out / "data" / "manifest.parquet").exists() and not _only_demo_outputs(out):
                raise FesaugError(
                    f"{out} does not look like a fesaug demo folder; refusing to replace it — choose another --out"
                )
            shutil.rmtree(out)
        seconds: dict[str, float] = {}
        clock = time.perf_counter()

        manifest = read_manifest(make_demo_dataset(out / "data", seed=seed, color=color))
        before = audit(manifest)
        before.target = max(c.total for c in before.classes.values())
        seconds["data"] = time.perf_counter() - clock

        clock = time.perf_counter()
        config = TrainConfig().updated(
            DEMO_RECIPE | {"epochs": epochs, "holdout_fold": 0, "seed": seed}, where="fesaug demo"
        )
        run = train(manifest.path, out / "run", config)
        seconds["train"] = time.perf_counter() - clock

        clock = time.perf_counter()
        result = balance(
            manifest.path,
            run.last_checkpoint,
            out / "balanced",
            BalanceConfig(seed=seed, min_confidence=min_confidence),
            progress=True,
        )
        seconds["balance"] = time.perf_counter() - clock

        balanced = read_manifest(result.manifest)
        after = audit(balanced, target=max(result.targets.values()))
        files = [
            plot_report(before, out / "histogram_before.png"),
            plot_report(after, out / "histogram_after.png"),
            synthesis_grid(balanced, out / "synthesis.png", seed=seed),
            atomic_write_text(out / "audit.json", json.dumps(after.to_dict(), indent=2, allow_nan=False)),
        ]
        summary = _summary(manifest, result, run.last_checkpoint, after, seconds)
        files.append(atomic_write_text(out / "summary.txt", summary + "\n"))
        return DemoResult(
            out, manifest.path, before, after, result.manifest, run.last_checkpoint, summary, seconds, files
        )


def _only_demo_outputs(out: Path) -> bool:
    """Whether ``out`` holds nothing but what :func:`run_demo` writes, finished or not: its
    outputs, and the lock files and temporaries written beside them."""
    return all(
        p.name in DEMO_OUTPUTS or any(p.name.startswith(f".{name}.") for name in DEMO_OUTPUTS) for p in out.iterdir()
    )


# The change panel's scale: a difference of this many gray levels (or more) is drawn at full brightness,
# the same in every panel so edits can be compared across classes.
CHANGE_SCALE = 64


def synthesis_grid(manifest: Manifest, path: str | os.PathLike, *, pairs: int = 3, seed: int = 0) -> Path:
    """One row per class that received synthetic images: ``pairs`` randomly chosen ones, each
    after its source and followed by what changed (``|synthetic - source|`` on a fixed scale), so a
    subtle edit shows as plainly as a strong one. Classes that needed none are named below the grid."""
    df = manifest.df
    position = {sid: i for i, sid in enumerate(df["sample_id"].tolist())}
    rng = np.random.default_rng(seed)
    synthetic, labels = (df["origin"] == "synthetic").to_numpy(), df["label"].to_numpy()
    per_class = [(name, np.flatnonzero(synthetic & (labels == k))) for k, name in enumerate(manifest.classes)]
    rows = [(name, found) for name, found in per_class if found.size]
    fig = new_figure(0.95 * 3 * pairs + 1.2, 1.0 * max(len(rows), 1) + 0.7)
    axes = fig.subplots(max(len(rows), 1), 3 * pairs, squeeze=False)
    for r, (name, found) in enumerate(rows):
        chosen = rng.choice(found, size=min(pairs, found.size), replace=False)
        for j, ax in enumerate(axes[r]):
            image_axis(ax)
            if j // 3 >= len(chosen):
                continue
            row = int(chosen[j // 3])
            source, made = manifest.open_image(position[df["parent_id"].iat[row]]), manifest.open_image(row)
            if j % 3 == 2:
                ax.imshow(change_map(source, made), cmap="magma", vmin=0, vmax=CHANGE_SCALE)
            else:
                show_image(ax, source if j % 3 == 0 else made)
            if r == 0:
                ax.set_title(("source", "synthetic", "change")[j % 3], fontsize=8)
        axes[r][0].set_ylabel(f"→ {name}\n({found.size})", rotation=0, ha="right", va="center", fontsize=9)
    none = [name for name, found in per_class if not found.size]
    if none:
        fig.supxlabel(f"no synthetic images needed: {', '.join(none)}", fontsize=8)
    return save_figure(fig, path)


def _summary(manifest: Manifest, result, checkpoint: Path, after: AuditReport, seconds: dict[str, float]) -> str:
    lines = [
        f"demo dataset:   {manifest.path} ({len(manifest)} faces, {manifest.df['subject_id'].nunique()} identities, "
        f"{len(manifest.classes)} classes)",
        f"trained:        {checkpoint} in {seconds['train']:.0f} s (fold 0 held out)",
        f"balanced:       {result.manifest} in {seconds['balance']:.0f} s",
        "",
        "class      before  synthesized  accepted  after",
    ]
    for c, n_before, n_synthesized, accepted, n_after in result.class_rows(
        ("real", "synthesized", "acceptance", "after")
    ):
        lines.append(f"{c:<10} {n_before:>6}  {n_synthesized:>11}  {accepted:>8}  {n_after:>5}")
    short = sum(result.shortfall.values())
    lines += [
        "",
        "every class reached its target"
        if not short
        else f"{short} image(s) short of the targets (the gate rejected them)",
        "audit of the balanced manifest: "
        + ("no problems" if not after.problems else "; ".join(f"{p.kind} ({p.count})" for p in after.problems)),
        f"pictures:       {result.out_dir.parent / 'histogram_before.png'}, histogram_after.png, synthesis.png",
    ]
    return "\n".join(lines)
