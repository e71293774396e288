"""How far apart are the two demo populations? Train on one, test on both.

`fesaug demo-data --style shifted` renders a second population (other face shapes and skin tones,
side lighting and low contrast, wider head poses, low resolution; its own subject ids) for
cross-dataset evaluation. This trains `fesaug.evaluate.downstream`'s small CNN (the classifier `fesaug
evaluate` uses, its augmentation included) on the standard set and on the shifted one, each time
on folds 2-4 with fold 1 choosing the epoch, and tests on fold 0 of both: the drop from the
in-domain to the cross-domain column is the domain shift. Fold 0 of either set holds subjects
neither model saw.

    .venv/bin/python bench/demo_style_shift.py                 # ~5 min on 2 busy cores
    .venv/bin/python bench/demo_style_shift.py --align         # also both sets through ingest --align (~10 min)

Writes bench/results/demo_style_shift.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from record import command, machine, machine_line, write_results
from sklearn.metrics import accuracy_score, f1_score

from fesaug.data.datasets import ManifestDataset
from fesaug.data.demo import make_demo_dataset
from fesaug.data.ingest import ingest
from fesaug.data.manifest import read_manifest, write_manifest
from fesaug.evaluate.downstream import DownstreamConfig, fit, predict_proba
from fesaug.utils.tables import markdown_table

TEST_FOLD, VAL_FOLD = 0, 1


def split(path: Path, size: int) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    data = ManifestDataset(path, image_size=size)
    folds = read_manifest(path).df["fold"].to_numpy()[data.rows]
    labels = np.asarray(data.labels)
    parts = {"train": ~np.isin(folds, [TEST_FOLD, VAL_FOLD]), "val": folds == VAL_FOLD, "test": folds == TEST_FOLD}
    return {name: (data.pixels[torch.from_numpy(np.flatnonzero(keep))], labels[keep]) for name, keep in parts.items()}


def scores(model, x: torch.Tensor, y: np.ndarray, n_classes: int) -> dict[str, float]:
    pred = predict_proba(model, x).argmax(1)
    return {
        "accuracy": round(float(accuracy_score(y, pred)), 4),
        "macro_f1": round(float(f1_score(y, pred, average="macro", labels=list(range(n_classes)), zero_division=0)), 4),
        "images": int(len(y)),
    }


def cross(manifests: dict[str, Path], size: int, config: DownstreamConfig) -> dict:
    classes = read_manifest(next(iter(manifests.values()))).classes
    for path in manifests.values():
        assert read_manifest(path).classes == classes, "both sets must have the same classes"
    data = {name: split(path, size) for name, path in manifests.items()}
    out = {}
    for train_name, parts in data.items():
        start = time.perf_counter()
        model = fit(*parts["train"], *parts["val"], config=config, num_classes=len(classes)).model
        out[f"train {train_name}"] = {
            **{f"test {test_name}": scores(model, *other["test"], len(classes)) for test_name, other in data.items()},
            "train_images": int(len(parts["train"][1])),
            "seconds": round(time.perf_counter() - start, 1),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="dataset and training seed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--align", action="store_true", help="also compare both sets after fesaug ingest --align --size 64"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # No label smoothing: the recorded results were made before issue #19 made it the default.
    config = DownstreamConfig(epochs=args.epochs, label_smoothing=0.0, seed=args.seed, device="cpu")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifests = {
            style: make_demo_dataset(tmp / style, style=style, seed=args.seed) for style in ("standard", "shifted")
        }
        subjects = {style: set(read_manifest(p).df["subject_id"]) for style, p in manifests.items()}
        assert not subjects["standard"] & subjects["shifted"]
        result = {"raw": cross(manifests, 64, config)}
        if args.align:
            aligned = {}
            for style, path in manifests.items():
                done = ingest(
                    path.parent / "images", tmp / f"{style}-aligned.parquet", align=True, size=64, skip_bad=True
                )
                # ingest reads class folders, not the demo's folds: carry each row's fold over by sample id.
                folds = read_manifest(path).df.set_index("sample_id")["fold"]
                m = read_manifest(done.manifest)
                m.df["fold"] = folds.loc[m.df["sample_id"]].to_numpy()
                aligned[style] = write_manifest(m.df, done.manifest, classes=m.classes, meta=m.meta, overwrite=True)
                result.setdefault("align_counts", {})[style] = done.aligned
            result["aligned"] = cross(aligned, 64, config)

    report = {
        **result,
        "protocol": f"small-cnn (fesaug.evaluate.downstream, augmentation on), {args.epochs} epochs, train folds 2-4, "
        f"epoch chosen on fold {VAL_FOLD} macro-F1, test fold {TEST_FOLD} of each set; default demo counts, seed "
        f"{args.seed}",
        "wall_s": round(time.perf_counter() - start, 1),
        "machine": machine(threads=args.threads),
        "torch": torch.__version__,
        "command": command(),
    }
    write_results("demo_style_shift", report, render(report))
    print(render(report))


def render(r: dict) -> str:
    def table(block: dict) -> list[str]:
        rows = []
        for train, res in block.items():
            own = res[f"test {train.split()[1]}"]["macro_f1"]
            other = res[f"test {'shifted' if train.endswith('standard') else 'standard'}"]["macro_f1"]
            cells = [f"{res[t]['accuracy']:.3f} / {res[t]['macro_f1']:.3f}" for t in ("test standard", "test shifted")]
            rows.append([f"{train.split()[1]} ({res['train_images']} images)", *cells, f"{own - other:+.3f}"])
        header = [
            "trained on",
            "test standard: acc / macro-F1",
            "test shifted: acc / macro-F1",
            "own minus other set (macro-F1)",
        ]
        return markdown_table(header, rows)

    out = [
        "# Demo domain shift: standard vs shifted population",
        "",
        f"`{r['command']}` — {r['wall_s']} s wall ({machine_line(r['machine'])}), torch {r['torch']}.",
        "",
        f"Protocol: {r['protocol']}. No subject id is shared between the sets.",
        "",
        "Raw images (64x64):",
        "",
        *table(r["raw"]),
    ]
    if "aligned" in r:
        out += [
            "",
            f"Both sets through `fesaug ingest --align --size 64` first (faces aligned: {r['align_counts']}):",
            "",
            *table(r["aligned"]),
        ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
