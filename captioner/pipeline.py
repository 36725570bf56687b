"""The one image path: source -> decoded image -> input tensor -> features -> captions.

Every front end goes through these functions (the HTTP service, ``captioner caption``,
folder captioning, evaluation, training's feature cache and validation), so a model is
trained on exactly the pixels it is later served::

    source (path, bytes, PIL image)
      --decode()-->      RGB PIL image, JPEGs decoded in draft mode (draft_size())
      --preprocess()-->  (3, S, S) float32 tensor: resize, centre crop, normalise
      --start_batch()--> (B, F) features with the decoder's start (one encoder call;
                         encode_batch() gives the features alone)
      --Captioner.generate()--> captions

* :func:`decode` raises :class:`~captioner.errors.ImageLoadError`; :func:`prepare` is
  decode + preprocess; :func:`try_prepare` is the "decode or return the reason" helper:
  it never raises for a bad image, it returns a :class:`Failure` with the reason.
* :func:`ordered_map` runs a function over items in a few threads, in input order, a
  bounded number ahead of the consumer (Pillow and numpy release the GIL while decoding
  and resizing, so threads scale without pickling tensors between processes).
* :func:`caption_stream` is the batch stream shared by folder captioning and evaluation.

The draft rule (one place): a JPEG is decoded at the smallest power-of-two reduction whose
sides both stay at least ``Preprocess.resize_size``, so the shorter side is still resized
*down* to ``resize_size``. Preprocessing that has no ``draft_size`` decodes at full size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .errors import ImageLoadError
from .images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageSource, load_image
from .options import BATCH_SIZE, WORKERS, CaptionOptions

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from .runtime.captioner import CaptionerBase as Captioner
    from .runtime.results import CaptionResult
    from .runtime.started import Started

__all__ = [
    "Failure",
    "ImageItem",
    "Limits",
    "Loader",
    "Preprocessing",
    "Source",
    "caption_stream",
    "decode",
    "draft_size",
    "encode_batch",
    "ordered_map",
    "prepare",
    "preprocess",
    "start_batch",
    "try_prepare",
]

#: What may become an input: a path, bytes, a PIL image or HxWx3 uint8 RGB pixels.
Source = ImageSource | np.ndarray

#: Anything that turns an RGB PIL image into a (3, S, S) tensor; normally a
#: :class:`~captioner.encoders.Preprocess` (which also says the JPEG draft size).
Preprocessing = Callable[["Image.Image"], "np.ndarray"]
#: What decodes: :func:`captioner.images.load_image` or a function with its keywords.
Loader = Callable[..., "Image.Image"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Limits:
    """What a source may cost before it is refused (checked before decoding)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Failure:
    """A source that could not become an input tensor: its name, the reason in words, and
    the :class:`~captioner.errors.ImageLoadError` code (``unreadable``, ``too_large``, ...)."""

    name: str
    reason: str
    code: str = "unreadable"


@dataclass(frozen=True)
class ImageItem:
    """One image to caption: ``key`` names it in results (e.g. its path relative to the
    captioned folder, POSIX separators); ``path`` is what :func:`decode` reads."""

    key: str
    path: ImageSource


# ---------------------------------------------------------------------------- one image
def draft_size(preprocessing: object) -> tuple[int, int] | None:
    """(width, height) for JPEG draft decoding, or None (decode at full size)."""
    size = getattr(preprocessing, "draft_size", None)
    return (int(size[0]), int(size[1])) if size is not None else None


def decode(
    source: Source,
    preprocessing: object = None,
    *,
    name: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    loader: Loader = load_image,
) -> Image.Image:
    """Safe decode to RGB with the draft rule of ``preprocessing``. Raises :class:`ImageLoadError`.

    ``loader`` does the decoding: :func:`captioner.images.load_image` in this thread, or any
    function with its keywords (``name``, ``max_pixels``, ``max_bytes``, ``draft_size``),
    e.g. ``DecodePool.load`` (worker processes with a time budget). A numpy array must be
    HxWx3 uint8 RGB pixels (what ``np.asarray(pil_image)`` gives)."""
    if isinstance(source, np.ndarray):
        return from_array(source, name or "<array>", limits)
    return loader(
        source,
        name=name,
        max_pixels=limits.max_pixels,
        max_bytes=limits.max_bytes,
        draft_size=draft_size(preprocessing),
    )


def from_array(pixels: np.ndarray, name: str, limits: Limits = DEFAULT_LIMITS) -> Image.Image:
    """HxWx3 uint8 RGB pixels -> RGB image; anything else is refused saying what is accepted."""
    from PIL import Image

    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ImageLoadError(
            name,
            f"an array must be HxWx3 uint8 RGB pixels, got shape {pixels.shape} of {pixels.dtype}; "
            "or pass a path, the file's bytes or a PIL image",
        )
    if pixels.shape[0] * pixels.shape[1] > limits.max_pixels or pixels.shape[0] * pixels.shape[1] == 0:
        raise ImageLoadError(
            name, f"{pixels.shape[1]}x{pixels.shape[0]} pixels is outside 1..{limits.max_pixels}", "too_large"
        )
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def preprocess(image: Image.Image, preprocessing: Preprocessing, *, name: str = "<image>") -> np.ndarray:
    """RGB image -> (3, S, S) input tensor. A failure inside the transform (an odd image
    that Pillow cannot resize) becomes :class:`ImageLoadError`."""
    try:
        return preprocessing(image)  # (3, S, S)
    except Exception as e:
        raise ImageLoadError(name, f"cannot preprocess image ({type(e).__name__}: {e})") from None


def prepare(
    source: Source,
    preprocessing: Preprocessing,
    *,
    name: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    loader: Loader = load_image,
) -> np.ndarray:
    """:func:`decode` then :func:`preprocess`: source -> (3, S, S). Raises :class:`ImageLoadError`."""
    image = decode(source, preprocessing, name=name, limits=limits, loader=loader)
    return preprocess(image, preprocessing, name=name or "<image>")


def try_prepare(
    source: Source, preprocessing: Preprocessing, *, name: str | None = None, limits: Limits = DEFAULT_LIMITS
) -> np.ndarray | Failure:
    """:func:`prepare`, with any failure returned as a :class:`Failure` instead of raised:
    one bad file must never end a run of many."""
    label = name or (str(source) if isinstance(source, str) else "<image>")
    try:
        return prepare(source, preprocessing, name=name, limits=limits)
    except ImageLoadError as e:
        return Failure(e.name, e.reason, e.code)
    except Exception as e:  # a decoder bug in one file
        return Failure(label, f"cannot decode image ({type(e).__name__}: {e})")


# ---------------------------------------------------------------------------- many images
def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, prefetch: int) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` in input order, computed by ``workers`` threads at most
    ``prefetch`` items ahead of the consumer (0 workers: computed inline, one at a time).
    ``fn`` should not raise (use :func:`try_prepare`); if it does, the error is raised here."""
    if workers <= 0:
        for item in items:
            yield item, fn(item)
        return
    source = iter(items)
    pending: deque[tuple[T, Future[R]]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    try:
        for item in source:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= max(1, prefetch):
                break
        while pending:
            item, fut = pending.popleft()
            for nxt in source:  # refill one
                pending.append((nxt, pool.submit(fn, nxt)))
                break
            yield item, fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def encode_batch(model: Captioner, tensors: Sequence[np.ndarray]) -> np.ndarray:
    """B input arrays (3, S, S) -> features (B, F) through ``model.encode``."""
    return model.encode(np.stack(list(tensors)))  # (B, 3, S, S) -> (B, F)


def start_batch(model: Captioner, tensors: Sequence[np.ndarray]) -> Started:
    """B input arrays (3, S, S) -> features and the decoder's start for ``model.generate``,
    from one encoder call (:meth:`~captioner.runtime.captioner.CaptionerBase.encode_started`)."""
    return model.encode_started(np.stack(list(tensors)))  # (B, 3, S, S) -> (B, F), memory, state


def check_batching(batch_size: int, workers: int) -> None:
    """:class:`~captioner.options.OptionError` (a ``CaptionerError``) naming the allowed range
    when a batch size or thread count is out of it."""
    BATCH_SIZE.check(batch_size)
    WORKERS.check(workers)


def caption_stream(
    model: Captioner,
    items: Iterable[ImageItem],
    *,
    batch_size: int = 16,
    workers: int = 2,
    options: CaptionOptions | None = None,
) -> Iterator[tuple[ImageItem, CaptionResult | None, str | None]]:
    """Caption ``items`` in order: ``(item, result, None)`` or ``(item, None, reason)``.

    Images are prepared by ``workers`` threads up to a few batches ahead of the model (a
    bounded queue, so memory stays flat on any folder size) and captioned in batches of
    ``batch_size``. A file that cannot be prepared is yielded with its reason as soon as it
    is reached; the results of a batch are yielded when the batch is done.
    """
    check_batching(batch_size, workers)
    opts = options or CaptionOptions()
    preprocessing = model.preprocessing
    batch: list[tuple[ImageItem, Any]] = []

    def run_batch() -> list[tuple[ImageItem, CaptionResult | None, str | None]]:
        started = start_batch(model, [t for _, t in batch])  # (B, F) and the decoder's start
        results = model.generate(started, opts)
        out: list[tuple[ImageItem, CaptionResult | None, str | None]] = [
            (it, res, None) for (it, _), res in zip(batch, results)
        ]
        batch.clear()
        return out

    def prep(item: ImageItem) -> np.ndarray | Failure:
        return try_prepare(item.path, preprocessing, name=item.key)

    prefetch = max(2 * batch_size, 4 * workers)
    for item, got in ordered_map(prep, items, workers, prefetch):
        if isinstance(got, Failure):
            yield item, None, got.reason
            continue
        batch.append((item, got))  # (3, S, S)
        if len(batch) >= batch_size:
            yield from run_batch()
    if batch:
        yield from run_batch()
