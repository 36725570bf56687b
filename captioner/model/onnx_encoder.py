"""The encoder on ONNX Runtime for training's feature cache, fp32 or int8, checked against PyTorch.

Encoding the training images is most of the work of building the feature cache, and ONNX
Runtime runs EfficientNet-Lite0's many small depthwise convolutions several times faster than
eager PyTorch (docs/performance.md). :func:`build_onnx_encoder` gives the cache its encoder
(fp32 through :func:`captioner.model.torchscript.best_forward`, int8 through
``training/int8_features.py``) or ``(None, reason)``, never an unchecked one::

    Encoder (eval, frozen) --export_onnx--> ONNX graph (dynamic batch, fixed S x S)
        [int8: quantize_graph on a calibration set, captioner.model.quantize]
        --> onnxruntime.InferenceSession (CPU, intra-op threads = $CAPTIONER_ENCODER_THREADS
            or torch's thread count, no busy-waiting)
        --> self-check against the eager encoder: fp32 within FEATURE_TOLERANCE on a fixed
            input, int8 within its Int8Tolerance (feature cosine) on its calibration images
        --> cache <cache>/onnx/<encoder>-<size>[-int8]-<digest>.onnx (+ .sha256): the next
            build for the same weights and tools reads the checked graph back.

:func:`export_onnx` and :data:`FEATURE_TOLERANCE` also serve ``captioner export``
(:mod:`captioner.model.export`), which writes the graphs the torch-free runtime loads.
``CAPTIONER_CACHE_DIR`` names the cache folder; an unwritable one only costs a re-export.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..cache import CACHE_ENV, default_cache_dir
from ..fsio import atomic_write_bytes
from .digest import weights_digest
from .quantize import INT8_TOLERANCE, Calibration, Int8Tolerance, quantize_graph, tool_versions

log = logging.getLogger("captioner.runtime")

THREADS_ENV = "CAPTIONER_ENCODER_THREADS"
ONNX_OPSET = 17
# Bump when the export recipe changes, so cached graphs from an older recipe are not reused.
EXPORT_FORMAT = 1


@dataclass(frozen=True)
class Tolerance:
    """How far the ONNX Runtime encoder's features may drift from the eager reference.

    Both run the same float32 weights; they differ only by the order of floating-point
    operations (folded batch-norm, other convolution algorithms), which moves the 1280
    pooled features (magnitudes up to ~10) by about 1e-5.
    """

    max_abs: float = 1e-3  # largest absolute difference of any feature
    min_cosine: float = 0.99999  # smallest cosine similarity of a feature vector pair

    def check(self, reference: Tensor, fast: Tensor) -> tuple[bool, float, float]:
        """(within tolerance, max abs difference, min cosine) for two (B, F) feature batches
        (or (B, N, F) maps: the cosine is of each image's whole map)."""
        diff = float((reference.float() - fast.float()).abs().max())
        ref, got = reference.float().flatten(1), fast.float().flatten(1)  # (B, F) or (B, N * F)
        cos = float(torch.nn.functional.cosine_similarity(ref, got, dim=1).min())
        return diff <= self.max_abs and cos >= self.min_cosine, diff, cos


FEATURE_TOLERANCE = Tolerance()


def encoder_threads() -> int:
    """Intra-op threads for the encoder session: ``$CAPTIONER_ENCODER_THREADS``, else torch's
    thread count (what ``captioner train --threads`` and ``torch.set_num_threads`` set)."""
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            log.warning("ignoring %s=%r: not a whole number", THREADS_ENV, env)
    return torch.get_num_threads()


def graph_digest(module: nn.Module, input_size: int) -> str:
    """A hex digest naming an exported graph: the module's weights (:func:`captioner.cache.weights_digest`),
    its class, the input size and the versions of the tools that write the graph."""
    extra = (
        f"format={EXPORT_FORMAT}|opset={ONNX_OPSET}|torch={torch.__version__}|size={input_size}|{type(module).__name__}"
    )
    return weights_digest(module, extra)


def export_onnx(encoder: nn.Module, input_size: int) -> bytes:
    """The encoder as an ONNX graph: input ``images`` (B, 3, S, S) float32 -> ``features`` (B, F).

    Uses the TorchScript-based exporter (``dynamo=False``): it needs no extra package and
    traces this network exactly (its 'SAME' padding depends only on the fixed input size).
    """
    example = torch.zeros(1, 3, input_size, input_size)  # (1, 3, S, S)
    buf = io.BytesIO()
    was_training = encoder.training
    encoder.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter, not actionable by users
            torch.onnx.export(
                encoder,
                (example,),
                buf,  # type: ignore[arg-type]  # export writes to any binary file object
                input_names=["images"],
                output_names=["features"],
                dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                opset_version=ONNX_OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        encoder.train(was_training)
    return buf.getvalue()


def _hash_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_verified(path: Path) -> bytes | None:
    """The cached graph at ``path`` if its content hash matches the one recorded when it was
    stored (after passing the self-check); None when absent, unreadable or different."""
    try:
        graph = path.read_bytes()
        recorded = _hash_path(path).read_text(encoding="ascii").strip()
    except OSError:
        return None
    if hashlib.sha256(graph).hexdigest() != recorded:
        log.info("the cached encoder graph %s does not match its recorded hash; exporting again", path)
        return None
    return graph


class OnnxEncoder:
    """An encoder run by ONNX Runtime: callable ``(B, 3, S, S)`` tensor -> ``(B, F)`` float32 tensor.

    Build it with :func:`build_onnx_encoder` (which checks it against the eager encoder).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        encoder: nn.Module,
        input_size: int,
        *,
        threads: int | None = None,
        cache_dir: Path | bool | None = None,
        spinning: bool = False,
        calibration: Calibration | None = None,
    ) -> None:
        import onnxruntime as ort  # optional dependency: ImportError tells the caller to fall back

        self.input_size = int(input_size)
        self.feature_dim = int(getattr(encoder, "feature_dim", 0)) or None
        self.threads = int(threads if threads is not None else encoder_threads())
        # int8 with a calibration set (captioner.model.quantize), else fp32
        self.precision = "fp32" if calibration is None else "int8"
        self.calibration = calibration
        self.int8_check: tuple[float, float] | None = None  # (mean, min) feature cosine to fp32, when checked
        digest = graph_digest(encoder, self.input_size)
        name = getattr(getattr(encoder, "spec", None), "name", type(encoder).__name__)
        fp32_path: Path | None = None
        self.cache_path: Path | None = None
        graph: bytes | None = None
        if cache_dir is not False:
            folder = (default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)) / "onnx"  # type: ignore[arg-type]
            fp32_path = folder / f"{name}-{self.input_size}-{digest[:20]}.onnx"
            self.cache_path = fp32_path
            if calibration is not None:
                key = f"{digest}|{calibration.digest}|{calibration.method}|{calibration.exclude}|{tool_versions()}"
                int8_digest = hashlib.sha256(key.encode()).hexdigest()
                self.cache_path = folder / f"{name}-{self.input_size}-int8-{int8_digest[:20]}.onnx"
            graph = _read_verified(self.cache_path)
        # A graph from the cache passed the self-check when it was written (its content hash
        # is recorded next to it); a fresh export (or quantisation) has not yet.
        self.verified = graph is not None
        if graph is None:
            base = _read_verified(fp32_path) if calibration is not None and fp32_path is not None else None
            graph = base or export_onnx(encoder, self.input_size)
            if calibration is not None:
                graph = quantize_graph(graph, calibration.tensors(), calibration.method, calibration.exclude)
        self._graph: bytes | None = graph
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = max(1, self.threads)
        options.inter_op_num_threads = 1
        # Busy-waiting worker threads would take CPU from the threads that decode images in
        # parallel with inference (service, folder captioning); measured no slower without.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.graph_bytes = len(graph)
        if self.verified:
            self._graph = None

    def save_to_cache(self) -> None:
        """Store the freshly exported graph (call after it passed the self-check), so the next
        load of the same weights skips the export and the check. Failure only costs time."""
        if self._graph is None or self.cache_path is None:
            return
        try:
            atomic_write_bytes(self.cache_path, self._graph)
            atomic_write_bytes(_hash_path(self.cache_path), hashlib.sha256(self._graph).hexdigest().encode())
        except OSError as e:  # read-only home, full disk: the graph stays in memory only
            log.info(
                "cannot cache the encoder graph at %s (%s); set %s to a writable folder to skip the export next time",
                self.cache_path,
                e,
                CACHE_ENV,
            )
            self.cache_path = None
        self._graph = None

    def accepts(self, x: Tensor) -> bool:
        """Whether this graph can run ``x``: a CPU float (B, 3, S, S) batch of the exported size."""
        return x.dim() == 4 and tuple(x.shape[1:]) == (3, self.input_size, self.input_size) and x.device.type == "cpu"

    def __call__(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, F) float32 features."""
        if x.size(0) == 0:
            return torch.zeros(0, self.feature_dim or 0)
        arr = np.ascontiguousarray(x.detach().to(torch.float32).numpy())  # (B, 3, S, S)
        (out,) = self.session.run(["features"], {"images": arr})  # (B, F)
        return torch.from_numpy(out)

    def describe(self) -> dict:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "threads": self.threads,
            "input_size": self.input_size,
            "graph_mb": round(self.graph_bytes / 2**20, 1),
            "cache": str(self.cache_path) if self.cache_path else None,
        }


def unavailable_reason(device: torch.device | str) -> str:
    """Why ONNX Runtime cannot run a model on ``device`` (a sentence for the log), or ""."""
    if torch.device(device).type != "cpu":
        return f"the model runs on {device}; the ONNX Runtime path is for CPUs"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed (pip install onnxruntime)"
    return ""


def build_onnx_encoder(
    encoder: nn.Module,
    input_size: int,
    *,
    device: torch.device | str = "cpu",
    threads: int | None = None,
    cache_dir: Path | bool | None = None,
    tolerance: Tolerance = FEATURE_TOLERANCE,
    calibration: Calibration | None = None,
    int8_tolerance: Int8Tolerance = INT8_TOLERANCE,
) -> tuple[OnnxEncoder | None, str]:
    """Build the ONNX Runtime encoder and check it against ``encoder``; int8 when given a
    ``calibration`` set (:mod:`captioner.model.quantize`, gated by ``int8_tolerance``), else fp32.

    Returns ``(encoder, "")``, or ``(None, reason)`` when it cannot be built or fails its
    self-check; the reason is a sentence for the log. Never raises for that.
    """
    reason = unavailable_reason(device)
    if reason:
        return None, reason
    what = "ONNX Runtime encoder" if calibration is None else "int8 ONNX Runtime encoder"
    try:
        fast = OnnxEncoder(encoder, input_size, threads=threads, cache_dir=cache_dir, calibration=calibration)
    except Exception as e:  # exporter, quantiser or runtime cannot handle this network
        return (
            None,
            f"building the {what} failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})",
        )
    if fast.verified:
        return fast, ""
    if calibration is not None:
        return _checked_int8(encoder, fast, calibration, int8_tolerance)
    ok, diff, cos, error = self_check(encoder, fast, tolerance)
    if error:
        return None, f"the ONNX Runtime encoder failed its self-check run ({error})"
    if not ok:
        return None, (
            f"the ONNX Runtime encoder disagrees with PyTorch (max abs diff {diff:.2e}, min cosine "
            f"{cos:.6f}; allowed {tolerance.max_abs:g} / {tolerance.min_cosine})"
        )
    fast.save_to_cache()
    return fast, ""


def self_check(
    encoder: nn.Module, fast: OnnxEncoder, tolerance: Tolerance = FEATURE_TOLERANCE
) -> tuple[bool, float, float, str]:
    """Run both encoders on a fixed image-like input: (within tolerance, max abs diff, min
    cosine, error message or "")."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, fast.input_size, fast.input_size, generator=gen).clamp_(-1.0, 1.0)  # (2, 3, S, S)
    try:
        with torch.inference_mode():
            reference = encoder(x).float()  # (2, F)
        got = fast(x)  # (2, F)
    except Exception as e:
        return False, float("nan"), float("nan"), f"{type(e).__name__}: {e}"
    ok, diff, cos = tolerance.check(reference, got)
    return ok, diff, cos, ""


def _checked_int8(
    encoder: nn.Module, fast: OnnxEncoder, calibration: Calibration, tolerance: Int8Tolerance = INT8_TOLERANCE
) -> tuple[OnnxEncoder | None, str]:
    """Self-check a freshly quantised encoder on (up to 32 of) its calibration images and
    cache it when its features stay close enough to the eager encoder's."""
    x = torch.from_numpy(calibration.tensors()[:32])  # (B, 3, S, S)
    try:
        with torch.inference_mode():
            reference = encoder(x).float()  # (B, F)
        got = fast(x)  # (B, F)
    except Exception as e:
        return None, f"the int8 ONNX Runtime encoder failed its self-check run ({type(e).__name__}: {e})"
    ok, mean, low = tolerance.check(reference, got)
    fast.int8_check = (mean, low)
    if not ok:
        return None, (
            f"the int8 ONNX Runtime encoder drifts too far from PyTorch (feature cosine mean {mean:.4f}, "
            f"min {low:.4f}; allowed {tolerance.min_mean_cosine} / {tolerance.min_cosine})"
        )
    fast.save_to_cache()
    return fast, ""
