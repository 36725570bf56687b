"""Resize (shorter side) then centre crop, with Pillow alone: steps 1 and 2 of preprocessing.

Kept free of torch and numpy so the service's decode workers (:mod:`captioner.decode_budget`,
small processes that import only Pillow) can crop an image where they decoded it and send
back the model's input size instead of the whole picture: 150 KB for a 224 x 224 crop
rather than 36 MB for a 12-megapixel PNG. :class:`captioner.encoders.Preprocess` calls the
same functions, so a crop made in a worker and one made in the caller's thread are the
same pixels.

Both steps run as one Pillow call: ``Image.resize(..., box=...)`` resamples only the
source rectangle that survives the crop, and ``reducing_gap`` first shrinks big photos by
an integer factor (cheap box filter) before the exact filter runs.
"""

from __future__ import annotations

from PIL import Image

# The names we accept for ``interpolation`` and the Pillow filter each one means.
INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

# Shrink by an integer factor first while the image is more than this many times the
# target size. 3.0 is, per Pillow's documentation, indistinguishable from exact
# resampling while still skipping most of the work on multi-megapixel photos.
REDUCING_GAP = 3.0

#: ``Image.info`` key of an image already resized and cropped by :func:`resize_and_crop`:
#: its value is the (resize_size, crop_size, interpolation) it was made with.
CROPPED = "captioner.cropped"


def crop_box(width: int, height: int, resize_size: int, crop_size: int) -> tuple[float, float, float, float]:
    """The rectangle of a ``width`` x ``height`` source image that ends up in the crop.

    Sizes follow torchvision: the shorter side becomes ``resize_size``, the longer one
    ``int(resize_size * long / short)``; the crop's top-left corner is
    ``round((resized - crop) / 2)``. Returned in source pixel coordinates.
    """
    if width <= height:
        rw, rh = resize_size, int(resize_size * height / width)
    else:
        rw, rh = int(resize_size * width / height), resize_size
    left = round((rw - crop_size) / 2.0)
    top = round((rh - crop_size) / 2.0)
    sx, sy = width / rw, height / rh  # source pixels per resized pixel
    return (left * sx, top * sy, (left + crop_size) * sx, (top + crop_size) * sy)


def resize_and_crop(img: Image.Image, resize_size: int, crop_size: int, interpolation: str) -> Image.Image:
    """PIL image -> RGB PIL image of crop_size x crop_size, marked with :data:`CROPPED`."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    out = img.resize(
        (crop_size, crop_size),
        INTERPOLATIONS[interpolation],
        box=crop_box(*img.size, resize_size, crop_size),
        reducing_gap=REDUCING_GAP,
    )
    out.info[CROPPED] = (resize_size, crop_size, interpolation)
    return out


def already_cropped(img: Image.Image, resize_size: int, crop_size: int, interpolation: str) -> bool:
    """Whether ``img`` came out of :func:`resize_and_crop` with these settings (a decode
    worker did it), so cropping it again must be skipped."""
    return img.info.get(CROPPED) == (resize_size, crop_size, interpolation) and img.size == (crop_size, crop_size)
