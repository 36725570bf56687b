"""Safe image loading: the only place the project turns bytes into pixels.

``load_image`` accepts a path, raw bytes or a PIL image and returns an RGB PIL image, or
raises :class:`~captioner.errors.ImageLoadError` naming the file. It

* checks the pixel count from the header *before* decoding, so a decompression bomb
  (a tiny file declaring huge dimensions) is rejected without allocating memory, and so
  is a JPEG with more than ``MAX_JPEG_SCANS`` scans (a small file that is slow to decode);
* uses JPEG draft mode to decode large JPEGs directly at a reduced scale close to the
  model's input size (much faster than a full decode and resize);
* applies the EXIF orientation;
* converts every mode (palette, alpha, CMYK, 16-bit, 32-bit float, grayscale) to RGB,
  compositing transparency on white;
* takes the first frame of animated images.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageLoadError

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image

#: Images with more pixels than this are refused (before decoding).
DEFAULT_MAX_PIXELS = 40_000_000
#: Files larger than this are refused before reading them into memory.
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
#: JPEGs with more scans than this are refused before decoding. Every scan is a pass over
#: the whole image, so a small file of thousands of (nearly empty) progressive scans takes
#: minutes of CPU to decode (a "scan bomb"); ordinary JPEGs have 1 to about 20 scans.
MAX_JPEG_SCANS = 100
#: Extensions treated as images when walking folders.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)

# Pillow's own bomb check only warns below 2x its limit; ours raises, so switch Pillow's off
# and never let it load a truncated file silently.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _label(source: ImageSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or "<image>"
    return "<bytes>"


def _open(source: ImageSource, label: str, max_bytes: int) -> Image.Image:
    """Open lazily (header only)."""
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
            data = path.read_bytes()
        except OSError as e:
            raise ImageLoadError(label, f"cannot read file ({e.strerror or e})") from None
    else:
        data = bytes(source)
        if not data:
            raise ImageLoadError(label, "no data (0 bytes)", "empty")
        if len(data) > max_bytes:
            raise ImageLoadError(label, f"{len(data)} bytes, more than the limit of {max_bytes}", "too_large")
    if data[:2] == b"\xff\xd8":
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
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        fmt = sniff_format(data)
        if fmt:
            raise ImageLoadError(label, f"corrupt {fmt} data (the header cannot be parsed)") from None
        raise ImageLoadError(label, "not a recognised image format", "unsupported") from None
    except Image.DecompressionBombError as e:  # pragma: no cover - Pillow check disabled above
        raise ImageLoadError(label, str(e), "too_large") from None
    except Exception as e:  # Pillow raises many types on corrupt headers
        raise ImageLoadError(label, f"corrupt image header ({type(e).__name__}: {e})") from None


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
    """The image format the first bytes claim, or None (used to tell corrupt from unsupported)."""
    for magic, fmt in _SIGNATURES:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def probe_image_size(source: ImageSource, name: str | None = None) -> tuple[int, int]:
    """(width, height) from the header alone; raises ImageLoadError."""
    label = _label(source, name)
    if isinstance(source, Image.Image):
        return source.size
    im = _open(source, label, DEFAULT_MAX_BYTES)
    return im.size


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0
        elif arr.size:
            lo, hi = float(arr.min()), float(arr.max())
            if lo < 0 or hi > 255:
                arr = (arr - lo) * (255.0 / max(hi - lo, 1e-12))
        arr = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


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
    reduction that is still at least this big. Pass the model's input size.
    """
    label = _label(source, name)
    if isinstance(source, Image.Image):
        im = source
        if im.width * im.height > max_pixels:
            raise ImageLoadError(label, f"{im.width}x{im.height} pixels exceed the limit of {max_pixels}", "too_large")
        try:
            return _to_rgb(ImageOps.exif_transpose(im) or im)
        except Exception as e:
            raise ImageLoadError(label, f"cannot convert image ({type(e).__name__}: {e})") from None

    im = _open(source, label, max_bytes)
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageLoadError(label, f"invalid dimensions {width}x{height}")
    if width * height > max_pixels:
        raise ImageLoadError(
            label,
            f"{width}x{height} pixels exceed the limit of {max_pixels} (possible decompression bomb)",
            "too_large",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Image.open leaves the first frame current. Never ask for n_frames: for GIF it
            # parses every frame header, so a small file of a million 1-pixel frames would
            # cost seconds of CPU per request.
            if draft_size is not None and im.format == "JPEG":
                im.draft("RGB", draft_size)
            im.load()
            im = ImageOps.exif_transpose(im) or im
            return _to_rgb(im)
    except ImageLoadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct_error()) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower() or isinstance(e, EOFError):
            msg = f"truncated or corrupt image data ({msg})"
        else:
            msg = f"corrupt image data ({type(e).__name__}: {msg})"
        raise ImageLoadError(label, msg) from None
    except MemoryError:
        raise ImageLoadError(label, "image too large to decode", "too_large") from None
    except Exception as e:  # a decoder bug must not take the process down
        raise ImageLoadError(label, f"cannot decode image ({type(e).__name__}: {e})") from None


def struct_error() -> type:
    import struct

    return struct.error


def is_image_path(path: str | os.PathLike) -> bool:
    """True when the file name has an image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
