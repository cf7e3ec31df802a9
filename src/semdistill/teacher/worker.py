"""The decoder in a thread of its own, fed from any thread: what a server runs the model on.

:class:`EngineWorker` owns the model: one thread steps the :class:`~semdistill.teacher.engine.
Engine` while it has work and sleeps otherwise. Jobs come in through :meth:`EngineWorker.
enqueue` (refused with :class:`QueueFull` once ``max_queue`` wait for their prefill), and
any other model work (scoring a batch of prompts, embedding answers) through the
:class:`~concurrent.futures.Executor` interface; such calls run in the same thread between two
decoding steps, so the model is never used by two threads at once.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

from semdistill.teacher.engine import Engine
from semdistill.teacher.jobs import Cancelled, Job

_log = logging.getLogger(__name__)


class QueueFull(Exception):
    """As many jobs as the worker accepts are already waiting for their prefill."""


@dataclass(frozen=True)
class WorkerStats:
    """A snapshot: jobs waiting for their prefill, jobs and answer rows being decoded, and
    answer tokens decoded since the start."""

    queued: int
    max_queue: int
    jobs_in_flight: int
    rows_in_flight: int
    max_rows: int
    decoded_tokens: int


class EngineWorker(Executor):
    """Runs ``engine`` in a thread named ``name``; at most ``max_queue`` jobs wait."""

    def __init__(self, engine: Engine, *, max_queue: int, name: str = "semdistill-decoder") -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be positive, got {max_queue}")
        self.engine = engine
        self.max_queue = max_queue
        self._wake = threading.Condition()
        self._jobs: deque[Job] = deque()
        self._calls: deque[tuple[Future, Callable[..., Any], tuple, dict]] = deque()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def enqueue(self, job: Job) -> None:
        """Hand ``job`` to the decoder; :class:`QueueFull` if ``max_queue`` jobs wait."""
        with self._wake:
            if self._stopping:
                raise RuntimeError("the decoder has shut down")
            if len(self._jobs) + self.engine.waiting >= self.max_queue:
                raise QueueFull(
                    f"{self.max_queue} requests are already waiting for the model; retry later"
                )
            self._jobs.append(job)
            self._wake.notify()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` in the decoder's thread, between two steps."""
        future: Future = Future()
        with self._wake:
            if self._stopping:
                raise RuntimeError("the decoder has shut down")
            self._calls.append((future, fn, args, kwargs))
            self._wake.notify()
        return future

    def stats(self) -> WorkerStats:
        """Queue depth, work in flight and tokens decoded, as of now."""
        engine = self.engine
        return WorkerStats(
            queued=len(self._jobs) + engine.waiting,
            max_queue=self.max_queue,
            jobs_in_flight=engine.jobs_in_flight,
            rows_in_flight=engine.rows_in_flight,
            max_rows=engine.max_rows,
            decoded_tokens=engine.clock.decoded_tokens,
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the thread; jobs not finished end as cancelled, pending calls are cancelled."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if wait:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._stopping or self._jobs or self._calls or self.engine.busy):
                    self._wake.wait()
                if self._stopping:
                    break
                jobs, self._jobs = self._jobs, deque()
                calls, self._calls = self._calls, deque()
            for future, fn, args, kwargs in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args, **kwargs))
                    except BaseException as err:
                        future.set_exception(err)
            for job in jobs:
                self.engine.submit(job)
            if self.engine.busy:
                try:
                    self.engine.step()
                except Exception as err:  # a bug in a step must not stop the server
                    _log.exception("a decoding step failed; its jobs end with the error")
                    self.engine.fail_all(err)
        self._close()

    def _close(self) -> None:
        """End what is left: every job as cancelled, calls not yet run cancelled."""
        with self._wake:
            jobs, calls = list(self._jobs), list(self._calls)
            self._jobs.clear()
            self._calls.clear()
        for job in jobs:
            self.engine.submit(job)
        self.engine.fail_all(Cancelled("the server is shutting down"))
        for job in self.engine.pending:
            job.cancel()
        self.engine.drop_stopped()
        for future, *_ in calls:
            future.cancel()
