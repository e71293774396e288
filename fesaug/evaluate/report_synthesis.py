"""``report.md``'s synthesis sections: how the fold's own classifiers and the judges trained
elsewhere see the synthetic faces (``results.json`` → ``synthesis``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fesaug.evaluate.stats import stat_text as _ms
from fesaug.utils.tables import markdown_table


def synthesis_section(
    s: Mapping[str, Any], classes: Sequence[str], sibling_trained: bool = False, cross: bool = False
) -> list[str]:
    """``report.md``'s synthesis quality: the scores, per target class, and the judges trained elsewhere."""
    if not s:
        return []
    lines = _synthesis_scores(s, sibling_trained, cross)
    lines += ["", "Per target class:" if cross else "Per target class (mean ± std over folds):", ""]
    lines += _per_class_table(s, classes)
    if s.get("judges"):
        lines += _judges_section(s["judges"], classes)
    return lines


def _synthesis_scores(s: Mapping[str, Any], sibling_trained: bool, cross: bool) -> list[str]:
    made = "made from the training subjects" if cross else f"over folds {', '.join(map(str, s['folds']))}"
    test, split = ("the test dataset", "split") if cross else ("the real test fold", "fold")
    cas = s["classification_accuracy_score"]
    fr, mem = s["frechet"], s["memorisation"]
    # A generator trained to satisfy a classifier of the same recipe and data fools its sibling too.
    caveat = (
        " The generator was trained against the fold's judge, a classifier of the same recipe and data "
        "(another seed), so this share measures how well fooling one transfers to the other; the classification "
        "accuracy score below says whether the images teach the expression."
        if sibling_trained
        else ""
    )
    lines = [
        "",
        f"## Synthesis quality ({s['n_synthetic']} synthetic images {made})",
        "",
        f"- Recognised as their target class by the {split}'s `real` classifier: **{_ms(s['recognised'])} %**; the "
        "same "
        f"classifier recognises {_ms(s.get('real_test_recognised'))} % of the real test faces of those classes "
        f"(weighted like the synthetic set).{caveat}",
        f"- Classification accuracy score (trained on synthetic images only, tested on {test}): "
        f"accuracy {_ms(cas['accuracy'])} %, macro-F1 {_ms(cas['macro_f1'])} % (trained on real: "
        f"{_ms(cas['real_accuracy'])} %, {_ms(cas['real_macro_f1'])} %).",
        "- Fréchet distance in the `real` classifier's penultimate features (not FID: no Inception weights): "
        "synthetic vs "
        f"real training {_ms(fr['synthetic_vs_train'], 1, 2)}; for scale, real validation vs training "
        f"{_ms(fr['validation_vs_train'], 1, 2)}, {'the test dataset' if cross else 'real test'} vs training "
        f"{_ms(fr['test_vs_train'], 1, 2)}.",
        f"- Memorisation: {mem['near_copies']} synthetic image(s) closer to another subject's real training image "
        "than any "
        f"real image is to another subject's ({_ms(mem['share'])} %); median distance to the nearest other-subject "
        f"image {_ms(mem['distance_median'], 1, 1)} gray levels (real images: "
        f"{_ms(mem['real_distance_median'], 1, 1)}).",
    ]
    if "ground_truth" in s:
        g = s["ground_truth"]
        lines += [
            f"- Against the demo dataset's exact counterfactuals: L1 {_ms(g['synthetic']['l1'], 1, 2)} gray levels, "
            f"PSNR {_ms(g['synthetic']['psnr'], 1, 2)} dB, SSIM {_ms(g['synthetic']['ssim'], 1, 3)}; copying the input "
            f"unchanged scores L1 {_ms(g['copy_input']['l1'], 1, 2)}, PSNR {_ms(g['copy_input']['psnr'], 1, 2)} dB, "
            f"SSIM {_ms(g['copy_input']['ssim'], 1, 3)}."
        ]
    return lines


def _per_class_table(s: Mapping[str, Any], classes: Sequence[str]) -> list[str]:
    au = s.get("au_consistency")
    header = [
        "target class",
        "images",
        "recognised %",
        "real test faces recognised %",
        "target prob.",
        "Fréchet",
        "precision",
        "recall",
    ]
    header += ["AU consistency synthetic", "AU consistency real test"] if au else []
    rows = []
    for c in classes:
        e = s["per_class"][c]
        row = [
            c,
            str(e["n"]),
            _ms(e["recognised"]),
            _ms(e.get("real_test_recognised")),
            _ms(e["mean_target_probability"], 1, 2),
            _ms(e["frechet"], 1, 2),
            _ms(e["precision"], 1, 2),
            _ms(e["recall"], 1, 2),
        ]
        if au:
            row += [_ms(au[c]["synthetic"], 1, 2), _ms(au[c]["real_test"], 1, 2)]
        rows.append(row)
    return markdown_table(header, rows)


def judges_summary(j: Mapping[str, Any]) -> list[str]:
    """One line per judge trained elsewhere (``results.json`` → ``synthesis`` → ``judges``),
    each number beside its real-face yardstick; for the CLI summary and the report."""
    lines = []
    for name, label in (
        ("identity", "identity distance to the parent (dlib)"),
        ("perceptual", "perceptual distance to the parent (ST-LPIPS)"),
    ):
        if name in j:
            e, y = j[name], j[name]["yardstick"]
            under = (
                f", {_ms(e['all'].get('share_under'), 100, 0)} % under {e['threshold']:g}" if "threshold" in e else ""
            )
            y_under = {k: f", {_ms(y[k].get('share_under'), 100, 0)} % under" if "threshold" in e else "" for k in y}
            lines.append(
                f"{label}: median {_ms(e['all']['median'], 1, 3)}{under} (real pairs: same subject, other "
                f"expression {_ms(y['same_subject']['median'], 1, 3)}{y_under['same_subject']}; different subjects "
                f"{_ms(y['different_subject']['median'], 1, 3)}{y_under['different_subject']})"
            )
            if e["all"].get("not_judged"):
                lines[-1] += f"; {e['all']['not_judged']} face(s) could not be read"
    if "fer2013" in j:
        e = j["fer2013"]
        skipped = f"; not judged: {', '.join(e['not_judged'])} (no such class)" if e.get("not_judged") else ""
        lines.append(
            f"FER2013 judge (trained on another dataset) recognises {_ms(e['all']['synthetic'])} % of the synthetic "
            f"faces as their target; real test faces of those classes: {_ms(e['all']['real_test'])} %{skipped}"
        )
    return lines


def _judges_section(j: Mapping[str, Any], classes: Sequence[str]) -> list[str]:
    lines = [
        "",
        "### Judges trained elsewhere",
        "",
        "Models that never saw this data or the generator: dlib's face-recognition ResNet (identity), mini-Xception "
        "trained on FER2013 (expression), shift-tolerant LPIPS (perceptual). Distances are medians over each fold's "
        "synthetic faces, each against its parent; the yardsticks are the same distances between real training "
        "faces (mean ± std over folds).",
        "",
        *(f"- {line}" for line in judges_summary(j)),
    ]
    header, columns = ["target class"], []
    if "identity" in j:
        header += ["identity distance", f"under {j['identity']['threshold']:g} %"]
        columns.append(
            lambda c: [
                _ms(j["identity"]["per_class"].get(c, {}).get("median"), 1, 3),
                _ms(j["identity"]["per_class"].get(c, {}).get("share_under"), 100, 0),
            ]
        )
    if "fer2013" in j:
        header += ["FER2013 recognised %", "FER2013 on real test faces %"]

        def fer(c: str) -> list[str]:
            e = j["fer2013"]["per_class"].get(c)
            if e is None:
                return ["–", "–"]
            return (
                [_ms(e.get("synthetic")), _ms(e.get("real_test"))] if e.get("judged") else ["not judged", "not judged"]
            )

        columns.append(fer)
    if "perceptual" in j:
        header.append("perceptual distance")
        columns.append(lambda c: [_ms(j["perceptual"]["per_class"].get(c, {}).get("median"), 1, 3)])
    present = [c for c in classes if any(c in j[n].get("per_class", {}) for n in j)]
    rows = [[c, *(v for col in columns for v in col(c))] for c in present]
    return lines + ["", *markdown_table(header, rows)]
