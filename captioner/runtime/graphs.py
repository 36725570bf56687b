"""A checkpoint's exported graphs, checked against their manifest and run by ONNX Runtime.

    CKPT/graphs/
      manifest.json        format, opset, tool versions, digests of the checkpoint files the
                           graphs were made from, and every graph's digest and self-check figures
      encoder.onnx         images (B, 3, S, S) -> features (B, F) or maps (B, N, C), fp32, and
                           the decoder's start on them (start.onnx's outputs, computed in the
                           same call on the encoder's threads: memory, h[, c])
      encoder-int8.onnx    the same with the CNN in int8 (the start stays float32), present only
                           when its features passed their gate
      start.onnx           features or maps -> decoder memory (B, ...), initial state (B, L, H),
                           for features that did not come from the encoder graph
      step.onnx            words (N,), rows (N,), memory, state -> log-probs (N, V), state[, attention]
      labels.onnx          pooled features (B, F) -> ImageNet logits (B, 1000), with labels.json

``captioner export CKPT`` writes them (it needs PyTorch: :mod:`captioner.model.export`).
Loading checks every digest: a stale, truncated or altered graph is one line naming the file
and what to run. Nothing here imports PyTorch.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import CALIBRATION, CONFIG, ENCODER_WEIGHTS, GRAPHS, VOCAB, WEIGHTS
from ..errors import CaptionerError, CheckpointError

log = logging.getLogger("captioner.runtime")

# 2: the encoder graphs also output the decoder's start (1: features only)
GRAPHS_FORMAT = "captioner-graphs/2"
MANIFEST = "manifest.json"
ENCODER, ENCODER_INT8, START, STEP, LABELS, LABEL_NAMES = (
    "encoder.onnx",
    "encoder-int8.onnx",
    "start.onnx",
    "step.onnx",
    "labels.onnx",
    "labels.json",
)
#: The encoder graphs' outputs: the features, then the decoder's start (the names start.onnx gives).
FEATURES, MEMORY = "features", "memory"
#: The checkpoint files a set of graphs is made from: a change to any makes them stale
#: (metadata and trust statistics are read by the runtime directly, and may change).
SOURCES = (WEIGHTS, ENCODER_WEIGHTS, CALIBRATION, CONFIG, VOCAB)
THREADS_ENV = "CAPTIONER_ENCODER_THREADS"
PRECISION_ENV = "CAPTIONER_PRECISION"
PRECISIONS = ("int8", "fp32")


DEFAULT_PRECISION = "fp32"  # for a checkpoint whose metadata names none


class PrecisionError(CaptionerError, ValueError):
    """A precision that is neither int8 nor fp32 (a one-line message naming both)."""


def precision_requested(precision: str | None = None, metadata: dict | None = None) -> str:
    """The precision to run: ``precision`` when given, else ``$CAPTIONER_PRECISION``, else the
    checkpoint's ``metadata["precision"]``, else fp32. Raises PrecisionError for another name."""
    for source, value in (
        ("precision", precision),
        (PRECISION_ENV, os.environ.get(PRECISION_ENV, "").strip() or None),
        ("the checkpoint's metadata precision", (metadata or {}).get("precision")),
    ):
        if value is not None:
            name = str(value).strip().lower()
            if name not in PRECISIONS:
                raise PrecisionError(f"{source} must be one of {', '.join(PRECISIONS)}, not {value!r}")
            return name
    return DEFAULT_PRECISION


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_digests(folder: Path) -> dict[str, str]:
    """sha256 of each checkpoint file the graphs depend on (those present)."""
    return {name: file_digest(folder / name) for name in SOURCES if (folder / name).is_file()}


def encoder_threads(threads: int | None = None) -> int:
    """Intra-op threads of the encoder: ``threads``, else ``$CAPTIONER_ENCODER_THREADS``, else
    the CPUs this process may use."""
    if threads is not None:
        return max(1, int(threads))
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            log.warning("ignoring %s=%r: not a whole number", THREADS_ENV, env)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def session(graph: bytes | str, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session: all graph optimisations, no busy-waiting (the threads that
    decode images need the cores), errors only in the log."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


@dataclass
class Graphs:
    """A checked set of graphs: the manifest and the folder they are read from."""

    folder: Path
    manifest: dict
    checkpoint: Path | None = None  # the checkpoint they were exported from

    def file(self, name: str) -> Path:
        return self.folder / name

    def has(self, name: str) -> bool:
        return name in self.manifest.get("files", {})

    @property
    def int8_reason(self) -> str:
        """Why there is no int8 encoder ("" when there is one)."""
        return "" if self.has(ENCODER_INT8) else str(self.manifest.get("int8", {}).get("reason") or "not exported")


def _fix(folder: Path) -> str:
    return f"run `captioner export {folder}` where PyTorch is installed (pip install 'captioner[train]')"


def read_graphs(checkpoint: Path, folder: Path | None = None) -> Graphs:
    """The graphs of ``checkpoint`` (in ``folder``, default ``CKPT/graphs``), every file checked
    against the manifest and the manifest against the checkpoint's files. Raises
    :class:`CheckpointError` naming the file and what to run."""
    folder = folder or checkpoint / GRAPHS
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
        files = dict(manifest["files"])
    except FileNotFoundError:
        raise CheckpointError(f"{checkpoint}: the checkpoint has no exported graphs; {_fix(checkpoint)}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid graph manifest ({e}); {_fix(checkpoint)}") from None
    if manifest.get("format") != GRAPHS_FORMAT:
        raise CheckpointError(
            f"{path}: graphs of format {manifest.get('format')!r}, this version runs {GRAPHS_FORMAT!r} "
            f"(stale); {_fix(checkpoint)}"
        )
    if source_digests(checkpoint) != manifest.get("sources"):
        raise CheckpointError(
            f"{path}: the graphs were exported from other weights than {checkpoint}'s (stale); {_fix(checkpoint)}"
        )
    for name in (ENCODER, START, STEP):
        if name not in files:
            raise CheckpointError(f"{path}: lists no {name}; {_fix(checkpoint)}")
    for name, facts in files.items():
        try:
            ok = file_digest(folder / name) == facts["sha256"]
        except OSError:
            raise CheckpointError(f"{folder / name}: missing; {_fix(checkpoint)}") from None
        if not ok:
            raise CheckpointError(
                f"{folder / name}: does not match its digest in {MANIFEST} (altered or truncated); {_fix(checkpoint)}"
            )
    return Graphs(folder, manifest, checkpoint)


def find_graphs(checkpoint: Path) -> Graphs:
    """The checkpoint's own graphs; for a checkpoint without them, graphs exported once into
    the cache when PyTorch is installed (the one place the runtime reaches the torch side,
    by name), else :class:`CheckpointError` saying what to run."""
    if (checkpoint / GRAPHS / MANIFEST).exists() or importlib.util.find_spec("torch") is None:
        return read_graphs(checkpoint)
    from ..cache import default_cache_dir

    key = hashlib.sha256(json.dumps(source_digests(checkpoint), sort_keys=True).encode()).hexdigest()[:20]
    out = default_cache_dir() / "graphs" / key
    try:
        return read_graphs(checkpoint, out)
    except CheckpointError:
        pass
    log.info("%s has no exported graphs; exporting them into %s (once)", checkpoint, out)
    export = importlib.import_module("captioner.model.export")
    export.export_graphs(checkpoint, out)
    return read_graphs(checkpoint, out)


class OnnxStep:
    """The exported decoder as a :class:`captioner.runtime.search.DecoderStep`: one session
    call per step for the whole batch, on one thread (a step is a handful of small products)."""

    def __init__(self, start: bytes | str, step: bytes | str, decoder: dict) -> None:
        """``start`` and ``step``: the graphs (bytes or file names); ``decoder``: their facts
        from the manifest (vocab_size, state, attention)."""
        self.start_session = session(start)
        self.step_session = session(step)
        self.vocab_size = int(decoder["vocab_size"])
        self.state_size = int(decoder["state"])  # 2 for the LSTM's (h, c), else 1
        self.attends = bool(decoder["attention"])
        self._state_names = ["h", "c"][: self.state_size]
        self._outs = ["logp", *(f"{n}_out" for n in self._state_names)] + (["alpha"] if self.attends else [])

    @classmethod
    def of(cls, graphs: Graphs) -> OnnxStep:
        return cls(str(graphs.file(START)), str(graphs.file(STEP)), graphs.manifest["decoder"])

    def start(self, features: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        memory, *state = self.start_session.run(None, {"features": np.ascontiguousarray(features, np.float32)})
        return memory, tuple(state)

    def step(
        self, words: np.ndarray, rows: np.ndarray, memory: np.ndarray, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...], np.ndarray | None]:
        feed = {
            "words": words.astype(np.int64, copy=False),
            "rows": rows.astype(np.int64, copy=False),
            "memory": memory,
        }
        feed.update((n, np.ascontiguousarray(s)) for n, s in zip(self._state_names, state))
        out = self.step_session.run(self._outs, feed)
        n = self.state_size
        return out[0], tuple(out[1 : 1 + n]), out[1 + n] if self.attends else None


class OnnxEncoder:
    """The exported CNN with the decoder's start appended: (B, 3, S, S) float32 -> features
    (B, F) or maps (B, N, C), and from the same call the decoder's memory and initial state
    (:meth:`started`). ONNX Runtime runs the whole graph on every call, so asking for the
    features alone saves nothing: the start costs what it costs either way."""

    backend = "onnxruntime"

    def __init__(self, graphs: Graphs, precision: str, threads: int | None = None) -> None:
        self.precision = precision
        self.threads = encoder_threads(threads)
        name = ENCODER_INT8 if precision == "int8" else ENCODER
        self.session = session(str(graphs.file(name)), self.threads)
        self.input_size = int(graphs.manifest["encoder"]["input_size"])
        outputs = [o.name for o in self.session.get_outputs()]
        if outputs[:2] != [FEATURES, MEMORY] or len(outputs) != 2 + int(graphs.manifest["decoder"]["state"]):
            raise CheckpointError(
                f"{graphs.file(name)}: outputs {', '.join(outputs)}, not features, memory and the decoder's state; "
                f"{_fix(graphs.checkpoint or graphs.folder.parent)}"
            )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([FEATURES], {"images": np.ascontiguousarray(batch, np.float32)})
        return out

    def started(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
        """features (B, F) or (B, N, C), memory (B, ...), initial state (each (B, L, H))."""
        features, memory, *state = self.session.run(None, {"images": np.ascontiguousarray(batch, np.float32)})
        return features, memory, tuple(state)

    def describe(self) -> dict:
        return {"backend": self.backend, "precision": self.precision, "threads": self.threads}


class OnnxLabels:
    """The backbone's ImageNet classifier: top-k class names of pooled features (B, F)."""

    def __init__(self, graphs: Graphs) -> None:
        self.session = session(str(graphs.file(LABELS)))
        self.classes: list[str] = json.loads(graphs.file(LABEL_NAMES).read_text(encoding="utf-8"))

    def logits(self, pooled: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(None, {"features": np.ascontiguousarray(pooled, np.float32)})
        return out  # (B, 1000)
