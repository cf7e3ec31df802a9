"""Guarded chat completions answered by an upstream vLLM server (``serve --upstream URL``).

A request is a :class:`~semdistill.serve.guarded.GuardedJob` on the local decoder like any
other: its prefill gives the risk and the policy's verdict before any token exists, with the
same queue, deadline and cancellation. Instead of decoding rows locally, an
:class:`UpstreamJob` that is not abstained sends the same prompt token ids and decoding
settings to the upstream's ``/v1/completions`` and relays its stream as the job's events, so
the OpenAI routes answer, stream, verify and add the risk exactly as for local answers. The
job keeps a place in the decoder's queue until its relay ends, so ``max_queue`` bounds the
requests in flight to the upstream too (429 beyond).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import httpx
import numpy as np

from semdistill.serve.guarded import Decoding, GuardedJob, GuardedModel
from semdistill.teacher.decoder.jobs import Completion, Expired, RowSpec


class UpstreamError(RuntimeError):
    """The upstream server failed or could not be reached."""


class Upstream:
    """An OpenAI-compatible completions server (vLLM) serving ``model``, with an optional key."""

    def __init__(self, url: str, model: str, *, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def stream(
        self, prompt_ids: Sequence[int], sampling: Decoding
    ) -> AsyncIterator[dict[str, Any]]:
        """The upstream's streamed choices for the prompt: each chunk's ``choices`` items."""
        body = {
            "model": self.model,
            "prompt": list(prompt_ids),
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "n": sampling.n,
            "stop": list(sampling.stop),
            "seed": sampling.seed,
            "logprobs": 0,
            "stream": True,
        }
        try:
            async with (
                httpx.AsyncClient(timeout=None) as client,
                client.stream(
                    "POST", f"{self.url}/v1/completions", json=body, headers=self.headers
                ) as reply,
            ):
                if reply.status_code != 200:
                    text = (await reply.aread()).decode(errors="replace")[:300]
                    raise UpstreamError(f"upstream answered {reply.status_code}: {text}")
                async for line in reply.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line.removeprefix("data: "))
                    if "error" in event:
                        raise UpstreamError(f"upstream failed: {event['error']}")
                    for choice in event.get("choices", []):
                        yield choice
        except httpx.HTTPError as err:
            raise UpstreamError(f"upstream {self.url} unreachable: {err}") from err


class UpstreamJob(GuardedJob):
    """A guarded job whose answers come from :class:`Upstream` after the local prefill."""

    def __init__(
        self,
        model: GuardedModel,
        question: str,
        sampling: Decoding,
        *,
        stream: bool,
        loop: asyncio.AbstractEventLoop,
        deadline: float | None,
        upstream: Upstream,
    ) -> None:
        super().__init__(model, question, sampling, stream=stream, loop=loop, deadline=deadline)
        self.upstream = upstream
        self._relay: asyncio.Task | None = None
        self._relaying = False
        self._lock = threading.Lock()
        self._place: AbstractContextManager[None] | None = None
        self._over = False

    def hold(self, place: AbstractContextManager[None]) -> None:
        """Keep ``place`` (a place in the decoder's queue: its ``QueueFull`` propagates) until
        the job is over, relay included, so the queue bounds the requests in flight."""
        place.__enter__()
        with self._lock:
            if not self._over:
                self._place = place
                return
        place.__exit__(None, None, None)

    def _release(self) -> None:
        with self._lock:
            self._over, place, self._place = True, self._place, None
        if place is not None:
            place.__exit__(None, None, None)

    def prefilled(self, states: np.ndarray) -> Sequence[RowSpec]:
        if super().prefilled(states):
            self._relaying = True
            self._loop.call_soon_threadsafe(self._start_relay)
        return []

    def ended(self, error: BaseException | None) -> None:
        if error is not None or not self._relaying:
            self._release()
            super().ended(error)

    def cancel(self) -> None:
        super().cancel()
        if self._relay is not None:
            self._loop.call_soon_threadsafe(self._relay.cancel)

    def _start_relay(self) -> None:
        if self.cancelled:
            self._release()
        else:
            self._relay = self._loop.create_task(self._run_relay())

    async def _run_relay(self) -> None:
        """Relay the upstream's choices as text events and completions; the job then ends."""
        texts = [""] * self.sampling.n
        tokens = [0] * self.sampling.n
        error: BaseException | None = None
        try:
            timeout = None if self.deadline is None else self.deadline - time.monotonic()
            async with asyncio.timeout(timeout):
                async for choice in self.upstream.stream(self.prompt_ids, self.sampling):
                    index, piece = int(choice["index"]), choice.get("text") or ""
                    texts[index] += piece
                    tokens[index] += len((choice.get("logprobs") or {}).get("tokens") or [])
                    if piece and self.stream:
                        self.text(index, piece)
                    if choice.get("finish_reason") is not None:
                        reason = "length" if choice["finish_reason"] == "length" else "stop"
                        self.finished(index, Completion(texts[index], reason, tokens[index]))
        except TimeoutError:
            error = Expired("the request ran out of time")
        except (UpstreamError, ValueError, KeyError, IndexError) as err:
            error = err if isinstance(err, UpstreamError) else UpstreamError(str(err))
        finally:
            self._release()  # also when the client went away (the task is cancelled)
        self._post("end", error)
