"""Does `fesaug ingest --align` level the eyes? Demo faces with added rotation, before and after.

Demo faces know their true head roll (the renderer's pose angle); this adds a random rotation of
up to +-25 degrees to each, writes them as a class-folder tree, and runs `fesaug ingest` on it
with and without `--align` (both `--size 64`). It reports the eye-line tilt of every output image
as dlib's landmarks measure it, and for the demo faces also the true one: the known roll minus
the rotation alignment applied. The `shifted` demo population (wider poses, low resolution) is
the harder case.

With `--ckplus` it also reads the real CK+48 images in place (research-only; no image of it is
written anywhere but a temporary folder, and only numbers are reported): the mean eye positions
dlib finds on all 981 faces (where fesaug.data.align's canonical positions come from), the tilt
before and after `--align`, and the same faces rotated in memory.

    .venv/bin/python bench/align_demo.py                 # ~1 min
    .venv/bin/python bench/align_demo.py --ckplus        # + CK+48 from ../shared/data/ckplus48

Writes bench/results/align_demo.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from record import command, machine, machine_line, write_results

from fesaug.data.align import BOX_SHAPE, DETECT_MIN_SIDE, LEFT_EYE, REFRAMES, RIGHT_EYE, FaceAligner
from fesaug.data.demo import make_demo_dataset, render_params
from fesaug.data.ingest import ingest
from fesaug.data.manifest import read_manifest
from fesaug.utils.dlib_models import face_detector, landmark_model
from fesaug.utils.errors import FesaugError
from fesaug.utils.provenance import package_versions
from fesaug.utils.tables import markdown_table

CKPLUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ckplus48"
MAX_ROTATION = 25.0


def tilt(aligner: FaceAligner, img: Image.Image) -> float:
    """The eye line's tilt as dlib measures it; NaN where it finds no face."""
    try:
        return aligner.locate(img, where="").angle
    except FesaugError:
        return float("nan")


def summary(angles: np.ndarray) -> dict[str, float]:
    a = np.abs(np.asarray(angles, dtype=float))
    ok = a[~np.isnan(a)]
    return {
        "mean_abs": round(float(ok.mean()), 2),
        "median_abs": round(float(np.median(ok)), 2),
        "p95_abs": round(float(np.percentile(ok, 95)), 2),
        "within_2deg": round(float((ok <= 2).mean()), 3),
        "measured": int(len(ok)),
        "of": int(len(a)),
    }


def demo_case(style: str, tmp: Path, aligner: FaceAligner, seed: int) -> dict:
    """Every image of the default demo set of ``style``, rotated, through ingest with and without --align."""
    manifest = make_demo_dataset(tmp / f"demo-{style}", style=style, seed=seed)
    df = read_manifest(manifest).df
    rng = np.random.default_rng([seed, 19])
    added = rng.uniform(-MAX_ROTATION, MAX_ROTATION, len(df))
    src = tmp / f"rotated-{style}"
    true_tilt = {}
    for (_, row), extra in zip(df.iterrows(), added):
        face = Image.fromarray(render_params(row))
        # PIL's rotate(a) turns the content counter-clockwise, the sign of Landmarks.angle and of the demo's pose angle.
        rotated = face.rotate(
            float(extra), resample=Image.Resampling.BICUBIC, fillcolor=int(np.median(np.asarray(face)[0]))
        )
        (src / row["label_name"]).mkdir(parents=True, exist_ok=True)
        rotated.save(src / row["label_name"] / f"{row['sample_id']}.png")
        true_tilt[row["sample_id"]] = json.loads(row["demo_params"])["nuisance"]["angle"] + float(extra)

    out: dict = {"images": len(df)}
    for name, align in (("plain", False), ("aligned", True)):
        start = time.perf_counter()
        done = ingest(src, tmp / f"{style}-{name}.parquet", size=64, align=align, skip_bad=True)
        seconds = time.perf_counter() - start
        m = read_manifest(done.manifest)
        measured = np.array([tilt(aligner, m.open_image(i)) for i in range(len(m))])
        truth = np.array([true_tilt[s] for s in m.df["sample_id"]])
        if align:
            truth = truth - m.df["align_angle"].to_numpy(dtype=float)
            out["boxes"] = done.aligned
            out["estimate_error"] = summary(
                m.df["align_angle"].to_numpy(dtype=float) - np.array([true_tilt[s] for s in m.df["sample_id"]])
            )
        out[name] = {
            "dlib_tilt": summary(measured),
            "true_tilt": summary(truth),
            "seconds": round(seconds, 1),
            "skipped": len(done.skipped),
        }
        if align:
            boxes = m.df.set_index("sample_id")["align_box"]
    out["fallback"] = fallback(src, true_tilt, boxes)
    return out


def fallback(src: Path, true_tilt: dict[str, float], boxes) -> dict:
    """The whole-image box on every face, as if the detector had found none: error of the
    estimated tilt with 0, 1 and REFRAMES re-framings, next to the detector's on the faces it found."""
    files = sorted(src.glob("*/*.png"))
    out = {}
    for reframes in sorted({0, 1, REFRAMES}):
        aligner = FaceAligner(use_detector=False, reframes=reframes)
        errors = []
        for f in files:
            try:
                errors.append(aligner.locate(Image.open(f), where=str(f)).angle - true_tilt[f.stem])
            except FesaugError:
                errors.append(float("nan"))
        out[f"whole image, {reframes} re-framing(s)"] = summary(np.array(errors))
    detected = [f for f in files if boxes.get(f.stem) == "detector"]
    aligner = FaceAligner()
    out[f"detector ({len(detected)} faces it found)"] = summary(
        np.array([aligner.locate(Image.open(f), where=str(f)).angle - true_tilt[f.stem] for f in detected])
    )
    return out


def box_shape(files: list[Path]) -> list[list[float]]:
    """Mean positions of dlib's five points in its detector's box (fractions of the box side)."""
    import cv2

    detector, model = face_detector(), landmark_model()
    shapes = []
    for f in files:
        gray = np.asarray(Image.open(f).convert("L"))
        h, w = gray.shape
        factor = max(1.0, DETECT_MIN_SIDE / min(h, w))
        work = (
            cv2.resize(gray, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_CUBIC)
            if factor > 1
            else gray
        )
        found = list(detector(work, 0))
        if found:
            box = max(found, key=lambda r: r.area())
            points = np.array([(p.x, p.y) for p in model(work, box).parts()], dtype=float)
            shapes.append((points + 0.5 - [box.left(), box.top()]) / box.width())
    return np.mean(shapes, axis=0).round(3).tolist()


def ckplus_case(aligner: FaceAligner, tmp: Path, seed: int) -> dict:
    files = sorted(CKPLUS.glob("*/*.png"))
    eyes, tilts = [], []
    for f in files:
        img = Image.open(f)
        found = aligner.locate(img, where=str(f))
        eyes.append(np.concatenate([found.left_eye, found.right_eye]) + 0.5)  # pixel centres -> edges
        eyes[-1] = eyes[-1] / np.array([img.width, img.height] * 2)
        tilts.append(found.angle)
    eyes = np.array(eyes)
    done = ingest(CKPLUS, tmp / "ck-aligned.parquet", preset="ckplus", align=True, size=48, skip_bad=True)
    m = read_manifest(done.manifest)
    after = np.array([tilt(aligner, m.open_image(i)) for i in range(len(m))])
    # The same faces turned in memory by up to +-25 degrees, aligned, measured again.
    rng = np.random.default_rng([seed, 48])
    turned_est, turned_after, turned_err = [], [], []
    base = dict(zip((str(f) for f in files), tilts))
    for f in files[::3]:
        a = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
        img = Image.open(f).convert("L")
        rotated = img.rotate(a, resample=Image.Resampling.BICUBIC, fillcolor=int(np.median(np.asarray(img)[0])))
        try:
            out, found = aligner.align(rotated, where=str(f), size=48)
        except FesaugError:
            turned_est.append(float("nan"))
            continue
        turned_est.append(found.angle)
        turned_err.append(found.angle - (base[str(f)] + a))
        turned_after.append(tilt(aligner, out))
    span = eyes[:, 2] - eyes[:, 0]
    distance = np.linalg.norm(eyes[:, 2:] - eyes[:, :2], axis=1) * 48
    return {
        "images": len(files),
        "mean_eyes": {
            "left": eyes[:, :2].mean(0).round(4).tolist(),
            "right": eyes[:, 2:].mean(0).round(4).tolist(),
            "left_sd": eyes[:, :2].std(0).round(4).tolist(),
            "right_sd": eyes[:, 2:].std(0).round(4).tolist(),
            "span": round(float(span.mean()), 4),
            "eye_y": round(float(eyes[:, [1, 3]].mean()), 4),
            "centre_x": round(float(((eyes[:, 0] + eyes[:, 2]) / 2).mean()), 4),
            "mean_signed_tilt": round(float(np.mean(tilts)), 2),
            "eye_distance_px": [
                round(float(distance.min()), 1),
                round(float(distance.mean()), 1),
                round(float(distance.max()), 1),
            ],
        },
        "box_shape": box_shape(files),
        "plain": {"dlib_tilt": summary(np.array(tilts))},
        "aligned": {"dlib_tilt": summary(after), "boxes": done.aligned, "skipped": len(done.skipped)},
        "rotated": {
            "images": len(turned_est),
            "estimate_error": summary(np.array(turned_err)),
            "before": summary(np.array(turned_est)),
            "aligned": summary(np.array(turned_after)),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ckplus", action="store_true", help=f"also measure CK+48 at {CKPLUS}")
    args = parser.parse_args()
    start = time.perf_counter()
    aligner = FaceAligner()
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        report["demo"] = {style: demo_case(style, tmp, aligner, args.seed) for style in ("standard", "shifted")}
        if args.ckplus:
            if not CKPLUS.is_dir():
                raise SystemExit(f"CK+48 not found at {CKPLUS}")
            report["ckplus"] = ckplus_case(aligner, tmp, args.seed)
    import cv2
    import dlib

    report.update(
        {
            "canonical_eyes": {"left": list(LEFT_EYE), "right": list(RIGHT_EYE)},
            "box_shape": [list(p) for p in BOX_SHAPE],
            "max_added_rotation": MAX_ROTATION,
            "wall_s": round(time.perf_counter() - start, 1),
            "machine": machine(),
            "versions": {**package_versions(), "dlib": dlib.__version__, "opencv": cv2.__version__},
            "command": command(),
        }
    )
    write_results("align_demo", report, render(report))
    print(render(report))


def _cell(s: dict) -> str:
    return f"{s['mean_abs']:.2f} / {s['median_abs']:.2f} / {s['p95_abs']:.2f} ({100 * s['within_2deg']:.0f} %)"


def render(r: dict) -> str:
    v = r["versions"]
    out = [
        "# `fesaug ingest --align`: eye-line tilt before and after",
        "",
        f"`{r['command']}` — {r['wall_s']} s wall ({machine_line(r['machine'])}), "
        f"dlib {v['dlib']}, OpenCV {v['opencv']}.",
        "",
        f"Every face of the default demo set (981 images per population, seed 0) turned by a random angle in "
        f"+-{r['max_added_rotation']:g} degrees, then `fesaug ingest --size 64` without and with `--align`. Tilt "
        "of the eye "
        "line in degrees, as mean / median / 95th percentile of its absolute value (share within 2 degrees): "
        "*dlib* as dlib's "
        "landmarks measure it on the output image, *true* from the renderer's known head roll plus the added turn, "
        "minus the "
        "rotation alignment applied. After alignment the *dlib* column is the landmark model judging its own work, "
        "which understates the error; the *true* column is the measure.",
        "",
    ]
    rows = []
    for style, d in r["demo"].items():
        for name in ("plain", "aligned"):
            boxes = d["boxes"] if name == "aligned" else None
            faces = f"{boxes['detector']} / {boxes['whole-image']} / {boxes['skipped']}" if boxes else "-"
            ingest = "--align" if name == "aligned" else "plain"
            rows.append(
                [style, ingest, _cell(d[name]["dlib_tilt"]), _cell(d[name]["true_tilt"]), faces, d[name]["seconds"]]
            )
    out += markdown_table(
        ["population", "ingest", "dlib tilt", "true tilt", "faces (detector / whole image / skipped)", "s"], rows
    )
    out += [
        "",
        "Error of the estimated tilt (`align_angle` minus the truth): "
        + "; ".join(f"{style} {_cell(d['estimate_error'])}" for style, d in r["demo"].items())
        + ".",
        "",
        "The whole-image fallback on every one of these faces, as if the detector had found none (error of the "
        "estimated tilt against the truth; the re-framing puts the box where dlib's detector would, from the "
        "landmarks found so far):",
        "",
    ]
    out += markdown_table(
        ["population", "face box", "tilt error"],
        [[style, name, _cell(s)] for style, d in r["demo"].items() for name, s in d["fallback"].items()],
    )
    if "ckplus" in r:
        c = r["ckplus"]
        e = c["mean_eyes"]
        out += [
            "",
            f"## CK+48 ({c['images']} images, numbers only)",
            "",
            f"Mean eye centres dlib finds (fractions of the side, x right, y down): left ({e['left'][0]}, "
            f"{e['left'][1]}) "
            f"sd ({e['left_sd'][0]}, {e['left_sd'][1]}), right ({e['right'][0]}, {e['right'][1]}) sd "
            f"({e['right_sd'][0]}, "
            f"{e['right_sd'][1]}); {e['span']} apart, centred at x {e['centre_x']}, mean signed tilt "
            f"{e['mean_signed_tilt']} "
            f"degrees; eyes {e['eye_distance_px'][0]} to {e['eye_distance_px'][2]} px apart (mean "
            f"{e['eye_distance_px'][1]}). "
            f"fesaug's canonical eyes, level and centred: left {tuple(r['canonical_eyes']['left'])}, right "
            f"{tuple(r['canonical_eyes']['right'])}. dlib's five points in its detector's box (the fallback's "
            "re-framing "
            f"shape): {c['box_shape']} (fesaug: {r['box_shape']}).",
            "",
        ]
        boxes = c["aligned"]["boxes"]
        out += markdown_table(
            ["CK+48", "dlib tilt", "faces (detector / whole image / skipped)"],
            [
                ["as shipped", _cell(c["plain"]["dlib_tilt"]), "-"],
                [
                    "`--align --size 48`",
                    _cell(c["aligned"]["dlib_tilt"]),
                    f"{boxes['detector']} / {boxes['whole-image']} / {boxes['skipped']}",
                ],
                [
                    f"turned +-{r['max_added_rotation']:g} degrees in memory ({c['rotated']['images']} images)",
                    _cell(c["rotated"]["before"]),
                    "-",
                ],
                ["the same, aligned", _cell(c["rotated"]["aligned"]), "-"],
            ],
        )
        out += [
            "",
            f"Error of the estimated tilt on the turned faces (against the added turn plus the tilt found on the "
            f"unturned image): {_cell(c['rotated']['estimate_error'])}.",
        ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
