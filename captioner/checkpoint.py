"""The checkpoint format: one folder, nothing pickled. The only module that knows its file names.

    CKPT/
      model.safetensors     decoder weights (fp32 or fp16)
      encoder.safetensors   only when the CNN was fine-tuned
      config.json           {"format": ..., "encoder": {"name", "preprocess"}, "decoder": {"kind", ...}}
      vocab.json            the vocabulary (tokens in id order)
      metadata.json         training data, metrics, versions, free-form
                            ("precision": int8 or fp32, the encoder's default; "calibration")
      calibration.safetensors  optional: encoded training images calibrating the int8 encoder
      trust.json, trust.safetensors  optional: confidence calibration and domain statistics
      graphs/               the exported ONNX graphs and their manifest (captioner export)

This module reads the JSON parts without PyTorch (the runtime needs nothing more);
:mod:`captioner.model.checkpoint` writes checkpoints and reads the weights as tensors.
Saving writes a temporary sibling folder and renames it into place, so an interrupted save
leaves either the old checkpoint or the new one, never a mixture.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .fsio import atomic_write_text
from .vocab import Vocabulary

FORMAT = "captioner-checkpoint/1"
WEIGHTS = "model.safetensors"
ENCODER_WEIGHTS = "encoder.safetensors"
CONFIG = "config.json"
VOCAB = "vocab.json"
METADATA = "metadata.json"
CALIBRATION = "calibration.safetensors"
TRUST_CONFIG = "trust.json"
TRUST_WEIGHTS = "trust.safetensors"
GRAPHS = "graphs"


@dataclass
class CheckpointInfo:
    """Everything in a checkpoint but its weights: what the runtime reads."""

    path: Path
    encoder_name: str
    preprocess: dict
    decoder: dict  # the decoder's kind and settings, as stored
    vocab: Vocabulary
    metadata: dict = field(default_factory=dict)
    fine_tuned: bool = False  # the CNN's weights are the checkpoint's own (encoder.safetensors)

    @property
    def decoder_kind(self) -> str:
        return str(self.decoder.get("kind", "pooled"))


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent}: missing {path.name} ({what}); is this a checkpoint folder?") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def read_checkpoint_info(directory: str | os.PathLike) -> CheckpointInfo:
    """Read and validate the JSON parts of a checkpoint folder."""
    path = Path(directory)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint folder not found")
    if not path.is_dir():
        raise CheckpointError(f"{path}: a checkpoint is a folder (with {WEIGHTS}, {CONFIG}, {VOCAB}, {METADATA})")
    config = read_json(path / CONFIG, "model configuration")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(
            f"{path / CONFIG}: unsupported checkpoint format {config.get('format') if isinstance(config, dict) else None!r}; expected {FORMAT!r}"
        )
    try:
        decoder = dict(config["decoder"])
        encoder_name = str(config["encoder"]["name"])
        preprocess = dict(config["encoder"].get("preprocess") or {})
        vocab_size = int(decoder["vocab_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG}: invalid configuration ({e})") from None
    try:
        vocab = Vocabulary.from_dict(read_json(path / VOCAB, "vocabulary"))
    except ValueError as e:
        raise CheckpointError(f"{path / VOCAB}: {e}") from None
    if len(vocab) != vocab_size:
        raise CheckpointError(
            f"{path}: the vocabulary has {len(vocab)} tokens but the decoder was built for "
            f"{vocab_size}; vocab.json does not belong to these weights"
        )
    metadata = read_json(path / METADATA, "metadata") if (path / METADATA).exists() else {}
    return CheckpointInfo(
        path,
        encoder_name,
        preprocess,
        decoder,
        vocab,
        metadata if isinstance(metadata, dict) else {},
        fine_tuned=(path / ENCODER_WEIGHTS).exists(),
    )


def read_metadata(directory: str | os.PathLike) -> dict:
    """The ``metadata.json`` of a checkpoint folder ({} when it has none)."""
    path = Path(directory) / METADATA
    if not path.exists():
        return {}
    data = read_json(path, "metadata")
    return data if isinstance(data, dict) else {}


def update_metadata(directory: str | os.PathLike, changes: dict) -> dict:
    """Merge ``changes`` into a checkpoint's ``metadata.json`` (replaced atomically); returns it."""
    data = {**read_metadata(directory), **changes}
    atomic_write_text(Path(directory) / METADATA, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return data
