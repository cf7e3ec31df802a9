"""The decoder in a thread of its own, fed from any thread: what a server runs the model on.

:class:`EngineWorker` owns the model: one thread steps the
:class:`~semdistill.teacher.decoder.engine.Engine` while it has work and sleeps otherwise.
Jobs come in through :meth:`EngineWorker.enqueue` (refused with :class:`QueueFull` once
``max_queue`` wait for their prefill), and any other model work (scoring a batch of prompts,
embedding answers) through the
:class:`~concurrent.futures.Executor` interface; such calls run in the same thread between two
decoding steps, so the model is never used by two threads at once.

Sharing the thread: plain :meth:`submit` calls (short ones, such as verifying a finished
answer) run first, before the next step. Bulk work (scoring) waits in named lanes
(:meth:`EngineWorker.lane`), taken round-robin one call at a time, so a call of one lane
waits for at most one call of each other lane; and while the decoder has work, a bulk call
runs only once the decoding steps since the previous one have taken :data:`DECODE_SHARE`
times as long as that call did. Bulk work thus gets at most a quarter of the thread while
answers decode, and decoding keeps stepping, at a granularity of one call (callers keep
calls small). Requests other than jobs take a place in the same bounded queue through
:meth:`EngineWorker.admitted`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from semdistill.teacher.decoder.engine import Engine
from semdistill.teacher.decoder.jobs import Cancelled, Job

_log = logging.getLogger(__name__)

DEFAULT_LANE = "default"
DECODE_SHARE = 3.0
"""Seconds of decoding owed per second of bulk work while the decoder has work."""
_Call = tuple[Future, Callable[..., Any], tuple, dict]


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
        self._lanes: dict[str, deque[_Call]] = {DEFAULT_LANE: deque()}
        self._turn = 0
        self._owed_s = 0.0
        self._admitted = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def enqueue(self, job: Job, *, admitted: bool = False) -> None:
        """Hand ``job`` to the decoder; :class:`QueueFull` if ``max_queue`` jobs wait, unless
        the caller holds a place (:meth:`admitted`) for it."""
        with self._wake:
            if self._stopping:
                raise RuntimeError("the decoder has shut down")
            if not admitted:
                self._check_room()
            self._jobs.append(job)
            self._wake.notify()

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold a place in the queue that jobs wait in, for a request served by calls;
        :class:`QueueFull` if ``max_queue`` jobs and requests already wait."""
        with self._wake:
            self._check_room()
            self._admitted += 1
        try:
            yield
        finally:
            with self._wake:
                self._admitted -= 1

    def _check_room(self) -> None:
        if len(self._jobs) + self.engine.waiting + self._admitted >= self.max_queue:
            raise QueueFull(
                f"{self.max_queue} requests are already waiting for the model; retry later"
            )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` in the decoder's thread, between two steps (default
        lane)."""
        return self._submit(DEFAULT_LANE, fn, args, kwargs)

    def lane(self, name: str) -> Executor:
        """An executor whose calls are bulk work waiting in lane ``name`` (see the module
        on sharing)."""
        if name == DEFAULT_LANE:
            raise ValueError(f"lane {DEFAULT_LANE!r} is the one submit() uses; name another")
        with self._wake:
            self._lanes.setdefault(name, deque())
        return _Lane(self, name)

    def _submit(self, lane: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Future:
        future: Future = Future()
        with self._wake:
            if self._stopping:
                raise RuntimeError("the decoder has shut down")
            self._lanes[lane].append((future, fn, args, kwargs))
            self._wake.notify()
        return future

    def _next_call(self) -> tuple[_Call, bool] | None:
        """The next call and whether it is bulk work: a default-lane call first, else the
        bulk lanes round-robin unless decoding is owed time; None if none may run (call
        with the lock held)."""
        if self._lanes[DEFAULT_LANE]:
            return self._lanes[DEFAULT_LANE].popleft(), False
        if self.engine.busy and self._owed_s > 0:
            return None
        bulk = [queue for name, queue in self._lanes.items() if name != DEFAULT_LANE]
        for offset in range(len(bulk)):
            queue = bulk[(self._turn + offset) % len(bulk)]
            if queue:
                self._turn = (self._turn + offset + 1) % len(bulk)
                return queue.popleft(), True
        return None

    def stats(self) -> WorkerStats:
        """Queue depth, work in flight and tokens decoded, as of now."""
        engine = self.engine
        return WorkerStats(
            queued=len(self._jobs) + engine.waiting + self._admitted,
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
                while not (
                    self._stopping or self._jobs or self.engine.busy or any(self._lanes.values())
                ):
                    self._wake.wait()
                if self._stopping:
                    break
                jobs, self._jobs = self._jobs, deque()
            for job in jobs:
                self.engine.submit(job)
            if self.engine.busy:  # a new job is prefilled before any call runs
                started = time.monotonic()
                try:
                    self.engine.step()
                except Exception as err:  # a bug in a step must not stop the server
                    _log.exception("a decoding step failed; its jobs end with the error")
                    self.engine.fail_all(err)
                self._owed_s = max(0.0, self._owed_s - (time.monotonic() - started))
            else:
                self._owed_s = 0.0
            with self._wake:
                call = self._next_call()
            if call is not None:
                started = time.monotonic()
                _run_call(call[0])
                if call[1]:
                    self._owed_s += DECODE_SHARE * (time.monotonic() - started)
        self._close()

    def _close(self) -> None:
        """End what is left: every job as cancelled, calls not yet run cancelled."""
        with self._wake:
            jobs = list(self._jobs)
            calls = [call for lane in self._lanes.values() for call in lane]
            self._jobs.clear()
            for lane in self._lanes.values():
                lane.clear()
        for job in jobs:
            self.engine.submit(job)
        self.engine.fail_all(Cancelled("the server is shutting down"))
        for job in self.engine.pending:
            job.cancel()
        self.engine.drop_stopped()
        for future, *_ in calls:
            future.cancel()


def _run_call(call: _Call) -> None:
    future, fn, args, kwargs = call
    if future.set_running_or_notify_cancel():
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:
            future.set_exception(err)


class _Lane(Executor):
    """Submits to one lane of an :class:`EngineWorker`."""

    def __init__(self, worker: EngineWorker, name: str) -> None:
        self._worker = worker
        self._name = name

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` in the decoder's thread, in this lane's turn."""
        return self._worker._submit(self._name, fn, args, kwargs)
