"""Same answers from both paths: the torch-free runtime against the PyTorch reference.

For one checkpoint and a list of images, caption with the exported graphs
(:class:`captioner.Captioner`, fp32 encoder) and with the PyTorch modules
(:class:`captioner.model.ReferenceCaptioner`) through the same image path and search, and
report how far apart they are: captions whose tokens differ, and the largest differences of
scores, confidences, per-word log-probabilities and attention weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..options import CaptionOptions
from ..runtime.captioner import Captioner
from ..runtime.results import CaptionResult
from .reference import ReferenceCaptioner


@dataclass
class Agreement:
    """How far the runtime's results are from the reference's, over images and settings."""

    captions: int = 0
    token_mismatches: list[str] = field(default_factory=list)
    max_score: float = 0.0
    max_confidence: float = 0.0
    max_logprob: float = 0.0
    max_attention: float = 0.0

    def add(self, name: str, a: CaptionResult, b: CaptionResult) -> None:
        self.captions += 1
        if a.tokens != b.tokens:
            self.token_mismatches.append(f"{name}: {a.caption!r} vs {b.caption!r}")
            return
        self.max_score = max(self.max_score, abs(a.score - b.score))
        if a.confidence is not None and b.confidence is not None:
            self.max_confidence = max(self.max_confidence, abs(a.confidence - b.confidence))
        self.max_logprob = max(self.max_logprob, float(np.abs(np.subtract(a.logprobs, b.logprobs)).max()))
        if a.attention is not None and b.attention is not None:
            self.max_attention = max(self.max_attention, float(np.abs(a.attention - b.attention).max()))

    def worst(self) -> float:
        return max(self.max_score, self.max_confidence, self.max_logprob, self.max_attention)


def compare(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    beam_sizes: Sequence[int] = (1, 3),
    batch_size: int = 32,
) -> Agreement:
    """Both paths over ``images`` at each beam size (the reference encodes and searches on
    PyTorch, the runtime on ONNX Runtime in fp32)."""
    fast = Captioner.load(checkpoint, precision="fp32")
    reference = ReferenceCaptioner.load(checkpoint, device="cpu")
    out = Agreement()
    for lo in range(0, len(images), batch_size):
        chunk = [str(p) for p in images[lo : lo + batch_size]]
        x = np.stack([fast.preprocess(p) for p in chunk])  # (B, 3, S, S): one image path for both
        fa, fb = fast.encode(x), reference.encode(x)
        for k in beam_sizes:
            opts = CaptionOptions(beam_size=k)
            ra = fast.generate(fa, opts, attention=fast.attends)
            rb = reference.generate(fb, opts, attention=reference.attends)
            for name, a, b in zip(chunk, ra, rb):
                out.add(f"{Path(name).name} beam {k}", a, b)
    return out
