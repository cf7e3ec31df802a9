"""The SSD scoring service: a FastAPI app over one :class:`Scorer`, with request micro-batching.

``create_app(DIR)`` loads the scorer once at startup. One thread owns the model
(:class:`~semdistill.teacher.decoder.worker.EngineWorker`): it decodes the OpenAI-compatible guarded
chat completions of all clients in one continuously refilled batch
(:mod:`semdistill.serve.openai_routes`), and between two decoding steps it scores the
``/v1/risk``, ``/v1/verify`` and ``/v1/choose`` requests, gathered for a few milliseconds into
one batched prefill; a completion's answers are verified as its job ends. ``/healthz``
reports the queue and the rows in flight. With an API key, every ``/v1`` route requires
``Authorization: Bearer <key>``, checked before the body is read; a body over ``max_body``
bytes is refused (413) before it is parsed (:mod:`semdistill.serve.limits`).

Scoring shares the model fairly with decoding: a scoring request takes a place in the
decoder's bounded queue (429 when full), costs at most ``max_request_chars`` characters
(413 beyond), and is cut into calls of about ``scoring_chunk_chars`` characters that the
decoder's thread interleaves with decoding steps (:mod:`semdistill.teacher.decoder.worker`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import TypeVar

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from semdistill import __version__
from semdistill.scoring.policy import Policy
from semdistill.scoring.scorer import Scorer, rank
from semdistill.serve.batching import MicroBatcher
from semdistill.serve.guarded import GuardedModel
from semdistill.serve.limits import DEFAULT_MAX_BODY, LOOPBACK_HOSTS, RequestGate
from semdistill.serve.openai_errors import install_error_handlers
from semdistill.serve.openai_routes import Guard, openai_router
from semdistill.serve.schema import (
    ChooseRequest,
    ChooseResponse,
    Health,
    Load,
    RankedOption,
    RiskRequest,
    RiskResponse,
    VerifyRequest,
    VerifyResponse,
)
from semdistill.teacher.decoder.worker import EngineWorker, QueueFull

T = TypeVar("T")
R = TypeVar("R")


class ServiceLimits(BaseModel):
    """Per-request limits and the micro-batching settings of the service."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_prompts: int = Field(64, ge=1, description="prompts per /v1/risk request")
    max_answers: int = Field(64, ge=1, description="answers or options per request")
    max_chars: int = Field(2000, ge=1, description="characters per prompt, answer or option")
    max_request_chars: int = Field(
        32_000, ge=1, description="characters per scoring request, all its texts together"
    )
    scoring_chunk_chars: int = Field(
        2_000, ge=1, description="characters of scoring work per call between decoding steps"
    )
    max_body: int = Field(DEFAULT_MAX_BODY, ge=1, description="bytes per request body")
    batch_window_ms: float = Field(5.0, ge=0, description="how long to gather requests")
    max_new_tokens: int = Field(256, ge=1, description="most tokens per chat completion choice")
    max_choices: int = Field(8, ge=1, description="most choices (n) per chat completion")
    max_rows: int = Field(64, ge=1, description="answer rows decoded together")
    max_queue: int = Field(
        64, ge=1, description="requests waiting for the model (completions and scoring)"
    )
    request_timeout_s: float = Field(300.0, gt=0, description="most seconds per completion")


class _Service:
    """The loaded scorer, the decoder's thread, its batchers (risk, verify/choose) and the
    guard of the OpenAI routes."""

    def __init__(self, scorer: Scorer, limits: ServiceLimits, policy: Policy) -> None:
        self.scorer = scorer
        self.limits = limits
        guarded = GuardedModel(scorer, policy)
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


def is_loopback(host: str) -> bool:
    """Whether listening address ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(host: str) -> list[str] | None:
    """The Host headers a server listening on ``host`` accepts by default: the loopback
    names when ``host`` is loopback (so that a page elsewhere cannot reach it through DNS
    rebinding), any (None) otherwise."""
    return list(LOOPBACK_HOSTS) if is_loopback(host) else None


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """A warning when ``host`` is reachable beyond this machine and no API key is set."""
    if api_key or is_loopback(host):
        return None
    return (
        f"listening on {host} without an API key: anyone who can reach this address can use "
        "the model; pass --api-key or set SEMDISTILL_API_KEY"
    )


def create_app(
    source: str | os.PathLike | Scorer,
    limits: ServiceLimits | None = None,
    *,
    policy: Policy | None = None,
    api_key: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> FastAPI:
    """The scoring service for the SSD trained into directory ``source`` (or a loaded scorer).

    A directory is loaded once, when the app starts. ``policy`` decides when the chat
    completions abstain (default: never); with ``api_key`` every ``/v1`` route needs it as a
    Bearer token (an empty key is no key); with ``allowed_hosts`` a request whose ``Host``
    header names another host gets a 400 (against DNS rebinding; ``*.example.com`` patterns
    as Starlette's ``TrustedHostMiddleware`` reads them).
    """
    limits = limits or ServiceLimits()
    policy = policy or Policy()
    api_key = api_key or None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scorer = (
            source if isinstance(source, Scorer) else await asyncio.to_thread(Scorer.load, source)
        )
        policy.check(scorer)
        service = await asyncio.to_thread(_Service, scorer, limits, policy)
        for batcher in service.batchers:
            batcher.start()
        app.state.service = service
        try:
            yield
        finally:
            for batcher in service.batchers:
                await batcher.close()
            await asyncio.to_thread(service.worker.shutdown)

    app = FastAPI(
        title="semdistill SSD scorer",
        version=__version__,
        description="Semantic Self-Distillation: single-pass hallucination risk and answer "
        "likelihood from a base LLM's prompt representation.",
        lifespan=lifespan,
    )

    install_error_handlers(app)
    app.add_middleware(RequestGate, max_body=limits.max_body, api_key=api_key)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    def service_of(request: Request) -> _Service:
        return request.app.state.service

    app.include_router(openai_router(lambda r: service_of(r).guard))

    @app.get("/healthz")
    async def healthz(request: Request) -> Health:
        """What the service scores with, and the decoder's queue and rows in flight."""
        service = service_of(request)
        scorer = service.scorer
        spec = scorer.teacher.spec
        stats = service.worker.stats()
        return Health(
            status="ok",
            model=spec.name,
            model_sha256=spec.sha256,
            model_revision=spec.revision,
            dtype=scorer.teacher.dtype,
            layer=scorer.artifacts.layer,
            layers=list(scorer.layers),
            embedder=scorer.artifacts.embedder,
            prompt_version=scorer.artifacts.prompt_version,
            calibrated=scorer.calibration is not None,
            policy=service.guard.guarded.policy.describe(),
            load=Load(
                queued=stats.queued,
                max_queue=stats.max_queue,
                requests_in_flight=stats.jobs_in_flight,
                rows_in_flight=stats.rows_in_flight,
                max_rows=stats.max_rows,
                decoded_tokens=stats.decoded_tokens,
            ),
            version=__version__,
        )

    @app.post("/v1/risk")
    async def risk(body: RiskRequest, request: Request) -> RiskResponse:
        """Rényi-2 entropy per question; with a calibration, also the calibrated probability
        of an incorrect answer; with a familiarity model, each question's familiarity."""
        service = service_of(request)
        service.check_texts(body.prompts, "prompts", limits.max_prompts, "max_prompts")
        scored = await service.risk_of(body.prompts)
        entropies = scored[0]
        familiarity = scored[1].tolist() if len(scored) > 1 else None
        calibration = service.scorer.calibration
        if calibration is None:
            return RiskResponse(entropies=entropies.tolist(), familiarity=familiarity)
        return RiskResponse(
            entropies=entropies.tolist(),
            probabilities=calibration.probability(entropies).tolist(),
            calibration=calibration.method,
            familiarity=familiarity,
        )

    @app.post("/v1/verify")
    async def verify(body: VerifyRequest, request: Request) -> VerifyResponse:
        """Log-likelihood of each candidate answer to the question."""
        service = service_of(request)
        service.check_text(body.prompt, "prompt")
        service.check_texts(body.answers, "answers", limits.max_answers, "max_answers")
        scores = await service.likelihoods_of(body.prompt, body.answers)
        return VerifyResponse(log_likelihoods=scores.tolist())

    @app.post("/v1/choose")
    async def choose(body: ChooseRequest, request: Request) -> ChooseResponse:
        """The options ranked by log-likelihood, most likely first."""
        service = service_of(request)
        service.check_text(body.prompt, "prompt")
        service.check_texts(body.options, "options", limits.max_answers, "max_answers")
        scores = await service.likelihoods_of(body.prompt, body.options)
        return ChooseResponse(
            ranking=[
                RankedOption(option=option, log_likelihood=score)
                for option, score in rank(body.options, scores)
            ]
        )

    return app
