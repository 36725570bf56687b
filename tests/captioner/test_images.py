"""Safe image loading: limits before decoding, orientation, every mode to RGB, draft decoding."""

import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from captioner import image_checks, images
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


# ---------------------------------------------------------------------------- formats and walls
def ico_holding(png: bytes) -> bytes:
    """An ICO whose one entry says 256x256 but holds ``png``."""
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22) + png


def test_formats_outside_the_allow_list_are_refused_by_name_without_running_their_plugin(monkeypatch):
    opened = []
    factory, accept = Image.OPEN["ICO"]
    monkeypatch.setitem(Image.OPEN, "ICO", (lambda *a: opened.append(a) or factory(*a), accept))
    ico = ico_holding(encode(Image.new("RGBA", (600, 600)), "PNG"))
    with pytest.raises(ImageLoadError) as e:
        load_image(ico, name="icon.ico")
    assert e.value.code == "unsupported" and e.value.name == "icon.ico"
    assert e.value.reason == f"ICO images are not accepted; accepted formats: {images.ACCEPTED_NAMES}"
    assert opened == [], "the ICO plugin ran (it decodes the embedded PNG while opening)"
    for fmt in ("ICNS", "QOI", "PCX", "SGI", "DDS"):
        assert fmt not in images.ACCEPTED_FORMATS
    for fmt in ("QOI", "PCX"):
        with pytest.raises(ImageLoadError, match=f"{fmt} images are not accepted") as e:
            load_image(encode(Image.new("RGB", (8, 8)), fmt))
        assert e.value.code == "unsupported"
    with pytest.raises(ImageLoadError, match=r"not a recognised image format \(accepted formats: JPEG, PNG"):
        load_image(b"hello, I am text")


def test_pillow_keeps_its_own_pixel_limit_as_a_second_wall():
    assert Image.MAX_IMAGE_PIXELS is not None and 2 * Image.MAX_IMAGE_PIXELS == images.HARD_MAX_PIXELS
    bomb = png_header_only(100_000, 100_000)
    with pytest.raises(ImageLoadError) as e:  # a caller's limit above the wall does not lift it
        load_image(bomb, name="bomb.png", max_pixels=10**12)
    assert e.value.code == "too_large" and "100000x100000" in e.value.reason
    with pytest.raises(Image.DecompressionBombError):  # Pillow itself refuses it, whoever opens it
        Image.open(io.BytesIO(bomb))


def jpeg_with_comments(count: int) -> bytes:
    data = encode(Image.new("RGB", (32, 24), "red"), "JPEG")
    return data[:2] + b"\xff\xfe\x00\x02" * count + data[2:]


def png_with_chunks(count: int) -> bytes:
    data = encode(Image.new("RGB", (32, 24), "red"), "PNG")
    empty = struct.pack(">I", 0) + b"zzZz" + struct.pack(">I", zlib.crc32(b"zzZz"))
    return data[:33] + empty * count + data[33:]


def test_files_slow_to_parse_are_refused_from_the_header():
    # Pillow's plain JPEG has 8 segments before its scan, its PNG 3 chunks
    assert load_image(jpeg_with_comments(image_checks.MAX_JPEG_SEGMENTS - 10)).size == (32, 24)
    with pytest.raises(ImageLoadError, match="marker segments") as e:
        load_image(jpeg_with_comments(image_checks.MAX_JPEG_SEGMENTS))
    assert e.value.code == "too_large"
    assert load_image(png_with_chunks(image_checks.MAX_PNG_CHUNKS - 10)).size == (32, 24)
    with pytest.raises(ImageLoadError, match="PNG of more than") as e:
        load_image(png_with_chunks(image_checks.MAX_PNG_CHUNKS))
    assert e.value.code == "too_large"


def test_tiff_strip_count_is_checked_before_opening(monkeypatch):
    tiff = encode(Image.new("RGB", (40, 30), "blue"), "TIFF")  # one strip
    monkeypatch.setattr(image_checks, "MAX_TIFF_BLOCKS", 1)
    assert load_image(tiff).size == (40, 30)
    monkeypatch.setattr(image_checks, "MAX_TIFF_BLOCKS", 0)
    with pytest.raises(ImageLoadError, match="TIFF of 1 strips or tiles, more than the limit of 0") as e:
        load_image(tiff)
    assert e.value.code == "too_large"


def bmp_rle8(width: int, height: int) -> bytes:
    """An 8-bit RLE BMP: each row one pixel of value 7, then end-of-line (Pillow cannot write RLE)."""
    pixels = b"\x01\x07\x00\x00" * height + b"\x00\x01"
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def test_pure_python_decoders_are_bounded(monkeypatch):
    out = np.asarray(load_image(bmp_rle8(30, 20)))
    assert out.shape == (20, 30, 3) and out[0, 0, 0] == 7 and out[0, 1, 0] == 0
    plain = b"P2 3 2 255\n0 128 255\n255 128 0\n"  # plain-text PGM
    assert np.asarray(load_image(plain))[0, :, 0].tolist() == [0, 128, 255]
    monkeypatch.setattr(image_checks, "MAX_PY_DECODER_PIXELS", 599)
    with pytest.raises(ImageLoadError, match=r"BMP of 30x20 pixels .* pure Python \(bmp_rle\)") as e:
        load_image(bmp_rle8(30, 20))
    assert e.value.code == "too_large"
    monkeypatch.setattr(image_checks, "MAX_PY_DECODER_PIXELS", 5)
    with pytest.raises(ImageLoadError, match=r"ppm_plain"):
        load_image(plain)
    assert load_image(encode(Image.new("RGB", (30, 20)), "BMP")).size == (30, 20)  # C decoder: not bounded


# ---------------------------------------------------------------------------- 16-bit and float
def numpy_peak(fn) -> int:
    """Peak bytes traced during ``fn()`` (numpy arrays are traced; Pillow's buffers are not)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def gradient(width: int, height: int, dtype, scale: float) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return ((x + 2 * y) * scale).astype(dtype)  # (H, W)


def test_high_depth_images_convert_without_float64_copies():
    w, h = 1600, 1200
    png16 = encode(Image.fromarray(gradient(w, h, np.uint16, 16.0)), "PNG")
    peak = numpy_peak(lambda: load_image(png16))
    assert peak < 4 * w * h, f"{peak / (w * h):.1f} bytes per pixel for a 16-bit image (float64 would be 8+)"
    tif32 = encode(Image.fromarray(gradient(w, h, np.float32, 0.7), "F"), "TIFF")
    peak = numpy_peak(lambda: load_image(tif32))
    assert peak < 10 * w * h, f"{peak / (w * h):.1f} bytes per pixel for a float image (float64 would be 16+)"


def test_high_depth_values_are_scaled_exactly_as_before():
    arr = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # (H, W)
    out = np.asarray(load_image(encode(Image.fromarray(arr), "PNG")))[..., 0]
    assert np.array_equal(out, (arr // 257).astype(np.uint8))  # v / 257 truncated, no float
    f = np.linspace(-50.0, 700.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    out = np.asarray(load_image(encode(Image.fromarray(f, "F"), "TIFF")))[..., 0].astype(int)
    want = np.clip((f.astype(np.float64) + 50.0) * (255.0 / 750.0), 0, 255).astype(np.uint8)
    assert np.abs(out - want).max() <= 1


def test_high_depth_images_are_reduced_early_and_stay_close():
    w, h = 2000, 1500
    arr = gradient(w, h, np.uint16, 12.0)
    full = load_image(encode(Image.fromarray(arr), "PNG"))
    small = load_image(encode(Image.fromarray(arr), "PNG"), draft_size=(224, 224))
    assert full.size == (w, h)
    assert small.size == (-(-w // 6), -(-h // 6)) and min(small.size) >= 224  # factor 1500 // 224 = 6
    a = np.asarray(full.resize(small.size, Image.Resampling.BOX), dtype=float)
    assert np.abs(a - np.asarray(small, dtype=float)).mean() < 1.0
    eight_bit = encode(Image.fromarray((arr // 257).astype(np.uint8)), "PNG")
    assert load_image(eight_bit, draft_size=(224, 224)).size == (w, h)  # 8-bit: never reduced here


def test_ordinary_8_bit_images_decode_exactly_as_pillow_does():
    """The features of the shipped model and the training cache depend on these pixels."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8), "RGB")
    for fmt in ("JPEG", "PNG"):
        data = encode(photo, fmt)
        ref = Image.open(io.BytesIO(data))
        if fmt == "JPEG":
            ref.draft("RGB", (224, 224))
        assert load_image(data, draft_size=(224, 224)).tobytes() == ref.convert("RGB").tobytes()
        assert load_image(data).tobytes() == Image.open(io.BytesIO(data)).convert("RGB").tobytes()


# ---------------------------------------------------------------------------- HEIC and AVIF
@pytest.mark.parametrize("fmt, ext", [("HEIF", ".heic"), ("AVIF", ".avif")])
def test_heic_and_avif_go_through_the_same_limits(fmt, ext, monkeypatch):
    assert fmt in images.ACCEPTED_FORMATS and ext in images.IMAGE_EXTENSIONS
    photo = Image.new("RGB", (64, 48), (200, 30, 30))
    data = encode(photo, fmt, quality=95)
    out = load_image(data, name=f"phone{ext}")
    assert out.size == (64, 48) and out.mode == "RGB"
    r, g, b = out.getpixel((32, 24))
    assert r > 170 and g < 70 and b < 70
    decoded = []
    cls = type(Image.open(io.BytesIO(data)))
    real_load = cls.load
    monkeypatch.setattr(cls, "load", lambda self: decoded.append(1) or real_load(self))
    with pytest.raises(ImageLoadError, match="64x48 pixels exceed the limit of 1000") as e:
        load_image(data, max_pixels=1000)
    assert e.value.code == "too_large" and decoded == [], "the pixel limit must hold before decoding"
    with pytest.raises(ImageLoadError) as e:
        load_image(data[: len(data) // 3])
    assert e.value.code == "unreadable"
