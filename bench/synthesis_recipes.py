"""Which training recipe makes the best synthetic faces? Measured against exact ground truth.

On the demo dataset every face can be re-rendered with any expression
(:func:`fesaug.data.demo.counterfactual`), so a synthesized image can be compared with what it
should have been. For each recipe (a ``fesaug train`` YAML and/or TrainConfig overrides) this
trains FERSNet holding out fold 0, then translates every held-out face to every other class and
reports, for ``last.pt`` (what ``fesaug balance`` uses):

* ``l1`` / ``ssim``: mean absolute error (0..255) and SSIM to the ground-truth counterfactual
  over the whole image, and the same for the input copied unchanged (``copy_*``), the trivial
  baseline a generator must beat;
* ``changed_l1``: the error on the pixels where the expression changes the face
  (|source - truth| > 10), where copying the input scores worst;
* ``recognised``: per target class, the share a downstream classifier trained on fold 0's
  training subjects alone (the ``real`` condition of ``fesaug evaluate``; cached in
  ``<out>/real.pt``) gives the target as its top class, next to its recall on fold 0's *real*
  faces of that class (``real_recall``): the yardstick the synthetic faces must reach;
* ``truth_recognised``: the same share for the exact counterfactuals themselves, what a perfect
  generator would score (below ``real_recall`` for some classes: the target faces are sources of
  other classes re-rendered at their own intensity);
* ``judge_accept``: the share the checkpoint's FER branch gives the target >= 0.5;
* ``rerender_l1``: each held-out face asked for the expression it already shows, against itself
  (its exact counterfactual), and ``rerender_macro_f1`` next to ``real_macro_f1``: the classifier's
  macro-F1 on those re-renderings and on the faces. A generator that draws caricatures makes the
  re-renderings easier than the faces (CK+48 has no ground truth, only this second test).

    python bench/synthesis_recipes.py --manifest demo/manifest.parquet --out /tmp/recipes --epochs 25 \\
        --recipe defaults= --recipe attention=bench/recipes/attention.yaml \\
        --recipe 'sp03=:{"loss": {"edit_sparsity": 0.3}}'

A recipe is ``NAME=[YAML][:JSON overrides]``; ``"holdout_fold": K`` among the overrides trains it
without fold K and scores it on fold K's faces instead of fold 0's. Results: ``<out>/<recipe>/synthesis.json`` and a
table on stdout (``--report`` only prints; ``--write NAME --note TEXT`` also writes every recipe in
``--out`` to ``bench/results/NAME.{json,md}``; ``--dead-zone FLOW,MASK`` rescores existing runs
with other inference thresholds, ``--trained-weights`` an ``ema`` run's weights as trained).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from record import machine, machine_line, versions_line, write_results

from fesaug import load_generator
from fesaug.data.datasets import ManifestDataset, resize_pixels
from fesaug.data.demo import counterfactual
from fesaug.data.manifest import read_manifest
from fesaug.data.splits import split_subjects
from fesaug.evaluate.downstream import (
    DownstreamConfig,
    classification_report,
    fit,
    load_classifier,
    predict_proba,
    save_classifier,
)
from fesaug.evaluate.metrics import ssim
from fesaug.synthesis.checkpoint import load_checkpoint
from fesaug.synthesis.config import TrainConfig, load_config
from fesaug.synthesis.records import MODEL_CONFIG_LEGACY
from fesaug.synthesis.training import train
from fesaug.utils.provenance import package_versions
from fesaug.utils.records import fill_missing
from fesaug.utils.tables import markdown_table

CHANGED = 10  # gray levels: a pixel the expression changes differs this much between source and truth


def real_classifier(manifest: Path, out: Path, fold: int = 0) -> Path:
    """The ``real`` condition's classifier for test fold ``fold`` (trained once, cached)."""
    path = out / f"real-fold{fold}.pt"
    if path.exists():
        return path
    m = read_manifest(manifest)
    split = split_subjects(m, fold, 0.15, 0)
    data = ManifestDataset(m, image_size=64)
    # The recipe every recorded row was judged with (DownstreamConfig's defaults until issue #19
    # changed them): a judge trained another way would make new rows incomparable with the table.
    judge = DownstreamConfig(epochs=40, label_smoothing=0.0, device="cpu")
    result = fit(
        data.pixels[split.train_rows],
        data.labels[split.train_rows],
        data.pixels[split.val_rows],
        data.labels[split.val_rows],
        judge,
        num_classes=len(m.classes),
    )
    out.mkdir(parents=True, exist_ok=True)
    save_classifier(result.model, path, m.classes)
    return path


def score(
    manifest: Path,
    checkpoint: Path,
    fold: int = 0,
    classifier: Path | None = None,
    dead_zone: tuple[float, float] | None = None,
    intensity: tuple[float, float] | None = None,
    trained_weights: bool = False,
) -> dict:
    """The scores of the module docstring; ``intensity`` ``(LOW, HIGH)`` scales each edit by a
    draw from that range (seeded; what ``fesaug balance --intensity`` does), default the learnt edit;
    ``trained_weights``: the weights of a run trained with ``ema`` as trained, not their average."""
    gen = load_generator(checkpoint, device="cpu")
    if trained_weights:  # the averaged run's trajectory is the plain run's: the average never feeds back
        gen.model.load_state_dict(load_checkpoint(checkpoint)["model_trained"])
    if dead_zone is not None:  # the warp decoder's inference thresholds (flow px, mask), e.g. for an older checkpoint
        gen.model.decoder.flow_threshold, gen.model.decoder.mask_threshold = dead_zone
    m = read_manifest(manifest)
    rows = np.flatnonzero(m.df["fold"].to_numpy() == fold)
    data = ManifestDataset(m, rows=rows, image_size=gen.image_size)
    model = load_classifier(classifier, device="cpu")[0] if classifier else None
    real_pred = predict_proba(model, resize_pixels(data.pixels, model.image_size)).argmax(1) if model else None
    per: dict[str, list] = {k: [] for k in ("l1", "copy_l1", "changed", "copy_changed", "ssim", "copy_ssim", "accept")}
    recognised, real_recall, truth_recognised = {}, {}, {}
    for k, cls in enumerate(gen.classes):
        keep = np.flatnonzero(data.labels != k)
        src = data.pixels[keep]
        strength = None if intensity is None else np.random.default_rng(k).uniform(*intensity, size=len(keep))
        fake_u8 = gen.synthesize(src, k, intensity=strength)
        fake = fake_u8.numpy().astype(np.float64)[:, 0]
        truth_u8 = torch.from_numpy(np.stack([counterfactual(m.df.iloc[int(data.rows[i])], cls) for i in keep]))[
            :, None
        ]
        truth = truth_u8.numpy().astype(np.float64)[:, 0]
        s = src.numpy().astype(np.float64)[:, 0]
        mask = np.abs(s - truth) > CHANGED
        per["l1"].append(np.abs(fake - truth).mean(axis=(1, 2)))
        per["copy_l1"].append(np.abs(s - truth).mean(axis=(1, 2)))
        per["changed"].append([np.abs(f - t)[mk].mean() if mk.any() else 0.0 for f, t, mk in zip(fake, truth, mask)])
        per["copy_changed"].append([np.abs(a - t)[mk].mean() if mk.any() else 0.0 for a, t, mk in zip(s, truth, mask)])
        per["ssim"].append(ssim(fake_u8, truth_u8))
        per["copy_ssim"].append(ssim(src, truth_u8))
        per["accept"].append(gen.classify(fake_u8)[:, k].numpy() >= 0.5)
        if model is not None:
            recognised[cls] = float(
                (predict_proba(model, resize_pixels(fake_u8, model.image_size)).argmax(1) == k).mean()
            )
            truth_recognised[cls] = float(
                (predict_proba(model, resize_pixels(truth_u8, model.image_size)).argmax(1) == k).mean()
            )
            mine = data.labels == k
            real_recall[cls] = float((real_pred[mine] == k).mean()) if mine.any() else None
    own = gen.synthesize(data.pixels, torch.as_tensor(data.labels))
    rerender = {"rerender_l1": float((own.float() - data.pixels.float()).abs().mean())}
    if model is not None:
        own_pred = predict_proba(model, resize_pixels(own, model.image_size)).argmax(1)
        rerender |= {
            "rerender_macro_f1": classification_report(data.labels, own_pred, gen.classes)["macro_f1"],
            "real_macro_f1": classification_report(data.labels, real_pred, gen.classes)["macro_f1"],
        }
    mean = {k: float(np.concatenate([np.asarray(v, dtype=float) for v in vals]).mean()) for k, vals in per.items()}
    out = {
        "pairs": int(sum(len(v) for v in per["l1"])),
        "l1": mean["l1"],
        "copy_l1": mean["copy_l1"],
        "changed_l1": mean["changed"],
        "copy_changed_l1": mean["copy_changed"],
        "ssim": mean["ssim"],
        "copy_ssim": mean["copy_ssim"],
        "judge_accept": mean["accept"],
        "judge_accept_per_class": {c: float(a.mean()) for c, a in zip(gen.classes, per["accept"])},
        **rerender,
    }
    if model is not None:
        out |= {
            "recognised": recognised,
            "real_recall": real_recall,
            "truth_recognised": truth_recognised,
            "recognised_mean": float(np.mean(list(recognised.values()))),
            "classes_at_yardstick": sum(recognised[c] >= (real_recall[c] or 0) for c in recognised),
            "classes_at_truth": sum(recognised[c] >= truth_recognised[c] for c in recognised),
        }
    return out


def recipe_config(spec: str, epochs: int, device: str) -> tuple[TrainConfig, dict]:
    """``[YAML][:JSON]`` → the training config (fold 0 held out unless the JSON says
    ``"holdout_fold"``) and what it changes."""
    path, _, overrides = spec.partition(":") if not spec.startswith("{") else ("", "", spec)
    config = load_config(path) if path else TrainConfig()
    extra = json.loads(overrides) if overrides else {}
    run = {"epochs": epochs, "holdout_fold": 0, "device": device}
    config = config.updated(run | extra, where=spec or "defaults")
    return config, {"yaml": path or None, "overrides": extra}


def run_recipe(
    manifest: Path, out: Path, name: str, spec: str, epochs: int, device: str, results: Path | None = None
) -> dict:
    config, what = recipe_config(spec, epochs, device)
    start = time.perf_counter()
    result = train(manifest, out / name, config, overwrite=True)
    seconds = time.perf_counter() - start
    fold = config.holdout_fold
    classifier = real_classifier(manifest, out, fold)
    record = {
        "recipe": name,
        **what,
        "config": config.to_dict(),
        "epochs": config.epochs,
        "device": device,
        "train_seconds": seconds,
        "threads": torch.get_num_threads(),
        "best_epoch": result.best_epoch,
        "last": score(manifest, result.run_dir / "checkpoints" / "last.pt", fold, classifier=classifier),
    }
    (out / name / "synthesis.json").write_text(json.dumps(record, indent=2))
    if results is not None:  # a flat copy, e.g. for a remote machine's output folder
        results.mkdir(parents=True, exist_ok=True)
        (results / f"{name}.json").write_text(json.dumps(record, indent=2))
        shutil.copy(result.run_dir / "samples" / f"epoch_{config.epochs:03d}.png", results / f"{name}.png")
    return record


RUN_KEYS = ("epochs", "holdout_fold", "device", "seed", "num_workers")  # how a recipe was run, not what it is


def changes(recorded: dict, model_config: dict | None = None) -> dict:
    """What a recipe's recorded TrainConfig changes from today's defaults (keys the record
    predates read as the behaviour of its time, see ``train_config.LEGACY``); the model as its
    checkpoint recorded it (``model_config``), else as the config resolves."""
    import dataclasses

    from fesaug.models import FERSNetConfig

    then, now = TrainConfig.from_dict(recorded, where="record"), TrainConfig()
    out = {k: v for k, v in then.to_dict().items() if k not in ("model", "loss", *RUN_KEYS) and v != now.to_dict()[k]}
    loss = {k: v for k, v in dataclasses.asdict(then.loss).items() if v != getattr(now.loss, k)}
    recorded_model = fill_missing(model_config or {}, MODEL_CONFIG_LEGACY)
    model_then = FERSNetConfig(**recorded_model) if model_config else then.model_config(7)
    model = {
        k: v
        for k, v in model_then.settings().items()
        if k not in ("num_classes", "in_channels") and v != now.model_config(7).settings()[k]
    }
    return out | ({"loss": loss} if loss else {}) | ({"model": model} if model else {})


def records(out: Path) -> list[dict]:
    runs = []
    # In the order the recipes were trained (config.yaml is written when training starts; a
    # --rescore rewrites synthesis.json later).
    for f in sorted(out.glob("*/synthesis.json"), key=lambda p: (p.parent / "config.yaml").stat().st_mtime):
        r = json.loads(f.read_text())
        if "config" not in r:  # records older than the "config" key: the run's own config.yaml
            r["config"] = yaml.safe_load((f.parent / "config.yaml").read_text())
        checkpoint = f.parent / "checkpoints" / "last.pt"
        if checkpoint.exists():  # the model as trained and scored, whatever the defaults were then
            r["model_config"] = torch.load(checkpoint, map_location="cpu", weights_only=True)["model_config"]
        runs.append(r)
    return runs


def report(out: Path) -> None:
    print(
        f"{'recipe':<22} {'ep':>3} {'min':>5} {'l1':>6} {'copy':>5} {'chg_l1':>7} {'copy':>5} {'ssim':>6} {'copy':>6} "
        f"{'recog':>6} {'>=real':>6} {'gate':>5}"
    )
    for r in records(out):
        s = r["last"]
        print(
            f"{r['recipe']:<22} {r['epochs']:>3} {r['train_seconds'] / 60:5.1f} {s['l1']:6.2f} {s['copy_l1']:5.2f} "
            f"{s['changed_l1']:7.2f} {s['copy_changed_l1']:5.2f} {s['ssim']:6.3f} {s['copy_ssim']:6.3f} "
            f"{s.get('recognised_mean', float('nan')):6.2f} {s.get('classes_at_yardstick', '-'):>6} "
            f"{s['judge_accept']:5.2f}"
        )


def write_recipes(out: Path, name: str, note: str) -> None:
    """Every recipe in ``out`` as ``bench/results/<name>.json`` and a table ``<name>.md``."""
    runs = records(out)
    write_results(name, runs, recipes_table(runs, note))


def machine_versions() -> str:
    """This machine and the package versions, one Markdown line (the runs' JSON records neither)."""
    return f"Machine: {machine_line(machine())}. Versions: {versions_line(package_versions())}."


def recipes_table(runs: list[dict], note: str) -> str:
    classes = list(runs[-1]["last"].get("recognised", {}))
    folds = sorted({r["config"].get("holdout_fold", 0) for r in runs})
    held_out = f"fold{'s' if len(folds) > 1 else ''} {', '.join(map(str, folds))} held out"
    lines = [
        f"# Synthesis recipes against exact ground truth (demo set, {held_out})",
        "",
        note,
        "",
        machine_versions(),
        "",
        "Every held-out face translated to every other class, scored against the same face re-rendered with that "
        "expression (`last.pt`; `bench/synthesis_recipes.py`). L1 in gray levels; *changed*: the pixels the "
        "expression changes (|source − truth| > 10). *recognised*: share of synthetic faces the fold's `real` "
        "classifier gives the target; *≥ real*: classes where that share reaches the classifier's recall on real "
        "held-out faces of the class; *≥ truth*: classes where it reaches the classifier's score on the exact "
        "counterfactuals. *gate*: share the checkpoint's own FER branch accepts at 0.5. "
        "*re-rendered*: each held-out face asked for its own expression: L1 to itself, and the `real` classifier's "
        "macro-F1 on the re-renderings (on the faces themselves: *input copied*); higher than on the faces means "
        "caricatures.",
        "",
    ]
    s = runs[-1]["last"]
    faces_f1 = next(
        (f"*0 / {100 * r['last']['real_macro_f1']:.1f}*" for r in reversed(runs) if "real_macro_f1" in r["last"]), ""
    )
    copied = ["*input copied unchanged*", "", "", "", f"*{s['copy_l1']:.2f}*", f"*{s['copy_changed_l1']:.2f}*"]
    copied += [f"*{s['copy_ssim']:.3f}*", "", "", "", "", faces_f1]
    header = ["recipe", "differs from today's defaults", "epochs", "train min", "L1", "L1 changed", "SSIM"]
    header += ["recognised", "≥ real", "≥ truth", "gate", "re-rendered L1 / macro-F1"]
    rows = [_recipe_row(r, len(classes)) for r in runs]
    lines += [*markdown_table(header, [*rows, copied], align="llrrrrrrrrrr"), ""]
    if classes:
        lines += [
            "Recognised per target class; below, the real classifier's recall on real held-out faces and its "
            "score on the exact counterfactuals (what a perfect generator would get):",
            "",
        ]
        scored = [r for r in runs if "recognised" in r["last"]]
        rows = [[r["recipe"], *(f"{r['last']['recognised'][c]:.2f}" for c in classes)] for r in scored]
        rows.append(["*real faces*", *(f"*{s['real_recall'][c]:.2f}*" for c in classes)])
        truth = next((r["last"]["truth_recognised"] for r in reversed(runs) if "truth_recognised" in r["last"]), None)
        if truth:
            rows.append(["*exact counterfactuals*", *(f"*{truth[c]:.2f}*" for c in classes)])
        lines += [*markdown_table(["recipe", *classes], rows, align="l" + "r" * len(classes)), ""]
    return "\n".join(lines)


def _recipe_row(r: dict, n_classes: int) -> list[object]:
    s = r["last"]
    diff = changes(r["config"], r.get("model_config"))
    at_truth = f"{s.get('classes_at_truth', '–')}{f'/{n_classes}' if 'classes_at_truth' in s else ''}"
    rerendered = (
        f"{s['rerender_l1']:.2f} / {100 * s.get('rerender_macro_f1', float('nan')):.1f}" if "rerender_l1" in s else "–"
    )
    return [
        r["recipe"],
        f"`{json.dumps(diff)}`" if diff else "defaults",
        r["epochs"],
        f"{r['train_seconds'] / 60:.1f}",
        f"{s['l1']:.2f}",
        f"{s['changed_l1']:.2f}",
        f"{s['ssim']:.3f}",
        f"{s.get('recognised_mean', float('nan')):.2f}",
        f"{s.get('classes_at_yardstick', '–')}/{n_classes}",
        at_truth,
        f"{s['judge_accept']:.2f}",
        rerendered,
    ]


def sweep(
    manifest: Path, out: Path, names: list[str], kind: str, specs: list[str], trained_weights: bool = False
) -> None:
    """Each run in ``names`` scored again at each spec, added to its ``<kind>.json`` (a spec already
    scored is kept). ``kind`` "intensity": ``A`` or ``A..B``, the edit scaled by it (or a seeded
    draw from the range); "dead_zone": ``FLOW,MASK``, the decoder's inference thresholds."""
    for name in names:
        fold = json.loads((out / name / "synthesis.json").read_text())["config"]["holdout_fold"]
        classifier = real_classifier(manifest, out, fold)
        path = out / name / f"{kind}.json"
        done = json.loads(path.read_text()) if path.exists() else {}
        for spec in specs:
            key = f"trained {spec}" if trained_weights else spec
            if key not in done:
                if kind == "intensity":
                    low, _, high = spec.partition("..")
                    option = {"intensity": (float(low), float(high or low))}
                else:
                    flow, mask = map(float, spec.split(","))
                    option = {"dead_zone": (flow, mask)}
                checkpoint = out / name / "checkpoints" / "last.pt"
                done[key] = score(
                    manifest, checkpoint, fold, classifier=classifier, trained_weights=trained_weights, **option
                )
                path.write_text(json.dumps(done, indent=1))
            s = done[key]
            print(
                f"{name:<22} {kind} {key:<16} l1 {s['l1']:.2f} changed {s['changed_l1']:.2f} ssim {s['ssim']:.3f} "
                f"recognised {s['recognised_mean']:.2f} >=real {s['classes_at_yardstick']} >=truth "
                f"{s['classes_at_truth']}",
                flush=True,
            )


SWEEPS = {
    "intensity": (
        "Edit intensity",
        "translating every held-out face to every other class with its flow and mask scaled by the intensity "
        "(`A..B`: a seeded uniform draw per face, as `fesaug balance --intensity A..B` does)",
    ),
    "dead_zone": (
        "Inference dead zones",
        "translating every held-out face to every other class with the warp decoder's inference thresholds set "
        "to `FLOW,MASK` (flow under FLOW pixels and mask under MASK are treated as no edit: those pixels are the "
        "input's; the checkpoint's own are 0.1,0.03); *trained*: the weights as trained rather than their "
        "moving average, for runs trained with `ema`",
    ),
}


def write_sweep(out: Path, names: list[str], kind: str, name: str, note: str) -> None:
    """The ``kind`` sweeps of ``names`` as ``bench/results/<name>.json`` and a table ``<name>.md``."""
    sweeps = {n: json.loads((out / n / f"{kind}.json").read_text()) for n in names}
    write_results(name, sweeps, sweep_table(sweeps, kind, note))


def sweep_table(sweeps: dict[str, dict], kind: str, note: str) -> str:
    first = next(iter(next(iter(sweeps.values())).values()))
    classes = list(first["recognised"])
    title, what = SWEEPS[kind]
    lines = [
        f"# {title} against exact ground truth (demo set, one fold held out)",
        "",
        note,
        "",
        machine_versions(),
        "",
        f"Each trained run's `last.pt` (see `synthesis_recipes_demo.md`) {what}. Columns as in "
        "`synthesis_recipes_demo.md`.",
        "",
    ]
    rows = [
        [
            run,
            spec,
            f"{s['l1']:.2f}",
            f"{s['changed_l1']:.2f}",
            f"{s['ssim']:.3f}",
            f"{s['recognised_mean']:.2f}",
            f"{s['classes_at_yardstick']}/{len(classes)}",
            f"{s['classes_at_truth']}/{len(classes)}",
            f"{s['judge_accept']:.2f}",
            *(f"{s['recognised'][c]:.2f}" for c in classes),
        ]
        for run, sweep in sweeps.items()
        for spec, s in sweep.items()
    ]
    copied = [f"*{first['copy_l1']:.2f}*", f"*{first['copy_changed_l1']:.2f}*", f"*{first['copy_ssim']:.3f}*"]
    rows += [
        ["*input copied*", "", *copied, "", "", "", "", *("" for _ in classes)],
        ["*real faces*", *[""] * 8, *(f"*{first['real_recall'][c]:.2f}*" for c in classes)],
        ["*exact counterfactuals*", *[""] * 8, *(f"*{first['truth_recognised'][c]:.2f}*" for c in classes)],
    ]
    header = [
        "run",
        kind.replace("_", " "),
        "L1",
        "L1 changed",
        "SSIM",
        "recognised",
        "≥ real",
        "≥ truth",
        "gate",
        *classes,
    ]
    lines += [*markdown_table(header, rows, align="ll" + "r" * (7 + len(classes))), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--recipe", action="append", default=[], help="NAME=[YAML][:JSON overrides of TrainConfig]")
    ap.add_argument("--parallel", action="store_true", help="one process per recipe (e.g. on one GPU)")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--results", type=Path, help="also copy each recipe's scores and last sample grid here")
    ap.add_argument("--write", metavar="NAME", help="write every recipe in --out to bench/results/NAME.json and .md")
    ap.add_argument("--note", default="", help="with --write: the protocol note at the top of the table")
    ap.add_argument(
        "--dead-zone",
        metavar="FLOW,MASK",
        action="append",
        default=[],
        help="score the existing runs named by --recipe NAME= again with these inference thresholds "
        "(flow in pixels, mask), recorded in <out>/NAME/dead_zone.json and, with --write, tabled; repeatable",
    )
    ap.add_argument(
        "--trained-weights",
        action="store_true",
        help="with --dead-zone or --intensity: score the weights of runs trained with ema as trained, "
        "not their moving average",
    )
    ap.add_argument(
        "--intensity",
        metavar="LOW[..HIGH]",
        action="append",
        default=[],
        help="score the existing runs named by --recipe NAME= again with their edits scaled by this "
        "intensity (or a seeded uniform draw from the range), recorded in <out>/NAME/intensity.json "
        "and, with --write, tabled; repeatable",
    )
    ap.add_argument(
        "--rescore",
        action="store_true",
        help="score the existing runs named by --recipe NAME= again (e.g. for scores added since they ran) "
        "and update their synthesis.json",
    )
    args = ap.parse_args()
    if args.rescore:
        for name in (r.split("=", 1)[0] for r in args.recipe):
            path = args.out / name / "synthesis.json"
            record = json.loads(path.read_text())
            fold = record["config"]["holdout_fold"]
            classifier = real_classifier(args.manifest, args.out, fold)
            checkpoint = args.out / name / "checkpoints" / "last.pt"
            record["last"] = score(args.manifest, checkpoint, fold, classifier=classifier)
            path.write_text(json.dumps(record, indent=2))
            print(
                f"{name}: re-rendered L1 {record['last']['rerender_l1']:.2f}, macro-F1 "
                f"{record['last']['rerender_macro_f1']:.3f} (faces {record['last']['real_macro_f1']:.3f})",
                flush=True,
            )
        return
    names = [r.split("=", 1)[0] for r in args.recipe]
    for kind, specs in (("intensity", args.intensity), ("dead_zone", args.dead_zone)):
        if specs:
            sweep(args.manifest, args.out, names, kind, specs, trained_weights=args.trained_weights)
            if args.write:
                write_sweep(args.out, names, kind, args.write, args.note)
            return
    if not args.report:
        recipes = dict(r.split("=", 1) for r in args.recipe) or {"base": ""}
        if args.parallel and len(recipes) > 1:
            real_classifier(args.manifest, args.out)  # once, before the recipes need it (fold 0's)
            procs = [
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--manifest",
                        str(args.manifest),
                        "--out",
                        str(args.out),
                        "--epochs",
                        str(args.epochs),
                        "--device",
                        args.device,
                        "--recipe",
                        f"{k}={v}",
                        *(["--results", str(args.results)] if args.results else []),
                    ]
                )
                for k, v in recipes.items()
            ]
            if any(p.wait() for p in procs):
                sys.exit("a recipe failed")
        else:
            for name, spec in recipes.items():
                run_recipe(args.manifest, args.out, name, spec, args.epochs, args.device, args.results)
    report(args.out)
    if args.write:
        write_recipes(args.out, args.write, args.note)


if __name__ == "__main__":
    main()
