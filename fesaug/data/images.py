"""Decoding images safely and turning them into what fesaug stores: 8-bit gray or RGB.

Every reader in fesaug goes through :func:`decode_image` so that truncated files, non-images,
decompression bombs, EXIF orientation and odd modes (palette, RGBA, CMYK, 16-bit) are handled in
one place. A manifest records its images' channels (footer ``channels``: 1 or 3); every image of
it decodes to that many, whatever its file holds: ``L`` (8-bit gray) or ``RGB``.

Transparency is composited on black, for gray and colour alike, so that a file's gray decode is
the gray of its colour decode (and gray decodes stay what they were before colour existed).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fesaug.utils.errors import FesaugError

# Far above any face crop; a file that decodes to more is almost surely hostile or a mistake.
MAX_PIXELS = 50_000_000
# A manifest's images are gray (1 channel, PIL mode L) or colour (3, RGB).
CHANNELS = (1, 3)
MODES = {1: "L", 3: "RGB"}
# How messages name them ("was trained on colour (RGB) images").
KINDS = {1: "gray", 3: "colour (RGB)"}
# An RGB file counts as colour when more than COLOUR_SHARE of its pixels have channels more than
# COLOUR_LEVELS apart: a gray face saved as RGB (or JPEG's rounding of one) stays gray.
COLOUR_LEVELS = 8
COLOUR_SHARE = 0.01
EXIF_ORIENTATION = 0x0112
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class BadImage(FesaugError):
    """An image file or blob that cannot be used. ``reason`` is a short phrase for summaries."""

    def __init__(self, where: str, reason: str):
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}; fix or remove the file (ingest --skip-bad skips such files)")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, *, where: str, channels: int | None = 1) -> Image.Image:
    """Decode ``data`` to ``channels`` (1: mode ``L``, 3: ``RGB``; None: ``RGB`` if the image
    has colour (:func:`has_colour`), else ``L``), turned upright by its EXIF orientation (phone
    photos), or raise :class:`BadImage`."""
    if channels not in (*CHANNELS, None):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
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
            img = upright(img)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(where, "image too large (decompression-bomb guard)") from None
    except UnidentifiedImageError:
        raise BadImage(where, "not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(where, f"corrupt or truncated image ({exc})") from None
    try:
        return convert_image(img, channels)
    except ValueError:  # PIL has no conversion for the mode (e.g. La)
        raise BadImage(where, f"unsupported image mode {img.mode}; convert it to RGB or grayscale") from None


def upright(img: Image.Image) -> Image.Image:
    """``img`` rotated/mirrored as its EXIF orientation tag says (phones store photos sideways
    and record how to show them); unchanged without one."""
    if img.getexif().get(EXIF_ORIENTATION, 1) in (None, 1):
        return img
    return ImageOps.exif_transpose(img)


def convert_image(img: Image.Image, channels: int | None) -> Image.Image:
    """Any PIL mode as ``channels`` (1: :func:`to_grayscale`, 3: :func:`to_rgb`, None: ``RGB``
    when the image has colour, else ``L``)."""
    if channels == 1:
        return to_grayscale(img)
    if channels == 3:
        return to_rgb(img)
    if channels is not None:
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    if img.mode in ("L", "LA", "1", "I", "F") or img.mode.startswith("I;16"):
        return to_grayscale(img)
    rgb = to_rgb(img)
    return rgb if has_colour(rgb) else to_grayscale(img)


def has_colour(img: Image.Image) -> bool:
    """Whether an ``RGB`` image shows colour: more than :data:`COLOUR_SHARE` of its pixels have
    channels more than :data:`COLOUR_LEVELS` gray levels apart."""
    if img.mode != "RGB":
        return False
    arr = np.asarray(img, dtype=np.int16)
    spread = arr.max(axis=2) - arr.min(axis=2)
    return bool((spread > COLOUR_LEVELS).mean() > COLOUR_SHARE)


def channels_of(img: Image.Image) -> int:
    """1 for an ``L`` image, 3 for ``RGB`` (what :func:`decode_image` returns)."""
    return 3 if img.mode == "RGB" else 1


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
    try:
        return img.convert("L")
    except ValueError:  # modes PIL turns into RGB only (LAB)
        return img.convert("RGB").convert("L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit ``RGB``, the colour twin of :func:`to_grayscale`: gray images are
    repeated to three channels (16/32-bit ones rescaled first), palettes expanded, alpha
    composited on black, CMYK and other colour spaces converted by PIL."""
    if img.mode == "RGB":
        return img
    if img.mode in ("L", "1", "I", "F") or img.mode.startswith("I;16"):
        return to_grayscale(img).convert("RGB")
    if img.mode in ("P", "PA", "RGBA", "LA", "RGBa", "La"):
        rgba = (img.convert("LA") if img.mode == "La" else img).convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def stored_as_decoded(data: bytes, channels: int) -> bool:
    """Whether ``data`` is a PNG whose pixels are what :func:`decode_image` makes of it at
    ``channels`` (mode ``L`` or ``RGB`` as stored, no EXIF orientation): such a file can be
    copied byte for byte where its decoded image is meant (an export, a thumbnail)."""
    if not data.startswith(PNG_SIGNATURE):
        return False
    try:
        with Image.open(io.BytesIO(data)) as probe:
            return probe.mode == MODES[channels] and probe.getexif().get(EXIF_ORIENTATION, 1) in (None, 1)
    except (OSError, SyntaxError, ValueError):
        return False


def image_suffix(data: bytes) -> str:
    """The file suffix of encoded image ``data`` (``.png``, ``.jpg``, ...) from its format, as
    PIL reads it from the header; ``.png`` when PIL cannot tell."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = (probe.format or "PNG").lower()
    except (OSError, SyntaxError, ValueError):
        return ".png"
    return "." + {"jpeg": "jpg", "tiff": "tif"}.get(fmt, fmt)


def read_image_file(path: Path, channels: int | None = 1) -> tuple[bytes, Image.Image]:
    """The file's bytes and its image as ``channels`` (:func:`decode_image`); unreadable files
    raise :class:`BadImage`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadImage(str(path), f"cannot be read ({exc.strerror or exc})") from None
    return data, decode_image(data, where=str(path), channels=channels)


def to_array(img: Image.Image | np.ndarray) -> np.ndarray:
    """An image's pixels as uint8 ``C×H×W``: a decoded image (C = 1 for ``L``, 3 for ``RGB``), or
    an image array laid out as PIL's, ``H×W`` or ``H×W×C`` (the demo renderer's)."""
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def from_array(pixels: np.ndarray) -> Image.Image:
    """uint8 pixels ``C×H×W`` (C = 1 or 3) or ``H×W`` as a PIL image (``L`` or ``RGB``)."""
    arr = np.asarray(pixels, dtype=np.uint8)
    if arr.ndim == 3:
        arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    return Image.fromarray(np.ascontiguousarray(arr))


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """Resize to ``size`` x ``size`` (faces are already cropped square; others are squashed)."""
    if img.size == (size, size):
        return img
    return img.resize((size, size), Image.Resampling.BICUBIC if size > min(img.size) else Image.Resampling.LANCZOS)
