"""How a model runs: the PyTorch modules (the reference) or ONNX Runtime (the fast CPU path).

Names, each with one meaning:

* **fast** (``Captioner.load(fast=...)``, ``Captioner.fast``, env ``CAPTIONER_FAST``): the
  switch for the ONNX Runtime path. ``CAPTIONER_FAST=0`` (or ``false``/``no``/``off``)
  turns it off; default on.
* :mod:`captioner.runtime.onnx`: the encoder exported to ONNX Runtime (cached on disk,
  self-checked against PyTorch); :mod:`captioner.runtime.onnx_decoder`: the decoder step.
* :class:`OnnxPath`: one model's ONNX Runtime encoder and decoder step, built on first use.
* **precision** (``int8`` or ``fp32``; :mod:`captioner.runtime.quantize`): what the ONNX
  Runtime encoder computes in; int8 falls back to fp32 with a logged reason.
* :mod:`captioner.runtime.torchscript`: :func:`~captioner.runtime.torchscript.traced_forward`
  (a frozen TorchScript trace of an encoder) and
  :func:`~captioner.runtime.torchscript.best_forward` (the chooser training's feature cache
  uses: ONNX Runtime, else TorchScript, else eager).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from .onnx import OnnxEncoder, build_onnx_encoder, log
from .onnx_decoder import build_onnx_decoder
from .quantize import PRECISION_ENV, PRECISIONS, Calibration, precision_requested

if TYPE_CHECKING:  # pragma: no cover
    from ..decoder import CaptionDecoder

FAST_ENV = "CAPTIONER_FAST"

__all__ = [
    "FAST_ENV",
    "PRECISIONS",
    "PRECISION_ENV",
    "Calibration",
    "OnnxPath",
    "fast_requested",
    "precision_requested",
]


def fast_requested(fast: bool | None = None) -> bool:
    """Whether to use the fast path: ``fast`` when given, else ``CAPTIONER_FAST`` (default on)."""
    if fast is not None:
        return bool(fast)
    value = os.environ.get(FAST_ENV, "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def _param_versions(module: nn.Module) -> int:
    """Sum of the in-place version counters of every parameter and buffer: changes whenever
    weights are modified in place (``load_state_dict``, an optimiser step)."""
    return sum(p._version for p in module.parameters()) + sum(b._version for b in module.buffers())


class _Slot:
    """One fast component (encoder or decoder step): what is built, for which module and
    weights, or why it could not be built."""

    def __init__(self) -> None:
        self.built = None  # the fast object, or None
        self.reason: str | None = None  # why it is not in use; None: not tried for the current weights
        self._module: weakref.ref | None = None  # the module the build (or the failure) is about
        self._versions = -1  # its weights' version counters then

    def get(self, module: nn.Module, build, what: str):
        versions = _param_versions(module)
        same = self._module is not None and self._module() is module and self._versions == versions
        if not same:  # first use, another module, or weights changed in place: (re)build
            self.built, reason = build()
            self.reason, self._module, self._versions = reason, weakref.ref(module), versions
            if self.built is None:
                log.warning("%s runs on plain PyTorch: %s", what, reason)
            else:
                log.info("%s runs on ONNX Runtime", what)
        return self.built


class OnnxPath:
    """The ONNX Runtime versions of one model's encoder and decoder step, built on first use
    (or by :meth:`prepare`), self-checked, rebuilt when the weights change, and remembered
    when they cannot be built (one logged reason, no retry per batch). Thread-safe."""

    def __init__(self, enabled: bool, precision: str = "fp32", calibration: Calibration | None = None) -> None:
        self.enabled = enabled
        self.precision = precision  # requested: "int8" or "fp32"
        self.calibration = calibration  # the int8 encoder's calibration set
        self.int8_reason: str | None = None  # why int8 was requested and fp32 runs instead
        self._lock = threading.Lock()
        self._encoder = _Slot()
        self._decoder = _Slot()

    def _build_encoder(
        self, encoder: nn.Module, input_size: int, device: torch.device
    ) -> tuple[OnnxEncoder | None, str]:
        """The int8 encoder when requested and it builds and passes its check, else fp32."""
        self.int8_reason = None
        if self.precision == "int8":
            if self.calibration is None:
                self.int8_reason = "the checkpoint has no calibration images (calibration.safetensors)"
            else:
                fast, reason = build_onnx_encoder(encoder, input_size, device=device, calibration=self.calibration)
                if fast is not None:
                    return fast, ""
                self.int8_reason = reason
            log.warning("the encoder runs in fp32, not int8: %s", self.int8_reason)
        return build_onnx_encoder(encoder, input_size, device=device)

    def encoder(self, encoder: nn.Module, input_size: int, device: torch.device) -> OnnxEncoder | None:
        """The fast encoder for ``encoder``, or None (switched off, in training mode, unavailable)."""
        if not self.enabled or encoder.training:
            return None
        with self._lock, torch.inference_mode(False):  # callers may be under inference mode
            return self._encoder.get(encoder, lambda: self._build_encoder(encoder, input_size, device), "the encoder")

    def decoder(self, decoder: nn.Module, device: torch.device) -> nn.Module | None:
        """A decoder whose step runs on ONNX Runtime, or None (as for :meth:`encoder`)."""
        if not self.enabled or decoder.training:
            return None
        with self._lock, torch.inference_mode(False):
            step = cast("CaptionDecoder", decoder)
            return self._decoder.get(decoder, lambda: build_onnx_decoder(step, device=device), "the decoder step")

    def prepare(self, encoder: nn.Module, decoder: nn.Module, input_size: int, device: torch.device) -> bool:
        """Build both now (at load, so the first request pays nothing); True if the encoder is fast."""
        self.decoder(decoder, device)
        return self.encoder(encoder, input_size, device) is not None

    def status(self) -> dict:
        """{"encoder": backend, "decoder": backend, "reasons": {...}} for describe() and logs
        (``reasons["int8"]``: why int8 was requested and fp32 runs)."""

        def one(slot: _Slot) -> str:
            return "onnxruntime" if slot.built is not None else "pytorch"

        reasons = {}
        if not self.enabled:
            reasons["all"] = f"switched off (fast=False or {FAST_ENV}=0)"
        for name, slot in (("encoder", self._encoder), ("decoder", self._decoder)):
            if slot.reason:
                reasons[name] = slot.reason
        if self.int8_reason:
            reasons["int8"] = self.int8_reason
        return {"encoder": one(self._encoder), "decoder": one(self._decoder), "reasons": reasons}

    def running_precision(self) -> str:
        """What the encoder computes in now: "int8" only when the int8 graph is in use."""
        built = self._encoder.built
        return str(getattr(built, "precision", "fp32")) if built is not None else "fp32"
