"""Image preprocessing that travels with an encoder: PIL RGB image -> normalised float32 array.

(Decoding comes before it, in :mod:`captioner.pipeline`; a model holds its recipe as
``Captioner.preprocessing``; a checkpoint stores it as a dict under ``"preprocess"``.)

Every backbone was trained on images resized, centre-cropped and normalised in one
particular way; feeding it anything else quietly costs accuracy. A :class:`Preprocess`
records that recipe as plain data (it is stored in a checkpoint's ``config.json``) and
applies it with Pillow and numpy alone:

    1. resize so the shorter side is ``resize_size`` (keeping the aspect ratio),
    2. take the central ``crop_size`` x ``crop_size`` square,
    3. scale pixels to [0, 1] and normalise per channel: ``(x - mean) / std``.

Steps 1 and 2 run as one Pillow call (:mod:`captioner.resize`, torch-free so the service's
decode workers can crop where they decode): ``Image.resize(..., box=...)`` resamples only
the source rectangle that survives the crop, and ``reducing_gap`` first shrinks big photos
by an integer factor (cheap box filter) before the exact filter runs. The result matches
torchvision's ``Resize(resize_size) + CenterCrop(crop_size)`` on PIL images to within
resampling round-off, at a fraction of the cost.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from PIL import Image

from ..errors import CaptionerError
from ..resize import INTERPOLATIONS, already_cropped, crop_box, resize_and_crop


@dataclass(frozen=True)
class Preprocess:
    """Resize (shorter side) -> centre crop -> normalise, as data.

    ``mean`` and ``std`` are per-channel (R, G, B) and apply to pixel values scaled to
    [0, 1], the torchvision convention: ImageNet statistics are
    ``mean=(0.485, 0.456, 0.406)``, ``std=(0.229, 0.224, 0.225)``; TensorFlow's
    ``(x - 127) / 128`` on 0..255 pixels is ``mean=127/255``, ``std=128/255``.
    """

    resize_size: int  # the shorter image side after resizing, in pixels
    crop_size: int  # side of the square centre crop taken from the resized image
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # one of INTERPOLATIONS

    def __post_init__(self) -> None:
        # Accept lists (they come back from JSON as lists) but store tuples so the object
        # stays hashable and immutable.
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        problems = []
        for name in ("resize_size", "crop_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not problems and self.crop_size > self.resize_size:
            problems.append(f"crop_size ({self.crop_size}) must not exceed resize_size ({self.resize_size})")
        if len(self.mean) != 3 or len(self.std) != 3:
            problems.append(f"mean and std need 3 values (R, G, B), got {list(self.mean)} and {list(self.std)}")
        elif not all(math.isfinite(m) for m in self.mean) or not all(math.isfinite(s) and s > 0 for s in self.std):
            problems.append(f"mean must be finite and std positive, got {list(self.mean)} and {list(self.std)}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}")
        if problems:
            raise CaptionerError("invalid preprocessing settings: " + "; ".join(problems))

    # ------------------------------------------------------------------ applying it
    @property
    def draft_size(self) -> tuple[int, int]:
        """(width, height) to pass to JPEG draft decoding: both sides stay >= resize_size,
        so the shorter side can still be resized down to ``resize_size`` exactly. The one
        draft rule: :func:`captioner.pipeline.decode` reads it for every front end."""
        return (self.resize_size, self.resize_size)

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The rectangle of a ``width`` x ``height`` source image that ends up in the crop
        (torchvision's sizes; :func:`captioner.resize.crop_box`), in source pixels."""
        return crop_box(width, height, self.resize_size, self.crop_size)

    @property
    def resize_spec(self) -> tuple[int, int, str]:
        """(resize_size, crop_size, interpolation): what steps 1 and 2 need, as plain data
        (the service's decode workers crop with it)."""
        return (self.resize_size, self.crop_size, self.interpolation)

    def resize_and_crop(self, img: Image.Image) -> Image.Image:
        """PIL image -> RGB PIL image of crop_size x crop_size (steps 1 and 2); an image a
        decode worker already cropped with these settings is returned as it is."""
        if already_cropped(img, *self.resize_spec):
            return img
        return resize_and_crop(img, *self.resize_spec)

    def __call__(self, img: Image.Image) -> np.ndarray:
        """PIL image -> float32 array (3, crop_size, crop_size), normalised."""
        out = np.empty((3, self.crop_size, self.crop_size), dtype=np.float32)  # (3, H, W)
        return self.normalise_into(np.asarray(self.resize_and_crop(img), dtype=np.uint8), out)

    def normalise_into(self, pixels: np.ndarray, out: np.ndarray) -> np.ndarray:
        """uint8 pixels (H, W, 3) -> ``out`` (3, H, W) float32 (contiguous), normalised.

        ``(x / 255 - mean) / std == x * scale + offset``: one numpy multiply reads the pixels
        in (3, H, W) order and widens them straight into ``out``, one add finishes in place.
        Bitwise what ``astype * scale + offset`` then a transposed copy gave, in a tenth of
        its time, and on the calling thread only."""
        scale, offset = self._affine
        target = out  # (3, H, W)
        np.multiply(pixels.transpose(2, 0, 1), scale, out=target, dtype=np.float32)
        np.add(target, offset, out=target)
        return out

    @functools.cached_property
    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, offset), each (3, 1, 1) float32, of the normalisation; computed once."""
        std = np.asarray(self.std, dtype=np.float32)
        scale = (1.0 / (255.0 * std)).reshape(3, 1, 1)
        offset = (-np.asarray(self.mean, dtype=np.float32) / std).reshape(3, 1, 1)
        return scale, offset

    def batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        """List of PIL images -> float32 array (B, 3, crop_size, crop_size)."""
        out = np.empty((len(images), 3, self.crop_size, self.crop_size), dtype=np.float32)  # (B, 3, H, W)
        for i, img in enumerate(images):
            self.normalise_into(np.asarray(self.resize_and_crop(img), dtype=np.uint8), out[i])
        return out

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        """Inverse of the normalisation: (..., 3, H, W) -> pixel values in [0, 1] (for display)."""
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        return np.clip(np.asarray(x) * std + mean, 0.0, 1.0)

    # ------------------------------------------------------------------ storing it
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; ``Preprocess.from_dict(p.to_dict()) == p``."""
        return {
            "resize_size": self.resize_size,
            "crop_size": self.crop_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocess:
        """Rebuild from :meth:`to_dict` output (e.g. a checkpoint's config.json).

        Raises :class:`CaptionerError` naming missing or unknown keys and bad values.
        """
        if not isinstance(d, Mapping):
            raise CaptionerError(f"invalid preprocessing settings: expected a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        required = known - {"interpolation"}
        missing = sorted(required - d.keys())
        unknown = sorted(set(d.keys()) - known)
        if missing or unknown:
            raise CaptionerError(
                f"invalid preprocessing settings: missing keys {missing}, unknown keys {unknown}; "
                f"expected {sorted(known)}"
            )
        try:
            return cls(**dict(d))
        except (TypeError, ValueError) as e:  # e.g. a mean that is not a list of numbers
            raise CaptionerError(f"invalid preprocessing settings {dict(d)}: {e}") from None
