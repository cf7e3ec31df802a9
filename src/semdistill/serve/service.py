"""The running service: one loaded scorer, the decoder's thread that owns its model, the
micro-batchers of the scoring routes and the guard of the OpenAI routes.

Scoring shares the model fairly with decoding: a scoring request takes a place in the
decoder's bounded queue (429 when full), costs at most ``max_request_chars`` characters
(413 beyond), and is cut into calls of about ``scoring_chunk_chars`` characters that the
decoder's thread interleaves with decoding steps (:mod:`semdistill.teacher.decoder.worker`).
A scored prompt that the sampling cascade refines is a job of its own on the decoder, in the
same queue as the completions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
from fastapi import HTTPException

from semdistill.scoring.policy import Policy
from semdistill.scoring.scorer import Scorer
from semdistill.serve.batching import MicroBatcher
from semdistill.serve.guarded import GuardedModel, RefineJob
from semdistill.serve.openai_routes import Guard
from semdistill.serve.service_limits import ServiceLimits
from semdistill.serve.upstream import Upstream
from semdistill.teacher.decoder.jobs import Expired
from semdistill.teacher.decoder.worker import EngineWorker, QueueFull

T = TypeVar("T")
R = TypeVar("R")


class Service:
    """The loaded scorer, the decoder's thread, its batchers (risk, verify/choose) and the
    guard of the OpenAI routes (answering from ``upstream`` when given); ``refine_above``
    turns the sampling cascade on."""

    def __init__(
        self,
        scorer: Scorer,
        limits: ServiceLimits,
        policy: Policy,
        *,
        refine_above: float | None = None,
        upstream: Upstream | None = None,
    ) -> None:
        self.scorer = scorer
        self.limits = limits
        guarded = GuardedModel(scorer, policy, refine_above)
        teacher = guarded.teacher
        engine = teacher.new_engine(max_rows=limits.max_rows)
        self.worker = EngineWorker(engine, max_queue=limits.max_queue)
        window = limits.batch_window_ms / 1000
        scoring = self.worker.lane("scoring")

        def batcher(run: Callable, size: Callable) -> MicroBatcher:
            return MicroBatcher(
                run, scoring, window_s=window, max_size=limits.scoring_chunk_chars, size=size
            )

        self.risk = batcher(self._risk_batch, _chars)
        self.verify = batcher(scorer.verify_many, lambda item: _chars(item[1]))
        self.batchers = (self.risk, self.verify)
        self.guard = Guard(
            guarded=guarded,
            worker=self.worker,
            model_id=teacher.spec.name,
            fingerprint=scorer.fingerprint,
            max_chars=limits.max_chars,
            max_new_tokens=limits.max_new_tokens,
            max_choices=limits.max_choices,
            timeout_s=limits.request_timeout_s,
            upstream=upstream,
        )

    def _risk_batch(self, items: list[list[str]]) -> list[np.ndarray]:
        """Per item, its prompts' entropies, and their familiarity as a second row when the
        scorer has a familiarity model: ``(1 or 2, n_prompts)``."""
        states = self.scorer.states([prompt for prompts in items for prompt in prompts])
        rows = [self.scorer.risk_from_states(states)]
        if self.scorer.familiarity_model is not None:
            rows.append(self.scorer.familiarity_from_states(states))
        return np.split(np.stack(rows), np.cumsum([len(p) for p in items])[:-1], axis=1)

    async def risk_of(self, prompts: list[str]) -> np.ndarray:
        """The risk of each prompt, and its familiarity as a second row when the scorer has
        a familiarity model (``(1 or 2, n_prompts)``), scored in chunks of about
        ``scoring_chunk_chars``."""
        self.check_cost(prompts)
        with self.admitted():
            parts = await asyncio.gather(
                *(_scored(self.risk, part) for part in self.chunks(prompts))
            )
        return np.concatenate(parts, axis=1)

    async def refine_of(
        self, prompts: list[str], risks: np.ndarray, seed: int | None
    ) -> list[tuple[float, list[str]] | None]:
        """Per prompt, the Semantic Entropy of its samples and the samples where its risk is
        above the refine threshold, else None; each refined prompt is a job on the decoder
        (429 when its queue is full, 503 past the request timeout)."""
        guarded = self.guard.guarded
        chosen = [i for i, risk in enumerate(risks.tolist()) if guarded.refines(risk)]
        refined: list[tuple[float, list[str]] | None] = [None] * len(prompts)
        if not chosen:
            return refined
        loop, jobs = asyncio.get_running_loop(), []
        deadline = time.monotonic() + self.limits.request_timeout_s
        try:
            for i in chosen:
                jobs.append(RefineJob(guarded, prompts[i], seed=seed, loop=loop, deadline=deadline))
                self.worker.enqueue(jobs[-1])
            samples = await asyncio.gather(*(job.done for job in jobs))
        except QueueFull as err:
            raise HTTPException(429, str(err), headers={"Retry-After": "1"}) from err
        except Expired as err:
            raise HTTPException(503, f"{err}: the server is too busy; retry later") from err
        finally:
            for job in jobs:
                job.cancel()
                job.done.cancel()  # no-op once settled; else nobody is left to read it
        lane = self.worker.lane("verification")
        entropies = await asyncio.wrap_future(lane.submit(self.scorer.semantic_entropy, samples))
        for i, entropy, answers in zip(chosen, entropies.tolist(), samples, strict=True):
            refined[i] = (entropy, answers)
        return refined

    async def likelihoods_of(self, prompt: str, answers: list[str]) -> np.ndarray:
        """The log-likelihood of each answer to ``prompt``, scored in chunks."""
        self.check_cost([prompt, *answers])
        with self.admitted():
            parts = await asyncio.gather(
                *(_scored(self.verify, (prompt, part)) for part in self.chunks(answers))
            )
        return np.concatenate(parts)

    def chunks(self, texts: list[str]) -> list[list[str]]:
        """``texts`` in consecutive runs of at most ``scoring_chunk_chars`` characters (a
        longer text is a run of its own)."""
        runs: list[list[str]] = [[]]
        for text in texts:
            if runs[-1] and _chars(runs[-1]) + len(text) > self.limits.scoring_chunk_chars:
                runs.append([])
            runs[-1].append(text)
        return runs

    def check_cost(self, texts: list[str]) -> None:
        """Raise an HTTP 413 for a request over ``max_request_chars`` characters in all."""
        total = _chars(texts)
        if total > self.limits.max_request_chars:
            raise HTTPException(
                413,
                f"the request's texts hold {total} characters, over the limit of "
                f"{self.limits.max_request_chars} per request (max_request_chars); split it",
            )

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """A place in the decoder's queue for a scoring request; a 429 when it is full."""
        try:
            with self.worker.admitted():
                yield
        except QueueFull as err:
            raise HTTPException(429, str(err), headers={"Retry-After": "1"}) from err

    def check_texts(self, texts: list[str], name: str, max_items: int, limit: str) -> None:
        """Raise an HTTP 422 for empty input, 413 naming the limit for oversized input."""
        if not texts:
            raise HTTPException(422, f"{name} must not be empty")
        if len(texts) > max_items:
            raise HTTPException(
                413, f"{name}: {len(texts)} items exceed the limit of {max_items} ({limit})"
            )
        for i, text in enumerate(texts):
            self.check_text(text, f"{name}[{i}]")

    def check_text(self, text: str, name: str) -> None:
        """Raise an HTTP 422 for a blank text, 413 for one over ``max_chars``."""
        if not text.strip():
            raise HTTPException(422, f"{name} is empty")
        if len(text) > self.limits.max_chars:
            raise HTTPException(
                413,
                f"{name}: {len(text)} characters exceed the limit of {self.limits.max_chars} "
                "(max_chars)",
            )


def _chars(texts: list[str]) -> int:
    return sum(len(text) for text in texts)


async def _scored(batcher: MicroBatcher[T, R], item: T) -> R:
    """The batcher's result for ``item``; input the scorer refuses becomes an HTTP 422."""
    try:
        return await batcher.submit(item)
    except ValueError as err:
        raise HTTPException(422, str(err)) from err
