"""``Captioner``: a trained model ready to caption images, on numpy, Pillow and ONNX Runtime.

    >>> from captioner import Captioner
    >>> model = Captioner.load()                 # the shipped default weights, with their graphs
    >>> model.caption(["cat.jpg", open("dog.png", "rb").read()])
    ['a cat on a blue background', 'two dogs on a green background']

Every front end (HTTP service, folder captioning, the Ray engine, evaluation) goes through
three calls: :meth:`~CaptionerBase.preprocess` (source -> input array: the one image path of
:mod:`captioner.pipeline`), :meth:`~CaptionerBase.encode_started` (arrays -> features and the
decoder's start, from one encoder call) and :meth:`~CaptionerBase.generate` (those -> captions:
the one search, then trust). ``encode`` (features only) and ``generate(features)`` serve
callers who keep features: generate then computes the decoder's start itself.
:class:`CaptionerBase` holds all of it but the encoder and the decoder step, which
:class:`Captioner` takes from the checkpoint's exported graphs and the PyTorch reference
(:class:`captioner.model.ReferenceCaptioner`) from its modules.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image

from .. import pipeline
from ..checkpoint import CONFIG, read_checkpoint_info
from ..errors import CaptionerError, CheckpointError, ImageLoadError
from ..images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from ..options import DEFAULT_MIN_WORD_PROB, MIN_WORD_PROB, CaptionOptions
from ..trust import TrustStats, load_trust, pooled
from ..vocab import Vocabulary
from . import search
from .blas import limit_blas_threads
from .graphs import ENCODER_INT8, LABELS, Graphs, OnnxEncoder, OnnxLabels, OnnxStep, find_graphs, precision_requested
from .preprocess import Preprocess
from .results import CaptionResult, Label, finish, top_labels
from .started import Started, StartedStep

log = logging.getLogger("captioner.runtime")


def default_weights_path() -> Path:
    """Folder of the checkpoint that ships with the package (``weights/default``)."""
    env = os.environ.get("CAPTIONER_WEIGHTS")
    if env:
        return Path(env)
    from .. import weights  # the package-data folder (weights/ in the repository)

    return Path(weights.__file__).resolve().parent / "default"


class CaptionerBase:
    """Vocabulary, preprocessing, trust and generation: everything but the encoder and the
    decoder step (:meth:`encode`, :meth:`decoder_step`, :meth:`_label_logits`)."""

    backend = "onnxruntime"
    device: Any = "cpu"  # where the model runs (the reference path may use a CUDA device)

    def __init__(
        self,
        *,
        vocab: Vocabulary,
        preprocessing: Preprocess,
        decoder: dict,
        encoder_name: str,
        metadata: dict | None = None,
        model_id: str | None = None,
        path: Path | None = None,
        trust: TrustStats | None = None,
    ) -> None:
        self.vocab = vocab
        self.preprocessing = preprocessing
        self.decoder_settings = dict(decoder)  # the decoder's kind and settings (config.json)
        self.encoder_name = encoder_name
        self.metadata = metadata or {}
        self.model_id = model_id or self.metadata.get("model_id") or "untrained"
        self.path = path
        self.trust = trust or TrustStats()  # calibration and domain statistics

    # ------------------------------------------------------------------ facts
    @property
    def max_length(self) -> int:
        """The default word limit (the decoder's setting)."""
        return int(self.decoder_settings.get("max_length", 30))

    @property
    def attends(self) -> bool:
        """Whether the decoder attends over the CNN's map (and so can show where it looked)."""
        return self.decoder_settings.get("kind") == "attention"

    @property
    def input_size(self) -> int:
        return int(self.preprocessing.crop_size)

    @property
    def precision(self) -> str:
        return "fp32"

    # ------------------------------------------------------------------ the three steps
    def decode(
        self,
        image: pipeline.Source,
        name: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> Image.Image:
        """Safe decode to RGB with the pipeline's JPEG draft rule (:func:`captioner.pipeline.decode`)."""
        limits = pipeline.Limits(max_pixels=max_pixels, max_bytes=max_bytes)
        return pipeline.decode(image, self.preprocessing, name=name, limits=limits)

    def preprocess(
        self,
        image: pipeline.Source,
        name: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> np.ndarray:
        """Path, bytes, PIL image or HxWx3 uint8 array -> normalised input (3, S, S) float32.
        Raises ImageLoadError."""
        limits = pipeline.Limits(max_pixels=max_pixels, max_bytes=max_bytes)
        return pipeline.prepare(image, self.preprocessing, name=name, limits=limits)

    def encode(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) -> (B, F) features, or (B, N, C) maps for an attention decoder."""
        raise NotImplementedError

    def encode_started(self, batch: np.ndarray) -> Started:
        """(B, 3, S, S) -> the features with the decoder's memory and initial state for them,
        for :meth:`generate` (which then skips the start). Here: :meth:`encode`, then the
        decoder's start; the exported graphs give all three from one encoder call."""
        features = self.encode(batch)
        if len(features) == 0:
            return Started(features, None, ())
        memory, state = self.decoder_step().start(features)
        return Started(features, memory, state)

    def decoder_step(self) -> search.DecoderStep:
        raise NotImplementedError

    def _label_logits(self, pooled_features: np.ndarray) -> tuple[np.ndarray, Sequence[str]] | None:
        """ImageNet logits (B, 1000) and class names, or None when the backbone cannot name classes."""
        return None

    def generate(
        self,
        features: np.ndarray | Started,
        options: CaptionOptions | None = None,
        *,
        temperature: float | None = None,
        rng: np.random.Generator | None = None,
        min_word_prob: float | None = None,
        attention: bool = False,
    ) -> list[CaptionResult]:
        """Captions for features (B, F) or maps (B, N, C), or for :meth:`encode_started`'s
        :class:`~captioner.runtime.started.Started` (then the decoder's start is not computed
        again): greedy, beam search (n-best with
        ``options.num_captions``) or, with a ``temperature``, sampling. The caption of an image
        outside the training data ends before the first word the model gives less than
        ``min_word_prob`` (default :data:`captioner.options.DEFAULT_MIN_WORD_PROB`; 0: off).
        Each result carries its confidence, out-of-domain flag and distance (when the
        checkpoint has the statistics), ``options.labels`` ImageNet classes, and with
        ``attention=True`` where the model looked for each word."""
        opts = options or CaptionOptions()
        started = features if isinstance(features, Started) else None
        f = np.asarray(features.features if isinstance(features, Started) else features, dtype=np.float32)
        if len(f) == 0:
            return []
        v, step = self.vocab, self.decoder_step()
        if started is not None:
            step = StartedStep(step, started)
        max_len = opts.max_length or self.max_length
        if temperature is not None:
            hyps = search.sequential(
                step, f, v.start_id, v.end_id, max_len, opts.no_repeat_ngram_size, temperature, rng
            )
            nbest = [[h] for h in hyps]
        elif opts.beam_size <= 1:
            nbest = [[h] for h in search.sequential(step, f, v.start_id, v.end_id, max_len, opts.no_repeat_ngram_size)]
        else:
            nbest = search.beam_search(
                step, f, v.start_id, v.end_id, max_len, opts.beam_size, opts.length_penalty,
                opts.no_repeat_ngram_size, opts.num_captions,
            )  # fmt: skip
        floor = DEFAULT_MIN_WORD_PROB if min_word_prob is None else MIN_WORD_PROB.check(min_word_prob)
        domain = self.trust.domain
        distances = domain.distance(f) if domain is not None else None  # (B,)
        results = finish(nbest, v, self.trust, distances, min_word_prob=floor, attention=attention)
        names = self.labels(f, opts.labels) if opts.labels > 0 else None
        for r, row in zip(results, names or []):
            r.labels = row
            for c in r.candidates:
                c.labels = row
        return results

    def labels(self, features: np.ndarray, k: int) -> list[list[Label]] | None:
        """The backbone's ``k`` most probable ImageNet classes per image, or None (no classifier)."""
        got = self._label_logits(pooled(features))
        return None if got is None else top_labels(got[0], got[1], k)

    # ------------------------------------------------------------------ convenience
    def caption_detailed(
        self,
        images: Sequence[pipeline.Source] | pipeline.Source,
        options: CaptionOptions | None = None,
        batch_size: int = 32,
        *,
        errors: str = "raise",
        **settings: Any,
    ) -> list[CaptionResult | ImageLoadError]:
        """Caption images given as paths, bytes, PIL images or HxWx3 uint8 arrays, with
        ``options`` or the same settings as keywords (``beam_size=3, labels=3, ...``). An
        unreadable image raises :class:`ImageLoadError` (``errors="raise"``), or with
        ``errors="return"`` takes its place in the list as that error, so one bad file never
        loses a batch."""
        if errors not in ("raise", "return"):
            raise ValueError('errors must be "raise" or "return"')
        if options is not None and settings:
            raise TypeError(f"pass options or keyword settings, not both (got options and {', '.join(settings)})")
        opts = options or CaptionOptions(**settings)
        one = isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Image.Image))
        items: list[pipeline.Source] = [cast(pipeline.Source, images)] if one else list(cast(Sequence, images))
        out: list[CaptionResult | ImageLoadError] = []
        for i in range(0, len(items), max(1, batch_size)):
            prepared: list[np.ndarray | ImageLoadError] = []
            for n, im in enumerate(items[i : i + batch_size]):
                try:
                    label = f"<array {i + n}>" if isinstance(im, np.ndarray) else None
                    prepared.append(self.preprocess(im, name=label))
                except ImageLoadError as e:
                    if errors == "raise":
                        raise
                    prepared.append(e)
            good = [p for p in prepared if isinstance(p, np.ndarray)]
            results = iter(self.generate(self.encode_started(np.stack(good)), opts) if good else [])
            out.extend(next(results) if isinstance(p, np.ndarray) else p for p in prepared)
        return out

    def caption(
        self,
        images: Sequence[pipeline.Source] | pipeline.Source,
        options: CaptionOptions | None = None,
        batch_size: int = 32,
        **settings: Any,
    ) -> list[str]:
        """Captions for one image or a list of images (raises on the first unreadable one);
        :meth:`caption_detailed` gives confidence and the out-of-domain flag with each."""
        results = self.caption_detailed(images, options, batch_size, **settings)
        return [r.caption for r in results if isinstance(r, CaptionResult)]

    def runtime_status(self) -> dict:
        return {"encoder": self.backend, "decoder": self.backend, "reasons": {}}

    def describe(self) -> dict:
        """Facts about the model for /v1/model and `captioner info`."""
        return {
            "model_id": self.model_id,
            "encoder": {
                "name": self.encoder_name,
                "feature_dim": int(self.decoder_settings.get("feature_dim", 0)),
                "preprocess": self.preprocessing.to_dict(),
            },
            "runtime": self.runtime_status(),
            "precision": self.precision,  # what the encoder computes in
            "precision_requested": getattr(self, "precision_wanted", self.precision),
            "decoder": self.decoder_settings,
            "vocab_size": len(self.vocab),
            "device": str(self.device),
            "metadata": self.metadata,
            "trained_on": self.trust.trained_on or None,  # one sentence, for people
            "trust": self.trust.describe(),
        }


class Captioner(CaptionerBase):
    """A checkpoint served from its exported graphs on ONNX Runtime: no PyTorch."""

    def __init__(self, graphs: Graphs, *, precision: str = "fp32", threads: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.graphs = graphs
        self.precision_wanted = precision
        self.int8_reason = ""
        if precision == "int8" and not graphs.has(ENCODER_INT8):
            self.int8_reason = graphs.int8_reason
            log.warning("the encoder runs in fp32, not int8: %s", self.int8_reason)
            precision = "fp32"
        limit_blas_threads(1)  # numpy's few products beside the sessions (runtime/blas.py)
        self.encoder = OnnxEncoder(graphs, precision, threads)
        self.step = OnnxStep.of(graphs)
        self._labels = OnnxLabels(graphs) if graphs.has(LABELS) else None

    def with_encoder_threads(self, threads: int) -> Captioner:
        """This captioner with its own encoder session on ``threads`` threads, sharing the rest
        (decoder step, labels, trust): for a service lane that runs beside another one."""
        twin = copy.copy(self)
        twin.encoder = OnnxEncoder(self.graphs, self.encoder.precision, threads)
        return twin

    @classmethod
    def load(
        cls,
        path: str | os.PathLike | None = None,
        precision: str | None = None,
        threads: int | None = None,
        device: str | None = None,
    ) -> Captioner:
        """Load a checkpoint folder (no path: the shipped default weights) from its graphs.

        ``precision`` (``"int8"`` or ``"fp32"``; default: env ``CAPTIONER_PRECISION``, else the
        checkpoint's metadata, else fp32) is what the encoder computes in; int8 falls back to
        fp32, with the reason logged, when the checkpoint has no int8 graph. ``threads``: the
        encoder's threads (default ``CAPTIONER_ENCODER_THREADS``, else every CPU allowed).
        ``device`` may only be the CPU: :func:`load_captioner` reaches CUDA through PyTorch."""
        if (device or "cpu").strip().lower() != "cpu":
            raise CaptionerError(
                f"Captioner runs on the CPU (ONNX Runtime), not {device!r}: use "
                "captioner.runtime.captioner.load_captioner(path, device=...) or ReferenceCaptioner for CUDA"
            )
        folder = Path(path) if path is not None else default_weights_path()
        if path is None and not (folder / CONFIG).exists():
            raise CheckpointError(
                f"the default weights are missing at {folder}; reinstall the package or pass a checkpoint folder"
            )
        info = read_checkpoint_info(folder)
        graphs = find_graphs(folder)
        recipe = info.preprocess or graphs.manifest["encoder"]["preprocess"]
        digest = graphs.manifest["sources"].get("model.safetensors", "")[:12]
        return cls(
            graphs,
            precision=precision_requested(precision, info.metadata),
            threads=threads,
            vocab=info.vocab,
            preprocessing=Preprocess.from_dict(recipe),
            decoder=info.decoder,
            encoder_name=info.encoder_name,
            metadata=info.metadata,
            model_id=info.metadata.get("model_id") or f"{folder.name}-{digest}",
            path=folder,
            trust=load_trust(folder),
        )

    @property
    def precision(self) -> str:
        return self.encoder.precision

    def encode(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros((0, int(self.decoder_settings.get("feature_dim", 0))), np.float32)
        return self.encoder(batch)  # (B, F) or (B, N, C)

    def encode_started(self, batch: np.ndarray) -> Started:
        if len(batch) == 0:
            return Started(self.encode(batch), None, ())
        features, memory, state = self.encoder.started(batch)  # one call: (B, ...) each
        return Started(features, memory, state)

    def decoder_step(self) -> search.DecoderStep:
        return self.step

    def _label_logits(self, pooled_features: np.ndarray) -> tuple[np.ndarray, Sequence[str]] | None:
        if self._labels is None:
            return None
        return self._labels.logits(pooled_features), self._labels.classes

    def runtime_status(self) -> dict:
        reasons = {"int8": self.int8_reason} if self.int8_reason else {}
        return {"encoder": "onnxruntime", "decoder": "onnxruntime", "threads": self.encoder.threads, "reasons": reasons}


def load_captioner(
    path: str | os.PathLike | None = None,
    device: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
) -> CaptionerBase:
    """What every front end loads: on the CPU (``device`` None or "cpu") the torch-free
    :class:`Captioner`; on another device (``cuda``, ``cuda:N``) the PyTorch reference path,
    reached by name (it needs ``pip install 'captioner[train]'``)."""
    name = (device or "cpu").strip().lower()
    if name == "cpu":
        return Captioner.load(path, precision=precision, threads=threads)
    if importlib.util.find_spec("torch") is None:
        raise CheckpointError(f"device {device!r} needs PyTorch: pip install 'captioner[train]', or use --device cpu")
    reference = importlib.import_module("captioner.model").ReferenceCaptioner
    return reference.load(path, device=name)
