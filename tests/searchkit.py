"""The old decoder-method calling convention over the one search: for tests of search rules.

``greedy(decoder, features, ...)`` etc. run :mod:`captioner.runtime.search` over the PyTorch
decoder's step (:class:`captioner.model.steps.TorchStep`) and return (word ids, scores (B,)),
so a test reads as before while exercising the search every runtime uses.
"""

from __future__ import annotations

import numpy as np
import torch

from captioner.model.steps import TorchStep
from captioner.runtime import search


def _max_len(decoder, max_length: int | None) -> int:
    n = decoder.config.max_length if max_length is None else int(max_length)
    if n < 1:
        raise ValueError("max_length must be >= 1")
    return n


def _np(features) -> np.ndarray:
    return features.detach().float().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)


def greedy(decoder, features, start_id, end_id, max_length=None, no_repeat_ngram_size=None):
    hyps = search.sequential(
        TorchStep(decoder), _np(features), start_id, end_id, _max_len(decoder, max_length), no_repeat_ngram_size
    )
    return [h.tokens for h in hyps], torch.tensor([h.score for h in hyps])


def sample(decoder, features, start_id, end_id, max_length=None, temperature=1.0, seed=0, no_repeat_ngram_size=None):
    rng = np.random.default_rng(seed)
    hyps = search.sequential(
        TorchStep(decoder),
        _np(features),
        start_id,
        end_id,
        _max_len(decoder, max_length),
        no_repeat_ngram_size,
        temperature,
        rng,
    )
    return [h.tokens for h in hyps], torch.tensor([h.score for h in hyps])


def beam(
    decoder, features, start_id, end_id, beam_size=3, max_length=None, length_penalty=0.0, no_repeat_ngram_size=None
):
    nbest = search.beam_search(
        TorchStep(decoder),
        _np(features),
        start_id,
        end_id,
        _max_len(decoder, max_length),
        beam_size,
        length_penalty,
        no_repeat_ngram_size,
    )
    return [h[0].tokens for h in nbest], torch.tensor([h[0].score for h in nbest])


def token_logprobs(decoder, features, ids, start_id, end_id) -> list[torch.Tensor]:
    """Teacher-forced log-prob of every word of each caption and of its <end>."""
    tokens = decoder.caption_tokens(ids, start_id, end_id)  # (B, T)
    with torch.no_grad():
        logp = torch.log_softmax(decoder(features, tokens).float(), dim=-1)  # (B, T-1, V)
    picked = logp.gather(2, tokens[:, 1:].unsqueeze(2)).squeeze(2)  # (B, T-1)
    return [picked[b, : len(row) + 1] for b, row in enumerate(ids)]
