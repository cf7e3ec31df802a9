"""Request micro-batching: concurrent submissions gathered into one call in a worker thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]


class MicroBatcher(Generic[T, R]):
    """Gathers concurrent submissions and runs them as one call of ``run`` in ``executor``.

    A batch opens with the first waiting item and closes after ``window_s`` or once the
    items' total ``size`` reaches ``max_size``. If a batched call fails, its items are retried
    one by one so that one bad item fails only its own submission.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R]],
        executor: Executor,
        *,
        window_s: float,
        max_size: int,
        size: Callable[[T], int],
    ) -> None:
        self._run = run
        self._executor = executor
        self._window_s = window_s
        self._max_size = max_size
        self._size = size
        self._queue: asyncio.Queue[_Pending[T, R]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        """How many batched calls of ``run`` have been made."""

    def start(self) -> None:
        """Start gathering (call from within the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        """Stop gathering; waiting submissions are cancelled."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while not self._queue.empty():
            self._queue.get_nowait().future.cancel()

    async def submit(self, item: T) -> R:
        """The result of ``run`` for ``item``, computed in a batch with concurrent items."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(item, future))
        return await future

    async def _gather(self) -> list[_Pending[T, R]]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        total = self._size(batch[0].item)
        deadline = loop.time() + self._window_s
        while total < self._max_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                pending = await asyncio.wait_for(self._queue.get(), remaining)
            except TimeoutError:
                break
            batch.append(pending)
            total += self._size(pending.item)
        return [p for p in batch if not p.future.cancelled()]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            self.batches += 1
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run, [p.item for p in batch]
                )
            except Exception:
                for pending in batch:
                    await self._run_alone(pending)
                continue
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)

    async def _run_alone(self, pending: _Pending[T, R]) -> None:
        loop = asyncio.get_running_loop()
        try:
            (result,) = await loop.run_in_executor(self._executor, self._run, [pending.item])
        except Exception as err:
            if not pending.future.done():
                pending.future.set_exception(err)
            return
        if not pending.future.done():
            pending.future.set_result(result)
