"""Writing checkpoints and reading their weights as tensors (the torch side).

The folder's layout and file names are :mod:`captioner.checkpoint`'s, which also reads the
JSON parts without PyTorch. Saving writes a temporary sibling folder and renames it into
place, so an interrupted save leaves either the old checkpoint or the new one, never a
mixture (the temporary folders a killed save leaves behind are removed by the next save to
the same place). Loading reads only safetensors and JSON and checks that the pieces agree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..attention import config_from_dict, config_to_dict
from ..checkpoint import (
    CONFIG,
    ENCODER_WEIGHTS,
    FORMAT,
    METADATA,
    VOCAB,
    WEIGHTS,
    read_checkpoint_info,
    read_metadata,
    update_metadata,
)
from ..decoder import DecoderConfig
from ..errors import CheckpointError
from ..fsio import fsync_dir, replace_dir
from ..vocab import Vocabulary


@dataclass
class Checkpoint:
    decoder_state: dict[str, torch.Tensor]
    decoder_config: DecoderConfig
    encoder_name: str
    preprocess: dict
    vocab: Vocabulary
    metadata: dict = field(default_factory=dict)
    encoder_state: dict[str, torch.Tensor] | None = None
    path: Path | None = None


def _make_readable(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder; give the checkpoint the usual permissions
    (as the umask allows) so an installed copy is readable by every user."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for p in folder.iterdir():
        os.chmod(p, 0o666 & ~umask)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_siblings(target: Path) -> None:
    """Remove the temporary folders (``.NAME.tmp-PID-*``, ``.NAME.old-PID``) that saves of
    ``target`` killed by a crash left behind: those whose process no longer exists."""
    if os.name != "posix":  # os.kill(pid, 0) only probes on POSIX
        return
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:tmp|old)-(\d+)(?:-.*)?")
    for sibling in target.parent.glob(f".{target.name}.*"):
        m = pattern.fullmatch(sibling.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(sibling, ignore_errors=True)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    decoder: torch.nn.Module | dict[str, torch.Tensor],
    decoder_config: DecoderConfig,
    encoder_name: str,
    preprocess: dict,
    vocab: Vocabulary,
    metadata: dict | None = None,
    encoder_state: dict[str, torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
    extra_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write a checkpoint folder atomically; returns its path.

    ``dtype=torch.float16`` stores floating-point weights in half precision (they are
    converted back to float32 on load). ``extra_files(folder)`` may add files of its own
    (training's resume state) to the folder before it is put in place, so they appear
    together with the checkpoint or not at all.
    """
    target = Path(directory)
    if decoder_config.vocab_size != len(vocab):
        raise CheckpointError(
            f"decoder vocab_size {decoder_config.vocab_size} does not match the vocabulary ({len(vocab)} tokens)"
        )
    state = decoder.state_dict() if isinstance(decoder, torch.nn.Module) else decoder

    def prep(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in sd.items():
            v = v.detach().cpu()
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
            out[k] = v.contiguous()
        return out

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        save_file(prep(state), str(tmp / WEIGHTS), metadata={"format": FORMAT})
        if encoder_state is not None:
            save_file(prep(encoder_state), str(tmp / ENCODER_WEIGHTS), metadata={"format": FORMAT})
        _write_json(
            tmp / CONFIG,
            {
                "format": FORMAT,
                "encoder": {"name": encoder_name, "preprocess": preprocess, "fine_tuned": encoder_state is not None},
                "decoder": config_to_dict(decoder_config),  # its kind (pooled | attention) and settings
            },
        )
        _write_json(tmp / VOCAB, vocab.to_dict())
        _write_json(tmp / METADATA, metadata or {})
        if extra_files is not None:
            extra_files(tmp)
        for p in tmp.iterdir():  # make sure every byte is on disk before the rename
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        _make_readable(tmp)
        fsync_dir(tmp)
        replace_dir(tmp, target, aside=target.with_name(f".{target.name}.old-{os.getpid()}"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_stale_siblings(target)
    return target


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent}: missing {path.name}; is this a checkpoint folder?") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{path}: not a valid safetensors file ({e}). Checkpoints never load pickles; "
            "re-export the weights with safetensors."
        ) from None


def load_checkpoint(directory: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint folder with its weights as tensors (no unpickling)."""
    info = read_checkpoint_info(directory)
    path, vocab = info.path, info.vocab
    try:
        decoder_config = config_from_dict(info.decoder)  # no "kind": a pooled decoder
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG}: invalid configuration ({e})") from None
    metadata = info.metadata
    encoder_name, preprocess = info.encoder_name, info.preprocess
    state = {k: v.float() if v.is_floating_point() else v for k, v in _read_tensors(path / WEIGHTS).items()}
    emb = state.get("embed.weight")
    out = state.get("out.weight")
    for name, t in (("embed.weight", emb), ("out.weight", out)):
        if t is None:
            raise CheckpointError(f"{path / WEIGHTS}: missing tensor {name!r}; not a caption decoder")
        if t.shape[0] != len(vocab):
            raise CheckpointError(
                f"{path}: {name} has {t.shape[0]} rows but the vocabulary has {len(vocab)} tokens; "
                "vocab.json does not belong to these weights"
            )
    encoder_state = None
    if (path / ENCODER_WEIGHTS).exists():
        encoder_state = {
            k: v.float() if v.is_floating_point() else v for k, v in _read_tensors(path / ENCODER_WEIGHTS).items()
        }
    return Checkpoint(
        decoder_state=state,
        decoder_config=decoder_config,
        encoder_name=encoder_name,
        preprocess=preprocess,
        vocab=vocab,
        metadata=metadata if isinstance(metadata, dict) else {},
        encoder_state=encoder_state,
        path=path,
    )


__all__ = [
    "CONFIG",
    "ENCODER_WEIGHTS",
    "FORMAT",
    "METADATA",
    "VOCAB",
    "WEIGHTS",
    "Checkpoint",
    "load_checkpoint",
    "read_checkpoint_info",
    "read_metadata",
    "save_checkpoint",
    "update_metadata",
]
