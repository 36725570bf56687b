"""The soft-attention decoder ("Show, Attend and Tell", Xu et al. 2015) and the decoder kinds.

How the image enters
--------------------
The encoder's map before pooling, ``a`` (B, N, C) with N = h * w locations (a
:class:`captioner.encoders.SpatialEncoder`; EfficientNet-Lite0 at 224 px: 49 x 1280), is
normalised per location (LayerNorm). With ``annotation_dim`` D > 0 each location is then
projected to its annotation vector ``a_i = relu(W_p LN(f_i))`` (B, N, D), learned once per
image; with D = 0 (the first attention checkpoints) the annotations are the normalised CNN
channels themselves (C wide). The projection is what lets the mean annotation count: the
mean of raw channels mixes a kind's strength with its number, the mean of per-location
detectors (ReLU units) is proportional to how many locations show the kind. At every step
the previous hidden state of the top layer chooses where to look::

    e_ti     = v^T tanh(W_a a_i + W_ha h_{t-1})      # (B, N)  f_att, an MLP
    alpha_t  = softmax_i(e_ti)                        # (B, N)  a distribution over locations
    z_t      = sum_i alpha_ti a_i                     # (B, D)  the context
    beta_t   = sigmoid(W_b h_{t-1})                   # (B, D)  the gate (one per channel)
    x_t      = [ embed(w_{t-1}) ; W_ih (beta_t * z_t) ]   # (B, E + P)
    h_t      = cell(x_t, h_{t-1})                     # LSTM (default), GRU or tanh RNN, L layers
    p(w_t | w_<t, a) = softmax(W_out h_t)

The initial state of every layer comes from the mean annotation vector,
``h_0 = tanh(W_h mean_i a_i)`` (and ``c_0`` likewise for the LSTM). The loss adds the doubly
stochastic regulariser ``lambda * sum_i (1 - sum_t alpha_ti)^2`` per caption (over its real
steps, ``<end>`` included) to the summed token cross-entropy, so every location is looked at
about as much over the caption.

The decoder has the step interface of :class:`captioner.decoder.CaptionDecoder`
(``_prepare(features) -> (memory, state)`` and ``step(words, memory, state) -> (log-probs,
state)``, the memory indexed along its first axis), so greedy decoding, batched beam search,
sampling, the no-repeat rules and ``token_logprobs`` are that module's code, unchanged.
:meth:`AttentionDecoder.attention` gives the weights of every step of given captions (the
maps of where the model looked for each word).

Decoder kinds
-------------
``pooled`` (:class:`~captioner.decoder.CaptionDecoder`, the classic one, on (B, F) pooled
features) and ``attention`` (this module, on (B, N, F) maps). A checkpoint's ``config.json``
names the kind under ``decoder.kind`` (:func:`config_to_dict`); one without it is pooled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .decoder import CaptionDecoder, DecoderConfig, State

DECODER_KINDS = ("pooled", "attention")


@dataclass
class AttentionConfig(DecoderConfig):
    """The pooled decoder's settings plus the attention's. ``img_proj_dim`` is P, the size of
    ``W_ih (beta_t * z_t)``; ``feature_dim`` is C, the channels of one location."""

    attention_dim: int = 256  # A: hidden size of f_att
    doubly_stochastic: float = 0.02  # lambda of the regulariser; 0 switches it off
    annotation_dim: int = 0  # D: size of the learned annotation a_i; 0: the C channels as they are
    sentinel: bool = False  # a learned "nowhere" logit from h: mass off the grid, so the context's size can count
    sharpen: float = 0.0  # weight of each step's attention entropy in the loss (0: off); in [0, 10]

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.attention_dim) < 1:
            raise ValueError("attention_dim must be >= 1")
        if not float(self.doubly_stochastic) >= 0.0:
            raise ValueError("doubly_stochastic must be >= 0")
        if int(self.annotation_dim) < 0:
            raise ValueError("annotation_dim must be >= 0")
        if not 0.0 <= float(self.sharpen) <= 10.0:
            raise ValueError("sharpen must be in [0, 10]")

    @property
    def annotation_width(self) -> int:
        """D, the width of one annotation vector (the context's size): annotation_dim, or the
        feature map's channels C when there is no projection."""
        return int(self.annotation_dim) or self.feature_dim


def decoder_kind(config: DecoderConfig) -> str:
    """``"attention"`` or ``"pooled"``: which decoder a configuration builds."""
    return "attention" if isinstance(config, AttentionConfig) else "pooled"


def config_to_dict(config: DecoderConfig) -> dict:
    """The configuration as stored in a checkpoint: its kind, then its fields."""
    return {"kind": decoder_kind(config), **config.to_dict()}


def config_from_dict(data: dict) -> DecoderConfig:
    """Inverse of :func:`config_to_dict`; a dict without ``kind`` is a pooled decoder's."""
    settings = dict(data)
    kind = settings.pop("kind", "pooled")
    if kind not in DECODER_KINDS:
        raise ValueError(f"unknown decoder kind {kind!r}; choose one of {', '.join(DECODER_KINDS)}")
    return AttentionConfig.from_dict(settings) if kind == "attention" else DecoderConfig.from_dict(settings)


def build_decoder(config: DecoderConfig) -> CaptionDecoder:
    """The decoder a configuration describes (randomly initialised)."""
    return AttentionDecoder(config) if isinstance(config, AttentionConfig) else CaptionDecoder(config)


def _repeated_rows(features: Tensor) -> tuple[Tensor, Tensor] | None:
    """When some of the B maps (B, N, C) are identical: (first row of each distinct map (U,),
    the distinct map of each row (B,)); else None. Rows are grouped by about 1,024 of their
    values and the grouping is then checked on all of them."""
    flat = features.flatten(1)  # (B, N * C)
    if flat.size(0) < 2:
        return None
    sample = flat[:, :: max(1, flat.size(1) // 1024)].float()  # (B, <= 2048): exact copies of values
    keys, inverse = torch.unique(sample, dim=0, return_inverse=True)  # (U, .), (B,)
    if keys.size(0) == flat.size(0):
        return None
    first = torch.zeros(keys.size(0), dtype=torch.long, device=flat.device)
    first.scatter_(0, inverse.flip(0), torch.arange(flat.size(0) - 1, -1, -1, device=flat.device))  # (U,)
    if not torch.equal(features[first][inverse], features):
        return None
    return first, inverse


def _top_hidden(state: State) -> Tensor:
    """The last layer's hidden state (B, H) of an (L, B, H) state (the LSTM's h of (h, c))."""
    h = state[0] if isinstance(state, tuple) else state
    return h[-1]  # (B, H)


class AttentionDecoder(CaptionDecoder):
    """Soft attention over the N locations of a feature map; see the module docstring."""

    config: AttentionConfig

    def __init__(self, config: DecoderConfig) -> None:
        if not isinstance(config, AttentionConfig):
            raise TypeError("AttentionDecoder needs an AttentionConfig")
        nn.Module.__init__(self)  # its own layers; the generation code is inherited
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=0)
        D = c.annotation_width
        self.feat_norm = nn.LayerNorm(c.feature_dim)  # per location
        # W_p: the learned annotation of each location (none when annotation_dim is 0)
        self.annotate = nn.Linear(c.feature_dim, D) if c.annotation_dim else None
        self.att_feat = nn.Linear(D, c.attention_dim)  # W_a
        self.att_hidden = nn.Linear(c.hidden_dim, c.attention_dim)  # W_ha
        self.att_score = nn.Linear(c.attention_dim, 1)  # v
        self.gate = nn.Linear(c.hidden_dim, D)  # W_b
        # w_s: the sentinel's logit from h (the "look nowhere" choice), only with sentinel=True
        self.att_sentinel = nn.Linear(c.hidden_dim, 1) if c.sentinel else None
        self.img_proj = nn.Linear(D, c.img_proj_dim)  # W_ih for the gated context
        self._add_cell_layers(c, init_dim=D)

    # ------------------------------------------------------------------ building blocks
    def _prepare(self, features: Tensor) -> tuple[Tensor, State]:
        """Memory and initial state from maps (B, N, C). The memory (B, N, D + A) holds the
        annotations and their attention keys ``W_a a_i`` (computed once)."""
        c = self.config
        if features.dim() != 3 or features.size(2) != c.feature_dim:
            raise ValueError(
                f"the attention decoder needs feature maps of shape (B, N, {c.feature_dim}), "
                f"got {tuple(features.shape)}"
            )
        # Training batches often repeat an image (one row per caption): annotate each image once.
        rows = _repeated_rows(features) if self.training and torch.is_grad_enabled() else None
        if rows is not None:
            first, inverse = rows  # (U,), (B,)
            features = features[first]  # (U, N, C)
        a = self.feat_norm(features.float())  # (B, N, C)
        if self.annotate is not None:
            a = torch.relu(self.annotate(a))  # (B, N, D)
        memory = torch.cat([a, self.att_feat(a)], dim=2)  # (B, N, D + A)
        B, L, H = a.size(0), c.num_layers, c.hidden_dim
        if not c.init_state:
            h = a.new_zeros(L, B, H)  # (L, B, H)
            state: State = (h, torch.zeros_like(h)) if c.cell == "lstm" else h
        else:
            mean = a.mean(dim=1)  # (B, D): the mean annotation vector
            h = torch.tanh(self.init_h(mean)).view(B, L, H).transpose(0, 1).contiguous()  # (L, B, H)
            state = h
            if c.cell == "lstm":
                cs = torch.tanh(self.init_c(mean)).view(B, L, H).transpose(0, 1).contiguous()  # (L, B, H)
                state = (h, cs)
        if rows is None:
            return memory, state
        if isinstance(state, tuple):  # back to one row per caption: (B, N, D + A), (L, B, H)
            return memory[inverse], (state[0][:, inverse], state[1][:, inverse])
        return memory[inverse], state[:, inverse]

    def _attend(self, memory: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """Gated context (B, D) and attention weights (B, N) from memory (B, N, D + A) and the
        top layer's previous hidden state h (B, H)."""
        a, keys = memory.split([self.config.annotation_width, self.config.attention_dim], dim=2)  # (B, N, D), (B, N, A)
        e = self.att_score(torch.tanh(keys + self.att_hidden(h).unsqueeze(1))).squeeze(2)  # (B, N)
        if self.att_sentinel is None:
            alpha = torch.softmax(e.float(), dim=1)  # (B, N)
            z = torch.bmm(alpha.unsqueeze(1).to(a.dtype), a).squeeze(1)  # (B, D)
        else:  # softmax over the N locations and the sentinel, whose annotation is zero
            full = torch.softmax(torch.cat([e, self.att_sentinel(h)], dim=1).float(), dim=1)  # (B, N + 1)
            mass = full[:, :-1]  # (B, N): sums to 1 minus the sentinel's share
            z = torch.bmm(mass.unsqueeze(1).to(a.dtype), a).squeeze(1)  # (B, D)
            alpha = mass / mass.sum(dim=1, keepdim=True).clamp(min=1e-12)  # (B, N): where it looked on the grid
        beta = torch.sigmoid(self.gate(h))  # (B, D)
        return beta * z, alpha

    def _cell(self, words: Tensor, memory: Tensor, state: State) -> tuple[Tensor, State, Tensor]:
        """One step: previous words (B,) -> top hidden output (B, H), new state, weights (B, N)."""
        context, alpha = self._attend(memory, _top_hidden(state))  # (B, D), (B, N)
        x = torch.cat([self.drop(self.embed(words)), self.drop(self.img_proj(context))], dim=1)  # (B, E + P)
        out, state = self.rnn(x.unsqueeze(1), state)  # (B, 1, H)
        return out.squeeze(1), state, alpha

    def step(self, words: Tensor, img: Tensor, state: State | None) -> tuple[Tensor, State]:
        """One generation step: previous words (N,) -> log-probs (N, V), new state
        (``img`` is the memory from ``_prepare``)."""
        if state is None:
            raise ValueError("the attention decoder's step needs the state from _prepare")
        out, state, _ = self._cell(words, img, state)  # (N, H)
        return F.log_softmax(self.out(out).float(), dim=-1), state  # (N, V)

    # ------------------------------------------------------------------ teacher forcing
    def forward_with_attention(self, features: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced logits (B, T-1, V) predicting tokens[:, 1:] and the attention weights
        (B, T-1, N) of every step; features (B, N, C), tokens (B, T)."""
        memory, state = self._prepare(features)  # (B, N, D + A)
        outs, alphas = [], []
        for t in range(tokens.size(1) - 1):
            out, state, alpha = self._cell(tokens[:, t], memory, state)  # (B, H), (B, N)
            outs.append(out)
            alphas.append(alpha)
        hidden = torch.stack(outs, dim=1)  # (B, T-1, H)
        return self.out(self.drop(hidden)), torch.stack(alphas, dim=1)  # (B, T-1, V), (B, T-1, N)

    def forward(self, features: Tensor, tokens: Tensor) -> Tensor:
        """Teacher-forced logits (B, T-1, V), as :meth:`CaptionDecoder.forward`."""
        return self.forward_with_attention(features, tokens)[0]

    def loss(
        self,
        features: Tensor,
        tokens: Tensor,
        pad_id: int = 0,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ) -> Tensor:
        """Summed token cross-entropy plus ``lambda * sum_i (1 - sum_t alpha_ti)^2`` per caption;
        ``reduction="mean"`` divides that sum by the number of target tokens."""
        if reduction not in ("mean", "sum"):
            raise ValueError("reduction must be 'mean' or 'sum'")
        logits, alphas = self.forward_with_attention(features, tokens)  # (B, T-1, V), (B, T-1, N)
        target = tokens[:, 1:]  # (B, T-1)
        ce = F.cross_entropy(
            logits.flatten(0, 1).float(),  # (B*(T-1), V)
            target.flatten(),
            ignore_index=pad_id,
            reduction="sum",
            label_smoothing=label_smoothing,
        )
        real = (target != pad_id).unsqueeze(2)  # (B, T-1, 1): the caption's steps, <end> included
        coverage = (alphas * real).sum(dim=1)  # (B, N): sum_t alpha_ti
        total = ce + self.config.doubly_stochastic * ((1.0 - coverage) ** 2).sum()
        if self.config.sharpen:  # + sharpen * sum_t H(alpha_t): each step looks at few locations
            entropy = -(alphas * torch.log(alphas.clamp(min=1e-12))).sum(dim=2, keepdim=True)  # (B, T-1, 1)
            total = total + self.config.sharpen * (entropy * real).sum()
        return total / real.sum().clamp(min=1) if reduction == "mean" else total

    @torch.no_grad()
    def attention(self, features: Tensor, ids: list[list[int]], start_id: int, end_id: int) -> list[Tensor]:
        """Where the model looked for each word of each caption and for its ``<end>``: row i is
        (len(ids[i]) + 1, N) weights, each row a distribution over the N locations (row-major
        over the encoder's grid). Call in eval mode; the captions are as generation returns them."""
        if len(ids) != features.size(0):
            raise ValueError(f"{len(ids)} captions for {features.size(0)} feature maps")
        tokens = self.caption_tokens(ids, start_id, end_id)  # (B, T)
        _, alphas = self.forward_with_attention(features, tokens.to(features.device))  # (B, T-1, N)
        return [alphas[b, : len(row) + 1].cpu() for b, row in enumerate(ids)]
