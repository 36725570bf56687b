"""Files that cost far more to decode than their size suggests, and the newer phone formats.

Part of the hostile corpus (hostile.py): ``attack_files()`` at test size, and at the size
of the attack run that found them (``full_size=True``) for bench/loader_attacks.py, with
the same expected outcome either way; ``new_format_images()`` are HEIC and AVIF photos.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from hostile import Sample, encode, picture, png_chunk, png_zeros, sample
from PIL import Image


def ico_attack(png: bytes) -> bytes:
    """An ICO whose one entry says 256x256 but holds ``png`` (Pillow decodes it while opening)."""
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def icns_attack(png: bytes) -> bytes:
    """An ICNS with one 1024x1024 ("ic10") entry holding ``png`` of any size."""
    body = b"ic10" + struct.pack(">I", 8 + len(png)) + png
    return b"icns" + struct.pack(">I", 8 + len(body)) + body


def fits_gzip_attack(width: int, height: int) -> bytes:
    """A gzip-compressed FITS image of zeros (Pillow decodes it pixel by pixel in Python)."""

    def unit(cards: list[str]) -> bytes:
        text = "".join(c.ljust(80) for c in [*cards, "END"])
        return text.ljust(-(-len(text) // 2880) * 2880).encode("ascii")

    primary = unit(
        ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    0"]
    )
    ext = unit(
        [
            "XTENSION= 'BINTABLE'",
            "BITPIX  =                    8",
            "NAXIS   =                    2",
            "NAXIS1  =                    0",
            "NAXIS2  =                    0",
            "ZIMAGE  =                    T",
            "ZCMPTYPE= 'GZIP_1  '",
            "ZBITPIX =                    8",
            "ZNAXIS  =                    2",
            f"ZNAXIS1 = {width:20d}",
            f"ZNAXIS2 = {height:20d}",
        ]
    )
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    row = b"\x00" * (width * 4)
    data = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return primary + ext + data


def bmp_rle8_attack(width: int, height: int) -> bytes:
    """An 8-bit RLE BMP whose rows are one pixel and an end-of-line: Pillow's RLE decoder
    (pure Python) pads the rest of each row one byte at a time, so 4 bytes cost ``width`` steps."""
    pixels = b"".join(bytes([1, y % 256, 0, 0]) for y in range(height)) + b"\x00\x01"  # end of bitmap
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def tiff_strips_attack(strips: int) -> bytes:
    """An uncompressed 8-bit grey TIFF, 1 pixel wide, one row per strip (one Python step each)."""
    assert strips > 1, "the offsets are written as arrays"
    entries = [
        (256, 4, 1, 1),
        (257, 4, 1, strips),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, strips, 0),
        (277, 3, 1, 1),
        (278, 4, 1, 1),
        (279, 4, strips, 0),
    ]
    ifd = 8
    offsets_at = ifd + 2 + 12 * len(entries) + 4
    counts_at = offsets_at + 4 * strips
    data_at = counts_at + 4 * strips
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd) + struct.pack("<H", len(entries)))
    for tag, typ, count, value in entries:
        value = {273: offsets_at, 279: counts_at}.get(tag, value)
        if typ == 3:
            out += struct.pack("<HHIHH", tag, typ, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, typ, count, value)
    out += struct.pack("<I", 0)
    out += (data_at + np.arange(strips, dtype="<u4")).astype("<u4").tobytes()
    out += np.ones(strips, dtype="<u4").tobytes()
    out += bytes(range(256)) * (strips // 256) + bytes(range(strips % 256))
    return bytes(out)


def jpeg_segments_attack(segments: int) -> bytes:
    """A small valid JPEG with ``segments`` empty COM segments after SOI (each parsed in Python)."""
    data = encode(picture(64, 48), "JPEG", quality=80)
    return data[:2] + b"\xff\xfe\x00\x02" * segments + data[2:]


def png_chunks_attack(chunks: int) -> bytes:
    """A small valid PNG with ``chunks`` empty ancillary chunks before IDAT (each read in Python)."""
    data = encode(picture(64, 48), "PNG")
    return data[:33] + png_chunk(b"zzZz", b"") * chunks + data[33:]


def attack_files(full_size: bool = False) -> list[Sample]:
    """Small files that cost far more to decode than their size suggests (issue-sized with
    ``full_size``, for bench/loader_attacks.py; test-sized otherwise, same outcome)."""
    big = full_size
    s: list[Sample] = []

    def add(name: str, ext: str, data: bytes, outcome: str, note: str) -> None:
        s.append(sample(name, ext, data, outcome, note))

    n = 10_000 if big else 2000  # the embedded PNG: 100 Mpx / 4 Mpx of RGBA zeros
    png = png_zeros(n, n, bit_depth=8, channels=4)
    add("ico_png_bomb", ".ico", ico_attack(png), "unsupported", f"ICO whose RGBA PNG is {n}x{n}")
    add("icns_png_bomb", ".icns", icns_attack(png), "unsupported", f"ICNS whose RGBA PNG is {n}x{n}")
    n = 6324 if big else 600
    add("fits_gzip", ".fits", fits_gzip_attack(n, n), "unsupported", f"gzip FITS {n}x{n}")
    add("qoi", ".qoi", encode(Image.new("RGB", (n, n), (9, 9, 9)), "QOI"), "unsupported", f"QOI {n}x{n}")
    n = 6000 if big else 1200  # over MAX_PY_DECODER_PIXELS either way
    add("bmp_rle8_large", ".bmp", bmp_rle8_attack(n, n), "too_large", f"RLE8 BMP {n}x{n}")
    n = 2_000_000 if big else 100_000
    add("tiff_many_strips", ".tif", tiff_strips_attack(n), "too_large", f"TIFF of {n} one-row strips")
    n = 8_000_000 if big else 5000
    add("jpeg_segment_flood", ".jpg", jpeg_segments_attack(n), "too_large", f"JPEG with {n} empty COM segments")
    n = 2_500_000 if big else 70_000
    add("png_chunk_flood", ".png", png_chunks_attack(n), "too_large", f"PNG with {n} empty ancillary chunks")
    # legitimate ones of the same kinds: must still be decoded
    s.append(sample("bmp_rle8_small", ".bmp", bmp_rle8_attack(64, 48), "ok", "RLE8 BMP 64x48", (64, 48)))
    s.append(sample("tiff_1000_strips", ".tif", tiff_strips_attack(1000), "ok", "TIFF of 1000 strips", (1, 1000)))
    w = 6300 if big else 3900  # 39.7 / 15.2 Mpx of 16-bit grey: under the limits, costly through float64
    s.append(sample("png16_large", ".png", png_zeros(w, w, bit_depth=16), "ok", f"16-bit grey PNG {w}x{w}", (w, w)))
    return s


def new_format_images() -> list[Sample]:
    """HEIC and AVIF photos (what phones write): accepted through the same loader."""
    base = picture()
    return [
        sample("heic_photo", ".heic", encode(base, "HEIF", quality=90), "ok", "HEIC", (64, 48)),
        sample("avif_photo", ".avif", encode(base, "AVIF", quality=90), "ok", "AVIF", (64, 48)),
        sample("heic_truncated", ".heic", encode(base, "HEIF")[:200], "unreadable", "HEIC cut at 200 bytes"),
        sample("avif_truncated", ".avif", encode(base, "AVIF")[:100], "unreadable", "AVIF cut at 100 bytes"),
    ]
