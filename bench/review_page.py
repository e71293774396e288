"""Review page: how long `fesaug review` takes to write the page of a CK+-sized balanced set and
of a 20,000-row one, cold (every thumbnail made) and warm (thumbnails reused), and how the page
behaves in headless Chromium (time until usable, longest main-thread task, filter and sort).

    OMP_NUM_THREADS=1 .venv/bin/python bench/review_page.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/review_page.py --rows 20000 --work /tmp/fesaug-bench/review

Setup (cached under --work, not timed): the default demo dataset (981 images, 64x64), a
1-epoch `cpu`-preset checkpoint (holdout fold 0) and `fesaug balance` to the largest class
(`min_confidence=0`, intensities 0.5..1.5, synthetic weight 0.8): the *CK+-sized* set. The
*20,000-row* set: the same real rows plus 20,000 synthetic rows, each its own image (a balanced
image with one pixel changed, so no two share a thumbnail), a random real parent of another
class, and random scores in every score column the page knows (gate, judge, identity,
FER2013, intensity, weight, target mass). Both are demo sets, so every card also gets its
exact counterfactual, drawn at generation time (the most expensive thumbnail).
Browser numbers: Chromium headless on the same machine, 1400x1000 window; the page's own
``performance.now()`` marks; each action is a synchronous change event plus a forced layout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from record import RESULTS, command, machine, machine_line, versions_line, write_results

from fesaug.data.images import encode_png, sha256_bytes
from fesaug.data.manifest import read_manifest, write_manifest
from fesaug.utils.tables import markdown_table

# Runs one action in the page and returns its milliseconds including layout.
ACTION = """
const [id, value] = arguments;
const t = performance.now();
const c = document.getElementById(id);
c.value = value;
c.dispatchEvent(new Event('change'));
document.body.offsetHeight;
return performance.now() - t;
"""
LONG_TASKS = """
return new Promise(resolve => {
  new PerformanceObserver(list => resolve(Math.max(0, ...list.getEntries().map(e => e.duration))))
    .observe({type: 'longtask', buffered: true});
  setTimeout(() => resolve(0), 500);
});
"""


def setup(work: Path) -> Path:
    """The balanced demo set (made once)."""
    from fesaug.balance.config import BalanceConfig
    from fesaug.balance.run import balance
    from fesaug.data.demo import make_demo_dataset
    from fesaug.synthesis.training import TrainConfig, train

    manifest, ckpt, out = (
        work / "demo" / "manifest.parquet",
        work / "run" / "checkpoints" / "last.pt",
        work / "balanced",
    )
    if not manifest.exists():
        make_demo_dataset(work / "demo", size=64, overwrite=True)
    if not ckpt.exists():
        train(manifest, work / "run", TrainConfig().updated({"epochs": 1, "holdout_fold": 0}, where="bench"))
    if not (out / "manifest.parquet").exists():
        config = BalanceConfig(min_confidence=0.0, intensity=(0.5, 1.5), synthetic_weight=0.8)
        balance(manifest, ckpt, out, config, overwrite=True, device="cpu")
    return out


def large_set(balanced: Path, work: Path, rows: int) -> Path:
    """``rows`` synthetic rows on the balanced set's real rows (made once)."""
    out = work / f"rows-{rows}"
    if (out / "manifest.parquet").exists():
        return out
    m = read_manifest(balanced / "manifest.parquet")
    rng = np.random.default_rng(0)
    real = m.df[m.df["origin"] == "real"].reset_index(drop=True)
    syn = np.flatnonzero(m.df["origin"] == "synthetic")
    labels = rng.integers(0, len(m.classes), rows)
    records = []
    for i, k in enumerate(labels.tolist()):
        pixels = np.asarray(m.open_image(int(syn[i % len(syn)]))).copy()
        pixels.flat[i % pixels.size] ^= 1 + (i // pixels.size) % 255  # one pixel differs: a distinct image
        data = encode_png(Image.fromarray(pixels))
        path = f"{out.name}/images/{m.classes[k]}/big-{i:06d}.png"
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_bytes(data)
        others = np.flatnonzero(real["label"].to_numpy() != k)
        parent = real.iloc[int(rng.choice(others))]
        records.append(
            {
                "sample_id": f"big-{m.classes[k]}-{i:06d}",
                "image": {"bytes": None, "path": path},
                "label": k,
                "label_name": m.classes[k],
                "subject_id": parent["subject_id"],
                "fold": parent["fold"],
                "split": parent["split"],
                "origin": "synthetic",
                "parent_id": parent["sample_id"],
                "source_label": int(parent["label"]),
                "generator": "0" * 64,
                "seed": 0,
                "confidence": rng.uniform(),
                "judge_confidence": rng.uniform(),
                "identity_distance": rng.uniform(0.1, 0.9),
                "external_confidence": None if m.classes[k] == "contempt" else rng.uniform(),
                "intensity": rng.uniform(0.5, 1.5),
                "weight": 0.8,
                "target_mass": rng.uniform(0.5, 1.0),
                "width": pixels.shape[1],
                "height": pixels.shape[0],
                "sha256": sha256_bytes(data),
            }
        )
    # One image root for both: --work, which holds the demo's real images and this set's.
    real["image"] = [
        {"bytes": None, "path": Path(os.path.relpath(m.image_root / im["path"], work)).as_posix()}
        for im in real["image"]
    ]
    df = pd.concat([real, pd.DataFrame(records)], ignore_index=True)
    meta = {k: v for k, v in m.inherited_meta().items() if k not in ("balance", "generator_training")}
    write_manifest(df, out / "manifest.parquet", classes=m.classes, meta=meta, image_root="..")
    return out


def page_times(source: Path, out: Path) -> dict:
    """`write_review` cold (fresh folder) then warm (thumbnails reused), in this process."""
    from fesaug.review.data import load
    from fesaug.review.page import write_review

    drawn = sum(j.target is not None for j in load(source, 96).jobs)
    shutil.rmtree(out, ignore_errors=True)
    cold = write_review(source, out)
    warm = write_review(source, out)
    size = sum(p.stat().st_size for p in (out / "data").glob("*.js"))
    return {
        "synthetic": cold.synthetic,
        "real": cold.real,
        "thumbnails": cold.thumbnails_made,
        "counterfactual_thumbnails": drawn,
        "cold_s": cold.seconds,
        "warm_s": warm.seconds,
        "warm_thumbnails_made": warm.thumbnails_made,
        "data_mib": size / 2**20,
        "data_files": len(list((out / "data").glob("*.js"))),
    }


def browser_times(index: Path, cls: str) -> dict:
    """Open the page in headless Chromium and time what a reviewer does first."""
    from fesaug.review.browser import headless_chromium, open_page

    with headless_chromium() as web:
        start = time.perf_counter()
        ready = open_page(web, index)
        wall = time.perf_counter() - start
        out = {
            "open_wall_s": wall,
            "interactive_ms": ready["interactive_ms"],
            "script_ms": ready["interactive_ms"] - ready["parsed_ms"],
            "longest_task_ms": web.execute_script(LONG_TASKS),
            "cards_rendered": web.execute_script("return document.querySelectorAll('#grid .card').length"),
            "filter_class_ms": web.execute_script(ACTION, "f-class", cls),
            "sort_score_ms": web.execute_script(ACTION, "sort-key", "score:0"),
            "sort_desc_ms": web.execute_script(ACTION, "sort-dir", "desc"),
            "all_classes_ms": web.execute_script(ACTION, "f-class", ""),
            "threshold_ms": web.execute_script(ACTION, "min-confidence", "0.5"),
        }
        heap = web.execute_script("return performance.memory ? performance.memory.usedJSHeapSize : null")
        out["js_heap_mib"] = None if heap is None else heap / 2**20
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/fesaug-bench/review"))
    p.add_argument("--rows", type=int, default=20000, help="synthetic rows of the large set")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = p.parse_args()
    from fesaug.utils.provenance import package_versions

    t0 = time.perf_counter()
    balanced = setup(args.work)
    large = large_set(balanced, args.work, args.rows)
    setup_s = time.perf_counter() - t0
    cases = []
    for name, source in (("CK+-sized balanced demo set", balanced), (f"{args.rows:,} synthetic rows", large)):
        case = {"set": name, "load_before": os.getloadavg()[0], **page_times(source, args.work / f"page-{source.name}")}
        case["browser"] = browser_times(args.work / f"page-{source.name}" / "index.html", "fear")
        cases.append(case)
        print(case)
    result = {
        "benchmark": "fesaug review: page generation (cold, warm) and the page in headless Chromium",
        "machine": machine(),
        "versions": package_versions(),
        "command": command("OMP_NUM_THREADS=1"),
        "setup_seconds": setup_s,
        "cases": cases,
    }
    table = report(result)
    write_results("review_page", result, table, args.out)
    print(table)


def _case_row(c: dict) -> list[object]:
    cold, b = c["cold_s"], c["browser"]
    return [
        c["set"],
        c["synthetic"],
        c["real"],
        f"{c['thumbnails']} ({c['counterfactual_thumbnails']})",
        f"{c['load_before']:.1f}",
        f"{cold['total']:.1f} ({cold['page_data']:.1f} / {cold['thumbnails']:.1f} / {cold['page_files']:.1f})",
        f"{c['warm_s']['total']:.2f}",
        f"{c['data_mib']:.1f}",
        f"{b['open_wall_s']:.2f}",
        f"{b['interactive_ms']:.0f}",
        f"{b['longest_task_ms']:.0f}",
        f"{b['filter_class_ms']:.0f}",
        f"{b['sort_score_ms']:.0f}",
        f"{b['all_classes_ms']:.0f}",
        f"{b['threshold_ms']:.0f}",
        "–" if b["js_heap_mib"] is None else f"{b['js_heap_mib']:.0f}",
    ]


def report(r: dict) -> str:
    lines = [
        "# Review page: generation and browser (CPU)",
        "",
        f"`{r['command']}` on {machine_line(r['machine'])}; {versions_line(r['versions'])}.",
        "",
    ]
    header = [
        "set",
        "synthetic",
        "real",
        "thumbnails (counterfactuals)",
        "load",
        "page cold, s (data / thumbnails / files)",
        "page warm, s",
        "data MiB",
        "open in Chromium, s",
        "usable after, ms",
        "longest task, ms",
        "filter class, ms",
        "sort by score, ms",
        "all classes, ms",
        "threshold, ms",
        "JS heap, MiB",
    ]
    lines += markdown_table(header, [_case_row(c) for c in r["cases"]], align="l" + "r" * 15)
    lines += [
        "",
        "*Thumbnails*: one per distinct image (synthetic faces, their sources, the real rows) plus one demo "
        "counterfactual per distinct (source, target) pair; *cold*: a fresh folder, every thumbnail made; *warm*: "
        "the same command again, every thumbnail reused. *Load*: the machine's 1-minute load average before the "
        "case (2 shared cores; other jobs ran at the same time, so take differences of tens of percent as noise). "
        "Browser columns: *open*, selenium's `get` until the page has shown its first cards; *usable after*, the "
        "page's `performance.now()` then (from navigation start); *longest task*, the longest main-thread task "
        "Chromium reported while loading (it reports tasks over 50 ms only: 0 means none; a page freezes visibly "
        "above a few hundred ms); the actions are one "
        "change event each, timed with the layout they cause: choose a class (fear), sort by the first score, "
        "back to all classes, a minimum gate confidence of 0.5.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
