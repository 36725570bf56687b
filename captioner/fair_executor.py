"""A thread pool that serves its callers in turn, so one caller cannot hold every worker.

``ThreadPoolExecutor`` runs jobs in the order they were submitted: a request of sixteen
slow images submitted first keeps every decode thread busy until all sixteen are done, and
a one-image request behind it waits that long. :class:`FairExecutor` keeps one queue per
*group* (the service uses one group per request) and its workers take the next job from
the groups in turn (round robin), skipping a group that already runs ``per_group`` jobs
(by default every worker but one, so with two or more workers a newcomer never waits for
a whole other request, only for a worker to finish its current job).

The group of a job is the value of :data:`DECODE_GROUP` in the context that submits it.
``loop.run_in_executor`` calls ``submit`` in the calling task's context, so a request
handler that sets the variable before it awaits its decodes groups them all, with no
change to the code in between.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor, Future
from contextvars import ContextVar
from typing import Any

#: The group the jobs submitted from this context belong to (None: one shared group).
DECODE_GROUP: ContextVar[Hashable] = ContextVar("decode_group", default=None)

_Job = tuple[Future, Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class FairExecutor(Executor):
    """``max_workers`` threads; jobs of different groups run in turn, at most ``per_group``
    of one group at once (default ``max(1, max_workers - 1)``)."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "fair", per_group: int | None = None) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.per_group = per_group if per_group is not None else max(1, max_workers - 1)
        self._queues: OrderedDict[Hashable, deque[_Job]] = OrderedDict()  # groups with waiting jobs, in turn
        self._running: dict[Hashable, int] = {}
        self._cond = threading.Condition()
        self._shutdown = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{thread_name_prefix}_{i}", daemon=True)
            for i in range(max_workers)
        ]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        group = DECODE_GROUP.get()
        with self._cond:
            if self._shutdown:
                raise RuntimeError("cannot submit to a FairExecutor that was shut down")
            self._queues.setdefault(group, deque()).append((future, fn, args, kwargs))
            self._cond.notify()
        return future

    def _next(self) -> tuple[Hashable, _Job] | None:
        """The first group in turn that may run one more job (it moves to the back), or None."""
        for group, jobs in self._queues.items():
            if self._running.get(group, 0) < self.per_group:
                job = jobs.popleft()
                if jobs:
                    self._queues.move_to_end(group)
                else:
                    del self._queues[group]
                self._running[group] = self._running.get(group, 0) + 1
                return group, job
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                picked = self._next()
                while picked is None:
                    if self._shutdown:
                        return
                    self._cond.wait()
                    picked = self._next()
            group, (future, fn, args, kwargs) = picked
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args, **kwargs))
                    except BaseException as e:  # handed to the caller, as ThreadPoolExecutor does
                        future.set_exception(e)
            finally:
                with self._cond:
                    self._running[group] -= 1
                    if not self._running[group]:
                        del self._running[group]
                    self._cond.notify_all()  # a job of this group may be runnable now

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking jobs; run the queued ones (or cancel them) and end the threads."""
        with self._cond:
            self._shutdown = True
            if cancel_futures:
                for jobs in self._queues.values():
                    for future, *_ in jobs:
                        future.cancel()
                self._queues.clear()
            self._cond.notify_all()
        if wait:
            for t in self._threads:
                t.join()
