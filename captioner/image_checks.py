"""Header checks that refuse small files which are slow to decode, before decoding them.

Each limit below is far above what an ordinary file uses and low enough that Pillow's
per-item Python work stays in milliseconds (docs/reliability.md has the measurements).
The scans are bounded: they stop at the limit, so checking a hostile file costs at most
a few thousand Python steps, whatever its size.

* ``check_before_open(data, label)``: runs before ``Image.open`` (whose own parsing is
  the slow part for segment, chunk and strip floods).
* ``check_after_open(im, data, label)``: runs on the opened (not yet decoded) image:
  formats Pillow decodes in pure Python are bounded in pixels and bytes.
* ``declared_size(data)``: width and height from the header alone, in pure Python (no
  image library parses anything), so a caller can price a batch of uploads before any of
  them is decoded (the service's per-request and per-client pixel budgets).
"""

from __future__ import annotations

import struct

from PIL import Image

from .errors import ImageLoadError

#: JPEGs with more scans than this are refused. Every scan is a pass over the whole image,
#: so a small file of thousands of (nearly empty) progressive scans takes minutes of CPU to
#: decode (a "scan bomb"); ordinary JPEGs have 1 to about 20 scans.
MAX_JPEG_SCANS = 100
#: JPEG marker segments before the first scan (Pillow parses each in Python: a flood of
#: 1 million empty COM segments took 0.9 s per 4 MB); ordinary JPEGs have 5 to about 40.
MAX_JPEG_SEGMENTS = 1000
#: PNG chunks in the file (Pillow reads each in Python: 1 million empty chunks took 2.6 s
#: per 12 MB); an encoder writing 8 KB IDAT chunks needs about 6,400 for 50 MB.
MAX_PNG_CHUNKS = 65_536
#: TIFF strips or tiles (an uncompressed TIFF becomes one Python decode step per strip:
#: 1 million one-row strips took 8.3 s); ordinary TIFFs have one to a few thousand.
MAX_TIFF_BLOCKS = 65_536
#: Images that Pillow decodes in pure Python (RLE BMP, plain-text PPM, PPM of more than
#: 8 bits, ...) are accepted up to this many pixels and bytes (about 0.3-0.7 s here).
MAX_PY_DECODER_PIXELS = 1_000_000
MAX_PY_DECODER_BYTES = 4 * 1024 * 1024

#: Bytes between JPEG marker segments that are not a marker (junk, 0xFF00 and 0xFFFF pairs).
#: Pillow steps over them one byte per Python iteration (30 MB of junk after an APP13 whose
#: length is 2 short took 1.5 s); ordinary files have none or a few fill bytes.
MAX_JPEG_JUNK_BYTES = 256 * 1024

_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field


def _too_slow(label: str, what: str) -> ImageLoadError:
    return ImageLoadError(label, f"{what} (slow to decode, so refused)", "too_large")


def _check_jpeg(data: bytes, label: str) -> None:
    # Entropy-coded data never holds FF DA (FF bytes are stuffed), so this counts the
    # start-of-scan markers (plus any in embedded thumbnails): an upper bound, cheaply.
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise ImageLoadError(
            label,
            f"JPEG with {scans} scans, more than the limit of {MAX_JPEG_SCANS} "
            "(ordinary JPEGs have at most about 20; this many make decoding very slow)",
            "too_large",
        )
    pos, segments, junk, n = 2, 0, 0, len(data)
    while pos + 4 <= n and segments <= MAX_JPEG_SEGMENTS and junk <= MAX_JPEG_JUNK_BYTES:
        if data[pos] != 0xFF:  # junk: Pillow skips it byte by byte, looking for the next 0xFF
            nxt = data.find(b"\xff", pos, pos + MAX_JPEG_JUNK_BYTES + 1 - junk)
            junk += (nxt if nxt >= 0 else n) - pos
            if nxt < 0:
                break
            pos = nxt
            continue
        marker = data[pos + 1]
        if marker in (0xFF, 0x00):  # a fill byte, or a stuffed 0xFF00 where a marker should be
            junk += 1
            pos += 1
            continue
        if marker == 0xDA:  # first scan: libjpeg takes over from here
            return
        segments += 1
        pos += 2 if marker in _JPEG_STANDALONE else 2 + ((data[pos + 2] << 8) | data[pos + 3])
    if segments > MAX_JPEG_SEGMENTS:
        raise _too_slow(label, f"JPEG with more than {MAX_JPEG_SEGMENTS} marker segments before its first scan")
    if junk > MAX_JPEG_JUNK_BYTES:
        raise _too_slow(label, f"JPEG with more than {MAX_JPEG_JUNK_BYTES} bytes of junk between its marker segments")


def _check_png(data: bytes, label: str) -> None:
    pos, chunks, n = 8, 0, len(data)
    while pos + 8 <= n:
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise _too_slow(label, f"PNG of more than {MAX_PNG_CHUNKS} chunks")
        (length,) = struct.unpack_from(">I", data, pos)
        if data[pos + 4 : pos + 8] == b"IEND":
            return
        pos += 12 + length


def _tiff_blocks(data: bytes) -> int:
    """The number of strips or tiles the first IFD declares (0 when the header is odd)."""
    order = "<" if data[:2] == b"II" else ">"
    (version,) = struct.unpack_from(order + "H", data, 2)
    if version == 42:  # classic TIFF: 2-byte entry count, 12-byte entries, 4-byte counts
        (ifd,) = struct.unpack_from(order + "I", data, 4)
        head, entry, fmt = 2, 12, order + "HHI"
        (count,) = struct.unpack_from(order + "H", data, ifd) if ifd + 2 <= len(data) else (0,)
    elif version == 43:  # BigTIFF: 8-byte entry count, 20-byte entries, 8-byte counts
        (ifd,) = struct.unpack_from(order + "Q", data, 8)
        head, entry, fmt = 8, 20, order + "HHQ"
        (count,) = struct.unpack_from(order + "Q", data, ifd) if ifd + 8 <= len(data) else (0,)
    else:
        return 0
    blocks = 0
    for i in range(min(count, 65_535)):
        at = ifd + head + i * entry
        if at + struct.calcsize(fmt) > len(data):
            break
        tag, _type, values = struct.unpack_from(fmt, data, at)
        if tag in (273, 324):  # StripOffsets, TileOffsets
            blocks = max(blocks, values)
    return blocks


def check_before_open(data: bytes, label: str) -> None:
    """Refuse, from the first bytes and a bounded scan, files that are slow to open or decode."""
    if data[:2] == b"\xff\xd8":
        _check_jpeg(data, label)
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        _check_png(data, label)
    elif data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+") and len(data) >= 16:
        try:
            blocks = _tiff_blocks(data)
        except struct.error:
            return  # a cut header: Pillow says what is wrong
        if blocks > MAX_TIFF_BLOCKS:
            raise _too_slow(label, f"TIFF of {blocks} strips or tiles, more than the limit of {MAX_TIFF_BLOCKS}")


def check_after_open(im: Image.Image, data: bytes, label: str) -> None:
    """Refuse an opened image whose pixels Pillow would decode in pure Python, beyond a small size."""
    tiles = getattr(im, "tile", None) or []
    slow = [t[0] for t in tiles if t[0] in Image.DECODERS]  # DECODERS holds Pillow's Python decoders
    if not slow:
        return
    pixels = im.width * im.height
    if pixels > MAX_PY_DECODER_PIXELS or len(data) > MAX_PY_DECODER_BYTES:
        raise _too_slow(
            label,
            f"{im.format} of {im.width}x{im.height} pixels and {len(data)} bytes in an encoding decoded in "
            f"pure Python ({slow[0]}), accepted up to {MAX_PY_DECODER_PIXELS} pixels and {MAX_PY_DECODER_BYTES} bytes",
        )


# ---------------------------------------------------------------------------- sizes from headers
_JPEG_SOF = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)})
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis")
#: How far into a HEIF/AVIF file its ``ispe`` (image size) boxes are looked for.
HEIF_SCAN_BYTES = 256 * 1024


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The frame header (SOFn) of the first frame; embedded thumbnails sit inside APPn segments."""
    pos, n, steps = 2, len(data), 0
    while pos + 9 <= n and steps <= MAX_JPEG_SEGMENTS + MAX_JPEG_JUNK_BYTES:
        steps += 1
        if data[pos] != 0xFF:
            pos = data.find(b"\xff", pos)
            if pos < 0:
                return None
            continue
        marker = data[pos + 1]
        if marker in (0xFF, 0x00):
            pos += 1
            continue
        if marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return width, height
        if marker == 0xDA:
            return None
        pos += 2 if marker in _JPEG_STANDALONE else 2 + ((data[pos + 2] << 8) | data[pos + 3])
    return None


def _gif_size(data: bytes) -> tuple[int, int] | None:
    """The logical screen, grown to the first frame's extent (Pillow grows it the same way)."""
    width, height = struct.unpack_from("<HH", data, 6)
    pos, n = 13, len(data)
    if data[10] & 0x80:  # global colour table
        pos += 3 << ((data[10] & 7) + 1)
    for _ in range(MAX_PNG_CHUNKS):  # extension blocks before the first image: bounded
        if pos >= n or data[pos] == 0x3B:  # trailer
            break
        if data[pos] == 0x2C and pos + 9 <= n:  # image descriptor
            x, y, w, h = struct.unpack_from("<HHHH", data, pos + 1)
            return max(width, x + w), max(height, y + h)
        if data[pos] != 0x21 or pos + 2 > n:
            break
        pos += 2  # extension introducer and label, then sub-blocks
        while pos < n and data[pos]:
            pos += data[pos] + 1
        pos += 1
    return width, height


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    (header,) = struct.unpack_from("<I", data, 14)
    if header == 12:  # OS/2 BITMAPCOREHEADER
        return struct.unpack_from("<HH", data, 18)
    width, height = struct.unpack_from("<ii", data, 18)
    return abs(width), abs(height)


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """The canvas from the first chunk (VP8X), or the bitstream's own size (VP8L, VP8)."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        (bits,) = struct.unpack_from("<I", data, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """ImageWidth and ImageLength of the first IFD (the image Pillow opens)."""
    order = "<" if data[:2] == b"II" else ">"
    (version,) = struct.unpack_from(order + "H", data, 2)
    if version == 42:
        (ifd,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, ifd)
        head, entry, fmt = 2, 12, order + "HHI"
    elif version == 43:
        (ifd,) = struct.unpack_from(order + "Q", data, 8)
        (count,) = struct.unpack_from(order + "Q", data, ifd)
        head, entry, fmt = 8, 20, order + "HHQ"
    else:
        return None
    found: dict[int, int] = {}
    for i in range(min(count, 65_535)):
        at = ifd + head + i * entry
        tag, typ, _count = struct.unpack_from(fmt, data, at)
        if tag in (256, 257):
            value_at = at + struct.calcsize(fmt)
            found[tag] = struct.unpack_from(order + ("H" if typ == 3 else "I"), data, value_at)[0]
            if len(found) == 2:
                return found[256], found[257]
    return None


def _ppm_size(data: bytes) -> tuple[int, int] | None:
    """The two numbers after the magic (PBM/PGM/PPM/PFM), comments skipped; bounded to 4 KiB."""
    tokens: list[bytes] = []
    for line in data[2:4096].splitlines():
        tokens += line.split(b"#", 1)[0].split()
        if len(tokens) >= 2:
            if tokens[0].isdigit() and tokens[1].isdigit():
                return int(tokens[0]), int(tokens[1])
            return None
    return None


def _heif_size(data: bytes) -> tuple[int, int] | None:
    """The largest ``ispe`` (image spatial extents) box near the start: the primary image or
    its grid; tiles and thumbnails are smaller."""
    best: tuple[int, int] | None = None
    head = data[:HEIF_SCAN_BYTES]
    pos = head.find(b"ispe")
    while pos >= 0 and pos + 16 <= len(head):
        width, height = struct.unpack_from(">II", head, pos + 8)  # after version and flags
        if best is None or width * height > best[0] * best[1]:
            best = (width, height)
        pos = head.find(b"ispe", pos + 4)
    return best


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the header of an accepted format declares it, or None when the
    format is not recognised or its header cannot be read. Pure Python and bounded: the
    service prices uploads with it before decoding any, then holds each decode to it."""
    try:
        if data[:3] == b"\xff\xd8\xff":
            return _jpeg_size(data)
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return struct.unpack_from(">II", data, 16)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return _gif_size(data)
        if data[:2] == b"BM":
            return _bmp_size(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return _tiff_size(data)
        if data[:1] == b"P" and data[1:2] in (b"1", b"2", b"3", b"4", b"5", b"6", b"f", b"F"):
            return _ppm_size(data)
        if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
            return _heif_size(data)
    except (struct.error, IndexError):
        return None
    return None
