"""The judges trained elsewhere (fesaug.judges) on *real* faces: are their numbers meaningful here?

For a manifest of real faces, with the same pairs the synthesis report uses as yardsticks
(``fesaug.judges.report.yardstick_pairs``: one subject showing two different expressions, and two
different subjects):

* identity (dlib): distance medians, share under dlib's 0.6, and the AUC of telling the two
  kinds of pairs apart (1.0: the distance always separates them);
* perceptual (shift-tolerant LPIPS, AlexNet and VGG): the same;
* FER2013 judge: zero-shot accuracy per class (its top class of seven, neutral included, must be
  the label), over the classes it knows, and the share of each class it calls neutral.

    python bench/judges_real.py --manifest manifests/ck.parquet --name ckplus
    python bench/judges_real.py --manifest demo-output/data/manifest.parquet --name demo

Writes ``bench/results/judges_real_<name>.json`` and ``.md``. Nothing is trained or chosen.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from record import command, machine, machine_line, versions_line, write_results
from sklearn.metrics import roc_auc_score

from fesaug.data.datasets import ManifestDataset
from fesaug.data.labels import canonical_label
from fesaug.data.manifest import read_manifest
from fesaug.judges import load_judge
from fesaug.judges.identity import SAME_PERSON_DISTANCE
from fesaug.judges.perceptual import PerceptualJudge
from fesaug.judges.report import stats, yardstick_pairs
from fesaug.utils.provenance import package_versions
from fesaug.utils.tables import markdown_table


def separation(yard: dict[str, np.ndarray], threshold: float | None) -> dict:
    same, diff = yard["same_subject"], yard["different_subject"]
    ok_s, ok_d = same[np.isfinite(same)], diff[np.isfinite(diff)]
    auc = (
        roc_auc_score(np.r_[np.ones(len(ok_s)), np.zeros(len(ok_d))], -np.r_[ok_s, ok_d])
        if len(ok_s) and len(ok_d)
        else None
    )
    return {"same_subject": stats(same, threshold), "different_subject": stats(diff, threshold), "auc": auc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--max-pairs", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    m = read_manifest(args.manifest)
    data = ManifestDataset(m, origins=("real",))
    subjects = m.df["subject_id"].iloc[data.rows].tolist()
    pairs = yardstick_pairs(subjects, data.labels, max_pairs=args.max_pairs)
    result: dict = {
        "manifest": str(args.manifest),
        "n_images": len(data),
        "image_size": list(data.pixels.shape[-2:]),
        "n_subjects": int(m.df["subject_id"].nunique()),
        "pairs": {k: len(v) for k, v in pairs.items()},
        "command": command(),
        "versions": package_versions(),
        "machine": machine(threads=args.threads),
    }

    start = time.perf_counter()
    identity = load_judge("identity")
    emb = identity.embed(data.pixels)
    seconds = time.perf_counter() - start
    yard = {k: np.linalg.norm(emb[p[:, 0]] - emb[p[:, 1]], axis=1) for k, p in pairs.items()}
    result["identity"] = separation(yard, SAME_PERSON_DISTANCE) | {
        "not_embedded": int(np.isnan(emb).any(1).sum()),
        "seconds_per_face": seconds / len(data),
    }

    for backbone in ("alex", "vgg"):
        start = time.perf_counter()
        judge = PerceptualJudge(backbone)
        feats = judge.features(data.pixels)
        yard = {k: judge.pair_distances(feats, feats, p[:, 0], p[:, 1]) for k, p in pairs.items()}
        result[f"perceptual_{backbone}"] = separation(yard, None) | {"seconds": time.perf_counter() - start}
        del feats

    fer = load_judge("fer2013")
    top = np.asarray(fer.classes)[fer.probabilities(data.pixels).argmax(1)]
    per_class = {}
    for k, c in enumerate(m.classes):
        mine = data.labels == k
        name = canonical_label(c)
        per_class[c] = {
            "n": int(mine.sum()),
            "judged": name in fer.classes,
            "recognised": float((top[mine] == name).mean()) if name in fer.classes else None,
            "called_neutral": float((top[mine] == "neutral").mean()),
        }
    judged = [c for c, e in per_class.items() if e["judged"]]
    shared = np.isin([canonical_label(c) for c in np.asarray(m.classes)[data.labels]], fer.classes)
    result["fer2013"] = {
        "per_class": per_class,
        "accuracy_on_known_classes": float(
            (top[shared] == np.asarray([canonical_label(c) for c in np.asarray(m.classes)[data.labels[shared]]])).mean()
        ),
        "mean_recall_on_known_classes": float(np.mean([per_class[c]["recognised"] for c in judged])),
    }

    write_results(f"judges_real_{args.name}", result, render(result))
    print(render(result))


def _share(e: dict) -> str:
    return "not judged" if not e["judged"] else f"{e['recognised']:.0%}"


def render(r: dict) -> str:
    def row(name: str, e: dict, under: bool) -> list[str]:
        s, d = e["same_subject"], e["different_subject"]
        u = (lambda x: f" ({x['share_under']:.0%} under 0.6)") if under else (lambda x: "")
        return [name, f"{s['median']:.3f}{u(s)}", f"{d['median']:.3f}{u(d)}", f"{e['auc']:.3f}"]

    fer = r["fer2013"]
    lines = [
        f"# Judges trained elsewhere, on the real faces of `{r['manifest']}`",
        "",
        f"`{r['command']}` on {machine_line(r['machine'])}. Versions: {versions_line(r['versions'])}.",
        "",
        f"{r['n_images']} real faces ({r['image_size'][0]}×{r['image_size'][1]}), {r['n_subjects']} subjects; "
        f"{r['pairs']['same_subject']} same-subject pairs (two different expressions of one person) and "
        f"{r['pairs']['different_subject']} different-subject pairs, as the synthesis report's yardsticks draws them. "
        "AUC: how well the distance tells the two kinds of pairs apart (0.5: not at all).",
        "",
        *markdown_table(
            ["judge", "median distance, same subject", "median distance, different subjects", "AUC"],
            [
                row("identity (dlib ResNet, 5-point chips)", r["identity"], True),
                row("perceptual (ST-LPIPS AlexNet)", r["perceptual_alex"], False),
                row("perceptual (ST-LPIPS VGG)", r["perceptual_vgg"], False),
            ],
            align="lrrr",
        ),
        "",
        f"Identity: {r['identity']['not_embedded']} face(s) could not be aligned; "
        f"{r['identity']['seconds_per_face'] * 1000:.0f} ms per face.",
        "",
        f"FER2013 judge, zero-shot (top class of seven, neutral included): accuracy "
        f"{fer['accuracy_on_known_classes']:.1%} over the classes it knows, mean recall "
        f"{fer['mean_recall_on_known_classes']:.1%}.",
        "",
        *markdown_table(
            ["class", "images", "recognised", "called neutral"],
            [[c, e["n"], _share(e), f"{e['called_neutral']:.0%}"] for c, e in fer["per_class"].items()],
            align="lrrr",
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
