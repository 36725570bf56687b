"""``ReferenceCaptioner``: the PyTorch reference path, over the same image path and search.

The torch-free :class:`captioner.Captioner` serves a checkpoint from its exported graphs;
this class runs the same checkpoint on its PyTorch modules (any device, CUDA included, and
the model under training: validation captions through it). Both share everything but the
encoder and the decoder step (:class:`captioner.runtime.captioner.CaptionerBase`), so the
two paths give the same tokens, and the exported graphs are checked against this one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..attention import build_decoder, config_to_dict, decoder_kind
from ..checkpoint import CONFIG, WEIGHTS
from ..decoder import CaptionDecoder
from ..errors import CaptionerError, CheckpointError
from ..runtime.captioner import CaptionerBase, default_weights_path
from ..runtime.preprocess import Preprocess
from ..trust import TrustStats, load_trust
from ..vocab import Vocabulary
from . import checkpoint as ckpt_mod
from .steps import TorchStep

__all__ = ["ReferenceCaptioner", "pick_device"]


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


class ReferenceCaptioner(CaptionerBase):
    """Encoder + decoder modules + vocabulary, in eval mode on one device. It takes the
    runtime's calls, ``encode_started`` included: the encoder, then the decoder's start in
    PyTorch (its memory stays on the device), which ``generate`` then does not repeat."""

    backend = "pytorch"

    def __init__(
        self,
        encoder: torch.nn.Module,
        decoder: CaptionDecoder,
        vocab: Vocabulary,
        *,
        preprocess: Preprocess | None = None,
        metadata: dict | None = None,
        device: str | torch.device | None = None,
        model_id: str | None = None,
        path: Path | None = None,
        trust: TrustStats | None = None,
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
        spec = getattr(encoder, "spec", None)  # the encoder's name and preprocessing (captioner.encoders)
        if preprocess is None:
            if spec is None:
                raise CheckpointError("the encoder has no spec: pass its preprocessing as preprocess=")
            preprocess = spec.preprocess
        super().__init__(
            vocab=vocab,
            preprocessing=preprocess,
            decoder=config_to_dict(decoder.config),
            encoder_name=str(getattr(spec, "name", type(encoder).__name__)),
            metadata=metadata,
            model_id=model_id,
            path=path,
            trust=trust,
        )
        self.device = pick_device(device)
        self.encoder = encoder.to(self.device).eval()
        self.decoder: CaptionDecoder = decoder.to(self.device).eval()
        self._label_head: object = None  # built on the first request for labels; False: unavailable

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls, path: str | os.PathLike | None = None, device: str | torch.device | None = None
    ) -> ReferenceCaptioner:
        """Load a checkpoint folder's PyTorch modules; no path loads the shipped default weights."""
        from ..encoders import build_encoder, get_spec

        folder = Path(path) if path is not None else default_weights_path()
        if path is None and not (folder / CONFIG).exists():
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
        digest = hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()[:12]
        model = cls(
            encoder,
            decoder,
            ck.vocab,
            preprocess=preprocess,
            metadata=ck.metadata,
            device=device,
            model_id=ck.metadata.get("model_id") or f"{folder.name}-{digest}",
            path=folder,
            trust=load_trust(folder),
        )
        if ck.encoder_state is not None:
            model._label_head = False  # a fine-tuned CNN no longer feeds its ImageNet classifier
        return model

    def save(self, directory: str | os.PathLike, metadata: dict | None = None, fp16: bool = False) -> Path:
        """Write this model as a checkpoint folder (decoder weights only: the encoder is frozen
        unless it was fine-tuned, in which case pass through training's own save), with its
        trust statistics and int8 calibration set; export its graphs with
        :func:`captioner.model.export.export_graphs`."""
        from ..trust import save_trust
        from .quantize import read_calibration, write_calibration

        # read before saving: the new folder may replace the one loaded from
        images = read_calibration(self.path) if self.path is not None else None
        folder = ckpt_mod.save_checkpoint(
            directory,
            decoder=self.decoder,
            decoder_config=self.decoder.config,
            encoder_name=self.encoder_name,
            preprocess=self.preprocessing.to_dict(),
            vocab=self.vocab,
            metadata={**self.metadata, **(metadata or {})},
            dtype=torch.float16 if fp16 else None,
        )
        if self.trust.calibration is not None or self.trust.domain is not None:
            save_trust(folder, self.trust)
        if images:  # the int8 encoder's calibration set goes with the weights
            write_calibration(folder, images)
        return folder

    # ------------------------------------------------------------------ encoder and step
    @torch.inference_mode()
    def encode(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) -> (B, F) features (or (B, N, C) maps) from the PyTorch encoder."""
        x = torch.as_tensor(np.asarray(batch) if not isinstance(batch, torch.Tensor) else batch)
        return self.encoder(x.to(self.device, non_blocking=True)).float().cpu().numpy()

    def decoder_step(self) -> TorchStep:
        return TorchStep(self.decoder)

    def _label_logits(self, pooled_features: np.ndarray) -> tuple[np.ndarray, Sequence[str]] | None:
        head = self.label_head()
        if head is None:
            return None
        with torch.inference_mode():
            logits = head(torch.from_numpy(pooled_features).to(self.device)).float().cpu().numpy()  # (B, 1000)
        return logits, head.classes

    def label_head(self):
        """The backbone's ImageNet classifier on the features (:mod:`captioner.encoders.labels`),
        built on first use; None when this model cannot name classes (said once in the log)."""
        if self._label_head is None:
            from ..encoders import build_label_head, has_labels
            from ..runtime.captioner import log

            name = self.encoder_name
            try:
                if not has_labels(name):
                    raise CaptionerError(f"encoder {name} has no ImageNet classifier")
                self._label_head = build_label_head(name).to(self.device)
            except CaptionerError as e:
                log.info("no labels for this model: %s", e)
                self._label_head = False
        return self._label_head or None

    def runtime_status(self) -> dict:
        return {"encoder": "pytorch", "decoder": "pytorch", "reasons": {}}
