"""The soft-attention decoder: its weights are distributions over locations at every step,
beam search agrees with greedy and with itself one image at a time, the regulariser is the
formula, it really uses *where* things are (a task a pooled decoder cannot do better than
chance on), and spatial maps come out of the encoders and the feature cache as stated.

Tiny models, one torch thread."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from captionkit import tiny_scenes
from searchkit import beam, greedy, sample, token_logprobs

from captioner.attention import (
    AttentionConfig,
    AttentionDecoder,
    build_decoder,
    config_from_dict,
    config_to_dict,
    decoder_kind,
)
from captioner.decoder import CaptionDecoder, DecoderConfig
from captioner.model import ReferenceCaptioner
from captioner.options import CaptionOptions

START, END = 1, 2
CELLS = ("lstm", "gru", "rnn")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _decoder(cell: str = "lstm", layers: int = 1, vocab: int = 14, channels: int = 8, **kw) -> AttentionDecoder:
    torch.manual_seed(0)
    cfg = AttentionConfig(
        vocab_size=vocab,
        feature_dim=channels,
        embed_dim=16,
        hidden_dim=24,
        img_proj_dim=8,
        attention_dim=12,
        cell=cell,
        num_layers=layers,
        max_length=8,
        **kw,
    )
    return AttentionDecoder(cfg).eval()


def _maps(batch: int = 4, locations: int = 9, channels: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, locations, channels, generator=torch.Generator().manual_seed(seed))  # (B, N, C)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("annotation_dim", [0, 6])
def test_attention_weights_are_distributions_at_every_step(cell, layers, annotation_dim):
    dec = _decoder(cell, layers, annotation_dim=annotation_dim, sentinel=layers == 2)
    feats = _maps()
    ids, _ = greedy(dec, feats, START, END, no_repeat_ngram_size=0)
    maps = dec.attention(feats, ids, START, END)
    for row, weights in zip(ids, maps):
        assert weights.shape == (len(row) + 1, feats.size(1))
        assert bool((weights >= 0).all())
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(len(row) + 1))
    # and in training mode (dropout on), under teacher forcing
    dec.train()
    tokens = torch.tensor([[START, 4, 5, 6, END], [START, 7, END, 0, 0]])
    _, alphas = dec.forward_with_attention(feats[:2], tokens)  # (2, 4, N)
    assert bool((alphas >= 0).all())
    torch.testing.assert_close(alphas.sum(dim=2), torch.ones(2, 4))
    # the weights depend on the image: not one fixed map
    assert not torch.allclose(maps[0][0], maps[1][0])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("annotation_dim", [0, 6])
def test_beam_of_one_is_greedy_and_batched_beam_is_one_image_at_a_time(cell, annotation_dim):
    dec = _decoder(cell, layers=2, annotation_dim=annotation_dim)
    feats = _maps(batch=5)
    g_ids, g_scores = greedy(dec, feats, START, END)
    b_ids, b_scores = beam(dec, feats, START, END, beam_size=1)
    assert b_ids == g_ids
    torch.testing.assert_close(b_scores, g_scores)
    ids, scores = beam(dec, feats, START, END, beam_size=3, length_penalty=0.6)
    for i in range(feats.size(0)):
        one_ids, one_scores = beam(dec, feats[i : i + 1], START, END, beam_size=3, length_penalty=0.6)
        assert one_ids[0] == ids[i]
        torch.testing.assert_close(one_scores[0], scores[i])


def test_scores_are_the_models_log_probabilities_for_greedy_beam_and_sampling():
    dec = _decoder("gru")
    feats = _maps(batch=3)
    runs = {
        "greedy": greedy(dec, feats, START, END),
        "beam": beam(dec, feats, START, END, beam_size=3),
        "sample": sample(dec, feats, START, END, temperature=1.5, seed=0),
    }
    for name, (ids, scores) in runs.items():
        per_word = token_logprobs(dec, feats, ids, START, END)
        torch.testing.assert_close(torch.stack([p.sum() for p in per_word]), scores, msg=name)
        for row in ids:  # the decoder's no-repeat rule holds for it too: no word three times running
            assert all(not (a == b == c) for a, b, c in zip(row, row[1:], row[2:])), name


def test_the_loss_is_cross_entropy_plus_the_doubly_stochastic_term():
    lam = 0.3
    dec = _decoder(doubly_stochastic=lam)
    feats = _maps(batch=2)
    tokens = torch.tensor([[START, 4, 5, 6, END], [START, 7, END, 0, 0]])
    logits, alphas = dec.forward_with_attention(feats, tokens)  # (2, 4, V), (2, 4, N)
    target = tokens[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=0, reduction="sum")
    reg = 0.0
    for b, steps in enumerate([4, 2]):  # caption b's real steps, <end> included
        coverage = alphas[b, :steps].sum(dim=0)  # (N,)
        reg += float(((1 - coverage) ** 2).sum().detach())
    torch.testing.assert_close(dec.loss(feats, tokens, reduction="sum"), ce + lam * reg)
    torch.testing.assert_close(dec.loss(feats, tokens), (ce + lam * reg) / 6)
    off = _decoder(doubly_stochastic=0.0)
    torch.testing.assert_close(off.loss(feats, tokens), CaptionDecoder.loss(off, feats, tokens))
    # sharpen adds each real step's attention entropy, weighted
    sharp = _decoder(doubly_stochastic=lam, sharpen=0.5)
    logits, alphas = sharp.forward_with_attention(feats, tokens)  # (2, 4, V), (2, 4, N)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=0, reduction="sum")
    entropy = sum(
        float(-(alphas[b, :steps] * alphas[b, :steps].log()).sum().detach()) for b, steps in enumerate([4, 2])
    )
    torch.testing.assert_close(sharp.loss(feats, tokens, reduction="sum"), ce + lam * reg + 0.5 * entropy)
    assert entropy > 0


def test_the_sentinel_takes_mass_off_the_grid_and_the_maps_stay_distributions():
    feats = _maps(batch=3)
    tokens = torch.tensor([[START, 4, 5, END]] * 3)
    plain = _decoder(annotation_dim=6)
    with_sentinel = _decoder(annotation_dim=6, sentinel=True)
    with_sentinel.load_state_dict(plain.state_dict(), strict=False)  # the same weights, plus w_s
    assert with_sentinel.att_sentinel is not None
    memory, state = with_sentinel._prepare(feats)  # (B, N, D + A)
    h = state[0][-1]  # (B, H)
    torch.nn.init.zeros_(with_sentinel.att_sentinel.weight)
    torch.nn.init.constant_(with_sentinel.att_sentinel.bias, -30.0)  # never chosen: the plain decoder
    torch.testing.assert_close(with_sentinel._attend(memory, h), plain._attend(memory, h))
    torch.nn.init.constant_(with_sentinel.att_sentinel.bias, 30.0)  # always chosen: no context at all
    context, alpha = with_sentinel._attend(memory, h)  # (B, D), (B, N)
    assert float(context.abs().max()) < 1e-6
    torch.testing.assert_close(alpha, plain._attend(memory, h)[1])  # the map is still where it looked
    torch.nn.init.constant_(with_sentinel.att_sentinel.bias, 0.0)  # in between: a shorter context
    context, _ = with_sentinel._attend(memory, h)
    assert 0 < float(context.norm()) < float(plain._attend(memory, h)[0].norm())
    _, alphas = with_sentinel.forward_with_attention(feats, tokens)  # (B, 3, N)
    torch.testing.assert_close(alphas.sum(dim=2), torch.ones(3, 3))


def test_new_attention_settings_default_off_and_are_checked():
    old = config_to_dict(_decoder().config)
    del old["sentinel"], old["sharpen"]  # a checkpoint written before they existed
    cfg = config_from_dict(old)
    assert isinstance(cfg, AttentionConfig) and (cfg.sentinel, cfg.sharpen) == (False, 0.0)
    assert build_decoder(cfg).att_sentinel is None
    for bad in (-0.1, 10.5, float("nan")):
        with pytest.raises(ValueError, match="sharpen"):
            _decoder(sharpen=bad)


def test_wrong_feature_shape_is_refused_with_the_expected_shape():
    dec = _decoder()
    with pytest.raises(ValueError, match=r"\(B, N, 8\)"):
        greedy(dec, torch.zeros(2, 8), START, END)  # pooled features: not a map
    with pytest.raises(ValueError, match=r"\(B, N, 8\)"):
        greedy(dec, torch.zeros(2, 9, 5), START, END)


def test_config_records_the_kind_and_builds_the_right_decoder():
    att = _decoder().config
    data = config_to_dict(att)
    assert data["kind"] == "attention" and data["attention_dim"] == 12
    back = config_from_dict(data)
    assert back == att and decoder_kind(back) == "attention"
    assert isinstance(build_decoder(back), AttentionDecoder)
    pooled = DecoderConfig(vocab_size=10, feature_dim=4)
    assert config_to_dict(pooled)["kind"] == "pooled"
    old = pooled.to_dict()  # a checkpoint written before kinds existed
    assert config_from_dict(old) == pooled
    assert type(build_decoder(pooled)) is CaptionDecoder
    with pytest.raises(ValueError, match="unknown decoder kind"):
        config_from_dict({**old, "kind": "transformer"})
    with pytest.raises(ValueError, match="doubly_stochastic"):
        AttentionConfig(vocab_size=10, feature_dim=4, doubly_stochastic=-1.0)
    with pytest.raises(ValueError, match="annotation_dim"):
        AttentionConfig(vocab_size=10, feature_dim=4, annotation_dim=-1)


def test_annotation_projection_sets_the_width_of_context_gate_and_initial_state():
    raw = _decoder()  # annotation_dim 0: the normalised channels themselves (C = 8)
    assert raw.annotate is None and raw.config.annotation_width == 8
    dec = _decoder(annotation_dim=6)
    assert dec.config.annotation_width == 6
    assert dec.annotate is not None and dec.annotate.weight.shape == (6, 8)  # W_p: C -> D
    assert dec.gate.out_features == 6 and dec.img_proj.in_features == 6 and dec.init_h.in_features == 6
    memory, _ = dec._prepare(_maps(batch=2))  # (B, N, D + A)
    assert memory.shape == (2, 9, 6 + 12)
    assert bool((memory[..., :6] >= 0).all())  # annotations are ReLU units
    # an attention checkpoint written before the projection existed loads without it
    old = config_to_dict(raw.config)
    del old["annotation_dim"]
    assert config_from_dict(old).annotation_dim == 0


# ---------------------------------------------------------------------- it uses space
# Vocabulary of the synthetic task: "patch left" / "patch right".
PATCH, LEFT, RIGHT = 3, 4, 5
GRID = 3  # a 3 x 3 map, N = 9
CHANNELS = 6


def _where_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps (n, 9, 6) with one bright patch in the left or the right column, and captions.

    Channels 0 and 1 are the location's column and row (-1, 0, 1), as a CNN's padding makes
    its features position-aware; channel 2 is the patch; the rest is noise. The patch is the
    same vector on either side, so the pooled map (the mean over locations) carries nothing
    about the side: its position channels average to 0 whatever the image.
    """
    g = torch.Generator().manual_seed(seed)
    cols = torch.arange(GRID).repeat(GRID).float() - 1  # (9,)
    rows = torch.arange(GRID).repeat_interleave(GRID).float() - 1  # (9,)
    maps = 0.3 * torch.randn(n, GRID * GRID, CHANNELS, generator=g)  # (n, 9, C)
    maps[:, :, 0], maps[:, :, 1] = cols, rows
    right = torch.randint(0, 2, (n,), generator=g)  # (n,)
    row = torch.randint(0, GRID, (n,), generator=g)  # (n,)
    where = row * GRID + torch.where(right == 1, GRID - 1, 0)  # (n,) location of the patch
    maps[torch.arange(n), where, 2] += 4.0
    words = torch.where(right == 1, RIGHT, LEFT)
    tokens = torch.stack([torch.full((n,), START), torch.full((n,), PATCH), words, torch.full((n,), END)], dim=1)
    return maps, tokens  # (n, 9, C), (n, 4)


def _fit(dec: CaptionDecoder, feats: torch.Tensor, tokens: torch.Tensor, steps: int) -> None:
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    dec.train()
    for _ in range(steps):
        opt.zero_grad()
        dec.loss(feats, tokens).backward()
        opt.step()
    dec.eval()


def _side_accuracy(dec: CaptionDecoder, feats: torch.Tensor, tokens: torch.Tensor) -> float:
    ids, _ = greedy(dec, feats, START, END, max_length=3)
    said = torch.tensor([row[1] if len(row) > 1 else -1 for row in ids])
    return float((said == tokens[:, 2]).float().mean())


def test_attention_learns_where_the_patch_is_and_the_pooled_decoder_cannot():
    train_maps, train_tokens = _where_task(256, seed=0)
    test_maps, test_tokens = _where_task(400, seed=1)
    small: dict[str, Any] = dict(
        vocab_size=6, feature_dim=CHANNELS, embed_dim=16, hidden_dim=32, img_proj_dim=16, dropout=0.0
    )
    torch.manual_seed(0)
    att = AttentionDecoder(AttentionConfig(**small, attention_dim=16, doubly_stochastic=0.0))
    _fit(att, train_maps, train_tokens, steps=150)
    torch.manual_seed(0)
    pooled = CaptionDecoder(DecoderConfig(**small))
    train_pooled = train_maps.mean(dim=1)  # (n, C): what global average pooling keeps
    _fit(pooled, train_pooled, train_tokens, steps=150)

    att_acc = _side_accuracy(att, test_maps, test_tokens)
    pooled_acc = _side_accuracy(pooled, test_maps.mean(dim=1), test_tokens)
    assert att_acc >= 0.95, att_acc
    assert 0.38 <= pooled_acc <= 0.62, pooled_acc  # chance is 0.5 (400 images: +-0.12 is 5 sd)
    # and the model looks at the patch when it names the side
    ids, _ = greedy(att, test_maps[:50], START, END, max_length=3)
    weights = att.attention(test_maps[:50], ids, START, END)
    patch_at = test_maps[:50, :, 2].argmax(dim=1)  # (50,)
    on_patch = torch.stack([w[1, p] for w, p in zip(weights, patch_at)])  # weight when choosing the side
    assert float(on_patch.mean()) > 3 / (GRID * GRID)  # three times the uniform weight 1/9


# ---------------------------------------------------------------------- maps and training
def test_spatial_encoders_give_the_map_whose_mean_is_the_pooled_feature():
    from captioner.encoders import SpatialEncoder, build_encoder, get_spec, pooled

    for name in ("efficientnet_lite0", "resnet18"):
        spec = get_spec(name)
        assert spec.grid == (7, 7) and spec.facts()["grid"] == [7, 7]
        torch.manual_seed(0)
        flat = build_encoder(name, weights="random")
        maps = SpatialEncoder(flat.trunk, spec).eval()
        x = torch.randn(2, 3, 224, 224)
        with torch.no_grad():
            f, m = flat(x), maps(x)  # (2, F), (2, 49, F)
        assert m.shape == (2, 49, spec.feature_dim) and maps.spatial and not flat.spatial
        torch.testing.assert_close(pooled(m), f, rtol=1e-5, atol=1e-5)
        # row-major: location 0 is the top-left cell of the map
        with torch.no_grad():
            fmap = spec.feature_map(flat.trunk, x)  # type: ignore[misc]  # (2, F, 7, 7)
        torch.testing.assert_close(m[:, 0], fmap[:, :, 0, 0])
        torch.testing.assert_close(m[:, 8], fmap[:, :, 1, 1])


def test_training_caches_float16_maps_resumes_saves_fp16_and_loads_the_attention_model(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    from captioner import pipeline
    from captioner.checkpoint import CONFIG, WEIGHTS
    from captioner.encoders import SpatialEncoder
    from captioner.training.train import TrainConfig, resume_config, train

    data = tiny_scenes(tmp_path, seed=3)
    settings = dict(
        data=str(data),
        cache_dir=str(tmp_path / "cache"),
        decoder="attention",
        epochs=2,
        batch_size=16,
        embed_dim=16,
        img_proj_dim=16,
        hidden_dim=32,
        attention_dim=16,
        lr=5e-3,
        warmup_steps=2,
        progress=False,
        plot=False,
        device="cpu",
        threads=1,
        save_fp16=True,
    )
    full = train(TrainConfig(**settings, out=str(tmp_path / "full")))
    (cache_file,) = (tmp_path / "cache").glob("*.safetensors")
    with safe_open(str(cache_file), framework="pt") as f:
        maps = f.get_tensor("features")
        assert json.loads(f.metadata()["identity"])["output"] == "spatial"
    assert maps.shape == (24, 49, 1280) and maps.dtype == torch.float16

    # resume: one epoch, then the second from OUT/last, equals the straight run
    class Interrupted(Exception):
        pass

    def stop(row):
        if row["epoch"] == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(TrainConfig(**settings, out=str(tmp_path / "cut")), on_epoch_end=stop)
    resumed = train(resume_config(tmp_path / "cut"), resume=True)
    assert resumed.steps_run == full.history[-1]["step"] - full.history[0]["step"]
    assert [r["val_loss"] for r in resumed.history] == pytest.approx([r["val_loss"] for r in full.history], rel=1e-6)

    best = tmp_path / "full" / "best"
    config = json.loads((best / CONFIG).read_text())["decoder"]
    assert config["kind"] == "attention" and config["attention_dim"] == 16
    assert config["annotation_dim"] == 512  # the training default: learned annotations
    assert {v.dtype for v in load_file(str(best / WEIGHTS)).values() if v.is_floating_point()} == {torch.float16}
    model = ReferenceCaptioner.load(best)
    assert isinstance(model.decoder, AttentionDecoder) and isinstance(model.encoder, SpatialEncoder)
    assert model.describe()["decoder"]["kind"] == "attention"
    rows = [json.loads(x) for x in (tmp_path / "full" / "test_captions.jsonl").read_text().splitlines()]
    # as trained and tested (min_word_prob=0: the test split was captioned before the run had
    # the domain statistics that shorten out-of-domain captions)
    feats = pipeline.encode_batch(model, [model.preprocess(r["file"]) for r in rows])  # (B, 49, 1280)
    assert feats.shape[1:] == (49, 1280)
    assert [r.caption for r in model.generate(feats, min_word_prob=0)] == [r["caption"] for r in rows]
    results = model.caption_detailed(rows[0]["file"], CaptionOptions(beam_size=3))
    assert results[0].domain_distance is not None and results[0].confidence is not None  # trust reads the pooled map


@pytest.mark.parametrize(("cell", "annotation_dim"), [("lstm", 0), ("gru", 0), ("lstm", 6)])
def test_the_exported_step_agrees_with_pytorch_with_its_attention(cell, annotation_dim):
    from captioner.model.export import decoder_graphs
    from captioner.model.steps import TorchStep
    from captioner.runtime import search
    from captioner.runtime.graphs import OnnxStep

    dec = _decoder(cell, layers=2, annotation_dim=annotation_dim)
    onnx = OnnxStep(*decoder_graphs(dec, (4, 8)))  # exported on a 4-location grid of 8 channels
    feats = _maps(batch=3, locations=49).numpy()  # another grid than the export's
    for run in (
        lambda st: [[h] for h in search.sequential(st, feats, START, END, 8)],
        lambda st: search.beam_search(st, feats, START, END, 8, beam_size=3, num_captions=2),
    ):
        ref, got = run(TorchStep(dec)), run(onnx)
        assert [[h.tokens for h in r] for r in got] == [[h.tokens for h in r] for r in ref]
        for r, g in zip(ref, got):
            for a, b in zip(r, g):
                assert abs(a.score - b.score) < 1e-4
                np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
                np.testing.assert_allclose(a.attention, b.attention, atol=1e-5)  # the recorded maps too


def test_a_batch_that_repeats_maps_annotates_each_once_with_the_same_loss_and_gradients(monkeypatch):
    import captioner.attention as attention

    dec = _decoder(annotation_dim=6, dropout=0.0).train()
    feats = _maps(batch=3)[torch.tensor([0, 0, 1, 2, 1, 0])]  # (6, N, C): three maps, repeated
    tokens = torch.tensor([[START, 4, 5, END], [START, 6, END, 0], [START, 7, 4, END]] * 2)
    rows = attention._repeated_rows(feats)
    assert rows is not None and dec.annotate is not None
    first, inverse = rows
    assert sorted(first.tolist()) == [0, 2, 3] and torch.equal(feats[first][inverse], feats)
    seen: list[int] = []
    annotate = dec.annotate.forward

    def counted(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.size(0))
        return annotate(x)

    monkeypatch.setattr(dec.annotate, "forward", counted)
    loss = dec.loss(feats, tokens)
    grads = torch.autograd.grad(loss, list(dec.parameters()))
    assert seen == [3]  # three distinct maps annotated, not six
    monkeypatch.setattr(attention, "_repeated_rows", lambda f: None)
    ref = dec.loss(feats, tokens)
    torch.testing.assert_close(loss, ref)
    for g, r in zip(grads, torch.autograd.grad(ref, list(dec.parameters()))):
        torch.testing.assert_close(g, r)
    assert seen == [3, 6]
    assert attention._repeated_rows(_maps(batch=4)) is None  # all distinct: nothing to save
