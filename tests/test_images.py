"""Image decoding: every odd or broken input becomes grayscale or a clear BadImage, never a crash."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fesaug.data import images
from fesaug.data.images import BadImage, decode_image

from .conftest import png_bytes


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_grayscale_png_decodes_unchanged() -> None:
    data = png_bytes(3)
    img = decode_image(data, where="x.png")
    assert img.mode == "L" and np.array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(data))))


@pytest.mark.parametrize("mode", ["P", "RGBA", "RGB", "LA", "I;16", "1"])
def test_other_modes_are_converted_to_8bit_gray(mode: str) -> None:
    base = Image.fromarray(np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1)))
    if mode == "I;16":
        src = Image.fromarray(np.asarray(base, dtype=np.uint16) * 257)
    else:
        src = base.convert(mode)
    img = decode_image(_encode(src), where=f"{mode}.png")
    assert img.mode == "L" and img.size == (16, 16)
    if mode == "I;16":  # rescaled from the 16-bit range, not clipped to white
        assert np.asarray(img).min() == 0 and np.asarray(img).max() == 255


def test_rgba_transparency_is_composited_on_black() -> None:
    src = Image.new("RGBA", (4, 4), (255, 255, 255, 0))
    assert np.asarray(decode_image(_encode(src), where="t.png")).max() == 0


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "zero-byte"),
        (b"this is a text file, not a PNG", "not an image"),
        (png_bytes(1)[:100], "corrupt or truncated"),
    ],
)
def test_broken_inputs_raise_bad_image(data: bytes, reason: str) -> None:
    with pytest.raises(BadImage, match=reason) as info:
        decode_image(data, where="folder/bad.png")
    assert "folder/bad.png" in str(info.value) and info.value.reason


def test_decompression_bomb_guard(monkeypatch) -> None:
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    with pytest.raises(BadImage, match="too large"):
        decode_image(png_bytes(size=16), where="big.png")
