"""The feature cache: the frozen CNN runs once per image, the features live on disk.

Training the decoder from cached features is what makes training on a CPU practical: one
encoder forward pass per image costs about as much as a decoder step on a whole batch of
cached features (docs/training.md has the measurements). So each image is encoded once
and every epoch reads a (N, F) matrix from memory.

What makes a cached feature valid
---------------------------------
A feature is a function of (encoder architecture, encoder weights, preprocessing, image
bytes). The cache is keyed by all four, so it is never used silently when one changed:

* **encoder identity** - the encoder's name, its preprocessing settings
  (``spec.preprocess.to_dict()``) and a SHA-256 of its weights (every tensor of its
  ``state_dict``). Their hash names the cache file, so another encoder, other weights or
  another preprocessing simply find no file and build their own.
* **image identity** - per image, its resolved path with its size and ``mtime_ns``
  (``key="stat"``, the default: free to check) or a SHA-256 of its bytes
  (``key="content"``: survives copies that reset the modification time). A row whose
  image changed since it was computed is *stale*: it is recomputed and counted in the
  report (``stale``), never reused.

One cache is a single safetensors file (no pickle)::

    CACHE_DIR/<encoder>-<16 hex of the identity hash>.safetensors
        tensor  "features"  (N, F) float32, or (N, L, F) float16 for a spatial encoder
        metadata["identity"]  JSON: encoder name, preprocess, weights digest
        metadata["index"]     JSON: one image key per row, in row order

Writes go to a temporary file that is fsynced and renamed into place
(:func:`captioner.fsio.atomic_write`), so the features and their index always agree, even
after an interrupted run.

Images are decoded and preprocessed by :mod:`captioner.pipeline`, the path serving uses
(JPEGs in draft mode included), so the decoder trains on the features it is served with.
The pipeline's decode rule is part of the identity.

Spatial maps (the attention decoder's input, a :class:`captioner.encoders.SpatialEncoder`)
are the L = h * w locations of the map before pooling (EfficientNet-Lite0 at 224 px: 7 x 7
x 1280), stored in float16: 49 * 1280 * 2 = 125,440 bytes per image (49 times the pooled
vector at half the width). Their identity says ``"output": "spatial"``, so they never mix
with pooled caches.

Images that cannot be read (missing, truncated, not an image) are reported by name in
:attr:`CacheReport.failed` and get no row; the training loop drops their captions and
goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from captioner.errors import CaptionerError
from captioner.fsio import atomic_write_path
from captioner.model.digest import weights_digest
from captioner.model.torchscript import best_forward
from captioner.pipeline import Failure, ordered_map, try_prepare

__all__ = [
    "CacheReport",
    "FeatureCache",
    "FeatureTable",
    "encode_images",
    "encoder_identity",
    "image_key",
    "weights_digest",
]

FORMAT = "captioner-feature-cache/1"
# How images become input tensors (captioner.pipeline). Part of the cache identity: bump it
# when the pipeline changes the pixels (2: JPEGs decoded in draft mode, as when serving).
DECODE_RULE = "pipeline/2"
KEY_MODES = ("stat", "content")


# ---------------------------------------------------------------------------- identities
def encoder_identity(encoder: nn.Module, name: str | None = None, preprocess: dict | None = None) -> dict:
    """Everything a cached feature depends on besides the image: name, preprocess, the
    pipeline's decode rule, weights (:func:`captioner.model.digest.weights_digest`)."""
    spec = getattr(encoder, "spec", None)
    if name is None:
        name = getattr(spec, "name", None) or type(encoder).__name__
    if preprocess is None:
        to_dict = getattr(getattr(spec, "preprocess", None), "to_dict", None)
        preprocess = to_dict() if callable(to_dict) else {}
    identity = {
        "encoder": str(name),
        "preprocess": preprocess,
        "decode": DECODE_RULE,
        "weights_sha256": weights_digest(encoder),
    }
    if getattr(encoder, "spatial", False):  # maps (L, F) instead of pooled vectors (F,)
        identity["output"] = "spatial"
    return identity


def identity_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def image_key(path: str | os.PathLike, mode: str = "stat") -> dict:
    """What identifies the image file's current content (see the module docstring).

    Raises ``OSError`` when the file cannot be read.
    """
    p = Path(path).resolve()
    if mode == "stat":
        st = p.stat()
        return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if mode == "content":
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return {"path": str(p), "sha256": h.hexdigest()}
    raise ValueError(f"unknown cache key mode {mode!r}; choose one of {', '.join(KEY_MODES)}")


# ---------------------------------------------------------------------------- results
@dataclass
class CacheReport:
    """What a :meth:`FeatureCache.build` did."""

    path: Path
    reused: int = 0  # rows read from the cache
    computed: int = 0  # rows computed now (new images + stale ones)
    stale: int = 0  # of ``computed``: rows that existed for an older version of the file
    rebuilt_file: bool = False  # the cache file was unreadable or inconsistent and was started afresh
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)
    seconds: float = 0.0  # time spent encoding

    @property
    def images_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        s = f"feature cache {self.path.name}: {self.reused} reused, {self.computed} computed"
        if self.stale:
            s += f" ({self.stale} stale: image changed since cached)"
        if self.computed:
            s += f" in {self.seconds:.1f}s ({self.images_per_second:.1f} img/s)"
        if self.rebuilt_file:
            s += "; the previous cache file was unreadable and was rebuilt"
        if self.failed:
            s += f"; {len(self.failed)} unreadable image(s) skipped"
        return s

    def to_dict(self) -> dict:
        return {
            "file": str(self.path),
            "reused": self.reused,
            "computed": self.computed,
            "stale": self.stale,
            "rebuilt_file": self.rebuilt_file,
            "failed": [list(f) for f in self.failed],
            "seconds": round(self.seconds, 3),
        }


@dataclass
class FeatureTable:
    """Features of the readable images: ``features[row_of[path]]`` is the image's (F,) vector
    (or its (L, F) map, for a spatial encoder)."""

    features: Tensor  # (N, F) float32, or (N, L, F) float16 maps
    row_of: dict[str, int]  # resolved path -> row
    failed: list[tuple[str, str]]

    def rows(self, paths: Iterable[str | os.PathLike]) -> list[int | None]:
        """Row of each path, ``None`` for an image that could not be read."""
        return [self.row_of.get(str(Path(p).resolve())) for p in paths]


# ---------------------------------------------------------------------------- the encoder pass
class _Rows:
    """One preallocated (N, ...) tensor the encoded rows are copied into.

    A copy per row (the first way) left the heap fragmented: 33,500 spatial maps of 125 KB
    interleaved with each batch's freed temporaries kept 0.6 MB resident per image, five
    times the maps themselves, and a 33,500-image cache ran out of 24 GB. One block per
    run keeps the resident size at the maps' own bytes."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.data: Tensor | None = None

    def put(self, i: int, row: Tensor) -> Tensor:
        if self.data is None:
            self.data = torch.empty(self.n, *row.shape, dtype=row.dtype)  # (N, F) or (N, L, F)
        self.data[i].copy_(row)
        return self.data[i]


def encode_images(
    encoder: nn.Module,
    preprocess: Callable,
    paths: Sequence[str],
    *,
    batch_size: int = 4,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    trace: bool = True,
    backend: str = "auto",
    progress: bool = True,
    desc: str = "encoding images",
) -> tuple[dict[int, Tensor], list[tuple[int, str]]]:
    """Run the frozen encoder over ``paths``. Returns ({index: feature (F,)}, [(index, reason)]);
    a spatial encoder's maps (L, F) are kept in float16.

    Images become input tensors through the one image path (:func:`captioner.pipeline.try_prepare`,
    the same decode and JPEG draft rule as serving), prepared by ``num_workers`` threads
    ahead of the encoder (0: in this thread). ``trace=False`` runs the eager module
    (needed while fine-tuning, when the weights change between calls); otherwise
    :func:`captioner.model.torchscript.best_forward` picks the backend. Batches are small
    on purpose (docs/training.md has the measurements).
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    encoder = encoder.eval().to(device)
    feats: dict[int, Tensor] = {}
    failed: list[tuple[int, str]] = []
    forward: Callable[[Tensor], Tensor] | None = None
    name = "eager"
    batch: list[tuple[int, np.ndarray]] = []
    out_dtype = torch.float16 if getattr(encoder, "spatial", False) else torch.float32
    store = _Rows(len(paths))

    def prep(i: int) -> np.ndarray | Failure:
        return try_prepare(paths[i], preprocess, name=paths[i])

    def run() -> None:
        nonlocal forward, name
        x = torch.from_numpy(np.stack([t for _, t in batch])).to(device)  # (B, 3, H, W)
        if forward is None:
            if trace and device.type == "cpu":
                forward, name = best_forward(encoder, x, backend=backend)
                bar.set_postfix_str(name)
            else:
                forward = encoder
        if name == "torchscript":  # traced with channels-last memory
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            f = forward(x).to(out_dtype).cpu()  # (B, F), or (B, L, F) maps
        for (i, _), row in zip(batch, f):
            feats[i] = store.put(i, row)
        bar.update(len(batch))
        batch.clear()

    prefetch = max(2 * batch_size, 4 * num_workers)
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for i, got in ordered_map(prep, range(len(paths)), num_workers, prefetch):
            if isinstance(got, Failure):
                failed.append((i, got.reason))
                bar.update(1)
                continue
            batch.append((i, got))  # (3, H, W)
            if len(batch) >= batch_size:
                run()
        if batch:
            run()
    return feats, failed


# ---------------------------------------------------------------------------- the cache
class FeatureCache:
    """Features of one encoder (name + preprocessing + weights) for any set of images."""

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        encoder: nn.Module,
        *,
        name: str | None = None,
        preprocess: Callable | None = None,
        key: str = "stat",
        batch_size: int = 4,
        num_workers: int = 0,
        device: torch.device | str = "cpu",
        trace: bool = True,
    ) -> None:
        if key not in KEY_MODES:
            raise ValueError(f"unknown cache key mode {key!r}; choose one of {', '.join(KEY_MODES)}")
        self.encoder = encoder
        if preprocess is None:
            spec = getattr(encoder, "spec", None)
            if spec is None:
                raise CaptionerError("the encoder has no spec: pass its preprocessing as preprocess=")
            preprocess = spec.preprocess
        self.preprocessing = preprocess  # a captioner.encoders.Preprocess (image -> input tensor)
        to_dict = getattr(preprocess, "to_dict", None)
        pp_dict = to_dict() if callable(to_dict) else {}
        self.identity = encoder_identity(encoder, name=name, preprocess=pp_dict)
        self.spatial = bool(getattr(encoder, "spatial", False))  # (N, L, F) float16 maps
        self.key = key
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device
        self.trace = trace
        safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.identity["encoder"])
        self.path = Path(cache_dir) / f"{safe_name}-{identity_hash(self.identity)[:16]}.safetensors"

    # -------------------------------------------------------------- file I/O
    def _read(self) -> tuple[Tensor | None, list[dict], bool]:
        """(features, index, ok). ``ok`` is False when a file exists but cannot be trusted."""
        if not self.path.exists():
            return None, [], True
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
                feats = f.get_tensor("features")
            index = json.loads(meta["index"])
            identity = json.loads(meta["identity"])
        except (SafetensorError, OSError, KeyError, ValueError, RuntimeError):
            return None, [], False
        dims = 3 if self.spatial else 2
        if (
            meta.get("format") != FORMAT
            or identity != self.identity
            or feats.dim() != dims
            or feats.size(0) != len(index)
        ):
            return None, [], False
        return (feats.half() if self.spatial else feats.float()), index, True

    def _write(self, feats: Tensor, index: list[dict]) -> None:
        metadata = {"format": FORMAT, "identity": json.dumps(self.identity, sort_keys=True), "index": json.dumps(index)}
        atomic_write_path(self.path, lambda tmp: save_file({"features": feats.contiguous()}, tmp, metadata=metadata))

    # -------------------------------------------------------------- public API
    def build(self, paths: Sequence[str | os.PathLike], *, progress: bool = True) -> tuple[FeatureTable, CacheReport]:
        """Features for ``paths``: reuse the valid rows, compute new and stale ones, save.

        Unreadable images are reported in ``report.failed`` (and not cached, so a fixed
        file is picked up next time).
        """
        report = CacheReport(path=self.path)
        old_feats, old_index, ok = self._read()
        report.rebuilt_file = not ok
        old_row = {json.dumps(k, sort_keys=True): r for r, k in enumerate(old_index)}
        old_paths = {k["path"] for k in old_index}

        unique = list(dict.fromkeys(str(Path(p).resolve()) for p in paths))
        keys: dict[str, dict] = {}
        todo: list[str] = []
        for p in unique:
            try:
                keys[p] = image_key(p, self.key)
            except OSError as e:
                report.failed.append((p, f"cannot read the file ({e.strerror or e})"))
                continue
            if json.dumps(keys[p], sort_keys=True) not in old_row:
                todo.append(p)
                report.stale += p in old_paths

        t0 = time.perf_counter()
        new_feats: dict[int, Tensor] = {}
        if todo:
            new_feats, fails = encode_images(
                self.encoder,
                self.preprocessing,
                todo,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                device=self.device,
                trace=self.trace,
                progress=progress,
                desc="caching features",
            )
            report.failed.extend((todo[i], reason) for i, reason in fails)
        report.seconds = time.perf_counter() - t0
        report.computed = len(new_feats)

        # Rows: every still-valid old row (other datasets may share this cache) + the new ones.
        index: list[dict] = []
        rows: list[Tensor] = []
        requested = {json.dumps(keys[p], sort_keys=True) for p in keys}
        changed = set(todo)
        for k, r in old_row.items():
            path = json.loads(k)["path"]
            if path in changed:  # superseded by a recomputed row (or now unreadable)
                continue
            index.append(json.loads(k))
            rows.append(old_feats[r])  # type: ignore[index]
            report.reused += k in requested
        for i, f in sorted(new_feats.items()):
            index.append(keys[todo[i]])
            rows.append(f)
        feats = torch.stack(rows) if rows else torch.zeros(0, 0)
        if todo or not ok:
            self._write(feats, index)

        row_of = {}
        for r, entry in enumerate(index):
            if entry["path"] in keys and entry == keys[entry["path"]]:
                row_of[entry["path"]] = r
        return FeatureTable(feats, row_of, report.failed), report

    def load(self, paths: Sequence[str | os.PathLike]) -> FeatureTable:
        """Read-only lookup (for the ranks that did not build the cache).

        Raises :class:`CaptionerError` if a readable image has no valid row: the cache is
        stale or was built for other images, and a read-only user must not paper over that.
        """
        feats, index, ok = self._read()
        if not ok or feats is None:
            raise CaptionerError(f"{self.path}: feature cache missing or unreadable; build it first")
        by_key = {json.dumps(k, sort_keys=True): r for r, k in enumerate(index)}
        row_of: dict[str, int] = {}
        failed: list[tuple[str, str]] = []
        for p in dict.fromkeys(str(Path(p).resolve()) for p in paths):
            try:
                k = json.dumps(image_key(p, self.key), sort_keys=True)
            except OSError as e:
                failed.append((p, f"cannot read the file ({e.strerror or e})"))
                continue
            if k in by_key:
                row_of[p] = by_key[k]
            else:
                failed.append((p, "no valid cached feature (unreadable image or stale cache)"))
        return FeatureTable(feats, row_of, failed)
