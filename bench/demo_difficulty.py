"""How hard is the demo dataset? Train a small CNN on the default (imbalanced, CK+-like) demo set
with a subject-independent split and report accuracy, macro-F1 and per-class recall.

The product goal: not trivially separable, and the rare classes (contempt, fear, sadness)
clearly worse than the common ones, as on CK+, so that balancing by synthesis has something to fix.

    .venv/bin/python bench/demo_difficulty.py            # fold 0 as test, ~1-2 min on 2 cores
    .venv/bin/python bench/demo_difficulty.py --test-folds 0,1,2,3,4

Writes bench/results/demo_difficulty.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from record import RESULTS, command, machine, machine_line, write_results
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score
from torch import nn

from fesaug.data.demo import DEFAULT_COUNTS, make_demo_dataset
from fesaug.data.manifest import read_manifest
from fesaug.utils.tables import markdown_table

MINORITY = ("contempt", "fear", "sadness")
MAJORITY = ("disgust", "happy", "surprise")


def small_cnn(n_classes: int) -> nn.Sequential:
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(1, 16),
        *block(16, 32),
        *block(32, 64),
        *block(64, 96),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(96, n_classes),
    )


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and shifts of up to 4 pixels (the usual FER augmentation)."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = nn.functional.pad(x, (4, 4, 4, 4), mode="replicate")
    i, j = torch.randint(0, 9, (2,), generator=gen).tolist()
    return padded[:, :, i : i + x.shape[2], j : j + x.shape[3]]


def train_and_test(
    x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, n_classes: int, epochs: int, seed: int
) -> np.ndarray:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x[:, None]).float() / 255.0
    mean, std = xt[train].mean(), xt[train].std()
    xt = (xt - mean) / std
    yt = torch.from_numpy(y)
    model = small_cnn(n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * int(np.ceil(len(train) / 32))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    train_idx = torch.from_numpy(train)
    for _ in range(epochs):
        model.train()
        for batch in train_idx[torch.randperm(len(train_idx), generator=gen)].split(32):
            loss = nn.functional.cross_entropy(model(augment(xt[batch], gen)), yt[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        return model(xt[torch.from_numpy(test)]).argmax(1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test-folds", default="0", help="comma-separated folds, each used once as the test set")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0, help="dataset and training seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest = read_manifest(make_demo_dataset(tmp, seed=args.seed))
        gen_s = time.perf_counter() - t0
        x = np.stack([np.asarray(manifest.open_image(i)) for i in range(len(manifest))])
    df = manifest.df
    classes = manifest.classes
    y = df["label"].to_numpy(dtype=np.int64)
    fold = df["fold"].to_numpy(dtype=np.int64)

    y_true, y_pred = [], []
    for k in (int(f) for f in args.test_folds.split(",")):
        test, train = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
        assert not set(df["subject_id"].iloc[test]) & set(df["subject_id"].iloc[train])
        y_pred.append(train_and_test(x, y, train, test, len(classes), args.epochs, args.seed + k))
        y_true.append(y[test])
    y_true, y_pred = np.concatenate(y_true), np.concatenate(y_pred)

    labels = list(range(len(classes)))
    recall = dict(
        zip(classes, recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0).round(3).tolist())
    )
    result = {
        "dataset": {
            "counts": DEFAULT_COUNTS,
            "images": len(df),
            "subjects": int(df["subject_id"].nunique()),
            "seed": args.seed,
            "generation_s": round(gen_s, 2),
        },
        "protocol": f"subject-independent: test fold(s) {args.test_folds} of 5, train on the rest; small 4-block CNN, "
        f"{args.epochs} epochs, AdamW + one-cycle, flips and 4-px shifts, plain cross-entropy (no rebalancing)",
        "test_images": len(y_true),
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 3),
        "macro_f1": round(float(f1_score(y_true, y_pred, average="macro")), 3),
        "recall": recall,
        "minority_mean_recall": round(float(np.mean([recall[c] for c in MINORITY])), 3),
        "majority_mean_recall": round(float(np.mean([recall[c] for c in MAJORITY])), 3),
        "confusion": {"classes": classes, "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist()},
        "machine": machine(threads=args.threads),
        "torch": torch.__version__,
        "command": command(),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    write_results("demo_difficulty", result, report(result), args.out)
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("accuracy", "macro_f1", "recall", "minority_mean_recall", "majority_mean_recall", "wall_s")
            },
            indent=2,
        )
    )


def report(r: dict) -> str:
    recall = "\n".join(
        markdown_table(
            ["class", "images (whole set)", "test recall"],
            [[c, r["dataset"]["counts"][c], f"{v:.3f}"] for c, v in r["recall"].items()],
        )
    )
    classes = r["confusion"]["classes"]
    confusion = "\n".join(
        markdown_table(["", *classes], [[c, *row] for c, row in zip(classes, r["confusion"]["matrix"])])
    )
    return f"""# Demo dataset difficulty

`{r["command"]}` — {r["wall_s"]} s wall ({machine_line(r["machine"])}), torch {r["torch"]}.

Dataset: default demo set, {r["dataset"]["images"]} images of {r["dataset"]["subjects"]} subjects (seed {r["dataset"]["seed"]}, generated in {r["dataset"]["generation_s"]} s).
Protocol: {r["protocol"]}. {r["test_images"]} test images.

**Accuracy {r["accuracy"]:.3f}, macro-F1 {r["macro_f1"]:.3f}.** Mean recall: minority classes ({", ".join(MINORITY)}) {r["minority_mean_recall"]:.3f}, majority classes ({", ".join(MAJORITY)}) {r["majority_mean_recall"]:.3f}.

{recall}

Confusion (rows true, columns predicted):

{confusion}
"""


if __name__ == "__main__":
    main()
