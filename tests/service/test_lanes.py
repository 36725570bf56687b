"""Lanes and encoder threads: a batch that runs alone has every encoder thread (one lane's
latency), one that runs beside another lane's batch its share (the lanes' throughput)."""

from __future__ import annotations

import numpy as np
import pytest

from captioner.runtime.captioner import Captioner
from captioner.service.batcher import Batcher
from captioner.service.captioning import CaptionService, GenerationOptions, _lane_model
from captioner.service.metrics import Metrics
from captioner.service.settings import Settings


def images(n: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 3, 224, 224)).astype(np.float32)  # (B, 3, S, S)


def test_the_lane_model_shares_the_decoder_and_answers_the_same(checkpoint):
    model = Captioner.load(checkpoint, threads=2)
    beside = _lane_model(model, 2)
    assert isinstance(beside, Captioner)
    assert (model.encoder.threads, beside.encoder.threads) == (2, 1)
    assert beside.encoder.session is not model.encoder.session  # its own session, its own threads
    assert beside.step is model.step and beside.vocab is model.vocab
    x = images(3)
    alone, shared = model.encode_started(x), beside.encode_started(x)
    np.testing.assert_allclose(shared.features, alone.features, atol=1e-5)
    np.testing.assert_allclose(shared.memory, alone.memory, atol=1e-5)
    assert [r.caption for r in beside.generate(shared)] == [r.caption for r in model.generate(alone)]


def test_no_lane_model_where_there_is_nothing_to_split(checkpoint):
    assert _lane_model(Captioner.load(checkpoint, threads=2), 1) is None  # one lane
    assert _lane_model(Captioner.load(checkpoint, threads=1), 2) is None  # one thread to share


@pytest.mark.parametrize(("busy", "used"), [(1, "alone"), (2, "beside")])
def test_a_batch_takes_every_thread_alone_and_its_share_beside_another(checkpoint, monkeypatch, busy, used):
    model = Captioner.load(checkpoint, threads=2)
    service = CaptionService(model, Settings(lanes=2, decode_in="threads"), Metrics())
    assert service._beside is not None
    calls: list[str] = []
    for name, captioner in (("alone", model), ("beside", service._beside)):
        run = captioner.encoder.started
        monkeypatch.setattr(captioner.encoder, "started", lambda b, run=run, name=name: calls.append(name) or run(b))
    monkeypatch.setattr(Batcher, "busy", property(lambda self: busy))  # batches running, this one included
    try:
        results = service._run_batch(images(2), GenerationOptions(beam_size=1, max_length=4))
    finally:
        service.stop(timeout=5)
    assert calls == [used] and len(results) == 2
