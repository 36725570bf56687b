"""The dynamic batcher on its own, with a fake model that records the batches it sees."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from captioner.service.batcher import Batcher, BatcherStopped


class FakeModel:
    """run_batch that records (batch size, key) and answers each image with its own value."""

    def __init__(self, delay: float = 0.0, fail_key=None) -> None:
        self.delay = delay
        self.fail_key = fail_key
        self.batches: list[tuple[int, object]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, x: torch.Tensor, key):
        assert x.dim() == 4  # (B, 3, H, W)
        self.gate.wait(10)
        self.batches.append((x.size(0), key))
        time.sleep(self.delay)
        if key == self.fail_key:
            raise RuntimeError("model exploded")
        return [f"{key}:{int(v)}" for v in x[:, 0, 0, 0].tolist()]


def img(v: float) -> torch.Tensor:
    return torch.full((3, 2, 2), float(v))  # (3, H, W)


def test_idle_model_runs_a_lone_image_at_once():
    model = FakeModel()
    b = Batcher(model, max_batch_size=8, max_wait_s=5.0).start()  # a long max wait must not apply when idle
    try:
        t = time.monotonic()
        result, info = b.submit(img(3), "k").result(timeout=5)
        assert time.monotonic() - t < 2.0
        assert result == "k:3" and info.size == 1
    finally:
        b.stop(5)


def test_images_queued_while_busy_share_a_batch_and_results_go_back_in_order():
    model = FakeModel()
    b = Batcher(model, max_batch_size=4, max_wait_s=0.0).start()
    try:
        model.gate.clear()  # hold the worker inside the first batch
        first = b.submit(img(0), "k")
        time.sleep(0.1)
        futures = [b.submit(img(i), "k") for i in range(1, 10)]  # queue up while busy
        assert b.depth == 9
        model.gate.set()
        assert first.result(5)[0] == "k:0"
        assert [f.result(5)[0] for f in futures] == [f"k:{i}" for i in range(1, 10)]
        assert [n for n, _ in model.batches] == [1, 4, 4, 1]  # never above max_batch_size
    finally:
        b.stop(5)


def test_only_compatible_options_are_batched_together_oldest_first():
    model = FakeModel()
    b = Batcher(model, max_batch_size=16, max_wait_s=0.0).start()
    try:
        model.gate.clear()
        b.submit(img(0), "greedy")
        time.sleep(0.1)
        keys = ["beam3", "greedy", "beam3", "greedy", "greedy"]
        futures = [b.submit(img(i), k) for i, k in enumerate(keys, 1)]
        model.gate.set()
        assert [f.result(5)[0] for f in futures] == [f"{k}:{i}" for i, k in enumerate(keys, 1)]
        assert model.batches == [(1, "greedy"), (2, "beam3"), (3, "greedy")]
    finally:
        b.stop(5)


def test_busy_worker_waits_up_to_max_wait_for_a_fuller_batch():
    model = FakeModel()
    b = Batcher(model, max_batch_size=4, max_wait_s=5.0).start()
    try:
        model.gate.clear()
        b.submit(img(0), "k")
        time.sleep(0.05)
        b.submit(img(1), "k")
        model.gate.set()  # the worker comes back busy: it waits for more images to arrive
        time.sleep(0.1)
        t = time.monotonic()
        late = [b.submit(img(i), "k") for i in (2, 3, 4)]
        [f.result(5) for f in late]
        assert time.monotonic() - t < 4.0  # a full batch starts without waiting out max_wait
        assert [n for n, _ in model.batches] == [1, 4]
    finally:
        b.stop(5)


def test_cancelled_images_are_skipped_and_a_failing_batch_fails_only_its_images():
    model = FakeModel(fail_key="bad")
    b = Batcher(model, max_batch_size=8, max_wait_s=0.0).start()
    try:
        model.gate.clear()
        b.submit(img(0), "ok")
        time.sleep(0.1)
        gone = b.submit(img(1), "ok")
        kept = b.submit(img(2), "ok")
        bad = b.submit(img(3), "bad")
        assert gone.cancel()
        model.gate.set()
        assert kept.result(5)[0] == "ok:2"
        with pytest.raises(RuntimeError, match="exploded"):
            bad.result(5)
        assert (1, "ok") in model.batches and (2, "ok") not in model.batches  # the cancelled one never ran
        assert b.submit(img(4), "ok").result(5)[0] == "ok:4"  # the worker survived the failure
    finally:
        b.stop(5)


def test_stop_drains_the_queue_then_refuses_new_images():
    model = FakeModel(delay=0.01)
    b = Batcher(model, max_batch_size=2, max_wait_s=0.0).start()
    model.gate.clear()
    futures = [b.submit(img(i), "k") for i in range(5)]
    threading.Timer(0.1, model.gate.set).start()
    assert b.stop(10)
    assert [f.result(0)[0] for f in futures] == [f"k:{i}" for i in range(5)]
    with pytest.raises(BatcherStopped):
        b.submit(img(9), "k")


def test_retry_estimate_grows_with_the_queue():
    model = FakeModel()
    b = Batcher(model, max_batch_size=2, max_wait_s=0.0)  # not started: everything stays queued
    for i in range(6):
        b.submit(img(i), "k")
    assert b.estimated_wait_s(0) < b.estimated_wait_s(10)
