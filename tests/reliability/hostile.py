"""A corpus of hostile and odd image files, generated on the fly (no binaries committed).

    from hostile import hostile_images
    for s in hostile_images():
        s.name, s.filename, s.data, s.outcomes, s.answers, s.expect

Every sample says what a correct loader must do with it, written here per file from what
the file *is* (never asked of the loader under test): ``outcomes`` is the set of
acceptable :class:`~captioner.errors.ImageLoadError` codes, or ``"ok"`` for "decoded";
``answers`` the (HTTP status, error code) pairs the service may give for it, by the API's
documented mapping (``STATUS``). Most samples have exactly one outcome:

* ``ok`` - a valid image, however odd (1x1, 10000x20, CMYK, 16-bit, palette, LA,
  EXIF-rotated, animated, HEIC, AVIF, RLE BMP, ...): it must be captioned. ``size`` is
  the (width, height) the loader must return without a draft size, when known (EXIF
  orientation swaps the sides).
* ``too_large`` (413) - decompression bombs (a tiny file whose header declares billions
  of pixels, for PNG, GIF, JPEG, WebP, BMP and TIFF), real pixels over the limit, and
  files that are small but slow to decode (many JPEG scans or segments, many PNG chunks,
  many TIFF strips, a large RLE BMP).
* ``unsupported`` (415) - not an image (text, HTML, random bytes, ...) or an image format
  the service does not accept (ICO and ICNS with an oversized embedded PNG, gzip FITS, QOI).
* ``unreadable`` (422) - truncated files, a valid magic number over a garbage body, bad
  CRCs, zero dimensions; ``empty`` (422) - zero bytes.
* several outcomes - randomly mutated valid images (accepting or refusing are both fine,
  crashing or hanging is not), and a magic number over random header fields (a random
  size field may declare a huge image: 413 or 422).

``expect`` summarises: ``"ok"``, ``"bad"`` (must be refused) or ``"any"``.

The same corpus feeds the HTTP service tests (each sample one request), the folder
captioning tests (each sample one file), the loader's own corpus test and the fuzz tests
(as seeds). ``MAX_PIXELS`` is the pixel limit the tests give the service; besides lying
headers, two samples carry real compressed pixel data, one under it (9 Mpx) and one over
it and over the loader's 40 Mpx default (42 Mpx), so the folder runs (default limit) agree.
The loader attacks and the HEIC/AVIF samples are built in attacks.py (which also makes the
full-size attack files of bench/loader_attacks.py).
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

#: The pixel limit the reliability tests give the service and the loader.
MAX_PIXELS = 16_000_000
#: The documented answer of the API for each loader outcome (docs/service.md): status, error code.
STATUS: dict[str, tuple[int, str | None]] = {
    "ok": (200, None),
    "too_large": (413, "image_too_large"),
    "unsupported": (415, "unsupported_image"),
    "unreadable": (422, "unreadable_image"),
    "empty": (422, "empty_image"),
}
ANY = frozenset({"ok", "too_large", "unsupported", "unreadable"})
REFUSED_SOMEHOW = frozenset({"too_large", "unreadable"})  # a random header: huge size or garbage


@dataclass(frozen=True)
class Sample:
    """One corpus entry: ``name`` is unique and file-name safe; ``ext`` includes the dot."""

    name: str
    ext: str
    data: bytes
    outcomes: frozenset[str]  # acceptable ImageLoadError codes, "ok" for decoded
    note: str = ""
    size: tuple[int, int] | None = None  # (width, height) the loader must return, when known

    @property
    def filename(self) -> str:
        return f"{self.name}{self.ext}"

    @property
    def expect(self) -> str:
        """``"ok"`` (must be decoded), ``"bad"`` (must be refused) or ``"any"``."""
        if self.outcomes == {"ok"}:
            return "ok"
        return "any" if "ok" in self.outcomes else "bad"

    @property
    def answers(self) -> frozenset[tuple[int, str | None]]:
        """The (status, error code) pairs the service may answer for this file."""
        return frozenset(STATUS[o] for o in self.outcomes)


def sample(name: str, ext: str, data: bytes, outcome: str | frozenset[str], note: str = "", size=None) -> Sample:
    outcomes = frozenset({outcome}) if isinstance(outcome, str) else outcome
    assert outcomes <= set(STATUS), outcomes
    return Sample(name, ext, data, outcomes, note, size)


# ---------------------------------------------------------------------------- building blocks
def picture(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """A small RGB picture with gradients and noise, so every codec has real work to do."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    r = (255 * x / max(width - 1, 1)).astype(np.float32)
    g = (255 * y / max(height - 1, 1)).astype(np.float32)
    b = np.full_like(r, 128) + rng.normal(0, 20, size=r.shape)
    arr = np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)  # (H, W, 3)
    return Image.fromarray(arr, "RGB")


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    """``im`` saved as ``fmt`` (Pillow format name) into bytes."""
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def raw_png(width: int, height: int, bit_depth: int, color_type: int, raw: bytes) -> bytes:
    """A PNG from already filtered scanlines ``raw`` (each row starts with its filter byte)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(raw, 9))
        + png_chunk(b"IEND", b"")
    )


def png_16bit_rgb(width: int, height: int, seed: int = 0) -> bytes:
    """A 48-bit RGB PNG (Pillow cannot write one, so it is assembled by hand)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 65535, size=(height, width * 3), dtype=np.uint16).astype(">u2")  # (H, W*3) big-endian
    rows = b"".join(b"\x00" + pixels[i].tobytes() for i in range(height))
    return raw_png(width, height, 16, 2, rows)


def png_zeros(width: int, height: int, bit_depth: int = 1, channels: int = 1) -> bytes:
    """A real PNG of ``width`` x ``height`` black pixels (``channels`` 1: grey, 3: RGB, 4: RGBA,
    of ``bit_depth`` bits each); zlib makes it tiny. Compressed in a stream, so building a
    400-megapixel one needs no big buffer.
    """
    row = b"\x00" + b"\x00" * ((width * channels * bit_depth + 7) // 8)
    comp = zlib.compressobj(9)
    parts = []
    rows_per_chunk = max(1, (1 << 20) // len(row))
    done = 0
    while done < height:
        n = min(rows_per_chunk, height - done)
        parts.append(comp.compress(row * n))
        done += n
    parts.append(comp.flush())
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b"")
    )


def png_with_header(width: int, height: int, bit_depth: int = 8, color_type: int = 2) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` over almost no data (a bomb header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def gif_with_screen(width: int, height: int) -> bytes:
    """A 1x1 GIF whose logical screen claims ``width`` x ``height``."""
    data = bytearray(encode(Image.new("P", (1, 1), 0), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def gif_frame_flood(frames: int) -> bytes:
    """A 1x1 GIF of ``frames`` frames of a few bytes each: cheap to send, costly to count."""
    head = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    frame = (
        b"\x21\xf9\x04\x00\x00\x00\x00\x00" + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    )
    return head + loop + frame * frames + b"\x3b"


def jpeg_with_sof(width: int, height: int) -> bytes:
    """A small valid JPEG whose SOF marker is patched to claim ``width`` x ``height``."""
    data = bytearray(encode(picture(16, 16), "JPEG", quality=80))
    for i in range(2, len(data) - 9):
        if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
    raise AssertionError("no SOF marker in the JPEG Pillow wrote")


def webp_lossless_with_size(width: int, height: int) -> bytes:
    """A 1x1 lossless WebP whose VP8L header claims ``width`` x ``height`` (max 16384 each)."""
    data = bytearray(encode(Image.new("RGB", (1, 1), (9, 9, 9)), "WEBP", lossless=True))
    pos = data.find(b"VP8L")
    assert pos > 0, "Pillow did not write a VP8L chunk"
    bits = 8 + pos  # signature byte 0x2f, then 14 bits width-1, 14 bits height-1, alpha, version
    (word,) = struct.unpack("<I", bytes(data[bits + 1 : bits + 5]))
    word = (word & ~((1 << 28) - 1)) | ((width - 1) & 0x3FFF) | (((height - 1) & 0x3FFF) << 14)
    data[bits + 1 : bits + 5] = struct.pack("<I", word)
    return bytes(data)


def webp_vp8x_canvas(width: int, height: int) -> bytes:
    """A VP8X (extended) WebP header whose canvas is ``width`` x ``height`` over a 1x1 frame."""
    inner = bytearray(encode(Image.new("RGBA", (1, 1), (9, 9, 9, 128)), "WEBP", lossless=True))
    pos = inner.find(b"VP8X")
    if pos < 0:  # build the extended header ourselves
        body = bytes(inner[12:])
        vp8x = (
            b"VP8X"
            + struct.pack("<I", 10)
            + bytes([0x10, 0, 0, 0])
            + (width - 1).to_bytes(3, "little")
            + (height - 1).to_bytes(3, "little")
        )
        payload = b"WEBP" + vp8x + body
        return b"RIFF" + struct.pack("<I", len(payload)) + payload
    inner[pos + 12 : pos + 15] = (width - 1).to_bytes(3, "little")
    inner[pos + 15 : pos + 18] = (height - 1).to_bytes(3, "little")
    return bytes(inner)


def jpeg_scan_bomb(repeats: int = 20, side: int = 1000) -> bytes:
    """A progressive JPEG whose scans are repeated ``repeats`` times (about 10 x repeats scans):
    every scan is a pass over the whole image, so decoding time grows with the scan count."""
    data = encode(Image.new("RGB", (side, side), (120, 30, 200)), "JPEG", progressive=True, quality=50)
    sos, eoi = data.find(b"\xff\xda"), data.rfind(b"\xff\xd9")
    return data[:sos] + data[sos:eoi] * repeats + b"\xff\xd9"


def bmp_with_size(width: int, height: int) -> bytes:
    """A 1x1 BMP whose header claims ``width`` x ``height``."""
    data = bytearray(encode(Image.new("RGB", (1, 1)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def tiff_with_size(width: int, height: int) -> bytes:
    """A hand-made baseline TIFF (8-bit grey, one strip of 16 bytes) claiming ``width`` x ``height``."""
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 0),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, 16),
    ]
    ifd_offset = 8
    ifd_size = 2 + 12 * len(entries) + 4
    strip_offset = ifd_offset + ifd_size
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_offset) + struct.pack("<H", len(entries)))
    for tag, typ, count, value in entries:
        if tag == 273:
            value = strip_offset
        if typ == 3:
            out += struct.pack("<HHIHH", tag, typ, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, typ, count, value)
    out += struct.pack("<I", 0) + b"\x00" * 16
    return bytes(out)


def exif_jpeg(orientation: int, width: int = 60, height: int = 40) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(picture(width, height, seed=orientation), "JPEG", quality=85, exif=exif.tobytes())


def animated(fmt: str, frames: int = 3) -> bytes:
    ims = [picture(40, 30, seed=s) for s in range(frames)]
    if fmt == "GIF":
        ims = [im.convert("P", palette=Image.Palette.ADAPTIVE) for im in ims]
    kw = {"lossless": True} if fmt == "WEBP" else {}
    return encode(ims[0], fmt, save_all=True, append_images=ims[1:], duration=100, loop=0, **kw)


def mutate(data: bytes, seed: int, flips: int = 8, keep_header: int = 0) -> bytes:
    """``data`` with ``flips`` random bytes replaced (after the first ``keep_header`` bytes)."""
    rng = random.Random(seed)
    buf = bytearray(data)
    for _ in range(flips):
        i = rng.randrange(min(keep_header, len(buf) - 1), len(buf))
        buf[i] = rng.randrange(256)
    return bytes(buf)


# ---------------------------------------------------------------------------- the corpus
def valid_odd_images() -> list[Sample]:
    """Valid images in every odd shape and mode: each must be captioned."""
    base = picture()
    s: list[Sample] = []

    def add(name: str, ext: str, data: bytes, note: str, size: tuple[int, int] | None = None) -> None:
        s.append(sample(name, ext, data, "ok", note, size))

    for fmt, ext in (
        ("PNG", ".png"),
        ("JPEG", ".jpg"),
        ("GIF", ".gif"),
        ("BMP", ".bmp"),
        ("WEBP", ".webp"),
        ("TIFF", ".tif"),
    ):
        add(f"one_pixel_{ext[1:]}", ext, encode(Image.new("RGB", (1, 1), (200, 10, 10)), fmt), "1x1", (1, 1))
    add("wide_10000x20_png", ".png", encode(picture(10000, 20), "PNG"), "10000x20", (10000, 20))
    add("tall_20x10000_png", ".png", encode(picture(20, 10000), "PNG"), "20x10000", (20, 10000))
    add("wide_10000x20_jpg", ".jpg", encode(picture(10000, 20), "JPEG"), "10000x20 JPEG")
    add("strip_1x4000_png", ".png", encode(picture(1, 4000), "PNG"), "1x4000", (1, 4000))
    add("cmyk_jpg", ".jpg", encode(base.convert("CMYK"), "JPEG"), "CMYK JPEG", (64, 48))
    add("cmyk_tif", ".tif", encode(base.convert("CMYK"), "TIFF"), "CMYK TIFF", (64, 48))
    add("gray16_png", ".png", encode(base.convert("L").convert("I;16"), "PNG"), "16-bit grey PNG", (64, 48))
    add("rgb48_png", ".png", png_16bit_rgb(32, 24), "16-bit per channel RGB PNG", (32, 24))
    add("int32_tif", ".tif", encode(base.convert("I"), "TIFF"), "32-bit integer TIFF", (64, 48))
    add("float32_tif", ".tif", encode(base.convert("F"), "TIFF"), "32-bit float TIFF", (64, 48))
    add("palette_png", ".png", encode(base.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), "palette", (64, 48))
    pal_t = base.convert("P", palette=Image.Palette.ADAPTIVE)
    add("palette_transparent_png", ".png", encode(pal_t, "PNG", transparency=0), "palette + tRNS", (64, 48))
    add("palette_gif", ".gif", encode(base.convert("P"), "GIF"), "palette GIF", (64, 48))
    add("la_png", ".png", encode(base.convert("LA"), "PNG"), "grey + alpha", (64, 48))
    add("l_png", ".png", encode(base.convert("L"), "PNG"), "grey", (64, 48))
    add("bilevel_png", ".png", encode(base.convert("1"), "PNG"), "1-bit", (64, 48))
    add("rgba_png", ".png", encode(base.convert("RGBA"), "PNG"), "RGBA", (64, 48))
    add("rgba_webp", ".webp", encode(base.convert("RGBA"), "WEBP"), "RGBA WebP", (64, 48))
    add("lossless_webp", ".webp", encode(base, "WEBP", lossless=True), "lossless WebP", (64, 48))
    add("gray_jpg", ".jpg", encode(base.convert("L"), "JPEG"), "grey JPEG", (64, 48))
    add("progressive_jpg", ".jpg", encode(base, "JPEG", progressive=True), "progressive JPEG", (64, 48))
    add("bmp_1bit", ".bmp", encode(base.convert("1"), "BMP"), "1-bit BMP", (64, 48))
    add("bmp_palette", ".bmp", encode(base.convert("P"), "BMP"), "8-bit palette BMP", (64, 48))
    add("tiff_lzw", ".tif", encode(base, "TIFF", compression="tiff_lzw"), "LZW TIFF", (64, 48))
    add(
        "tiff_two_pages",
        ".tif",
        encode(base, "TIFF", save_all=True, append_images=[picture(seed=3)]),
        "multi-page TIFF",
        (64, 48),
    )
    add("ppm", ".ppm", encode(base, "PPM"), "PPM", (64, 48))
    add("pgm", ".pgm", encode(base.convert("L"), "PPM"), "PGM", (64, 48))
    add("animated_gif", ".gif", animated("GIF"), "3-frame GIF", (40, 30))
    add("animated_png", ".png", animated("PNG"), "3-frame APNG", (40, 30))
    add("animated_webp", ".webp", animated("WEBP"), "3-frame WebP", (40, 30))
    add("gif_frame_flood", ".gif", gif_frame_flood(20_000), "1x1 GIF with 20000 frames", (1, 1))
    for o in range(1, 9):  # every EXIF orientation; 5..8 swap width and height
        add(
            f"exif_orientation_{o}_jpg", ".jpg", exif_jpeg(o), f"EXIF orientation {o}", (40, 60) if o >= 5 else (60, 40)
        )
    add(
        "big_but_allowed_png",
        ".png",
        png_zeros(3000, 3000),
        "9 Mpx of zlib-compressed zeros, under the limit",
        (3000, 3000),
    )
    add(
        "jpeg_with_comment_and_icc",
        ".jpg",
        encode(base, "JPEG", comment=b"x" * 60000, icc_profile=b"\x00" * 5000),
        "large COM and ICC segments",
        (64, 48),
    )
    return s


def invalid_inputs(seed: int = 0) -> list[Sample]:
    """Things that are not images, broken images and decompression bombs: each must be refused."""
    rng = random.Random(seed)
    base = picture()
    s: list[Sample] = []

    def add(name: str, ext: str, data: bytes, outcome: str | frozenset[str], note: str) -> None:
        s.append(sample(name, ext, data, outcome, note))

    add("zero_bytes_jpg", ".jpg", b"", "empty", "empty file")
    add("zero_bytes_png", ".png", b"", "empty", "empty file")
    for n in (1, 2, 16, 1000, 100_000):
        add(f"random_{n}_bytes", ".jpg", rng.randbytes(n), "unsupported", f"{n} random bytes")
    add("text_named_jpg", ".jpg", b"this is a text file, not a picture\n" * 10, "unsupported", "text named .jpg")
    html = b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"
    add("html_named_png", ".png", html, "unsupported", "HTML")
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    add("svg_named_png", ".png", svg, "unsupported", "SVG")
    add("json_named_jpg", ".jpg", b'{"caption": "not an image"}', "unsupported", "JSON")
    pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"
    add("pdf_named_jpg", ".jpg", pdf, "unsupported", "PDF header")
    add("zip_named_png", ".png", b"PK\x03\x04" + rng.randbytes(200), "unsupported", "ZIP header")
    add("elf_named_gif", ".gif", b"\x7fELF\x02\x01\x01" + rng.randbytes(200), "unsupported", "ELF header")
    add("utf16_text_jpg", ".jpg", "not an image".encode("utf-16"), "unsupported", "UTF-16 text")
    add("nul_bytes_png", ".png", b"\x00" * 4096, "unsupported", "4096 NUL bytes")

    full = {
        "jpg": encode(picture(96, 64), "JPEG", quality=90),
        "png": encode(picture(96, 64), "PNG"),
        "gif": encode(picture(96, 64).convert("P"), "GIF"),
        "webp": encode(picture(96, 64), "WEBP", quality=80),
        "bmp": encode(picture(96, 64), "BMP"),
        "tif": encode(picture(96, 64), "TIFF"),
    }
    for ext, data in full.items():  # cut at several points, from inside the header to near the end
        for frac in (0.02, 0.1, 0.5, 0.9):
            cut = max(1, int(len(data) * frac))
            note = f"first {cut} of {len(data)} bytes"
            add(f"truncated_{ext}_{int(frac * 100)}pct", f".{ext}", data[:cut], "unreadable", note)
        # a few bytes off the end: whether the pixels survive depends on the format
        add(f"truncated_{ext}_end", f".{ext}", data[:-5], frozenset({"ok", "unreadable"}), "the last 5 bytes cut off")
    headers = {
        "jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00",
        "png": b"\x89PNG\r\n\x1a\n",
        "gif": b"GIF89a",
        "webp": b"RIFF\x00\x10\x00\x00WEBPVP8 ",
        "bmp": b"BM",
        "tif": b"II*\x00\x08\x00\x00\x00",
    }
    for ext, head in headers.items():  # a valid magic number over a garbage body
        # GIF, BMP and TIFF keep the image size in the bytes that are now random
        outcome = REFUSED_SOMEHOW if ext in ("gif", "bmp", "tif") else "unreadable"
        for n in (64, 5000):
            note = f"{ext} magic + {n} random bytes"
            add(f"header_{ext}_garbage_{n}", f".{ext}", head + rng.randbytes(n), outcome, note)
    # the real header of a valid file, then garbage instead of pixel data
    add(
        "png_real_ihdr_garbage_idat",
        ".png",
        full["png"][:33] + png_chunk(b"IDAT", rng.randbytes(300)) + png_chunk(b"IEND", b""),
        "unreadable",
        "valid IHDR, IDAT of random bytes",
    )
    bad_crc = full["png"][:29] + b"\x00\x00\x00\x00" + full["png"][33:]
    add("png_bad_crc", ".png", bad_crc, "unreadable", "IHDR CRC zeroed")
    add("png_zero_width", ".png", png_with_header(0, 10), "unreadable", "IHDR width 0")
    jpg = full["jpg"]
    sos = jpg.find(b"\xff\xda")
    add(
        "jpg_real_headers_garbage_scan",
        ".jpg",
        jpg[: sos + 14] + rng.randbytes(2000) + b"\xff\xd9",
        "unreadable",
        "valid tables and SOS, random entropy data",
    )
    add("jpg_zero_height_sof", ".jpg", jpeg_with_sof(16, 0), "unreadable", "SOF height 0")

    # decompression bombs: tiny files declaring huge images
    add("bomb_png_100k_x_100k", ".png", png_with_header(100_000, 100_000), "too_large", "PNG header 1e10 pixels")
    add("bomb_png_2g_x_1", ".png", png_with_header(2**31 - 1, 1), "too_large", "PNG header 2^31-1 x 1")
    add("bomb_png_real_zeros", ".png", png_zeros(20_000, 20_000), "too_large", "400 Mpx of real zlib-compressed zeros")
    add(
        "bomb_png_over_limit",
        ".png",
        png_zeros(7000, 6000),
        "too_large",
        "42 Mpx of real pixels, over the test limit and the 40 Mpx default",
    )
    add("bomb_gif_65535", ".gif", gif_with_screen(65535, 65535), "too_large", "GIF screen 65535x65535")
    add("bomb_jpeg_sof_65500", ".jpg", jpeg_with_sof(65500, 65500), "too_large", "JPEG SOF 65500x65500")
    add("bomb_jpeg_sof_wide", ".jpg", jpeg_with_sof(65535, 4000), "too_large", "JPEG SOF 65535x4000")
    add("bomb_webp_vp8l_16384", ".webp", webp_lossless_with_size(16384, 16384), "too_large", "VP8L 16384x16384")
    add("bomb_webp_vp8x_canvas", ".webp", webp_vp8x_canvas(16384, 16384), "too_large", "VP8X canvas 16384x16384")
    add("bomb_jpeg_scans", ".jpg", jpeg_scan_bomb(), "too_large", "progressive JPEG with 200 scans")
    add("bomb_bmp_100k", ".bmp", bmp_with_size(100_000, 100_000), "too_large", "BMP header 100000x100000")
    add("bomb_bmp_negative", ".bmp", bmp_with_size(50_000, -50_000), "too_large", "BMP top-down 50000x50000")
    add("bomb_tiff_100k", ".tif", tiff_with_size(100_000, 100_000), "too_large", "TIFF tags 100000x100000")
    add("bomb_tiff_long_strip", ".tif", tiff_with_size(4_000_000_000, 1), "too_large", "TIFF 4e9 x 1")
    del base
    return s


def mutated_images(count: int = 24, seed: int = 1) -> list[Sample]:
    """Valid images with random bytes overwritten: refuse or caption, never crash."""
    seeds = {
        "jpg": encode(picture(48, 32, seed=7), "JPEG"),
        "png": encode(picture(48, 32, seed=7), "PNG"),
        "gif": encode(picture(48, 32, seed=7).convert("P"), "GIF"),
        "webp": encode(picture(48, 32, seed=7), "WEBP"),
        "bmp": encode(picture(24, 16, seed=7), "BMP"),
        "tif": encode(picture(24, 16, seed=7), "TIFF"),
    }
    out: list[Sample] = []
    kinds = sorted(seeds)
    for i in range(count):
        ext = kinds[i % len(kinds)]
        data = mutate(seeds[ext], seed * 1000 + i, flips=1 + i % 12, keep_header=2)
        out.append(sample(f"mutated_{ext}_{i:02d}", f".{ext}", data, ANY, "random bytes overwritten"))
    return out


def hostile_images(seed: int = 0) -> list[Sample]:
    """The whole corpus (163 samples), in a fixed order."""
    from attacks import attack_files, new_format_images  # they build on this module

    corpus = (
        valid_odd_images() + new_format_images() + invalid_inputs(seed) + attack_files() + mutated_images(seed=seed + 1)
    )
    names = [s.name for s in corpus]
    assert len(names) == len(set(names)), "sample names must be unique"
    return corpus


def write_corpus(folder, samples: list[Sample] | None = None) -> dict[str, Sample]:
    """Write every sample into ``folder`` as ``<name><ext>``; returns {filename: sample}."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for s in samples if samples is not None else hostile_images():
        (folder / s.filename).write_bytes(s.data)
        written[s.filename] = s
    return written
