"""Interpretable hidden units: the AUCs are the Mann-Whitney statistic, the labels are the
properties' words, a tiny decoder trained on a language where colour words are trivially
detectable gets a colour unit (while shuffled labels stay at chance), and on the shipped
model `captioner units` finds strong units on 200 held-out scenes and writes a report that
renders in headless Chromium."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from captioner.cli import main
from captioner.decoder import CaptionDecoder, DecoderConfig
from captioner.units import (
    PROPERTIES,
    WordSets,
    analyse_recording,
    auc_matrix,
    label_matrix,
    record,
    word_labels,
)
from captioner.vocab import Vocabulary

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_auc_is_the_fraction_of_positive_negative_pairs_ordered_right():
    rng = np.random.default_rng(0)
    acts = rng.integers(0, 4, size=(40, 3)).astype(np.float32)  # (T, U), many ties
    labels = rng.random((2, 40)) < 0.3  # (P, T)
    auc = auc_matrix(rankdata(acts, axis=0), labels)
    for p in range(2):
        pos, neg = acts[labels[p]], acts[~labels[p]]
        for u in range(3):
            pairs = (pos[:, None, u] > neg[None, :, u]).mean() + 0.5 * (pos[:, None, u] == neg[None, :, u]).mean()
            assert auc[p, u] == pytest.approx(pairs)
    # a property with no positive word has no AUC
    assert np.isnan(auc_matrix(rankdata(acts, axis=0), np.zeros((1, 40), bool))).all()


def test_word_labels_of_a_scene_caption():
    sets = WordSets.from_catalogue(
        [{"name": "dog", "plural": "dogs"}, {"name": "sheep", "plural": "sheep"}], ["green", "light blue"]
    )
    words = ["a", "green", "background", "with", "two", "dogs", "and", "one", "sheep"]
    lab = word_labels(words, sets)
    assert [w for w, x in zip(words, lab["colour"]) if x] == ["green"]
    assert [w for w, x in zip(words, lab["count"]) if x] == ["a", "two", "one"]
    assert [w for w, x in zip(words, lab["object"]) if x] == ["dogs", "sheep"]
    assert [w for w, x in zip(words, lab["plural"]) if x] == ["dogs"]  # "sheep" is either
    assert [w for w, x in zip(words, lab["function"]) if x] == ["a", "with", "and"]
    assert lab["before_end"] == [False] * 8 + [True]
    assert lab["second_half"] == [False] * 5 + [True] * 4
    assert lab["after_background"] == [False] * 3 + [True] * 6
    assert "light" in sets.colours and "blue" in sets.colours
    assert label_matrix([words, words[:2]], sets).shape == (len(PROPERTIES), 11)


COLOURS = ["red", "green", "blue", "yellow"]
OBJECTS = ["dog", "cat", "car", "cup"]


def _colour_language(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Captions of a toy language where every colour word is followed by "paint" (so the
    decoder must know whether it has just read a colour), and the 'image' of each: its
    first object."""
    rng = random.Random(seed)
    captions, images = [], []
    for _ in range(n):
        o = rng.randrange(len(OBJECTS))
        words = [OBJECTS[o]]
        for _ in range(rng.randint(2, 5)):
            words += [rng.choice(COLOURS), "paint"] if rng.random() < 0.4 else [rng.choice(OBJECTS)]
        captions.append(" ".join(words))
        images.append(o)
    return captions, images


def test_a_tiny_trained_decoder_has_a_colour_unit_and_shuffled_labels_stay_at_chance():
    captions, images = _colour_language(300, seed=1)
    vocab = Vocabulary.build(captions)
    torch.manual_seed(0)
    dec = CaptionDecoder(
        DecoderConfig(vocab_size=len(vocab), feature_dim=4, embed_dim=8, hidden_dim=12, img_proj_dim=4, dropout=0.0)
    )
    features = torch.eye(4)[images]  # (B, 4): one-hot object
    T = max(len(vocab.encode(c)) for c in captions)
    tokens = torch.zeros(len(captions), T, dtype=torch.long)  # (B, T)
    for i, c in enumerate(captions):
        ids = vocab.encode(c)
        tokens[i, : len(ids)] = torch.tensor(ids)
    opt = torch.optim.Adam(dec.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        loss = dec.loss(features, tokens)
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 1.5  # it learnt the language
    held_out, held_images = _colour_language(200, seed=2)
    items = [(i, vocab.encode(c, add_special=False)) for i, c in enumerate(held_out)]
    rec = record(dec, vocab, torch.eye(4)[held_images], {"reference": items})
    assert len(rec.units) == 24 and rec.units[0] == "h0:0" and rec.units[12] == "c0:0"
    analysis = analyse_recording(rec, WordSets(colours=frozenset(COLOURS)), shuffles=10)
    best = analysis.top["colour"][0]
    assert best.strength >= 0.9
    assert abs(best.shuffled - 0.5) < 0.1  # the same unit on shuffled labels
    assert analysis.chance_ceiling["colour"] < 0.65  # no unit reaches it on shuffled labels
    assert "object" not in analysis.top  # no object words given: not scored
    data = analysis.to_dict()
    assert data["properties"]["colour"]["top"][0]["unit"] == best.unit
    assert len(data["properties"]["colour"]["reference"]["auc"]) == 24


def test_units_on_the_shipped_model_over_200_held_out_scenes(tmp_path, browser, capsys):
    from captioner.training.scenes import generate_scenes

    data = tmp_path / "scenes"
    generate_scenes(data, {"val": 200}, seed=4242, progress=False)
    out = tmp_path / "report" / "units.html"
    assert main(["units", "--data", str(data), "--split", "val", "--limit", "200", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    result = json.loads((out.parent / "units.json").read_text())
    assert result["images"] == 200 and result["captions"] == {"reference": 1000, "generated": 200}
    best = max(
        ((p, v["top"][0]) for p, v in result["properties"].items() if v["top"]), key=lambda pt: pt[1]["strength"]
    )
    assert best[1]["strength"] >= 0.9, best
    assert best[1]["shuffled"] < 0.6 and result["properties"][best[0]]["chance_ceiling"] < 0.65
    assert out.stat().st_size < 400_000
    text = out.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text  # self-contained

    browser.get(out.as_uri())
    tables = browser.find_elements("css selector", "table.units")
    assert len(tables) == len(result["properties"])
    assert len(tables[0].find_elements("css selector", "tr")) == 1 + 5  # header and the top 5 units
    spans = browser.find_elements("css selector", ".unit .tok")
    assert len(spans) > 100
    colours = {s.value_of_css_property("background-color") for s in spans[:200]}
    assert any(c.startswith("rgba(220, 40, 40") for c in colours)  # red: positive
    assert any(c.startswith("rgba(40, 90, 220") for c in colours)  # blue: negative
    assert len(browser.find_elements("css selector", ".unit.random")) == 3
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
