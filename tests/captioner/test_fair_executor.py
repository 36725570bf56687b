"""FairExecutor: groups take turns, and one group never holds every worker.

No timing: jobs block on events the test releases, and the order they ran in is recorded."""

from __future__ import annotations

import contextvars
import threading

import pytest

from captioner.fair_executor import DECODE_GROUP, FairExecutor

WAIT_S = 30.0  # a hang guard only


def submit_as(pool: FairExecutor, group: object, fn, *args):
    """Submit from a context whose DECODE_GROUP is ``group`` (as a request's task does)."""
    ctx = contextvars.copy_context()
    ctx.run(DECODE_GROUP.set, group)
    return ctx.run(pool.submit, fn, *args)


def test_one_group_cannot_hold_every_worker() -> None:
    pool = FairExecutor(2)
    gate = threading.Event()
    started: list[str] = []
    try:
        hogs = [
            submit_as(pool, "big request", lambda i=i: (started.append(f"big{i}"), gate.wait(WAIT_S))) for i in range(6)
        ]
        small = submit_as(pool, "small request", lambda: started.append("small") or "captioned")
        # The first big job holds one worker; the second worker is kept for another request.
        assert small.result(timeout=WAIT_S) == "captioned"
        assert started == ["big0", "small"]
    finally:
        gate.set()
        for f in hogs:
            f.result(timeout=WAIT_S)
        pool.shutdown()
    assert started[2:] == [f"big{i}" for i in range(1, 6)]


def test_groups_take_turns() -> None:
    pool = FairExecutor(1)
    gate = threading.Event()
    order: list[str] = []
    try:
        blocker = submit_as(pool, "first", gate.wait, WAIT_S)
        futures = [submit_as(pool, "a", order.append, f"a{i}") for i in range(3)]
        futures += [submit_as(pool, "b", order.append, f"b{i}") for i in range(2)]
        futures += [submit_as(pool, "c", order.append, "c0")]
        gate.set()
        blocker.result(timeout=WAIT_S)
        for f in futures:
            f.result(timeout=WAIT_S)
    finally:
        pool.shutdown()
    assert order == ["a0", "b0", "c0", "a1", "b1", "a2"]


def test_errors_reach_the_caller_and_shutdown_runs_or_cancels_what_waits() -> None:
    pool = FairExecutor(1)
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda: 1 / 0).result(timeout=WAIT_S)
    gate, started = threading.Event(), threading.Event()
    running = pool.submit(lambda: started.set() or gate.wait(WAIT_S))
    waiting = pool.submit(lambda: "ran")
    assert started.wait(WAIT_S)
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert running.result(timeout=WAIT_S) is True
    assert waiting.cancelled()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: None)

    pool = FairExecutor(2)
    gate = threading.Event()
    futures = [pool.submit(gate.wait, WAIT_S) for _ in range(3)] + [pool.submit(lambda: "queued")]
    gate.set()
    pool.shutdown(wait=True)  # without cancel_futures the queued jobs still run
    assert [f.result(timeout=0) for f in futures] == [True, True, True, "queued"]
