"""Header checks that refuse small files which are slow to decode, before decoding them.

Each limit below is far above what an ordinary file uses and low enough that Pillow's
per-item Python work stays in milliseconds (docs/reliability.md has the measurements).
The scans are bounded: they stop at the limit, so checking a hostile file costs at most
a few thousand Python steps, whatever its size.

* ``check_before_open(data, label)``: runs before ``Image.open`` (whose own parsing is
  the slow part for segment, chunk and strip floods).
* ``check_after_open(im, data, label)``: runs on the opened (not yet decoded) image:
  formats Pillow decodes in pure Python are bounded in pixels and bytes.
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
    pos, segments, n = 2, 0, len(data)
    while pos + 4 <= n and segments <= MAX_JPEG_SEGMENTS:
        if data[pos] != 0xFF:
            return  # not a marker: Pillow decides what is wrong
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # first scan: libjpeg takes over from here
            return
        segments += 1
        pos += 2 if marker in _JPEG_STANDALONE else 2 + ((data[pos + 2] << 8) | data[pos + 3])
    if segments > MAX_JPEG_SEGMENTS:
        raise _too_slow(label, f"JPEG with more than {MAX_JPEG_SEGMENTS} marker segments before its first scan")


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
