"""What do the downstream classifiers of an evaluation make of FERSNet's renderings of the *test*
faces? A look at why synthetic faces help less than repeated real ones.

For every fold of a finished ``fesaug evaluate`` folder, the fold's generator (``fersnet/
checkpoints/last.pt``, the one that balanced the fold) renders each real test face

* with its own expression ("re-rendered": the same subject, the same label), and
* with every expression in turn ("rendered as c"),

and each condition's seed-0 classifier (``real.pt``, ``oversample.pt``, ``fes.pt``, ``mixed.pt``
where present) classifies the real test faces, the re-rendered ones and the renderings. The test
faces were never seen by the generator or the classifiers, so nothing here tunes anything; it
only describes the images.

    .venv/bin/python bench/rendered_faces.py --run /tmp/sm --name ckplus_smooth_mask [--folds 0,1,2,3]

Writes bench/results/rendered_faces_<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from record import command, machine, machine_line, versions_line, write_results

from fesaug.data.datasets import ManifestDataset, resize_pixels
from fesaug.data.manifest import read_manifest
from fesaug.evaluate.downstream import DownstreamClassifier, classification_report, load_classifier, predict_proba
from fesaug.synthesis.generator import load_generator
from fesaug.utils.provenance import package_versions
from fesaug.utils.tables import markdown_table

CONDITIONS = ("real", "oversample", "fes", "mixed")


def fold_scores(fold: Path) -> dict:
    split = read_manifest(fold / "split.parquet")
    rows = np.flatnonzero((split.df["split"] == "test").to_numpy())
    gen = load_generator(fold / "fersnet" / "checkpoints" / "last.pt", device="cpu")
    faces = ManifestDataset(split, rows=rows, image_size=gen.image_size)
    x, y = faces.pixels, np.asarray(faces.labels)
    classes = gen.classes
    rendered = [gen.synthesize(x, c) for c in range(len(classes))]
    own = torch.stack([rendered[int(t)][i] for i, t in enumerate(y)])
    out: dict = {
        "n_test": int(len(y)),
        "rerender_mean_abs_change": float((own.float() - x.float()).abs().mean()),  # gray levels
        "conditions": {},
    }
    for name in CONDITIONS:
        if not (fold / f"{name}.pt").exists():
            continue
        clf, _ = load_classifier(fold / f"{name}.pt", device="cpu")

        def predict(images: torch.Tensor, clf: DownstreamClassifier = clf) -> np.ndarray:
            return predict_proba(clf, resize_pixels(images, clf.image_size)).argmax(1)

        on_faces = classification_report(y, predict(x), classes)
        out["conditions"][name] = {
            "macro_f1_real_faces": on_faces["macro_f1"],
            "macro_f1_rerendered": classification_report(y, predict(own), classes)["macro_f1"],
            # Test faces of another expression rendered as c, recognised as c.
            "recognised_as": {c: float((predict(rendered[i][y != i]) == i).mean()) for i, c in enumerate(classes)},
            "real_recall": {c: on_faces["recall"][c] if on_faces["support"][c] else None for c in classes},
        }
    return out


def mean(values: list) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished fesaug evaluate --out folder")
    parser.add_argument("--name", required=True, help="results go to bench/results/rendered_faces_<name>.*")
    parser.add_argument(
        "--folds", default="all", help="comma-separated test folds, default every fold with a generator"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    wanted = None if args.folds == "all" else {int(k) for k in args.folds.split(",")}
    folds = sorted(
        (
            p
            for p in args.run.glob("fold-*")
            if (p / "fersnet" / "checkpoints" / "last.pt").exists()
            and (wanted is None or int(p.name.split("-")[1]) in wanted)
        ),
        key=lambda p: int(p.name.split("-")[1]),
    )
    if not folds:
        sys.exit(f"Error: {args.run} has no fold with a trained generator (fold-k/fersnet/checkpoints/last.pt)")
    per_fold = {}
    for fold in folds:
        per_fold[fold.name] = fold_scores(fold)
        print(
            fold.name,
            {n: round(c["macro_f1_real_faces"] * 100, 1) for n, c in per_fold[fold.name]["conditions"].items()},
            flush=True,
        )
    classes = list(next(iter(per_fold.values()))["conditions"]["real"]["recognised_as"])
    names = [n for n in CONDITIONS if all(n in f["conditions"] for f in per_fold.values())]
    summary = {
        n: {
            "macro_f1_real_faces": mean([f["conditions"][n]["macro_f1_real_faces"] for f in per_fold.values()]),
            "macro_f1_rerendered": mean([f["conditions"][n]["macro_f1_rerendered"] for f in per_fold.values()]),
            "recognised_as": {
                c: mean([f["conditions"][n]["recognised_as"][c] for f in per_fold.values()]) for c in classes
            },
            "real_recall": {
                c: mean([f["conditions"][n]["real_recall"][c] for f in per_fold.values()]) for c in classes
            },
        }
        for n in names
    }
    result = {
        "benchmark": "FERSNet renderings of held-out test faces, classified by each condition's seed-0 classifier",
        "run": str(args.run),
        "folds": [f.name for f in folds],
        "summary": summary,
        "per_fold": per_fold,
        "rerender_mean_abs_change": mean([f["rerender_mean_abs_change"] for f in per_fold.values()]),
        "seconds": round(time.perf_counter() - start, 1),
        "machine": machine(threads=args.threads),
        "versions": package_versions(),
        "command": command(),
    }
    text = render(result, args.name)
    write_results(f"rendered_faces_{args.name}", result, text)
    print(text)


def render(r: dict, name: str) -> str:
    summary = r["summary"]
    classes = list(next(iter(r["per_fold"].values()))["conditions"]["real"]["recognised_as"])
    pct = lambda v: "–" if v is None else f"{v * 100:.1f}"  # noqa: E731
    lines = [
        f"# FERSNet renderings of held-out test faces ({name})",
        "",
        f"`{r['command']}` on {machine_line(r['machine'])}; {r['seconds']} s. Versions: "
        f"{versions_line(r['versions'])}.",
        "",
        f"Folds {', '.join(f.split('-')[1] for f in r['folds'])} of `{r['run']}`; mean over folds. Each fold's "
        "generator "
        "renders its real test faces (never seen by it or by the classifiers); each condition's seed-0 classifier "
        "classifies them. Re-rendering a face with its own expression changes it by "
        f"{r['rerender_mean_abs_change']:.1f} "
        "gray levels on average.",
        "",
        *markdown_table(
            ["condition", "macro-F1 on real test faces", "on the same faces re-rendered with their own expression"],
            [[f"`{n}`", pct(s["macro_f1_real_faces"]), pct(s["macro_f1_rerendered"])] for n, s in summary.items()],
        ),
        "",
        "Per class (%): recall on the real test faces of c / share of test faces of other expressions rendered as c "
        "that are recognised as c:",
        "",
        *markdown_table(
            ["condition", *classes],
            [
                [f"`{n}`", *(f"{pct(s['real_recall'][c])} / {pct(s['recognised_as'][c])}" for c in classes)]
                for n, s in summary.items()
            ],
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
