"""The recurrent caption decoder and its generation algorithms.

How the image enters
--------------------
The pooled CNN feature ``f`` (B, F) is normalised (LayerNorm) and projected by a learned
matrix ``W_ih`` (``img_proj``: F -> P). At *every* time step the projected feature is
**concatenated** with the embedding of the previous word, and that (E + P)-vector is the
recurrent cell's input::

    x_t = [ embed(w_{t-1}) ; W_ih f ]          # (B, E + P)
    h_t = cell(x_t, h_{t-1})                   # LSTM (default), GRU or tanh RNN, L layers
    p(w_t | w_<t, f) = softmax(W_out h_t)

Optionally (``init_state=True``, the default) the initial hidden (and, for the LSTM,
cell) state of every layer is also computed from the feature: ``h_0 = tanh(W_h f)``.

Training is teacher forcing: the input at step t is the ground-truth word t-1. Padding
(id 0) never contributes to the loss.

Generation (greedy, beam search, sampling, the repeat rules) is not here: it is written
once, on numpy, in :mod:`captioner.runtime.search`, over the step this module's decoders
contribute (:class:`captioner.model.steps.StepGraph`, which the exported graph runs too).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CELLS = ("lstm", "gru", "rnn")
State = Tensor | tuple[Tensor, Tensor]


@dataclass
class DecoderConfig:
    """Every hyper-parameter of the decoder. Stored in the checkpoint's config.json."""

    vocab_size: int
    feature_dim: int
    embed_dim: int = 256
    hidden_dim: int = 512
    img_proj_dim: int = 256  # P: size of W_ih f, concatenated to the word embedding
    cell: str = "lstm"  # lstm | gru | rnn (tanh)
    num_layers: int = 1
    dropout: float = 0.1  # on embeddings, between layers and before the output layer
    init_state: bool = True  # initial hidden/cell state computed from the feature
    max_length: int = 30  # default maximum number of generated words

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; choose one of {', '.join(CELLS)}")
        for name in (
            "vocab_size",
            "feature_dim",
            "embed_dim",
            "hidden_dim",
            "img_proj_dim",
            "num_layers",
            "max_length",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DecoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown decoder settings: {sorted(unknown)}")
        return cls(**data)


class CaptionDecoder(nn.Module):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=0)
        self.feat_norm = nn.LayerNorm(c.feature_dim)
        self.img_proj = nn.Linear(c.feature_dim, c.img_proj_dim)  # W_ih for the image
        self._add_cell_layers(c)

    def _add_cell_layers(self, c: DecoderConfig, init_dim: int | None = None) -> None:
        """The recurrent cell on [word embedding ; W_ih input] (E + P -> H), the initial-state
        projections from the feature (``init_dim`` wide, the feature's size by default),
        dropout and the output layer (H -> V). Shared by the attention decoder, so both name
        these weights alike in a checkpoint."""
        rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[c.cell]
        kwargs = {"nonlinearity": "tanh"} if c.cell == "rnn" else {}
        self.rnn = rnn_cls(
            c.embed_dim + c.img_proj_dim,
            c.hidden_dim,
            num_layers=c.num_layers,
            batch_first=True,
            dropout=c.dropout if c.num_layers > 1 else 0.0,
            **kwargs,
        )
        if c.init_state:
            width = init_dim or c.feature_dim
            self.init_h = nn.Linear(width, c.num_layers * c.hidden_dim)
            if c.cell == "lstm":
                self.init_c = nn.Linear(width, c.num_layers * c.hidden_dim)
        self.drop = nn.Dropout(c.dropout)
        self.out = nn.Linear(c.hidden_dim, c.vocab_size)

    # ------------------------------------------------------------------ building blocks
    def _prepare(self, features: Tensor) -> tuple[Tensor, State | None]:
        """Projected image input and initial state from features (B, F)."""
        c = self.config
        if features.dim() != 2 or features.size(1) != c.feature_dim:
            raise ValueError(f"features must have shape (B, {c.feature_dim}), got {tuple(features.shape)}")
        f = self.feat_norm(features.float())  # (B, F)
        img = self.drop(self.img_proj(f))  # (B, P)
        if not c.init_state:
            return img, None
        B = f.size(0)
        h = torch.tanh(self.init_h(f)).view(B, c.num_layers, c.hidden_dim).transpose(0, 1).contiguous()  # (L, B, H)
        if c.cell == "lstm":
            cs = torch.tanh(self.init_c(f)).view(B, c.num_layers, c.hidden_dim).transpose(0, 1).contiguous()
            return img, (h, cs)
        return img, h

    def forward(self, features: Tensor, tokens: Tensor) -> Tensor:
        """Teacher-forced logits.

        features (B, F); tokens (B, T) = ``<start> w1 .. wn <end> <pad>..``.
        Returns logits (B, T-1, V) predicting tokens[:, 1:].
        """
        img, state = self._prepare(features)  # (B, P)
        inp = tokens[:, :-1]  # (B, T-1)
        emb = self.drop(self.embed(inp))  # (B, T-1, E)
        x = torch.cat([emb, img.unsqueeze(1).expand(-1, inp.size(1), -1)], dim=2)  # (B, T-1, E+P)
        out, _ = self.rnn(x, state)  # (B, T-1, H)
        return self.out(self.drop(out))  # (B, T-1, V)

    def loss(
        self,
        features: Tensor,
        tokens: Tensor,
        pad_id: int = 0,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ) -> Tensor:
        """Teacher-forced cross-entropy over the non-padding target tokens: their mean, or
        with ``reduction="sum"`` their sum (training divides it by the global token count)."""
        logits = self(features, tokens)  # (B, T-1, V)
        target = tokens[:, 1:]  # (B, T-1)
        return F.cross_entropy(
            logits.flatten(0, 1).float(),  # (B*(T-1), V), float32 under autocast too
            target.flatten(),
            ignore_index=pad_id,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )

    @staticmethod
    def caption_tokens(ids: list[list[int]], start_id: int, end_id: int) -> Tensor:
        """Captions as returned by generation (no specials) -> (B, T) rows of
        ``<start>, words..., <end>``, padded with 0: the teacher-forcing input."""
        T = max((len(i) for i in ids), default=0) + 2
        tokens = torch.zeros(len(ids), T, dtype=torch.long)  # (B, T), padded with 0
        for b, row in enumerate(ids):
            tokens[b, : len(row) + 2] = torch.tensor([start_id, *row, end_id], dtype=torch.long)
        return tokens

    def step(self, words: Tensor, img: Tensor, state: State | None) -> tuple[Tensor, State]:
        """One generation step: previous words (N,) -> log-probs (N, V), new state."""
        x = torch.cat([self.embed(words), img], dim=1).unsqueeze(1)  # (N, 1, E+P)
        out, state = self.rnn(x, state)  # (N, 1, H)
        return F.log_softmax(self.out(out.squeeze(1)).float(), dim=-1), state  # (N, V)
