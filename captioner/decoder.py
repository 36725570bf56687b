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

Generation works on a batch of features at once: greedy, beam search (batched across
images, length penalty, every hypothesis stops at ``<end>``), and temperature sampling.
``max_length`` bounds the number of words; a caption that reaches it is closed with a
forced ``<end>``, so scores are always comparable log-probabilities of complete sequences.

No degenerate captions: every algorithm refuses a word that would be the third of a run
(``buses buses buses``), and with ``no_repeat_ngram_size=n`` (default
:data:`DEFAULT_NO_REPEAT_NGRAM`; 0 switches it off) any word that would repeat an n-gram
already in the caption. Refused words get probability zero for the choice only: scores stay
the model's own log-probabilities of the words chosen.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CELLS = ("lstm", "gru", "rnn")
# The default n of no_repeat_ngram_size: no 3-gram twice in a caption. Measured on 1,000
# held-out scenes with the shipped weights (docs/trust.md): it does not lower scene accuracy.
DEFAULT_NO_REPEAT_NGRAM = 3
MAX_RUN = 2  # a word may follow itself once, never twice

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


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ((5 + L) / 6) ** alpha; 1 when alpha == 0."""
    return 1.0 if alpha == 0 else ((5.0 + length) / 6.0) ** alpha


def _ngram_size(no_repeat_ngram_size: int | None) -> int:
    n = DEFAULT_NO_REPEAT_NGRAM if no_repeat_ngram_size is None else int(no_repeat_ngram_size)
    if n < 0:
        raise ValueError("no_repeat_ngram_size must be >= 0 (0 switches it off)")
    return n


def banned_words(history: Tensor, vocab_size: int, no_repeat_ngram_size: int) -> Tensor:
    """Which next words are refused after ``history`` (N, t) of generated word ids.

    Refused: the word that would make a run of three (the last two words are equal), and,
    when ``no_repeat_ngram_size`` is n >= 1, every word that would complete an n-gram that
    already occurs in the row. Returns a bool mask (N, V); ``<end>`` is never refused (it is
    never in ``history``).
    """
    N, t = history.shape
    banned = torch.zeros(N, vocab_size, dtype=torch.bool, device=history.device)  # (N, V)
    if t >= MAX_RUN:
        last = history[:, -MAX_RUN:]  # (N, MAX_RUN)
        run = (last == last[:, -1:]).all(dim=1)  # (N,)
        banned[run, history[run, -1]] = True
    n = int(no_repeat_ngram_size)
    if n >= 1 and t >= n:
        if n == 1:
            banned.scatter_(1, history, True)
            return banned
        windows = history.unfold(1, n, 1)  # (N, t-n+1, n): every n-gram so far
        prefix = history[:, t - n + 1 :].unsqueeze(1)  # (N, 1, n-1): what the next word would extend
        match = (windows[:, :, :-1] == prefix).all(dim=2)  # (N, t-n+1)
        hits = torch.zeros(N, vocab_size, device=history.device)  # (N, V)
        hits.scatter_add_(1, windows[:, :, -1], match.float())
        banned |= hits > 0
    return banned


def _next_beams(
    scores: list[float], words: list[int], sources: list[int], k: int, end_id: int
) -> tuple[list[tuple[float, int, int]], list[tuple[float, int]]]:
    """One image's best candidates (scores descending) -> up to ``k`` live hypotheses
    (score, word, source beam) and the ``<end>`` candidates among the top ``k`` (score, source beam)."""
    alive: list[tuple[float, int, int]] = []
    ended: list[tuple[float, int]] = []
    for j, (s, w, src) in enumerate(zip(scores, words, sources)):
        if s == -math.inf:
            break
        if w == end_id:
            if j < k:
                ended.append((s, src))
        else:
            alive.append((s, w, src))
            if len(alive) == k:
                break
    return alive, ended


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

    @torch.no_grad()
    def token_logprobs(self, features: Tensor, ids: list[list[int]], start_id: int, end_id: int) -> list[Tensor]:
        """The model's log-probability of every word of each caption and of its ``<end>``
        (teacher forcing; call in eval mode). ``ids`` are captions without specials, as the
        generation methods return them; row i of the result has ``len(ids[i]) + 1`` values,
        and their sum is the caption's generation score."""
        if len(ids) != features.size(0):
            raise ValueError(f"{len(ids)} captions for {features.size(0)} feature rows")
        tokens = self.caption_tokens(ids, start_id, end_id).to(features.device)  # (B, T)
        logp = self.teacher_forced_logprobs(features, tokens)  # (B, T-1, V)
        picked = logp.gather(2, tokens[:, 1:].unsqueeze(2)).squeeze(2)  # (B, T-1)
        return [picked[b, : len(row) + 1].cpu() for b, row in enumerate(ids)]

    @torch.no_grad()
    def teacher_forced_logprobs(self, features: Tensor, tokens: Tensor) -> Tensor:
        """Next-word log-probabilities (B, T-1, V) of tokens (B, T) under teacher forcing."""
        return F.log_softmax(self(features, tokens).float(), dim=-1)  # (B, T-1, V)

    def step(self, words: Tensor, img: Tensor, state: State | None) -> tuple[Tensor, State]:
        """One generation step: previous words (N,) -> log-probs (N, V), new state."""
        x = torch.cat([self.embed(words), img], dim=1).unsqueeze(1)  # (N, 1, E+P)
        out, state = self.rnn(x, state)  # (N, 1, H)
        return F.log_softmax(self.out(out.squeeze(1)).float(), dim=-1), state  # (N, V)

    @staticmethod
    def _select_state(state: State, index: Tensor) -> State:
        if isinstance(state, tuple):
            return tuple(s.index_select(1, index) for s in state)  # type: ignore[return-value]
        return state.index_select(1, index)

    # ------------------------------------------------------------------ generation
    def _max_len(self, max_length: int | None) -> int:
        n = self.config.max_length if max_length is None else int(max_length)
        if n < 1:
            raise ValueError("max_length must be >= 1")
        return n

    @torch.no_grad()
    def greedy(
        self,
        features: Tensor,
        start_id: int,
        end_id: int,
        max_length: int | None = None,
        no_repeat_ngram_size: int | None = None,
    ) -> tuple[list[list[int]], Tensor]:
        """Most likely allowed word at each step. Returns (word ids without specials, scores (B,))."""
        return self._sequential(features, start_id, end_id, max_length, None, None, _ngram_size(no_repeat_ngram_size))

    @torch.no_grad()
    def sample(
        self,
        features: Tensor,
        start_id: int,
        end_id: int,
        max_length: int | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        no_repeat_ngram_size: int | None = None,
    ) -> tuple[list[list[int]], Tensor]:
        """Sample each word from softmax(logits / temperature) over the allowed words. Scores
        are the model's log-probs."""
        if temperature <= 0:
            raise ValueError("temperature must be > 0 (use greedy for temperature 0)")
        return self._sequential(
            features, start_id, end_id, max_length, temperature, generator, _ngram_size(no_repeat_ngram_size)
        )

    def _sequential(
        self,
        features: Tensor,
        start_id: int,
        end_id: int,
        max_length: int | None,
        temperature: float | None,
        generator: torch.Generator | None,
        ngram: int,
    ) -> tuple[list[list[int]], Tensor]:
        max_len = self._max_len(max_length)
        B = features.size(0)
        img, state = self._prepare(features)
        words = torch.full((B,), start_id, dtype=torch.long, device=features.device)
        scores = torch.zeros(B, device=features.device)
        alive = torch.ones(B, dtype=torch.bool, device=features.device)
        out = torch.zeros(B, max_len, dtype=torch.long, device=features.device)
        lengths = torch.full((B,), max_len, dtype=torch.long, device=features.device)
        for t in range(max_len + 1):
            logp, state = self.step(words, img, state)  # (B, V)
            if t == max_len:  # force <end>
                nxt = torch.full_like(words, end_id)
            else:
                allowed = logp.masked_fill(banned_words(out[:, :t], logp.size(1), ngram), -math.inf)  # (B, V)
                if temperature is None:
                    nxt = allowed.argmax(dim=1)
                else:
                    probs = torch.softmax(allowed / temperature, dim=1)
                    nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            scores = scores + torch.where(alive, logp.gather(1, nxt[:, None]).squeeze(1), torch.zeros_like(scores))
            ended = alive & (nxt == end_id)
            lengths = torch.where(ended, torch.full_like(lengths, t), lengths)
            if t < max_len:
                out[:, t] = torch.where(alive, nxt, torch.zeros_like(nxt))
            alive = alive & ~ended
            if not bool(alive.any()):
                break
            words = nxt
        ids = [row[:n].tolist() for row, n in zip(out.cpu(), lengths.cpu().tolist())]
        return ids, scores

    @torch.no_grad()
    def beam_search(
        self,
        features: Tensor,
        start_id: int,
        end_id: int,
        beam_size: int = 3,
        max_length: int | None = None,
        length_penalty_alpha: float = 0.0,
        no_repeat_ngram_size: int | None = None,
    ) -> tuple[list[list[int]], Tensor]:
        """Beam search over a batch of images at once.

        Keeps the ``beam_size`` best partial captions per image (by summed log-prob). A
        candidate that emits ``<end>`` among the top ``beam_size`` is finished; the search
        for an image stops when no live hypothesis can still beat its best finished one.
        Finished hypotheses are ranked by score / ((5 + L) / 6) ** alpha (L counts the
        words and ``<end>``). Returns the best per image: (word ids, raw log-prob scores).
        """
        k = int(beam_size)
        if k < 1:
            raise ValueError("beam_size must be >= 1")
        max_len = self._max_len(max_length)
        ngram = _ngram_size(no_repeat_ngram_size)
        alpha = float(length_penalty_alpha)
        B, dev = features.size(0), features.device
        img, state = self._prepare(features)  # (B, P)
        expand = torch.arange(B, device=dev).repeat_interleave(k)  # (B*k,)
        img = img.index_select(0, expand)  # (B*k, P)
        if state is not None:
            state = self._select_state(state, expand)
        words = torch.full((B * k,), start_id, dtype=torch.long, device=dev)
        beam_scores = torch.full((B, k), -math.inf, device=dev)
        beam_scores[:, 0] = 0.0  # only the first beam is live at t=0
        history = torch.zeros(B, k, 0, dtype=torch.long, device=dev)  # (B, k, t)
        finished: list[list[tuple[float, float, list[int]]]] = [[] for _ in range(B)]
        done = [False] * B
        bound_lp = length_penalty(max_len + 1, alpha)

        for t in range(max_len + 1):
            logp, state = self.step(words, img, state)  # (B*k, V)
            V = logp.size(1)
            logp = logp.masked_fill(banned_words(history.view(B * k, -1), V, ngram), -math.inf)  # (B*k, V)
            logp = logp.view(B, k, V)
            if t == max_len:  # only <end> is allowed now
                forced = torch.full_like(logp, -math.inf)
                forced[..., end_id] = logp[..., end_id]
                logp = forced
            cand = (beam_scores.unsqueeze(2) + logp).view(B, k * V)  # (B, k*V)
            top_scores, top_idx = cand.topk(min(2 * k, k * V), dim=1)  # (B, 2k)
            src_beam = (top_idx // V).tolist()
            top_words = (top_idx % V).tolist()
            top_scores_l = top_scores.tolist()

            new_scores = torch.full((B, k), -math.inf, device=dev)
            new_words = torch.zeros(B, k, dtype=torch.long)
            new_src = torch.zeros(B, k, dtype=torch.long)
            hist_cpu = history.cpu()
            for b in range(B):
                if done[b]:
                    continue
                alive, ended = _next_beams(top_scores_l[b], top_words[b], src_beam[b], k, end_id)
                for s, src in ended:
                    finished[b].append((s / length_penalty(t + 1, alpha), s, hist_cpu[b, src].tolist()))
                for n, (s, w, src) in enumerate(alive):
                    new_scores[b, n], new_words[b, n], new_src[b, n] = s, w, src
                # done when nothing is alive, or no live hypothesis can beat the best finished one
                done[b] = not alive or (bool(finished[b]) and max(h[0] for h in finished[b]) >= alive[0][0] / bound_lp)
            if all(done) or t == max_len:
                break
            for b in range(B):
                if done[b]:
                    new_scores[b] = -math.inf
            flat_src = (torch.arange(B).unsqueeze(1) * k + new_src).view(-1).to(dev)  # (B*k,)
            state = self._select_state(state, flat_src)
            history = torch.cat(
                [history.view(B * k, -1).index_select(0, flat_src).view(B, k, -1), new_words.to(dev).unsqueeze(2)],
                dim=2,
            )  # (B, k, t+1)
            words = new_words.view(-1).to(dev)
            beam_scores = new_scores

        best = [max(f, key=lambda h: h[0]) for f in finished]  # t == max_len forces <end>: never empty
        return [h[2] for h in best], torch.tensor([h[1] for h in best], device=dev)
