"""A PyTorch decoder as a step object for :mod:`captioner.runtime.search`.

:class:`StartGraph` and :class:`StepGraph` are the two computations a decoder contributes to
generation, written once as modules: :class:`TorchStep` runs them eagerly (the reference
path, training's validation, CUDA), and :mod:`captioner.model.export` exports exactly these
modules to the ONNX graphs the torch-free runtime runs. The recurrent state travels batch
first, (N, L, H), so the search reorders hypotheses by indexing rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import AttentionDecoder
from ..decoder import CaptionDecoder


def _batch_first(state: Any) -> tuple[Tensor, ...]:
    """(L, B, H) state (or the LSTM's (h, c)) -> batch-first (B, L, H) tensors."""
    parts = state if isinstance(state, tuple) else (state,)
    return tuple(s.transpose(0, 1).contiguous() for s in parts)


def _layer_first(state: tuple[Tensor, ...], lstm: bool) -> Any:
    parts = tuple(s.transpose(0, 1).contiguous() for s in state)  # (L, N, H) each
    return parts if lstm else parts[0]


class StartGraph(nn.Module):
    """features (B, F) or maps (B, N, C) -> memory (B, P) or (B, N, D + A), then the initial
    state (B, L, H) (and the LSTM's cell state): once per image."""

    def __init__(self, decoder: CaptionDecoder) -> None:
        super().__init__()
        self.decoder = decoder
        self.train(decoder.training)  # a wrapper's mode is its decoder's (export restores it)

    def forward(self, features: Tensor) -> tuple[Tensor, ...]:
        d, c = self.decoder, self.decoder.config
        memory, state = d._prepare(features)
        if state is None:  # init_state=False: the state starts at zero
            h = memory.new_zeros(features.size(0), c.num_layers, c.hidden_dim)  # (B, L, H)
            return (memory, h, torch.zeros_like(h)) if c.cell == "lstm" else (memory, h)
        return (memory, *_batch_first(state))


class StepGraph(nn.Module):
    """(words (N,), rows (N,), memory (B, ...), state (N, L, H)...) -> (log-probs (N, V),
    new state..., attention (N, L) for an attention decoder). ``rows`` picks each
    hypothesis's image from the per-image memory, so beams never copy it."""

    def __init__(self, decoder: CaptionDecoder) -> None:
        super().__init__()
        self.decoder = decoder
        self.lstm = decoder.config.cell == "lstm"
        self.attends = isinstance(decoder, AttentionDecoder)
        self.train(decoder.training)

    def forward(self, words: Tensor, rows: Tensor, memory: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        d = self.decoder
        mem = memory.index_select(0, rows)  # (N, ...)
        st = _layer_first(state, self.lstm)  # (L, N, H)
        if self.attends:
            out, st, alpha = d._cell(words, mem, st)  # type: ignore[operator]  # (N, H), (N, L)
            logp = F.log_softmax(d.out(out).float(), dim=-1)  # (N, V)
            return (logp, *_batch_first(st), alpha.float())
        logp, st = d.step(words, mem, st)  # (N, V)
        return (logp, *_batch_first(st))


class TorchStep:
    """A PyTorch decoder as a :class:`captioner.runtime.search.DecoderStep` (eval mode, no
    gradients, on the decoder's device; numpy in and out)."""

    def __init__(self, decoder: CaptionDecoder) -> None:
        self.start_graph, self.step_graph = StartGraph(decoder), StepGraph(decoder)
        self.vocab_size = decoder.config.vocab_size
        self.device = next(decoder.parameters()).device

    @torch.no_grad()
    def start(self, features: np.ndarray) -> tuple[Tensor, tuple[np.ndarray, ...]]:
        memory, *state = self.start_graph(torch.from_numpy(np.asarray(features)).to(self.device))
        return memory, tuple(s.float().cpu().numpy() for s in state)  # memory stays on the device

    @torch.no_grad()
    def step(
        self, words: np.ndarray, rows: np.ndarray, memory: Tensor, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...], np.ndarray | None]:
        dev = self.device
        outs = self.step_graph(
            torch.from_numpy(words).to(dev),
            torch.from_numpy(rows).to(dev),
            memory,
            *(torch.from_numpy(np.ascontiguousarray(s)).to(dev) for s in state),
        )
        n = len(state)
        arrays = [o.float().cpu().numpy() for o in outs]
        alpha = arrays[1 + n] if self.step_graph.attends else None
        return arrays[0], tuple(arrays[1 : 1 + n]), alpha
