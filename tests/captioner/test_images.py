"""Safe image loading: limits before decoding, orientation, every mode to RGB, draft decoding."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from captioner.errors import ImageLoadError
from captioner.images import load_image, probe_image_size


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares huge dimensions (a decompression bomb's header)."""

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )


def test_pixel_limit_raises_before_decoding():
    bomb = png_header_only(100_000, 100_000)
    assert len(bomb) < 200
    assert probe_image_size(bomb) == (100_000, 100_000)
    with pytest.raises(ImageLoadError) as e:
        load_image(bomb, name="bomb.png")
    assert e.value.code == "too_large" and "bomb.png" in str(e.value)
    small = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageLoadError, match="exceed"):
        load_image(small, max_pixels=5000)


def test_exif_orientation_applied():
    im = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = load_image(encode(im, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


@pytest.mark.parametrize("mode", ["P", "PA", "LA", "RGBA", "CMYK", "L", "1", "I;16", "I", "F", "YCbCr"])
def test_every_mode_becomes_rgb(mode):
    base = Image.fromarray((np.arange(32 * 32 * 3) % 255).astype(np.uint8).reshape(32, 32, 3), "RGB")
    if mode == "I;16":
        im = Image.fromarray((np.arange(32 * 32, dtype=np.uint16) * 60).reshape(32, 32))
        assert im.mode.startswith("I;16")
    elif mode == "PA":
        im = base.convert("P").convert("PA")
    else:
        im = base.convert(mode)
    out = load_image(im)
    assert out.mode == "RGB" and out.size == (32, 32)


def test_sixteen_bit_png_scaled_not_clipped():
    arr = np.full((8, 8), 65535, dtype=np.uint16)
    arr[:4] = 0
    out = np.asarray(load_image(encode(Image.fromarray(arr), "PNG")))
    assert out[0, 0, 0] == 0 and out[7, 7, 0] == 255


def test_transparency_composited_on_white():
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(encode(im, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_first_frame():
    frames = [Image.new("P", (10, 10), i) for i in (1, 2, 3)]
    data = io.BytesIO()
    frames[0].save(data, "GIF", save_all=True, append_images=frames[1:])
    out = load_image(data.getvalue())
    assert out.size == (10, 10) and out.mode == "RGB"


def test_jpeg_draft_decodes_smaller():
    big = encode(Image.new("RGB", (2000, 1600), "blue"), "JPEG")
    full = load_image(big)
    small = load_image(big, draft_size=(224, 224))
    assert full.size == (2000, 1600)
    assert small.size[0] < 1000 and min(small.size) >= 224


@pytest.mark.parametrize(
    "payload, code",
    [
        (b"", "empty"),
        (b"hello, I am text", "unsupported"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 50, "unreadable"),
    ],
)
def test_bad_bytes_raise_one_error_type(payload, code):
    with pytest.raises(ImageLoadError) as e:
        load_image(payload, name="upload.jpg")
    assert e.value.code == code and e.value.name == "upload.jpg"


def test_truncated_files_and_paths(tmp_path):
    data = encode(Image.new("RGB", (200, 200), "green"), "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"cut\.jpg"):
        load_image(p)
    png = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")
    with pytest.raises(ImageLoadError):
        load_image(png[:-200])
    with pytest.raises(ImageLoadError) as e:
        load_image(tmp_path / "missing.png")
    assert e.value.code == "not_found"
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageLoadError, match="regular file"):
        load_image(tmp_path)
