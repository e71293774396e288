"""Decoding images safely and turning them into what fesaug stores: 8-bit grayscale PNG.

Every reader in fesaug goes through :func:`decode_image` so that truncated files, non-images,
decompression bombs and odd modes (palette, RGBA, 16-bit) are handled in one place.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fesaug.utils.errors import FesaugError

# Far above any face crop; a file that decodes to more is almost surely hostile or a mistake.
MAX_PIXELS = 50_000_000


class BadImage(FesaugError):
    """An image file or blob that cannot be used. ``reason`` is a short phrase for summaries."""

    def __init__(self, where: str, reason: str):
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}; fix or remove the file (ingest --skip-bad skips such files)")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, *, where: str) -> Image.Image:
    """Decode ``data`` to a grayscale (mode ``L``) image, or raise :class:`BadImage`."""
    if not data:
        raise BadImage(where, "empty (zero-byte) file")
    try:
        with warnings.catch_warnings():
            # PIL warns (and only raises above 2x the limit); treat both as the same failure.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
                if width * height > MAX_PIXELS:
                    raise BadImage(where, f"image too large ({width}x{height} pixels, limit {MAX_PIXELS})")
                probe.verify()
            img = Image.open(io.BytesIO(data))
            img.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(where, "image too large (decompression-bomb guard)") from None
    except UnidentifiedImageError:
        raise BadImage(where, "not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(where, f"corrupt or truncated image ({exc})") from None
    return to_grayscale(img)


def to_grayscale(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit ``L``: palettes are expanded, alpha is composited on black, and
    16/32-bit images are rescaled from their own value range rather than clipped."""
    if img.mode == "L":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(np.round(scaled).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("L")


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def image_suffix(data: bytes) -> str:
    """The file suffix of encoded image ``data`` (``.png``, ``.jpg``, ...) from its format, as
    PIL reads it from the header; ``.png`` when PIL cannot tell."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = (probe.format or "PNG").lower()
    except (OSError, SyntaxError, ValueError):
        return ".png"
    return "." + {"jpeg": "jpg", "tiff": "tif"}.get(fmt, fmt)


def read_image_file(path: Path) -> tuple[bytes, Image.Image]:
    """The file's bytes and its grayscale image; unreadable files raise :class:`BadImage`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadImage(str(path), f"cannot be read ({exc.strerror or exc})") from None
    return data, decode_image(data, where=str(path))


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """Resize to ``size`` x ``size`` (faces are already cropped square; others are squashed)."""
    if img.size == (size, size):
        return img
    return img.resize((size, size), Image.Resampling.BICUBIC if size > min(img.size) else Image.Resampling.LANCZOS)
