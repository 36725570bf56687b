"""Encoder forward functions for batch encoding on CPU (training's feature cache).

* :func:`traced_forward`: a frozen TorchScript trace of the encoder, checked against it.
* :func:`best_forward`: the chooser: ONNX Runtime (:mod:`captioner.model.onnx_encoder`), else
  :func:`traced_forward`, else the eager module. docs/performance.md has the measured speeds.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["BACKENDS", "best_forward", "traced_forward"]

BACKENDS = ("auto", "torch", "eager")


def traced_forward(encoder: nn.Module, example: Tensor, check: bool = True) -> Callable[[Tensor], Tensor]:
    """A traced inference callable for ``encoder`` on CPU, checked against the eager module.

    Traces and freezes the module (``torch.jit.trace`` + ``torch.jit.freeze`` folds the
    batch norms into the convolutions) and uses channels-last memory. Falls back to the
    eager module when tracing fails or the traced outputs differ from the eager ones by
    more than 1e-3 (relative).
    """
    encoder = encoder.eval()
    example = example.contiguous(memory_format=torch.channels_last)  # (B, 3, H, W)
    with torch.inference_mode():
        eager = encoder(example).float()  # (B, F)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # jit deprecation notices and shape-constant tracer notes
            traced = torch.jit.freeze(torch.jit.trace(encoder, example, check_trace=False))
            for _ in range(2):  # the first calls optimise the graph
                out = traced(example).float()  # (B, F)
    except Exception:  # any tracing problem: the eager module is always correct
        return encoder
    if check:
        err = (out - eager).abs().max().item() / max(eager.abs().max().item(), 1e-6)
        if not err < 1e-3:
            return encoder
    return traced


def best_forward(
    encoder: nn.Module, example: Tensor, *, backend: str = "auto", log: Callable[[str], None] | None = None
) -> tuple[Callable[[Tensor], Tensor], str]:
    """The fastest checked way to run ``encoder`` on CPU batches like ``example``: (callable, name).

    ``backend``: "auto" tries ONNX Runtime (the same weights, exported and self-checked
    against the eager module), then a frozen TorchScript trace (:func:`traced_forward`),
    then eager PyTorch. "torch" skips ONNX Runtime; "eager" uses the module as it is.
    The name is "onnxruntime", "torchscript" or "eager".
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown encoder backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "eager" or example.device.type != "cpu":
        return encoder, "eager"
    if backend == "auto":
        try:
            from .onnx_encoder import build_onnx_encoder

            onnx, reason = build_onnx_encoder(encoder, example.size(-1), device="cpu")
        except Exception as e:  # ONNX Runtime is an optimisation, never a requirement
            onnx, reason = None, f"{type(e).__name__}: {e}"
        if onnx is not None:
            return onnx, "onnxruntime"
        if log is not None:
            log(f"feature cache: ONNX Runtime path unavailable ({reason}); using TorchScript")
    forward = traced_forward(encoder, example)
    return forward, "torchscript" if forward is not encoder else "eager"
