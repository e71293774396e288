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


# --------------------------------------------------------------------------------------------
# colour: every mode decodes to the manifest's channels


def _colour_bars() -> Image.Image:
    """16x16 RGB: red, green, blue and yellow quarters, half transparent in RGBA."""
    arr = np.zeros((16, 16, 3), dtype=np.uint8)
    arr[:8, :8], arr[:8, 8:], arr[8:, :8], arr[8:, 8:] = (200, 30, 40), (20, 180, 60), (30, 40, 210), (220, 210, 30)
    return Image.fromarray(arr)


@pytest.mark.parametrize(
    "mode, fmt",
    [
        ("RGB", "PNG"),
        ("RGBA", "PNG"),
        ("P", "PNG"),
        ("P+tRNS", "PNG"),
        ("CMYK", "JPEG"),
        ("CMYK", "TIFF"),
        ("YCbCr", "JPEG"),
    ],
)
def test_colour_modes_decode_to_rgb_and_their_gray_is_the_gray_decode(mode: str, fmt: str) -> None:
    src = _colour_bars()
    if mode == "RGBA":
        src = src.convert("RGBA")
    elif mode.startswith("P"):
        src = src.quantize(colors=8)
        if mode == "P+tRNS":  # a palette with a transparent entry no quarter uses
            src.info["transparency"] = 7
    else:
        src = src.convert(mode)
    data = _encode(src, fmt)
    rgb = decode_image(data, where=f"{mode}.{fmt}", channels=3)
    gray = decode_image(data, where=f"{mode}.{fmt}", channels=1)
    auto = decode_image(data, where=f"{mode}.{fmt}", channels=None)
    assert rgb.mode == "RGB" and rgb.size == (16, 16) and gray.mode == "L" and auto.mode == "RGB"
    pixels = np.asarray(rgb, dtype=int)
    tolerance = 40 if fmt == "JPEG" or mode == "CMYK" else 0  # lossy, or through CMYK's naive conversion
    assert np.abs(pixels[2, 2] - (200, 30, 40)).max() <= tolerance  # the red quarter stays red
    assert np.abs(pixels[13, 13] - (220, 210, 30)).max() <= tolerance
    # One decoder, two outputs: the gray decode is the gray of the colour decode (alpha alike).
    if mode not in ("CMYK",):  # PIL converts CMYK to L by its own formula
        assert np.array_equal(np.asarray(rgb.convert("L")), np.asarray(gray))


@pytest.mark.parametrize("mode", ["L", "LA", "I;16", "1"])
def test_gray_modes_decode_to_rgb_as_three_equal_channels(mode: str) -> None:
    base = Image.fromarray(np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1)))
    src = Image.fromarray(np.asarray(base, dtype=np.uint16) * 257) if mode == "I;16" else base.convert(mode)
    data = _encode(src)
    rgb = np.asarray(decode_image(data, where="x.png", channels=3))
    gray = np.asarray(decode_image(data, where="x.png", channels=1))
    assert rgb.shape == (16, 16, 3) and all(np.array_equal(rgb[..., c], gray) for c in range(3))
    assert decode_image(data, where="x.png", channels=None).mode == "L"  # a gray file is gray


def test_rgba_is_composited_on_black_in_colour_too() -> None:
    src = Image.new("RGBA", (4, 4), (255, 255, 255, 0))
    src.putpixel((0, 0), (255, 0, 0, 255))
    rgb = np.asarray(decode_image(_encode(src), where="t.png", channels=3))
    assert rgb[1:, 1:].max() == 0 and tuple(rgb[0, 0]) == (255, 0, 0)


def test_a_gray_face_saved_as_rgb_or_jpeg_stays_gray_in_auto() -> None:
    face = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8))
    for data in (_encode(face.convert("RGB")), _encode(face.convert("RGB"), "JPEG")):
        assert decode_image(data, where="g", channels=None).mode == "L"
    assert images.has_colour(_colour_bars()) and not images.has_colour(face.convert("RGB"))
    # A few coloured pixels (a watermark, a JPEG fringe) do not make a face colour.
    speck = np.asarray(face.convert("RGB")).copy()
    speck[0, :5] = (255, 0, 0)
    assert not images.has_colour(Image.fromarray(speck))


def test_exif_orientation_is_applied() -> None:
    # A phone photo stored sideways: 8 wide, 4 high, with a bright left column, tagged "rotate 90 CW to show".
    arr = np.zeros((4, 8, 3), dtype=np.uint8)
    arr[:, 0] = 255
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = 6
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", exif=exif)
    for channels in (1, 3):
        img = decode_image(buf.getvalue(), where="phone.png", channels=channels)
        assert img.size == (4, 8)  # upright: 4 wide, 8 high
        shown = np.asarray(img.convert("L"))
        assert shown[0].min() == 255 and shown[1:].max() == 0  # the left column became the top row
    assert not images.stored_as_decoded(buf.getvalue(), 3)  # its file is not what fesaug reads


def test_stored_as_decoded_tells_which_pngs_can_be_copied() -> None:
    gray, colour = _encode(Image.new("L", (4, 4))), _encode(_colour_bars())
    assert images.stored_as_decoded(gray, 1) and not images.stored_as_decoded(gray, 3)
    assert images.stored_as_decoded(colour, 3) and not images.stored_as_decoded(colour, 1)
    assert not images.stored_as_decoded(_encode(_colour_bars(), "JPEG"), 3)


def test_unsupported_mode_and_bad_channels() -> None:
    with pytest.raises(ValueError, match="channels must be 1, 3 or None"):
        decode_image(png_bytes(), where="x.png", channels=2)
    assert images.to_array(_colour_bars()).shape == (3, 16, 16)
    assert images.to_array(Image.new("L", (5, 4))).shape == (1, 4, 5)
    pixels = images.to_array(_colour_bars())
    assert np.array_equal(images.to_array(images.from_array(pixels)), pixels)
