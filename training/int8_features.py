"""Training on the features the int8 encoder serves (``captioner train --precision int8``).

The CNN is frozen, so the decoder can learn from the very features it will be served:
with ``precision="int8"`` the feature cache is computed by the statically quantised ONNX
Runtime graph (:mod:`captioner.model.quantize`) instead of the float32 encoder, and the
checkpoint is written with ``metadata["precision"] = "int8"`` and the calibration set that
built that graph (``calibration.safetensors``), so its export (``captioner export``, or the
first load) builds the same int8 graph, served by default. A decoder trained on fp32
features and served int8 sees features it never saw (feature cosine ~0.98 against fp32)
and loses scene accuracy; one trained on int8 features does not have that gap to cross.

Calibration images are the first :data:`CALIBRATION_IMAGES` readable training images, in
the split's order (their bytes are stored, so the set does not depend on the data folder
staying where it was). The int8 features get their own cache file: the cache identity
names the precision and the calibration set's digest.

The int8 graph's gate here is :data:`~captioner.model.quantize.INT8_TRAINED_TOLERANCE` (a floor
against broken quantisation, not closeness to fp32: this decoder never sees fp32 features); the
measured feature cosines go into the checkpoint's ``metadata["calibration"]``, and the export
applies the same gate to checkpoints trained this way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from captioner.errors import CaptionerError

CALIBRATION_IMAGES = 128  # the shipped weights' set size; more did not help (docs/performance.md)
MAX_IMAGE_BYTES = 4 * 2**20  # a calibration image larger than this is skipped (the set is stored)


class Int8FeatureEncoder(nn.Module):
    """The frozen encoder's int8 ONNX Runtime graph, as the module the feature cache runs.

    ``encoder`` stays a child (its weights name the cache, with ``calibration_digest``);
    ``forward`` runs the int8 graph: (B, 3, S, S) -> (B, F) or (B, N, F) maps."""

    def __init__(
        self,
        encoder: nn.Module,
        fast: object,
        calibration_digest: str,
        images: list[bytes],
        cosine: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.fast = fast
        self.spec = getattr(encoder, "spec", None)
        self.spatial = bool(getattr(encoder, "spatial", False))
        self.feature_dim = getattr(encoder, "feature_dim", None)
        self.calibration_digest = calibration_digest
        self.images = images  # encoded bytes, written beside the checkpoint
        self.cosine = cosine  # (mean, min) feature cosine to fp32 on the calibration images

    def facts(self) -> dict:
        """What the checkpoint's ``metadata["calibration"]`` records about this encoder."""
        facts: dict = {"images": len(self.images)}
        if self.cosine is not None:
            facts.update(mean_cosine=round(self.cosine[0], 4), min_cosine=round(self.cosine[1], 4))
        return facts

    def write_calibration(self, folder: Path) -> None:
        """Store the calibration set in a checkpoint folder (``calibration.safetensors``)."""
        from captioner.model.quantize import write_calibration

        write_calibration(folder, self.images)

    def forward(self, x: Tensor) -> Tensor:
        return self.fast(x)  # type: ignore[operator]  # OnnxEncoder.__call__

    @property
    def cache_name(self) -> str:
        """The feature cache's encoder name: the encoder's, the precision and the calibration set."""
        name = getattr(self.spec, "name", None) or type(self.encoder).__name__
        return f"{name}-int8-{self.calibration_digest[:12]}"


def calibration_images(paths: Sequence[str], count: int = CALIBRATION_IMAGES) -> list[bytes]:
    """The bytes of the first ``count`` readable files of ``paths`` (unreadable or huge ones skipped)."""
    images: list[bytes] = []
    for p in paths:
        try:
            if Path(p).stat().st_size > MAX_IMAGE_BYTES:
                continue
            images.append(Path(p).read_bytes())
        except OSError:
            continue
        if len(images) >= count:
            break
    return images


def int8_feature_encoder(encoder: nn.Module, train_paths: Sequence[str]) -> Int8FeatureEncoder:
    """The int8 encoder calibrated on the first training images; a CaptionerError saying what
    to do when it cannot be built (no ONNX Runtime quantisation, the self-check fails...)."""
    from captioner.model.onnx_encoder import build_onnx_encoder
    from captioner.model.quantize import INT8_TRAINED_TOLERANCE, calibration_set

    images = calibration_images(train_paths)
    if not images:
        raise CaptionerError("--precision int8 needs readable training images to calibrate on")
    spec = getattr(encoder, "spec", None)
    if spec is None:
        raise CaptionerError("--precision int8 needs an encoder with a spec (its preprocessing)")
    calibration = calibration_set(images, spec.preprocess)
    size = int(spec.preprocess.crop_size)
    fast, reason = build_onnx_encoder(encoder, size, calibration=calibration, int8_tolerance=INT8_TRAINED_TOLERANCE)
    if fast is None:
        raise CaptionerError(f"--precision int8: the int8 encoder is unavailable ({reason}); train with fp32")
    cosine = fast.int8_check or _cosine(encoder, fast, calibration.tensors()[:32])
    return Int8FeatureEncoder(encoder, fast, calibration.digest, images, cosine)


def _cosine(encoder: nn.Module, fast: object, batch: np.ndarray) -> tuple[float, float]:
    """(mean, min) feature cosine of a cached int8 graph to the eager encoder on ``batch`` (B, 3, S, S)."""
    from captioner.model.quantize import INT8_TRAINED_TOLERANCE

    x = torch.from_numpy(batch)  # (B, 3, S, S)
    with torch.inference_mode():
        reference = encoder(x).float()  # (B, F) or (B, N, C)
    _, mean, low = INT8_TRAINED_TOLERANCE.check(reference, fast(x))  # type: ignore[operator]
    return mean, low
