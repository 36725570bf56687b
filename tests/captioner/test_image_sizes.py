"""Sizes from headers (captioner.image_checks.declared_size) and the JPEG junk bound.

The service prices uploads with ``declared_size`` before decoding any and then holds each
decode to that size, so it must agree with Pillow on every file Pillow opens (or say more,
never less), and must read nothing beyond a bounded prefix. The hostile corpus is checked
in tests/reliability/test_header_sizes.py."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from captioner.errors import ImageLoadError
from captioner.image_checks import MAX_JPEG_JUNK_BYTES, declared_size
from captioner.images import ACCEPTED_FORMATS, load_image


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def pillow_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as im:
            return im.size
    except Exception:
        return None


@pytest.mark.parametrize(
    ("fmt", "mode", "kw"),
    [
        ("JPEG", "RGB", {}),
        ("JPEG", "RGB", {"progressive": True, "exif": Image.Exif()}),
        ("PNG", "RGBA", {}),
        ("GIF", "P", {}),
        ("BMP", "RGB", {}),
        ("TIFF", "RGB", {"compression": "tiff_lzw"}),
        ("PPM", "RGB", {}),
        ("WEBP", "RGB", {"lossless": True}),
        ("WEBP", "RGB", {"quality": 50}),
        ("WEBP", "RGBA", {"quality": 50}),
        ("HEIF", "RGB", {}),
    ],
)
def test_every_accepted_format_declares_the_size_pillow_reads(fmt: str, mode: str, kw: dict) -> None:
    for width, height in ((1, 1), (333, 17), (64, 480)):
        data = encode(Image.new(mode, (width, height)), fmt, **kw)
        size = declared_size(data)
        assert size is not None, (fmt, width, height)
        got = size[0] * size[1]
        if fmt == "HEIF":  # the coded size, padded to whole blocks: an upper bound
            assert got >= width * height, (size, width, height)
        else:
            assert size == (width, height), (fmt, size)


def test_a_gif_frame_beyond_its_screen_is_counted() -> None:
    data = bytearray(encode(Image.new("P", (40, 30)), "GIF"))
    data[6:10] = struct.pack("<HH", 4, 3)  # the screen says 4x3; the frame is 40x30
    assert pillow_size(bytes(data)) == (40, 30)
    assert declared_size(bytes(data)) == (40, 30)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8\xff",
        b"\x89PNG\r\n\x1a\n",
        b"RIFF\0\0\0\0WEBPVP8X",
        b"II*\0\xff\xff\xff\xff",
        b"P6\n# only a comment\n",
        b"plain text",
    ],
)
def test_cut_or_unknown_headers_declare_nothing(data: bytes) -> None:
    assert declared_size(data) is None


def test_junk_between_jpeg_segments_is_bounded() -> None:
    """An APP13 segment whose length leaves its payload where a marker should be (the attack
    run's file: lengths off by 2, 30 MB behind them): Pillow steps over such junk one byte
    per Python iteration (1.5 s). A little junk still decodes; more than
    MAX_JPEG_JUNK_BYTES is refused before Pillow sees the file."""
    photo = encode(Image.new("RGB", (64, 48), (9, 99, 199)), "JPEG")

    def with_app13(payload: int) -> bytes:
        segment = b"\xff\xed" + struct.pack(">H", 2) + b"\x00" * payload  # declares an empty segment
        return photo[:2] + segment + photo[2:]

    assert load_image(with_app13(100)).size == (64, 48)
    with pytest.raises(ImageLoadError) as refused:
        load_image(with_app13(MAX_JPEG_JUNK_BYTES + 1024))
    assert refused.value.code == "too_large" and "junk" in refused.value.reason
