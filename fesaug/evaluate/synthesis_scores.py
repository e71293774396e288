"""Synthesis scores of ``fesaug evaluate``: how a fold's synthetic images look to models that
never saw them (:func:`synthesis_quality`), and their means over folds (:func:`synthesis_summary`).

The distances themselves (Fréchet, precision/recall, PSNR/SSIM, memorisation) are in
:mod:`fesaug.evaluate.metrics`; the judges trained elsewhere in :mod:`fesaug.judges`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fesaug.data.au import au_consistency
from fesaug.data.datasets import ManifestDataset, resize_pixels
from fesaug.data.demo import counterfactual
from fesaug.data.images import to_array
from fesaug.data.manifest import Manifest
from fesaug.evaluate.downstream import DownstreamClassifier, features, predict_proba
from fesaug.evaluate.metrics import frechet_distance, memorisation, precision_recall, psnr, ssim
from fesaug.evaluate.stats import across_folds, mean_std
from fesaug.judges import judge_synthesis
from fesaug.multitask.training import load_emotion_au
from fesaug.utils.errors import FesaugError


def synthesis_quality(
    classifier: DownstreamClassifier,
    m: Manifest,
    syn: ManifestDataset,
    *,
    real_train: tuple[torch.Tensor, np.ndarray, list[str]],
    real_val: tuple[torch.Tensor, np.ndarray],
    real_test: tuple[torch.Tensor, np.ndarray],
    au_checkpoint: str | None = None,
    judges: Sequence[str] = (),
    train_rows: np.ndarray | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Scores of the synthetic images ``syn`` (a manifest's synthetic rows at the classifier's size).

    ``classifier``: a downstream model trained on the real training images only (never on
    synthetic ones). ``real_train``: pixels, labels and subjects of those images; ``real_val``
    and ``real_test``: the validation and test images, which show what a fresh sample of
    *real* faces scores on the same distances (the floor a generator is compared with).
    ``judges``: models trained elsewhere (:mod:`fesaug.judges`) that score the synthetic images
    against their parents, which must be among ``train_rows`` (``m``'s rows of ``real_train``).
    """
    classes = m.classes
    probs = predict_proba(classifier, syn.pixels)
    target = syn.labels
    out: dict[str, Any] = {"n_synthetic": int(len(syn)), "per_class": {}}
    recognised = probs.argmax(1) == target
    out["recognised"] = float(recognised.mean())

    f_syn = features(classifier, syn.pixels)
    f_train = features(classifier, real_train[0])
    f_val, f_test = features(classifier, real_val[0]), features(classifier, real_test[0])
    out["frechet"] = {
        "synthetic_vs_train": _maybe(frechet_distance, f_syn, f_train),
        "validation_vs_train": _maybe(frechet_distance, f_val, f_train),
        "test_vs_train": _maybe(frechet_distance, f_test, f_train),
    }
    for k, c in enumerate(classes):
        mine, real_c = target == k, real_train[1] == k
        entry: dict[str, Any] = {"n": int(mine.sum())}
        if mine.any():
            entry["recognised"] = float(recognised[mine].mean())
            entry["mean_target_probability"] = float(probs[mine, k].mean())
            entry["frechet"] = _maybe(frechet_distance, f_syn[mine], f_train[real_c])
            pr = _maybe(precision_recall, f_train[real_c], f_syn[mine])
            entry["precision"], entry["recall"] = pr if pr is not None else (None, None)
        out["per_class"][c] = entry

    parents = {sid: i for i, sid in enumerate(m.df["sample_id"].tolist())}
    syn_df = syn.manifest.df.iloc[syn.rows]
    syn_subjects = syn_df["subject_id"].astype(str).tolist()
    out["memorisation"] = memorisation(syn.pixels, syn_subjects, real_train[0], real_train[2])
    if "demo_params" in m.df.columns:
        out["ground_truth"] = _ground_truth(m, syn, [parents[p] for p in syn_df["parent_id"]])
    if au_checkpoint:
        out["au_consistency"] = _au_consistency(au_checkpoint, syn, real_test, classes)
    if judges:
        position = {int(r): i for i, r in enumerate(train_rows)}
        missing = [p for p in syn_df["parent_id"] if parents[p] not in position]
        if missing:
            raise FesaugError(
                f"synthetic image parent {missing[0]} is not among the real training images the judges compare with"
            )
        out["judges"] = judge_synthesis(
            judges,
            classes,
            syn.pixels,
            target,
            np.array([position[parents[p]] for p in syn_df["parent_id"]]),
            real_train,
            real_test,
            device=device,
        )
    return out


def _maybe(metric: Callable[..., Any], *args: Any) -> Any:
    """The metric, or None when a set is too small for it (a class with a handful of images)."""
    try:
        return metric(*args)
    except FesaugError:
        return None


def _ground_truth(m: Manifest, syn: ManifestDataset, parent_rows: Sequence[int]) -> dict[str, Any]:
    """Exact scores on the demo dataset: each synthetic image against the same face rendered
    with its target expression, and the parent copied unchanged as the trivial baseline."""
    native = ManifestDataset(syn.manifest, rows=syn.rows)  # at the size written, the demo's size
    fake = native.pixels
    truth = torch.from_numpy(
        np.stack([to_array(counterfactual(m.df.iloc[p], m.classes[int(t)])) for p, t in zip(parent_rows, syn.labels)])
    )
    parents = ManifestDataset(m, rows=np.unique(np.asarray(parent_rows)), image_size=fake.shape[-1])
    position = {int(r): i for i, r in enumerate(parents.rows)}
    copy = parents.pixels[[position[int(r)] for r in parent_rows]]
    scores: dict[str, Any] = {}
    for name, images in (("synthetic", fake), ("copy_input", copy)):
        l1 = (images.float() - truth.float()).abs().mean(dim=(1, 2, 3)).numpy()
        scores[name] = {
            "l1": float(l1.mean()),
            "psnr": float(np.mean(np.minimum(psnr(images, truth), 100.0))),
            "ssim": float(np.mean(ssim(images, truth))),
        }
    return scores


def _au_consistency(
    checkpoint: str, syn: ManifestDataset, real_test: tuple[torch.Tensor, np.ndarray], classes: Sequence[str]
) -> dict[str, Any]:
    """Mean probability of each target class's prototype AUs (EMFACS) in its synthetic images,
    next to the same number for the real test images of that class."""
    model = load_emotion_au(checkpoint)
    # Both sets go through the same resize, so the two columns differ by content, not by resampling.
    _, syn_au = model.predict(resize_pixels(syn.pixels, model.image_size))
    _, real_au = model.predict(resize_pixels(real_test[0], model.image_size))
    out: dict[str, Any] = {}
    for k, c in enumerate(classes):
        entry: dict[str, Any] = {}
        for name, au, labels in (("synthetic", syn_au, syn.labels), ("real_test", real_au, real_test[1])):
            mine = torch.from_numpy(np.asarray(labels) == k)
            score = au_consistency(au[mine], model.au_ids, c) if mine.any() else None
            entry[name] = float(score.mean()) if score is not None else None
        out[c] = entry
    return out


def synthesis_summary(
    per_fold: Mapping[int, Mapping[str, Any]], classes: Sequence[str], real_test: Mapping[int, Mapping[str, Any]]
) -> dict[str, Any]:
    """Means over folds of the per-fold synthesis records; ``real_test``: the ``real`` condition's
    test report per fold, for the recognised share of real faces next to the synthetic one."""
    folds = [
        r | {"real_test": _recognised_real(r, real_test[k], classes)}
        for k, r in per_fold.items()
        if r.get("n_synthetic") and k in real_test
    ]
    if not folds:
        return {}

    def across(get: Callable[[Mapping[str, Any]], Any]) -> dict[str, Any]:
        return mean_std([get(r) for r in folds])

    out: dict[str, Any] = {
        "folds": sorted(k for k, r in per_fold.items() if r.get("n_synthetic")),
        "n_synthetic": int(sum(r["n_synthetic"] for r in folds)),
        "recognised": across(lambda r: r["recognised"]),
        "real_test_recognised": across(lambda r: r["real_test"]["weighted"]),
        "classification_accuracy_score": {
            k: across(lambda r, k=k: r["classification_accuracy_score"][k])
            for k in ("accuracy", "macro_f1", "real_accuracy", "real_macro_f1")
        },
        "frechet": {
            k: across(lambda r, k=k: r["frechet"][k])
            for k in ("synthetic_vs_train", "validation_vs_train", "test_vs_train")
        },
        "memorisation": {
            k: across(lambda r, k=k: r["memorisation"][k]) for k in ("share", "distance_median", "real_distance_median")
        }
        | {"near_copies": int(sum(r["memorisation"]["near_copies"] for r in folds))},
        "per_class": {
            c: {
                k: across(lambda r, c=c, k=k: r["per_class"][c].get(k))
                for k in ("recognised", "mean_target_probability", "frechet", "precision", "recall")
            }
            | {
                "real_test_recognised": across(lambda r, c=c: r["real_test"]["per_class"].get(c)),
                "n": int(sum(r["per_class"][c]["n"] for r in folds)),
            }
            for c in classes
        },
    }
    if all("ground_truth" in r for r in folds):
        out["ground_truth"] = {
            who: {k: across(lambda r, who=who, k=k: r["ground_truth"][who][k]) for k in ("l1", "psnr", "ssim")}
            for who in ("synthetic", "copy_input")
        }
    if any("judges" in r for r in folds):
        out["judges"] = across_folds([r.get("judges") for r in folds])
    if all("au_consistency" in r for r in folds):
        out["au_consistency"] = {
            c: {who: across(lambda r, c=c, who=who: r["au_consistency"][c][who]) for who in ("synthetic", "real_test")}
            for c in classes
        }
    return out


def _recognised_real(syn: Mapping[str, Any], test: Mapping[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """How often the same ``real`` classifier recognises *real* test faces of each synthesized
    class (its test recall), and that share weighted like the synthetic set: the yardstick for
    the synthetic recognised share, which cannot be read alone when the classifier itself
    misses a third of a class's real faces."""
    per_class = {c: test["recall"][c] for c in classes if syn["per_class"][c]["n"] and test["support"].get(c, 0) > 0}
    n = {c: syn["per_class"][c]["n"] for c in per_class}
    weighted = sum(per_class[c] * n[c] for c in per_class) / sum(n.values()) if per_class else None
    return {"per_class": per_class, "weighted": weighted}
