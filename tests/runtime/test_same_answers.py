"""The torch-free runtime gives the reference path's answers, for both shipped models.

Held-out scenes (a seed no shipped model was trained on) and the photos, greedy and beam 3:
the same tokens, and scores, confidences, per-word log-probabilities and attention maps
within 1e-4 (``bench/same_answers.py`` runs the same comparison on 200 scenes).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.model.agreement import compare
from captioner.training.scenes import generate_scenes

ROOT = Path(__file__).resolve().parents[2]
HELD_OUT_SEED = 424242
SCENES = 24


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("scenes")
    generate_scenes(out, {"test": SCENES}, seed=HELD_OUT_SEED, progress=False)
    scenes = sorted((out / "images" / "test").glob("*.jpg"))
    assert len(scenes) == SCENES
    return scenes + sorted((ROOT / "tests" / "data").glob("*.jpg"))


@pytest.mark.parametrize("model", ["default", "pooled"])
def test_same_tokens_and_numbers_within_1e_4(model, images):
    got = compare(ROOT / "weights" / model, images, beam_sizes=(1, 3))
    assert got.captions == 2 * len(images)
    assert got.token_mismatches == []
    assert got.max_score <= 1e-4 and got.max_confidence <= 1e-4 and got.max_logprob <= 1e-4
    assert got.max_attention <= 1e-4
    if model == "default":  # the attention model's maps were compared, not skipped
        assert got.max_attention > 0.0
