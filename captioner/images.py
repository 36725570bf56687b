"""Safe image loading: the only place the project turns bytes into pixels.

``load_image`` accepts a path, raw bytes or a PIL image and returns an RGB PIL image, or
raises :class:`~captioner.errors.ImageLoadError` naming the file. It

* opens only the formats a captioning service has a use for (``ACCEPTED_FORMATS``:
  JPEG, PNG, WebP, GIF, BMP, TIFF, PPM/PGM/PBM, AVIF and, with ``pillow-heif``, HEIC);
  anything else is refused (code ``unsupported``, HTTP 415) with its name and the list of
  accepted ones, before Pillow's plugin for it runs (the ICO and ICNS plugins, for
  example, decode an embedded PNG of any size while opening the file);
* checks the pixel count from the header *before* decoding, so a decompression bomb
  (a tiny file declaring huge dimensions) is rejected without allocating memory; Pillow's
  own limit (``HARD_MAX_PIXELS``) stays in force as a second wall;
* refuses, from the header, the files that are small but slow to decode
  (:mod:`captioner.image_checks`): JPEGs of many scans or segments, PNGs of many chunks,
  TIFFs of many strips or tiles, and encodings Pillow decodes in pure Python (RLE BMP,
  plain PPM, PPM of more than 8 bits) beyond a small size;
* uses JPEG draft mode to decode large JPEGs directly at a reduced scale close to the
  model's input size (much faster than a full decode and resize), and reduces 16-bit and
  32-bit images by an integer factor towards ``draft_size`` before converting them;
* applies the EXIF orientation;
* converts every mode (palette, alpha, CMYK, 16-bit, 32-bit float, grayscale) to RGB,
  compositing transparency on white, without float64 copies of the image;
* takes the first frame of animated images.

Time: with these checks no accepted file of bounded size decodes for long (the figures are
in docs/reliability.md); a caller that must bound decode time whatever happens runs
``load_image`` in a :class:`captioner.decode_budget.DecodePool`, which kills a decode that
outlives its budget.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError, features

from .errors import ImageLoadError
from .image_checks import MAX_JPEG_SCANS, check_after_open, check_before_open

try:  # HEIC/HEIF (what phones write); AVIF is read by Pillow itself (>= 11.3)
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:  # pragma: no cover - pillow-heif is a dependency
    HEIF_SUPPORTED = False
AVIF_SUPPORTED = bool(features.check("avif"))
Image.init()  # every plugin registered, so Image.OPEN can name a format that is not accepted

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image

#: Images with more pixels than this are refused (before decoding).
DEFAULT_MAX_PIXELS = 40_000_000
#: Pillow's own limit, a second wall behind ``max_pixels``: whatever limit a caller
#: passes, Pillow refuses to open or allocate an image of more pixels than this.
HARD_MAX_PIXELS = 250_000_000
#: Files larger than this are refused before reading them into memory.
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
#: Pillow format IDs ``Image.open`` may use; no other plugin ever runs. A JPEG with a
#: multi-picture index opens as "MPO" (a JPEG subtype, decoded by the same plugin).
ACCEPTED_FORMATS: tuple[str, ...] = (
    "JPEG",
    "PNG",
    "WEBP",
    "GIF",
    "BMP",
    "TIFF",
    "PPM",
    *(("AVIF",) if AVIF_SUPPORTED else ()),
    *(("HEIF",) if HEIF_SUPPORTED else ()),
)
#: How the accepted formats are named to users (in the 415 error, the docs).
ACCEPTED_NAMES = (
    "JPEG, PNG, WebP, GIF, BMP, TIFF, PPM/PGM/PBM"
    + (", AVIF" if AVIF_SUPPORTED else "")
    + (", HEIC/HEIF" if HEIF_SUPPORTED else "")
)
#: Extensions treated as images when walking folders.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
    | ({".avif"} if AVIF_SUPPORTED else set())
    | ({".heic", ".heif"} if HEIF_SUPPORTED else set())
)

# Pillow warns between MAX_IMAGE_PIXELS and twice that and raises DecompressionBombError
# beyond; our own check (max_pixels) comes first, so Pillow's raises at HARD_MAX_PIXELS.
Image.MAX_IMAGE_PIXELS = HARD_MAX_PIXELS // 2
ImageFile.LOAD_TRUNCATED_IMAGES = False
MODES_16_32 = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


def source_label(source: ImageSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or "<image>"
    return "<bytes>"


def read_source(source: ImageSource, label: str, max_bytes: int) -> bytes:
    """The bytes of a path or buffer, refusing empty and oversized ones before reading."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ImageLoadError(label, "file not found", "not_found") from None
        except OSError as e:
            raise ImageLoadError(label, f"cannot read file ({e.strerror or e})") from None
        if not path.is_file():
            raise ImageLoadError(label, "not a regular file")
        if size == 0:
            raise ImageLoadError(label, "file is empty (0 bytes)", "empty")
        if size > max_bytes:
            raise ImageLoadError(label, f"file is {size} bytes, more than the limit of {max_bytes}", "too_large")
        try:
            return path.read_bytes()
        except OSError as e:
            raise ImageLoadError(label, f"cannot read file ({e.strerror or e})") from None
    data = bytes(source)  # type: ignore[arg-type]
    if not data:
        raise ImageLoadError(label, "no data (0 bytes)", "empty")
    if len(data) > max_bytes:
        raise ImageLoadError(label, f"{len(data)} bytes, more than the limit of {max_bytes}", "too_large")
    return data


def _open(source: ImageSource, label: str, max_bytes: int) -> tuple[Image.Image, bytes]:
    """Open lazily (header only), with the accepted formats' plugins only."""
    data = read_source(source, label, max_bytes)
    check_before_open(data, label)
    im: Image.Image | None
    try:
        im = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        fmt = sniff_format(data)
        if fmt in ACCEPTED_FORMATS or fmt == "WebP":  # sniff_format names WEBP "WebP"
            raise ImageLoadError(label, f"corrupt {fmt} data (the header cannot be parsed)") from None
        if fmt:
            raise ImageLoadError(
                label, f"{fmt} images are not accepted; accepted formats: {ACCEPTED_NAMES}", "unsupported"
            ) from None
        raise ImageLoadError(
            label, f"not a recognised image format (accepted formats: {ACCEPTED_NAMES})", "unsupported"
        ) from None
    except Image.DecompressionBombError:
        # Pillow's wall refused the header's size: parse the header again without its check,
        # only to name the dimensions (the caller refuses them: they exceed HARD_MAX_PIXELS).
        im = _open_over_wall(data)
        if im is None:
            raise ImageLoadError(label, f"more than {HARD_MAX_PIXELS} pixels", "too_large") from None
        return im, data
    except Exception as e:  # Pillow raises many types on corrupt headers
        raise ImageLoadError(label, f"corrupt image header ({type(e).__name__}: {e})") from None
    return im, data


def _open_over_wall(data: bytes) -> Image.Image | None:
    """The accepted plugin that claims ``data``, opened lazily past Image.open's size check."""
    prefix = data[:16]
    for fmt in ACCEPTED_FORMATS:
        factory, accept = Image.OPEN[fmt]
        try:
            claimed = accept(prefix) if accept is not None else True
            if claimed and not isinstance(claimed, str):  # a str is a warning, not a claim
                return factory(io.BytesIO(data), "")
        except Exception:
            continue
    return None


_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def sniff_format(data: bytes) -> str | None:
    """The image format the first bytes claim, or None (used to tell corrupt from
    unsupported, and to name a format that is not accepted). Only looks at the first
    16 bytes: no plugin of a format outside ``ACCEPTED_FORMATS`` ever runs."""
    for magic, fmt in _SIGNATURES:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    prefix = data[:16]
    for fmt, (_factory, accept) in Image.OPEN.items():
        if accept is None or fmt in ("IPTC", "MPEG"):  # None accepts anything; these two are loose
            continue
        try:
            claimed = accept(prefix)
        except Exception:  # an odd plugin's check on odd bytes
            continue
        if claimed and not isinstance(claimed, str):
            return fmt
    return None


def probe_image_size(source: ImageSource, name: str | None = None) -> tuple[int, int]:
    """(width, height) from the header alone; raises ImageLoadError."""
    label = source_label(source, name)
    if isinstance(source, Image.Image):
        return source.size
    im, _ = _open(source, label, DEFAULT_MAX_BYTES)
    return im.size


def _reduce_factor(size: tuple[int, int], target: tuple[int, int] | None) -> int:
    """The largest integer factor that keeps both sides at least ``target`` (1: none)."""
    if target is None:
        return 1
    return max(1, min(size[0] // max(1, target[0]), size[1] // max(1, target[1])))


def _high_depth_to_l(im: Image.Image, reduce_to: tuple[int, int] | None) -> Image.Image:
    """A 16-bit or 32-bit single-channel image as 8-bit "L", in bounded memory.

    16-bit: value // 257 (0..65535 -> 0..255), converted in bands of rows, so no copy of the
    whole image is ever made wider than 8 bits. 32-bit integer and float: reduced first
    (when ``reduce_to`` allows), then rescaled to 0..255 when they leave that range, in float32.
    """
    if im.mode.startswith("I;16"):
        width, height = im.size
        out = np.empty((height, width), dtype=np.uint8)  # (H, W)
        band = max(1, (1 << 19) // max(1, width))  # about 1 MB of 16-bit samples per band
        for top in range(0, height, band):
            rows = np.asarray(im.crop((0, top, width, min(height, top + band))))  # (h, W) uint16
            np.floor_divide(rows, 257, out=out[top : top + rows.shape[0]], casting="unsafe")
        small = Image.fromarray(out, "L")
        factor = _reduce_factor(small.size, reduce_to)
        return small.reduce(factor) if factor > 1 else small
    factor = _reduce_factor(im.size, reduce_to)
    if factor > 1:
        im = im.reduce(factor)  # box average in the image's own mode (I or F)
    arr = np.asarray(im, dtype=np.float32)  # (H, W), one 4-byte copy
    if not arr.flags.writeable:  # a float32 image's own buffer
        arr = arr.copy()
    if arr.size:
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 255:
            arr = arr - np.float32(lo)
            arr *= np.float32(255.0 / max(hi - lo, 1e-12))
    arr = np.nan_to_num(arr, copy=False)
    np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(arr.astype(np.uint8), "L")


def _to_rgb(im: Image.Image, reduce_to: tuple[int, int] | None = None) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in MODES_16_32:
        return _high_depth_to_l(im, reduce_to).convert("RGB")
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


def _check_size(label: str, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageLoadError(label, f"invalid dimensions {width}x{height}")
    if width * height > max_pixels:
        raise ImageLoadError(
            label,
            f"{width}x{height} pixels exceed the limit of {max_pixels} (possible decompression bomb)",
            "too_large",
        )


def load_image(
    source: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode ``source`` into an RGB image, safely (see the module docstring).

    ``draft_size`` (width, height): for JPEGs, decode at the smallest power-of-two
    reduction that is still at least this big; 16-bit and 32-bit images are reduced by
    the largest integer factor that keeps them at least this big. Pass the model's input
    size. 8-bit images of other formats are returned at full size.
    """
    label = source_label(source, name)
    if isinstance(source, Image.Image):
        im = source
        if im.width * im.height > min(max_pixels, HARD_MAX_PIXELS):
            raise ImageLoadError(label, f"{im.width}x{im.height} pixels exceed the limit of {max_pixels}", "too_large")
        try:
            return _to_rgb(ImageOps.exif_transpose(im) or im)
        except Exception as e:
            raise ImageLoadError(label, f"cannot convert image ({type(e).__name__}: {e})") from None

    im, data = _open(source, label, max_bytes)
    _check_size(label, *im.size, min(max_pixels, HARD_MAX_PIXELS))
    check_after_open(im, data, label)
    try:
        # Image.open leaves the first frame current. Never ask for n_frames: for GIF it
        # parses every frame header, so a small file of a million 1-pixel frames would
        # cost seconds of CPU per request.
        if draft_size is not None and im.format == "JPEG":
            im.draft("RGB", draft_size)
        im.load()
        im = ImageOps.exif_transpose(im) or im
        return _to_rgb(im, draft_size)
    except ImageLoadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower() or isinstance(e, EOFError):
            msg = f"truncated or corrupt image data ({msg})"
        else:
            msg = f"corrupt image data ({type(e).__name__}: {msg})"
        raise ImageLoadError(label, msg) from None
    except (MemoryError, Image.DecompressionBombError):
        raise ImageLoadError(label, "image too large to decode", "too_large") from None
    except Exception as e:  # a decoder bug must not take the process down
        raise ImageLoadError(label, f"cannot decode image ({type(e).__name__}: {e})") from None


def is_image_path(path: str | os.PathLike) -> bool:
    """True when the file name has an image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


__all__ = [
    "ACCEPTED_FORMATS",
    "ACCEPTED_NAMES",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "HARD_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "MAX_JPEG_SCANS",
    "ImageSource",
    "is_image_path",
    "load_image",
    "probe_image_size",
    "sniff_format",
]
