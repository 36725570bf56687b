"""``Captioner``: a trained model ready to caption images.

    >>> from captioner import Captioner
    >>> model = Captioner.load()                 # the shipped default weights
    >>> model.caption(["cat.jpg", open("dog.png", "rb").read()])
    ['a cat on a blue background', 'two dogs on a green background']

Every front end (HTTP service, folder captioning, evaluation, training) goes through the
one image path in :mod:`captioner.pipeline`; on a model that is three calls:
:meth:`Captioner.preprocess` (source -> input tensor: decode, then the model's
:attr:`Captioner.preprocessing`), :meth:`Captioner.encode` (tensors -> features) and
:meth:`Captioner.generate` (features -> captions).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from torch import Tensor

from . import checkpoint as ckpt_mod
from . import pipeline, runtime
from . import trust as trust_mod
from .attention import build_decoder, config_to_dict, decoder_kind
from .decoder import CaptionDecoder
from .errors import CaptionerError, CheckpointError
from .images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageSource
from .options import DEFAULT_MIN_WORD_PROB, MIN_WORD_PROB
from .vocab import Vocabulary


def default_weights_path() -> Path:
    """Folder of the checkpoint that ships with the package (``weights/default``)."""
    env = os.environ.get("CAPTIONER_WEIGHTS")
    if env:
        return Path(env)
    from . import weights  # the package-data folder (weights/ in the repository)

    return Path(weights.__file__).resolve().parent / "default"


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` means CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise CaptionerError(f"unknown device {device!r} ({e}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CaptionerError("CUDA was requested but no CUDA device is available; use --device cpu")
    return dev


@dataclass
class CaptionResult:
    caption: str
    score: float  # log-probability of the caption (words and <end>) under the model
    tokens: list[int] = field(default_factory=list)
    # How far to trust it (captioner.trust); None where the checkpoint cannot tell.
    confidence: float | None = None  # calibrated chance in [0, 1] that the caption is right
    in_domain: bool | None = None  # whether the image looks like the training images
    domain_distance: float | None = None  # its distance to them (in domain up to the threshold)
    labels: list | None = None  # top ImageNet classes (captioner.encoders.Label), when asked for


class Captioner:
    """Encoder + decoder + vocabulary, in eval mode on one device."""

    def __init__(
        self,
        encoder: torch.nn.Module,
        decoder: CaptionDecoder,
        vocab: Vocabulary,
        *,
        preprocess: pipeline.Preprocessing | None = None,
        metadata: dict | None = None,
        device: str | torch.device | None = None,
        model_id: str | None = None,
        path: Path | None = None,
        fast: bool | None = None,
        precision: str | None = None,
        calibration: list[bytes] | None = None,
    ) -> None:
        if decoder.config.vocab_size != len(vocab):
            raise CheckpointError(
                f"decoder expects {decoder.config.vocab_size} tokens but the vocabulary has {len(vocab)}"
            )
        feat = getattr(encoder, "feature_dim", None)
        if feat is not None and feat != decoder.config.feature_dim:
            raise CheckpointError(
                f"encoder gives {feat}-d features but the decoder expects {decoder.config.feature_dim}-d"
            )
        self.device = pick_device(device)
        self.encoder = encoder.to(self.device).eval()
        self.decoder: CaptionDecoder = decoder.to(self.device).eval()
        self.vocab = vocab
        # The Preprocess recipe (image -> input tensor); its dict form is in config.json.
        spec = getattr(encoder, "spec", None)  # the encoder's name and preprocessing (captioner.encoders)
        if preprocess is None:
            if spec is None:
                raise CheckpointError("the encoder has no spec: pass its preprocessing as preprocess=")
            preprocess = spec.preprocess
        self.encoder_name: str = str(getattr(spec, "name", type(encoder).__name__))
        self.preprocessing: pipeline.Preprocessing = preprocess
        self.metadata = metadata or {}
        self.path = path
        self.model_id = model_id or self.metadata.get("model_id") or "untrained"
        # ONNX Runtime encoder and decoder step (captioner.runtime): built on first use, or at
        # once by load(). fast=None -> env CAPTIONER_FAST decides (default on).
        # precision (int8|fp32): the argument, else CAPTIONER_PRECISION, else the checkpoint's
        # metadata; int8 is calibrated on ``calibration`` (encoded training images).
        chosen = runtime.precision_requested(precision, self.metadata)
        calib = self._calibration(calibration) if chosen == "int8" and calibration else None
        self._fast = runtime.OnnxPath(runtime.fast_requested(fast), chosen, calib)
        self.trust = trust_mod.TrustStats()  # calibration and domain statistics (load() reads them)
        self._label_head: object = None  # built on the first request for labels; False: unavailable

    def _calibration(self, images: list[bytes]) -> runtime.Calibration:
        """The int8 calibration set: ``images`` through the one image path, made when needed."""
        from .runtime.quantize import calibration_set

        return calibration_set(images, self.preprocessing)

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls,
        path: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        fast: bool | None = None,
        precision: str | None = None,
    ) -> Captioner:
        """Load a checkpoint folder; no path loads the shipped default weights.

        ``fast`` (default: env ``CAPTIONER_FAST``, on unless ``0``) runs the encoder and the
        decoder step with ONNX Runtime on CPUs (see :mod:`captioner.runtime`); it is prepared
        here, so the first image pays no export. ``fast=False`` keeps plain PyTorch.
        ``precision`` (``"int8"`` or ``"fp32"``; default: env ``CAPTIONER_PRECISION``, else the
        checkpoint's metadata, else fp32) is what the ONNX Runtime encoder computes in; int8
        is calibrated on the checkpoint's ``calibration.safetensors`` and falls back to fp32
        with a logged reason (:mod:`captioner.runtime.quantize`)."""
        from .encoders import Preprocess, build_encoder, get_spec
        from .runtime.quantize import read_calibration

        folder = Path(path) if path is not None else default_weights_path()
        if path is None and not (folder / ckpt_mod.CONFIG).exists():
            raise CheckpointError(
                f"the default weights are missing at {folder}; reinstall the package or pass a checkpoint folder"
            )
        ck = ckpt_mod.load_checkpoint(folder)
        try:
            spec = get_spec(ck.encoder_name)
        except CaptionerError as e:
            raise CheckpointError(f"{folder}: the checkpoint names an unknown encoder: {e}") from None
        if spec.feature_dim != ck.decoder_config.feature_dim:
            raise CheckpointError(
                f"{folder}: encoder {spec.name} gives {spec.feature_dim}-d features but the decoder "
                f"was trained on {ck.decoder_config.feature_dim}-d features"
            )
        spatial = decoder_kind(ck.decoder_config) == "attention"  # it reads the map before pooling
        if ck.encoder_state is not None:
            encoder = build_encoder(ck.encoder_name, weights="random", spatial=spatial)
            try:
                encoder.load_state_dict(ck.encoder_state, strict=True)
            except RuntimeError as e:
                raise CheckpointError(
                    f"{folder}: fine-tuned encoder weights do not fit {ck.encoder_name}: {e}"
                ) from None
        else:
            encoder = build_encoder(ck.encoder_name, weights="pretrained", spatial=spatial)
        decoder = build_decoder(ck.decoder_config)
        try:
            decoder.load_state_dict(ck.decoder_state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{folder}: weights do not match the decoder configuration: {e}") from None
        preprocess = Preprocess.from_dict(ck.preprocess) if ck.preprocess else spec.preprocess
        digest = hashlib.sha256((folder / ckpt_mod.WEIGHTS).read_bytes()).hexdigest()[:12]
        model_id = ck.metadata.get("model_id") or f"{folder.name}-{digest}"
        model = cls(
            encoder,
            decoder,
            ck.vocab,
            preprocess=preprocess,
            metadata=ck.metadata,
            device=device,
            model_id=model_id,
            path=folder,
            fast=fast,
            precision=precision,
            calibration=read_calibration(folder)
            if runtime.precision_requested(precision, ck.metadata) == "int8"
            else None,
        )
        model.trust = trust_mod.load_trust(folder)
        if ck.encoder_state is not None:
            model._label_head = False  # a fine-tuned CNN no longer feeds its ImageNet classifier
        model.prepare_fast()
        return model

    def save(self, directory: str | os.PathLike, metadata: dict | None = None, fp16: bool = False) -> Path:
        """Write this model as a checkpoint folder (decoder weights only: the encoder is frozen
        unless it was fine-tuned, in which case pass through training's own save)."""
        from .runtime.quantize import read_calibration, write_calibration

        # read before saving: the new folder may replace the one loaded from
        images = read_calibration(self.path) if self.path is not None else None
        preprocess = self.preprocessing.to_dict() if hasattr(self.preprocessing, "to_dict") else {}
        folder = ckpt_mod.save_checkpoint(
            directory,
            decoder=self.decoder,
            decoder_config=self.decoder.config,
            encoder_name=self.encoder_name,
            preprocess=preprocess,
            vocab=self.vocab,
            metadata={**self.metadata, **(metadata or {})},
            dtype=torch.float16 if fp16 else None,
        )
        if self.trust.calibration is not None or self.trust.domain is not None:
            trust_mod.save_trust(folder, self.trust)
        if images:  # the int8 encoder's calibration set goes with the weights
            write_calibration(folder, images)
        return folder

    # ------------------------------------------------------------------ the three steps
    @property
    def input_size(self) -> int:
        return int(getattr(self.preprocessing, "crop_size", 224))

    def decode(
        self,
        image: ImageSource,
        name: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ):
        """Safe decode to RGB with the pipeline's JPEG draft rule (:func:`captioner.pipeline.decode`)."""
        limits = pipeline.Limits(max_pixels=max_pixels, max_bytes=max_bytes)
        return pipeline.decode(image, self.preprocessing, name=name, limits=limits)

    def preprocess(
        self,
        image: ImageSource,
        name: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> Tensor:
        """Path, bytes or PIL image -> normalised input tensor (3, H, W): decode, then
        :attr:`preprocessing` (:func:`captioner.pipeline.prepare`). Raises ImageLoadError."""
        limits = pipeline.Limits(max_pixels=max_pixels, max_bytes=max_bytes)
        return pipeline.prepare(image, self.preprocessing, name=name, limits=limits)

    @property
    def fast(self) -> bool:
        """Whether the ONNX Runtime fast path is switched on (it may still be unavailable)."""
        return self._fast.enabled

    @property
    def precision(self) -> str:
        """What the encoder computes in: "int8" when the int8 ONNX Runtime graph runs, else "fp32"."""
        return self._fast.running_precision()

    @property
    def encoder_backend(self) -> str:
        """What runs the encoder: "onnxruntime" (the fast path) or "pytorch" (the reference)."""
        return self._fast.status()["encoder"]

    def prepare_fast(self) -> bool:
        """Build the fast encoder and decoder step now instead of at the first batch; returns
        whether the encoder is fast. Falling back to PyTorch is logged with the reason."""
        return self._fast.prepare(self.encoder, self.decoder, self.input_size, self.device)

    @torch.inference_mode()
    def encode(self, batch: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, F) features; ONNX Runtime when the fast path is on and
        available, else the PyTorch encoder (the reference; both agree within
        ``captioner.runtime.onnx.FEATURE_TOLERANCE``)."""
        fast = self._fast.encoder(self.encoder, self.input_size, self.device)
        if fast is not None and fast.accepts(batch):
            return fast(batch)  # (B, F)
        return self.encoder(batch.to(self.device, non_blocking=True)).float()  # (B, F)

    @torch.inference_mode()
    def generate(
        self,
        features: Tensor,
        beam_size: int = 1,
        max_length: int | None = None,
        length_penalty: float = 0.0,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
        no_repeat_ngram_size: int | None = None,
        labels: int = 0,
        min_word_prob: float | None = None,
    ) -> list[CaptionResult]:
        """Captions for features (B, F): greedy (beam_size 1), beam search, or sampling
        when a temperature is given; never a word three times in a row, and no repeated
        n-gram (``no_repeat_ngram_size``, default :data:`captioner.decoder.DEFAULT_NO_REPEAT_NGRAM`;
        0 switches it off). The caption of an image outside the training data (when the
        checkpoint has domain statistics) ends before the first word the model gives less
        than ``min_word_prob`` (default :data:`captioner.options.DEFAULT_MIN_WORD_PROB`; 0
        switches it off), so a picture it cannot read gets a short caption, not a list of guesses.
        Each result carries its confidence and out-of-domain flag (when the checkpoint has
        the statistics) and, with ``labels=K``, the backbone's top-K ImageNet classes."""
        features = features.to(self.device)
        v = self.vocab
        n = no_repeat_ngram_size
        decoder = cast(CaptionDecoder, self._fast.decoder(self.decoder, self.device) or self.decoder)  # ORT step
        if temperature is not None:
            ids, scores = decoder.sample(features, v.start_id, v.end_id, max_length, temperature, generator, n)
        elif beam_size <= 1:
            ids, scores = decoder.greedy(features, v.start_id, v.end_id, max_length, n)
        else:
            ids, scores = decoder.beam_search(features, v.start_id, v.end_id, beam_size, max_length, length_penalty, n)
        results = [CaptionResult(v.decode(t), float(s), t) for t, s in zip(ids, scores.tolist())]
        floor = DEFAULT_MIN_WORD_PROB if min_word_prob is None else MIN_WORD_PROB.check(min_word_prob)
        domain = self.trust.domain
        distances = domain.distance(features).tolist() if domain is not None and results else None  # (B,)
        known: dict[int, Tensor] = {}  # per-token log-probs the cut has computed already
        if floor > 0 and domain is not None and distances is not None:
            outside = [i for i, d in enumerate(distances) if d > domain.threshold]
            if outside:
                known = self._end_before_unsure_words(features, results, floor, outside)
        trust_mod.annotate(self, features, results, labels, distances, known)
        return results

    def _end_before_unsure_words(
        self, features: Tensor, results: list[CaptionResult], floor: float, rows: list[int]
    ) -> dict[int, Tensor]:
        """Cut the captions of ``rows`` (images outside the training data) before their first
        word of probability < ``floor`` (in place), and score each shorter caption (its words
        and ``<end>``) as the model does. Returns each row's final per-token log-probs (words
        and ``<end>``), which the confidence needs too."""
        v, log_floor = self.vocab, math.log(floor)
        tokens = self.decoder.caption_tokens([results[i].tokens for i in rows], v.start_id, v.end_id)  # (R, T)
        # one teacher-forced pass: each word's log-prob, and <end>'s after every prefix
        logp = self.decoder.teacher_forced_logprobs(features[rows], tokens.to(features.device)).cpu()  # (R, T-1, V)
        picked = logp.gather(2, tokens[:, 1:].unsqueeze(2)).squeeze(2)  # (R, T-1)
        final: dict[int, Tensor] = {}
        for b, i in enumerate(rows):
            r = results[i]
            unsure = (picked[b, : len(r.tokens)] < log_floor).nonzero()  # (K, 1) positions of unsure words
            if not len(unsure):
                final[i] = picked[b, : len(r.tokens) + 1]  # its words and <end>
                continue
            k = int(unsure[0, 0])
            r.tokens = r.tokens[:k]
            r.caption = v.decode(r.tokens)
            r.score = float(picked[b, :k].sum() + logp[b, k, v.end_id])  # its words, then <end>
            final[i] = torch.cat([picked[b, :k], logp[b, k, v.end_id].view(1)])
        return final

    def label_head(self):
        """The backbone's ImageNet classifier on the features (:mod:`captioner.encoders.labels`),
        built on first use; None when this model cannot name classes (said once in the log)."""
        if self._label_head is None:
            from .encoders import build_label_head, has_labels

            name = self.encoder_name
            try:
                if not has_labels(name):
                    raise CaptionerError(f"encoder {name} has no ImageNet classifier")
                self._label_head = build_label_head(name).to(self.device)
            except CaptionerError as e:
                trust_mod.log.info("no labels for this model: %s", e)
                self._label_head = False
        return self._label_head or None

    # ------------------------------------------------------------------ convenience
    def caption_detailed(
        self,
        images: Sequence[ImageSource] | ImageSource,
        beam_size: int = 1,
        max_length: int | None = None,
        batch_size: int = 32,
        length_penalty: float = 0.0,
    ) -> list[CaptionResult]:
        """Caption images given as paths, bytes or PIL images; raises ImageLoadError on the
        first unreadable one (use preprocess/encode/generate to handle errors per image)."""
        if isinstance(images, (str, os.PathLike, bytes, bytearray)) or hasattr(images, "getpixel"):
            images = [images]  # type: ignore[list-item]
        images = list(images)  # type: ignore[arg-type]
        results: list[CaptionResult] = []
        for i in range(0, len(images), max(1, batch_size)):
            chunk = images[i : i + batch_size]
            features = pipeline.encode_batch(self, [self.preprocess(im) for im in chunk])  # (B, F)
            results.extend(self.generate(features, beam_size, max_length, length_penalty))
        return results

    def caption(self, images, beam_size: int = 1, max_length: int | None = None, batch_size: int = 32) -> list[str]:
        """Captions for one image or a list of images (paths, bytes or PIL images)."""
        return [r.caption for r in self.caption_detailed(images, beam_size, max_length, batch_size)]

    def describe(self) -> dict:
        """Facts about the model for /v1/model and `captioner info`."""
        return {
            "model_id": self.model_id,
            "encoder": {
                "name": self.encoder_name,
                "feature_dim": self.decoder.config.feature_dim,
                "preprocess": self.preprocessing.to_dict() if hasattr(self.preprocessing, "to_dict") else {},
            },
            "runtime": self._fast.status(),
            "precision": self._fast.running_precision(),  # what the encoder computes in
            "precision_requested": self._fast.precision,
            "decoder": config_to_dict(self.decoder.config),
            "vocab_size": len(self.vocab),
            "device": str(self.device),
            "metadata": self.metadata,
            "trained_on": self.trust.trained_on or None,  # one sentence, for people
            "trust": self.trust.describe(),
        }
