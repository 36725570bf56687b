"""The int8 encoder: the exported Lite0 graph with ONNX Runtime static quantisation.

EfficientNet-Lite was designed for int8 (ReLU6, no squeeze-excitation), and ONNX Runtime's
int8 kernels run it about twice as fast as float32 on a CPU (docs/performance.md). How it
is built (once per set of weights and calibration images)::

    the fp32 ONNX graph (captioner.model.onnx_encoder, from its cache or exported)
        --quant_pre_process--> shape-inferred, optimised graph
        --quantize_static--> QDQ graph: per-channel int8 weights, uint8 activations, ranges
            calibrated (min-max by default) on the checkpoint's calibration images
        --> self-check on those images: feature cosine to the eager encoder's
        --> cache file <cache>/onnx/<encoder>-<size>-int8-<digest>.onnx (+ .sha256),
            digest = weights + calibration set + onnx / onnxruntime versions + recipe.

Names, each with one meaning:

* **precision** (``Captioner.load(precision=...)``, env ``CAPTIONER_PRECISION``,
  ``captioner serve --precision``, ``"precision"`` in a checkpoint's ``metadata.json``):
  ``"int8"`` or ``"fp32"``, what the ONNX Runtime encoder computes in. The eager PyTorch
  modules stay float32 (the reference).
* **calibration set**: encoded images from the training data, stored in the checkpoint
  folder as ``calibration.safetensors`` (:func:`write_calibration`); they go through the
  one image path (``captioner.pipeline``) before calibrating.

When quantisation is unavailable (``onnxruntime.quantization`` or ``onnx`` missing), fails,
finds no calibration set, or fails its self-check, the fp32 ONNX Runtime encoder runs
instead and the reason is logged once (``/v1/model`` shows it under ``runtime``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import CALIBRATION
from ..runtime.graphs import PRECISION_ENV, PRECISIONS, PrecisionError, precision_requested

__all__ = [
    "CALIBRATION",
    "INT8_TOLERANCE",
    "INT8_TRAINED_TOLERANCE",
    "PRECISIONS",
    "PRECISION_ENV",
    "Calibration",
    "Int8Tolerance",
    "PrecisionError",
    "calibration_set",
    "int8_tolerance",
    "precision_requested",
    "quantize_graph",
    "read_calibration",
    "trained_on_int8",
    "write_calibration",
]

DEFAULT_METHOD = "minmax"  # percentile: no better agreement, ~7x the build time (docs/performance.md)
METHODS = ("minmax", "percentile", "entropy")
# Bump when the quantisation recipe changes, so cached int8 graphs are rebuilt.
QUANT_FORMAT = 1
CALIBRATION_BATCH = 16  # images per calibration run (bounds the collected activations)


@dataclass(frozen=True)
class Calibration:
    """A calibration set: ``digest`` names it (its images' bytes and the preprocessing);
    ``tensors()`` gives the (N, 3, S, S) float32 input batch, made only when a graph is built."""

    digest: str
    count: int
    tensors: Callable[[], np.ndarray]
    method: str = DEFAULT_METHOD
    exclude: tuple[str, ...] = ()  # graph nodes kept in float32 (sensitive layers)


def write_calibration(folder: str | os.PathLike, images: Sequence[bytes]) -> Path:
    """Store encoded images (JPEG/PNG bytes from the training data) as ``calibration.safetensors``
    in a checkpoint folder: one uint8 tensor of their bytes end to end, and their lengths."""
    from safetensors.torch import save_file

    if not images:
        raise ValueError("a calibration set needs at least one image")
    blob = b"".join(images)
    data = torch.frombuffer(bytearray(blob), dtype=torch.uint8)  # (total bytes,)
    lengths = torch.tensor([len(b) for b in images], dtype=torch.int64)  # (N,)
    path = Path(folder) / CALIBRATION
    save_file({"bytes": data, "lengths": lengths}, str(path), metadata={"format": "captioner-calibration/1"})
    return path


def read_calibration(folder: str | os.PathLike) -> list[bytes] | None:
    """The encoded images of a checkpoint's calibration set, or None when it has none."""
    from safetensors.torch import load_file

    path = Path(folder) / CALIBRATION
    if not path.is_file():
        return None
    tensors = load_file(str(path))
    blob = tensors["bytes"].numpy().tobytes()
    out, start = [], 0
    for n in tensors["lengths"].tolist():
        out.append(blob[start : start + int(n)])
        start += int(n)
    if start != len(blob):
        raise ValueError(f"{path}: the image lengths do not add up to the stored bytes")
    return out


def calibration_digest(images: Sequence[bytes], preprocessing: dict) -> str:
    """A hex digest of a calibration set: every image's bytes, in order, and the preprocessing."""
    h = hashlib.sha256(repr(sorted(preprocessing.items())).encode())
    for b in images:
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def calibration_set(images: Sequence[bytes], preprocessing: object) -> Calibration:
    """The calibration set of ``images`` (encoded bytes): named by their digest, its input batch
    made through the one image path (:func:`captioner.pipeline.prepare`) only when a graph is
    built. Serving (``Captioner``) and int8 training (``captioner train --precision int8``) both
    make theirs here, so the same images give the same graph."""
    from .. import pipeline

    images = list(images)
    to_dict = getattr(preprocessing, "to_dict", None)
    prep = to_dict() if callable(to_dict) else {}

    def tensors() -> np.ndarray:  # (N, 3, S, S) float32
        return np.stack([pipeline.prepare(b, preprocessing) for b in images])  # type: ignore[arg-type]

    return Calibration(calibration_digest(images, prep), len(images), tensors)


def tool_versions() -> str:
    """The versions of the tools that write an int8 graph (part of its cache key)."""
    import onnx
    import onnxruntime

    return f"onnx={onnx.__version__}|onnxruntime={onnxruntime.__version__}|quant={QUANT_FORMAT}"


class _Reader:
    """An onnxruntime CalibrationDataReader over (N, 3, S, S) in batches."""

    def __init__(self, batch: np.ndarray) -> None:
        self._chunks = [batch[i : i + CALIBRATION_BATCH] for i in range(0, len(batch), CALIBRATION_BATCH)]

    def get_next(self) -> dict | None:
        return {"images": np.ascontiguousarray(self._chunks.pop(0))} if self._chunks else None

    def rewind(self) -> None:  # pragma: no cover - not called by quantize_static
        pass


def _flush_every(batches: int, around: int = 4) -> int:
    """How many calibration batches' activations to collect before folding them into the
    ranges (bounds memory): never a divisor of ``batches``, since the calibrator refuses an
    empty last collection."""
    every = around
    while every <= batches and batches % every == 0:
        every += 1
    return every


def quantize_graph(
    fp32_graph: bytes, calibration: np.ndarray, method: str = DEFAULT_METHOD, exclude: Sequence[str] = ()
) -> bytes:
    """The QDQ int8 version of an fp32 encoder graph: per-channel int8 weights, uint8
    activations, activation ranges calibrated on ``calibration`` (N, 3, S, S) with
    ``method`` (minmax, percentile or entropy); nodes named in ``exclude`` stay float32.
    Raises ImportError when onnxruntime.quantization is unavailable."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(METHODS)}, not {method!r}")
    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[method]
    extra = {
        "CalibMaxIntermediateOutputs": _flush_every(-(-len(calibration) // CALIBRATION_BATCH)),
        "CalibPercentile": 99.999,
    }
    with tempfile.TemporaryDirectory(prefix="captioner-int8-") as tmp:
        src, pre, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(fp32_graph)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(out),
            _Reader(calibration),  # duck-typed CalibrationDataReader
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=calibrate,
            nodes_to_exclude=list(exclude),
            extra_options=extra,
        )
        return out.read_bytes()


@dataclass(frozen=True)
class Int8Tolerance:
    """How far int8 features may drift from the eager float32 ones on the calibration images
    (quantisation error, not rounding order: far looser than the fp32 graph's tolerance)."""

    min_mean_cosine: float = 0.97
    min_cosine: float = 0.90

    def check(self, reference: Tensor, got: Tensor) -> tuple[bool, float, float]:
        """(within tolerance, mean cosine, min cosine) of two (B, F) (or (B, N, F)) batches."""
        cos = torch.nn.functional.cosine_similarity(reference.float().flatten(1), got.float().flatten(1), dim=1)
        mean, low = float(cos.mean()), float(cos.min())
        return mean >= self.min_mean_cosine and low >= self.min_cosine, mean, low


INT8_TOLERANCE = Int8Tolerance()
INT8_TRAINED_TOLERANCE = Int8Tolerance(min_mean_cosine=0.90, min_cosine=0.70)
"""The gate of an encoder whose decoder was trained on its own int8 features: closeness to fp32 does not
matter there (held-out accuracy at int8 is that model's gate, docs/training.md), so this is only a floor
against broken quantisation, below the 7x7x1280 map's measured mean 0.966 / min 0.861."""


def trained_on_int8(metadata: dict | None) -> bool:
    """Whether a checkpoint's decoder learned int8 features (``captioner train --precision int8``)."""
    return ((metadata or {}).get("train_config") or {}).get("precision") == "int8"


def int8_tolerance(metadata: dict | None) -> Int8Tolerance:
    """The int8 encoder's gate for a checkpoint: the floor when trained on int8 features, else fp32 closeness."""
    return INT8_TRAINED_TOLERANCE if trained_on_int8(metadata) else INT8_TOLERANCE
