"""Decoder: teacher forcing, memorisation, greedy / beam / sampling behaviour."""

import math

import numpy as np
import pytest
import torch
from searchkit import beam, greedy, sample, token_logprobs

from captioner.decoder import CaptionDecoder, DecoderConfig
from captioner.vocab import Vocabulary

CAPTIONS = [
    "a red dog on the grass",
    "two blue cars near a house",
    "a cat sleeping on a sofa",
    "three birds in the sky",
]


def _pad(seqs, pad=0):
    T = max(len(s) for s in seqs)
    return torch.tensor([s + [pad] * (T - len(s)) for s in seqs])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: thread hand-offs would cost more than the arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_tiny(cell="lstm", steps=200, num_layers=1, seed=0):
    torch.manual_seed(seed)
    vocab = Vocabulary.build(CAPTIONS)
    feats = torch.randn(len(CAPTIONS), 16)  # one distinct "image" per caption
    tokens = _pad([vocab.encode(c) for c in CAPTIONS])
    cfg = DecoderConfig(
        vocab_size=len(vocab),
        feature_dim=16,
        embed_dim=32,
        hidden_dim=64,
        img_proj_dim=16,
        cell=cell,
        num_layers=num_layers,
        dropout=0.0,
        max_length=12,
    )
    dec = CaptionDecoder(cfg)
    opt = torch.optim.Adam(dec.parameters(), lr=2e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = dec.loss(feats, tokens, vocab.pad_id)
        loss.backward()
        opt.step()
    dec.eval()
    return dec, vocab, feats, tokens, loss.item()


@pytest.fixture(scope="module")
def trained():
    return train_tiny()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_all_cells_train_and_memorise(cell):
    dec, vocab, feats, _tokens, loss = train_tiny(cell=cell, num_layers=2 if cell == "lstm" else 1)
    assert loss < 0.05, f"{cell} did not fit: loss {loss}"
    ids, scores = greedy(dec, feats, vocab.start_id, vocab.end_id)
    assert [vocab.decode(i) for i in ids] == CAPTIONS
    assert torch.all(scores <= 0)


def test_padding_never_contributes_to_loss(trained):
    dec, vocab, feats, tokens, _ = trained
    base = dec.loss(feats, tokens, vocab.pad_id)
    longer = torch.cat([tokens, torch.zeros(tokens.size(0), 5, dtype=torch.long)], dim=1)
    assert torch.allclose(dec.loss(feats, longer, vocab.pad_id), base, atol=1e-6)
    # the loss is the mean over real tokens only: recompute by hand
    logits = dec(feats, tokens)
    target = tokens[:, 1:]
    logp = torch.log_softmax(logits, -1).gather(2, target.unsqueeze(2)).squeeze(2)
    mask = target != vocab.pad_id
    assert torch.allclose(-(logp * mask).sum() / mask.sum(), base, atol=1e-5)


def test_beam_one_equals_greedy(trained):
    dec, vocab, feats, _, _ = trained
    g_ids, g_scores = greedy(dec, feats, vocab.start_id, vocab.end_id)
    b_ids, b_scores = beam(dec, feats, vocab.start_id, vocab.end_id, beam_size=1)
    assert g_ids == b_ids
    assert torch.allclose(g_scores, b_scores, atol=1e-5)


def test_beam_finds_at_least_greedy_logprob_on_untrained_model():
    torch.manual_seed(3)
    vocab = Vocabulary.build([f"w{i}" for i in range(30)])
    dec = CaptionDecoder(
        DecoderConfig(vocab_size=len(vocab), feature_dim=8, embed_dim=16, hidden_dim=32, img_proj_dim=8, dropout=0.0)
    ).eval()
    feats = torch.randn(12, 8) * 3
    _, g = greedy(dec, feats, vocab.start_id, vocab.end_id, max_length=6)
    for k in (2, 3, 5):
        _, b = beam(dec, feats, vocab.start_id, vocab.end_id, beam_size=k, max_length=6)
        assert torch.all(b >= g - 1e-5), (k, b, g)


def test_batched_beam_equals_one_at_a_time():
    torch.manual_seed(4)
    vocab = Vocabulary.build([f"w{i}" for i in range(20)])
    dec = CaptionDecoder(
        DecoderConfig(
            vocab_size=len(vocab), feature_dim=8, embed_dim=16, hidden_dim=32, img_proj_dim=8, dropout=0.0, num_layers=2
        )
    ).eval()
    feats = torch.randn(6, 8) * 3
    ids, scores = beam(dec, feats, vocab.start_id, vocab.end_id, beam_size=4, max_length=7, length_penalty=0.6)
    for i in range(6):
        one_ids, one_score = beam(
            dec, feats[i : i + 1], vocab.start_id, vocab.end_id, beam_size=4, max_length=7, length_penalty=0.6
        )
        assert one_ids[0] == ids[i]
        assert math.isclose(one_score.item(), scores[i].item(), abs_tol=1e-4)


def test_generation_stops_at_end_and_respects_max_length(trained):
    dec, vocab, feats, _, _ = trained
    ids, _ = greedy(dec, feats, vocab.start_id, vocab.end_id, max_length=3)
    assert all(len(i) <= 3 for i in ids)
    assert all(vocab.end_id not in i and vocab.start_id not in i for i in ids)
    ids, _ = beam(dec, feats, vocab.start_id, vocab.end_id, beam_size=3, max_length=2)
    assert all(len(i) <= 2 for i in ids)
    # memorised captions end on their own before the limit
    ids, _ = beam(dec, feats, vocab.start_id, vocab.end_id, beam_size=3, max_length=30)
    assert [vocab.decode(i) for i in ids] == CAPTIONS


def test_sampling_is_seeded_and_low_temperature_matches_greedy(trained):
    dec, vocab, feats, _, _ = trained
    a, _ = sample(dec, feats, vocab.start_id, vocab.end_id, temperature=1.5, seed=7)
    b, _ = sample(dec, feats, vocab.start_id, vocab.end_id, temperature=1.5, seed=7)
    assert a == b
    cold, _ = sample(dec, feats, vocab.start_id, vocab.end_id, temperature=1e-3, seed=8)
    warm, _ = greedy(dec, feats, vocab.start_id, vocab.end_id)
    assert cold == warm
    with pytest.raises(ValueError):
        sample(dec, feats, vocab.start_id, vocab.end_id, temperature=0)


def test_init_state_off_and_bad_shapes():
    cfg = DecoderConfig(vocab_size=10, feature_dim=4, init_state=False, dropout=0.0)
    dec = CaptionDecoder(cfg).eval()
    ids, scores = beam(dec, torch.randn(2, 4), 1, 2, beam_size=2, max_length=4)
    assert len(ids) == 2 and scores.shape == (2,)
    with pytest.raises(ValueError, match="shape"):
        greedy(dec, torch.randn(2, 5), 1, 2)
    with pytest.raises(ValueError, match="cell"):
        DecoderConfig(vocab_size=10, feature_dim=4, cell="transformer")
    with pytest.raises(ValueError, match="unknown decoder settings"):
        DecoderConfig.from_dict({"vocab_size": 10, "feature_dim": 4, "heads": 8})


# ---------------------------------------------------------------------- no degenerate captions
def _repeater(seed: int = 5):
    """An untrained decoder whose output layer prefers word 4 at every step: unconstrained, it
    says "w0 w0 w0 ..." up to max_length."""
    torch.manual_seed(seed)
    vocab = Vocabulary.build([f"w{i}" for i in range(12)])
    dec = CaptionDecoder(
        DecoderConfig(vocab_size=len(vocab), feature_dim=8, embed_dim=16, hidden_dim=32, img_proj_dim=8, dropout=0.0)
    ).eval()
    with torch.no_grad():
        dec.out.bias.zero_()
        dec.out.bias[4] = 8.0  # "w0"
        dec.out.bias[5] = 6.0  # "w1"
        dec.out.bias[vocab.end_id] = -8.0
    return dec, vocab, torch.randn(5, 8)


def _has_run_of_three(ids):
    return any(a == b == c for a, b, c in zip(ids, ids[1:], ids[2:]))


def _ngrams(ids, n):
    return [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]


def test_banned_words_masks_runs_and_repeated_ngrams():
    from captioner.runtime.search import banned_words

    history = np.array([[5, 6, 7, 5, 6], [4, 4, 9, 8, 8], [1, 2, 3, 4, 5]])  # (3, 5)
    off = banned_words(history, 12, 0)
    assert np.flatnonzero(off[1]).tolist() == [8]  # "8 8" -> a third 8 is refused
    assert not off[0].any() and not off[2].any()
    tri = banned_words(history, 12, 3)
    assert np.flatnonzero(tri[0]).tolist() == [7]  # "5 6" was followed by 7 before
    assert np.flatnonzero(tri[1]).tolist() == [8]
    assert not tri[2].any()
    uni = banned_words(history, 12, 1)
    assert np.flatnonzero(uni[2]).tolist() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_no_word_three_times_in_a_row_even_with_ngrams_off(method):
    dec, vocab, feats = _repeater()
    s, e = vocab.start_id, vocab.end_id
    run = {
        "greedy": lambda n: greedy(dec, feats, s, e, max_length=12, no_repeat_ngram_size=n),
        "beam": lambda n: beam(dec, feats, s, e, beam_size=3, max_length=12, no_repeat_ngram_size=n),
        "sample": lambda n: sample(dec, feats, s, e, 12, temperature=0.7, seed=1, no_repeat_ngram_size=n),
    }[method]
    ids, scores = run(0)
    assert all(len(i) == 12 for i in ids)  # the model never wants <end>: full-length captions
    assert not any(_has_run_of_three(i) for i in ids), ids
    assert torch.all(torch.isfinite(scores))
    ids, _ = run(2)
    for row in ids:
        assert len(set(_ngrams(row, 2))) == len(_ngrams(row, 2)), row


def test_scores_stay_the_models_log_probabilities_under_constraints():
    dec, vocab, feats = _repeater()
    for ids, scores in (
        greedy(dec, feats, vocab.start_id, vocab.end_id, max_length=9, no_repeat_ngram_size=2),
        beam(dec, feats, vocab.start_id, vocab.end_id, beam_size=4, max_length=9, no_repeat_ngram_size=2),
    ):
        rescored = token_logprobs(dec, feats, ids, vocab.start_id, vocab.end_id)
        assert [len(r) for r in rescored] == [len(i) + 1 for i in ids]
        assert torch.allclose(torch.stack([r.sum() for r in rescored]), scores, atol=1e-4)


def test_default_no_repeat_keeps_memorised_captions(trained):
    from captioner.runtime.search import DEFAULT_NO_REPEAT_NGRAM

    assert DEFAULT_NO_REPEAT_NGRAM >= 1
    dec, vocab, feats, _, _ = trained
    ids, _ = greedy(dec, feats, vocab.start_id, vocab.end_id)
    assert [vocab.decode(i) for i in ids] == CAPTIONS
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        greedy(dec, feats, vocab.start_id, vocab.end_id, no_repeat_ngram_size=-1)


def test_batched_beam_equals_one_at_a_time_with_ngram_blocking():
    dec, vocab, feats = _repeater(seed=6)
    ids, scores = beam(dec, feats, vocab.start_id, vocab.end_id, beam_size=3, max_length=8)
    for i in range(feats.size(0)):
        one, one_score = beam(dec, feats[i : i + 1], vocab.start_id, vocab.end_id, beam_size=3, max_length=8)
        assert one[0] == ids[i]
        assert math.isclose(one_score.item(), scores[i].item(), abs_tol=1e-4)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_the_exported_step_gives_the_same_captions_under_the_same_rules(method):
    """The search is one module; the exported graphs (what serving runs) only replace the step."""
    from captioner.model.export import decoder_graphs
    from captioner.model.steps import TorchStep
    from captioner.runtime import search
    from captioner.runtime.graphs import OnnxStep

    dec, vocab, feats = _repeater()
    onnx = OnnxStep(*decoder_graphs(dec, (feats.size(1),)))
    s, e, f = vocab.start_id, vocab.end_id, feats.numpy()

    def run(step, n):
        if method == "greedy":
            return [(h.tokens, h.score) for h in search.sequential(step, f, s, e, 10, n)]
        return [(h[0].tokens, h[0].score) for h in search.beam_search(step, f, s, e, 10, 3, 0.0, n)]

    for n in (0, 2):
        ref, got = run(TorchStep(dec), n), run(onnx, n)
        assert [t for t, _ in got] == [t for t, _ in ref]
        assert np.allclose([x for _, x in got], [x for _, x in ref], atol=1e-4)
        assert not any(_has_run_of_three(t) for t, _ in got)
