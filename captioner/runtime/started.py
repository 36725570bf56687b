"""An encoded batch whose decoder start is already computed, and the step that uses it.

The exported encoder graphs give the decoder's start (memory and initial state) beside the
features, from the same call on the encoder's threads. Front ends pass the
:class:`Started` from :meth:`~captioner.runtime.captioner.CaptionerBase.encode_started` to
``generate``, which then searches over a :class:`StartedStep`: the decoder's step with the
start it was given, so the start is never computed twice. Plain features keep working:
``generate`` runs the decoder's own start on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .search import DecoderStep, State


@dataclass(frozen=True)
class Started:
    """Features (B, F) or maps (B, N, C), the decoder's memory (B, ...) for them (opaque: a
    torch tensor on the reference path's device) and its initial state (each (B, L, H))."""

    features: np.ndarray
    memory: Any
    state: State

    def __len__(self) -> int:
        return len(self.features)


class StartedStep:
    """``step`` whose :meth:`start` returns ``started``'s memory and state (a
    :class:`~captioner.runtime.search.DecoderStep`); every word step is ``step``'s own."""

    def __init__(self, step: DecoderStep, started: Started) -> None:
        self.inner = step
        self.started = started
        self.vocab_size = step.vocab_size

    def start(self, features: np.ndarray) -> tuple[Any, State]:
        if len(features) != len(self.started):
            raise ValueError(f"the start was computed for {len(self.started)} images, not {len(features)}")
        return self.started.memory, self.started.state

    def step(
        self, words: np.ndarray, rows: np.ndarray, memory: Any, state: State
    ) -> tuple[np.ndarray, State, np.ndarray | None]:
        return self.inner.step(words, rows, memory, state)
