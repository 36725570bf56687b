"""The dynamic batcher on its own, with a fake model that records the batches it sees.

No test sleeps to "hold" the worker: the fake model blocks on an event (``gate``) and
signals another (``entered``) when a batch reaches it, so each test knows exactly where
the worker is before it queues more images. Time appears only as generous limits on
waiting for a result (far above what the rule under test allows, far below the rule's
alternative, e.g. a max_wait of 600 s), so a slow machine cannot fail them.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from captioner.service.batcher import Batcher, BatcherStopped

WAIT_S = 60.0  # how long a test waits for something that takes milliseconds when correct


class FakeModel:
    """run_batch that records (batch size, key) and answers each image with its own value.

    ``gate`` (set by default) holds the worker inside a batch while cleared; ``entered``
    is set each time a batch reaches the model."""

    def __init__(self, fail_key=None) -> None:
        self.fail_key = fail_key
        self.batches: list[tuple[int, object]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, x: np.ndarray, key):
        assert x.ndim == 4  # (B, 3, H, W)
        self.batches.append((x.shape[0], key))
        self.entered.set()
        assert self.gate.wait(WAIT_S), "the test never released the model"
        if key == self.fail_key:
            raise RuntimeError("model exploded")
        return [f"{key}:{int(v)}" for v in x[:, 0, 0, 0].tolist()]

    def hold(self) -> None:
        """The next batch to reach the model stays there until ``gate`` is set."""
        self.gate.clear()
        self.entered.clear()

    def wait_entered(self) -> None:
        assert self.entered.wait(WAIT_S), "no batch reached the model"


def img(v: float) -> np.ndarray:
    return np.full((3, 2, 2), float(v), dtype=np.float32)  # (3, H, W)


def wait_until(predicate, what: str) -> None:
    """Poll a condition of the batcher's own state (no fixed sleep)."""
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.001)


def test_idle_model_runs_a_lone_image_at_once():
    model = FakeModel()
    # A max wait of 600 s must not apply when the worker is idle: if it did, the result
    # would not come within WAIT_S.
    b = Batcher(model, max_batch_size=8, max_wait_s=600.0).start()
    try:
        result, info = b.submit(img(3), "k").result(timeout=WAIT_S)
        assert result == "k:3" and info.size == 1
    finally:
        b.stop(5)


def test_images_queued_while_busy_share_a_batch_and_results_go_back_in_order():
    model = FakeModel()
    b = Batcher(model, max_batch_size=4, max_wait_s=0.0).start()
    try:
        model.hold()
        first = b.submit(img(0), "k")
        model.wait_entered()  # the worker is inside the first batch
        futures = [b.submit(img(i), "k") for i in range(1, 10)]  # queue up while busy
        assert b.depth == 9
        model.gate.set()
        assert first.result(WAIT_S)[0] == "k:0"
        assert [f.result(WAIT_S)[0] for f in futures] == [f"k:{i}" for i in range(1, 10)]
        assert [n for n, _ in model.batches] == [1, 4, 4, 1]  # never above max_batch_size
    finally:
        b.stop(5)


def test_only_compatible_options_are_batched_together_oldest_first():
    model = FakeModel()
    b = Batcher(model, max_batch_size=16, max_wait_s=0.0).start()
    try:
        model.hold()
        b.submit(img(0), "greedy")
        model.wait_entered()
        keys = ["beam3", "greedy", "beam3", "greedy", "greedy"]
        futures = [b.submit(img(i), k) for i, k in enumerate(keys, 1)]
        model.gate.set()
        assert [f.result(WAIT_S)[0] for f in futures] == [f"{k}:{i}" for i, k in enumerate(keys, 1)]
        assert model.batches == [(1, "greedy"), (2, "beam3"), (3, "greedy")]
    finally:
        b.stop(5)


def test_busy_worker_waits_up_to_max_wait_for_a_fuller_batch():
    model = FakeModel()
    b = Batcher(model, max_batch_size=4, max_wait_s=600.0).start()
    try:
        model.hold()
        first = b.submit(img(0), "k")
        model.wait_entered()
        b.submit(img(1), "k")
        model.gate.set()  # the worker comes back busy: it takes image 1 and waits for more
        first.result(WAIT_S)
        wait_until(lambda: b.depth == 0, "the worker took image 1 into its next batch")
        late = [b.submit(img(i), "k") for i in (2, 3, 4)]
        # A full batch starts without waiting out max_wait (600 s): else no result in WAIT_S.
        assert [f.result(WAIT_S)[0] for f in late] == ["k:2", "k:3", "k:4"]
        assert [n for n, _ in model.batches] == [1, 4]  # image 1 waited for the late ones
    finally:
        b.stop(5)


def test_a_batch_that_does_not_fill_runs_after_max_wait():
    model = FakeModel()
    b = Batcher(model, max_batch_size=4, max_wait_s=0.05).start()
    try:
        model.hold()
        first = b.submit(img(0), "k")
        model.wait_entered()
        second = b.submit(img(1), "k")
        model.gate.set()
        assert first.result(WAIT_S)[0] == "k:0"
        assert second.result(WAIT_S)[0] == "k:1"  # nobody else came: it ran alone
        assert [n for n, _ in model.batches] == [1, 1]
    finally:
        b.stop(5)


def test_cancelled_images_are_skipped_and_a_failing_batch_fails_only_its_images():
    model = FakeModel(fail_key="bad")
    b = Batcher(model, max_batch_size=8, max_wait_s=0.0).start()
    try:
        model.hold()
        b.submit(img(0), "ok")
        model.wait_entered()
        gone = b.submit(img(1), "ok")
        kept = b.submit(img(2), "ok")
        bad = b.submit(img(3), "bad")
        assert gone.cancel()
        model.gate.set()
        assert kept.result(WAIT_S)[0] == "ok:2"
        with pytest.raises(RuntimeError, match="exploded"):
            bad.result(WAIT_S)
        assert (1, "ok") in model.batches and (2, "ok") not in model.batches  # the cancelled one never ran
        assert b.submit(img(4), "ok").result(WAIT_S)[0] == "ok:4"  # the worker survived the failure
    finally:
        b.stop(5)


def test_stop_drains_the_queue_then_refuses_new_images():
    model = FakeModel()
    b = Batcher(model, max_batch_size=2, max_wait_s=0.0).start()
    model.hold()
    futures = [b.submit(img(i), "k") for i in range(5)]
    model.wait_entered()  # the first batch is in the model, the rest still queued
    stopper = threading.Thread(target=b.stop, args=(WAIT_S,))
    stopper.start()
    wait_until(lambda: not b.running, "stop() marked the batcher as stopping")
    with pytest.raises(BatcherStopped):
        b.submit(img(9), "k")  # refused while the queue is still draining
    assert not all(f.done() for f in futures)
    model.gate.set()
    stopper.join(WAIT_S)
    assert not stopper.is_alive()
    assert [f.result(0)[0] for f in futures] == [f"k:{i}" for i in range(5)]
    assert sum(n for n, _ in model.batches) == 5 and max(n for n, _ in model.batches) <= 2
    with pytest.raises(BatcherStopped):
        b.submit(img(9), "k")


def test_retry_estimate_grows_with_the_queue():
    model = FakeModel()
    b = Batcher(model, max_batch_size=2, max_wait_s=0.0)  # not started: everything stays queued
    for i in range(6):
        b.submit(img(i), "k")
    assert b.estimated_wait_s(0) < b.estimated_wait_s(10)


def test_retry_estimate_is_batches_ahead_times_the_smoothed_batch_time():
    model = FakeModel()
    b = Batcher(model, max_batch_size=4, max_wait_s=0.0)  # not started: everything stays queued
    # Before any batch ran, a batch is assumed to take 0.5 s.
    assert b.estimated_wait_s(0) == 0.0
    assert b.estimated_wait_s(1) == pytest.approx(0.5)  # ceil(1 / 4) = 1 batch
    for i in range(5):
        b.submit(img(i), "k")
    assert b.depth == 5
    assert b.estimated_wait_s(0) == pytest.approx(1.0)  # ceil(5 / 4) = 2 batches
    assert b.estimated_wait_s(3) == pytest.approx(1.0)  # ceil(8 / 4) = 2
    assert b.estimated_wait_s(4) == pytest.approx(1.5)  # ceil(9 / 4) = 3
    b._busy = 1  # a batch running counts as one more ahead
    assert b.estimated_wait_s(0) == pytest.approx(1.5)
    b._busy = 0
    b._ewma_batch_s = 0.2  # measured batches replace the assumption
    assert b.estimated_wait_s(0) == pytest.approx(0.4)
    two = Batcher(model, max_batch_size=4, max_wait_s=0.0, lanes=2)  # two lanes share the queue
    for i in range(5):
        two.submit(img(i), "k")
    assert two.estimated_wait_s(0) == pytest.approx(0.5)  # 2 batches, two at a time


def test_smoothed_batch_time_follows_measured_batches():
    model = FakeModel()
    b = Batcher(model, max_batch_size=1, max_wait_s=0.0).start()
    try:
        b.submit(img(1), "k").result(timeout=WAIT_S)
        first = b._ewma_batch_s
        assert first is not None and 0 < first < WAIT_S  # the first batch sets it
        b.submit(img(2), "k").result(timeout=WAIT_S)
        wait_until(lambda: not b._busy, "the worker is idle")
        assert b._ewma_batch_s is not None and b._ewma_batch_s > 0
    finally:
        b.stop(5)


def test_submit_many_queues_one_requests_images_together_in_order():
    model = FakeModel()
    b = Batcher(model, max_batch_size=8, max_wait_s=0.0)
    futures = b.submit_many([img(i) for i in range(5)], "k")
    assert len(futures) == 5 and b.depth == 5 and not any(f.done() for f in futures)
    b.start()
    try:
        results = [f.result(timeout=WAIT_S) for f in futures]
        assert [r for r, _ in results] == [f"k:{i}" for i in range(5)]  # each image its own answer
        assert model.batches == [(5, "k")]  # queued at once: one batch
        assert all(info.size == 5 for _, info in results)
    finally:
        b.stop(5)
    with pytest.raises(BatcherStopped):
        b.submit_many([img(9)], "k")


def test_stop_says_whether_the_worker_finished_in_time():
    model = FakeModel()
    b = Batcher(model, max_batch_size=1, max_wait_s=0.0).start()
    model.hold()
    future = b.submit(img(1), "k")
    model.wait_entered()  # the worker is inside a batch the test holds
    assert b.stop(timeout=0.05) is False  # still running after the timeout
    assert not b.running
    model.gate.set()
    assert b.stop(timeout=WAIT_S) is True
    assert future.result(timeout=WAIT_S)[0] == "k:1"  # the batch in flight still finished


class HoldFirst:
    """run_batch that holds the first batch (until ``release``) and answers later ones at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls = 0
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray, key):
        with self.lock:
            self.calls += 1
            first = self.calls == 1
            self.threads.add(threading.current_thread().name)
        if first:
            self.entered.set()
            assert self.release.wait(WAIT_S), "the test never released the first batch"
        return [f"{key}:{int(v)}" for v in x[:, 0, 0, 0].tolist()]


def test_a_second_lane_runs_batches_while_the_first_is_held_and_stop_drains_both():
    model = HoldFirst()
    b = Batcher(model, max_batch_size=2, max_wait_s=0.0, lanes=2).start()
    try:
        assert b.lanes == 2
        first = b.submit(img(0), "k")
        assert model.entered.wait(WAIT_S)  # lane one is inside the first batch
        later = [b.submit(img(i), "k") for i in range(1, 6)]
        # With one lane these could not finish before the first batch is released.
        assert [f.result(WAIT_S)[0] for f in later] == [f"k:{i}" for i in range(1, 6)]
        assert not first.done()
        model.release.set()
        assert first.result(WAIT_S)[0] == "k:0"
        assert len(model.threads) == 2  # both lanes ran batches
    finally:
        assert b.stop(WAIT_S) is True
    assert not b.running


def test_lanes_below_one_are_refused():
    with pytest.raises(ValueError, match="lanes"):
        Batcher(FakeModel(), lanes=0)
