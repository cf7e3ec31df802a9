"""The SSD scoring service: a FastAPI app over one :class:`Scorer`, with request micro-batching.

``create_app(DIR)`` loads the scorer once at startup. One thread owns the model
(:class:`~semdistill.teacher.worker.EngineWorker`): it decodes the OpenAI-compatible guarded
chat completions of all clients in one continuously refilled batch
(:mod:`semdistill.serve.openai_routes`), and between two decoding steps it scores the
``/v1/risk``, ``/v1/verify`` and ``/v1/choose`` requests, gathered for a few milliseconds into
one batched prefill, and the verification of finished answers. ``/healthz`` reports the queue
and the rows in flight. With an API key, every ``/v1`` route requires
``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from semdistill import __version__
from semdistill.scoring.calibration import MEANING
from semdistill.scoring.policy import Policy
from semdistill.scoring.scorer import Scorer, rank
from semdistill.serve.batching import MicroBatcher
from semdistill.serve.guarded import GuardedModel
from semdistill.serve.openai_errors import api_key_dependency, install_error_handlers
from semdistill.serve.openai_routes import Guard, openai_router
from semdistill.teacher.engine import Engine
from semdistill.teacher.worker import EngineWorker

T = TypeVar("T")
R = TypeVar("R")


class ServiceLimits(BaseModel):
    """Per-request limits and the micro-batching settings of the service."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_prompts: int = Field(64, ge=1, description="prompts per /v1/risk request")
    max_answers: int = Field(64, ge=1, description="answers or options per request")
    max_chars: int = Field(2000, ge=1, description="characters per prompt, answer or option")
    batch_window_ms: float = Field(5.0, ge=0, description="how long to gather requests")
    max_batch_prompts: int = Field(64, ge=1, description="prompts gathered into one prefill")
    max_new_tokens: int = Field(256, ge=1, description="most tokens per chat completion choice")
    max_choices: int = Field(8, ge=1, description="most choices (n) per chat completion")
    max_rows: int = Field(64, ge=1, description="answer rows decoded together")
    max_queue: int = Field(64, ge=1, description="chat completions waiting for the model")
    request_timeout_s: float = Field(300.0, gt=0, description="most seconds per completion")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RiskRequest(_Request):
    """Questions to score before generating any answer."""

    prompts: list[StrictStr] = Field(description="question texts (the prompt template is applied)")


class RiskResponse(BaseModel):
    """Rényi-2 entropy per question (nats, higher = riskier), and probabilities if calibrated."""

    entropies: list[float]
    probabilities: list[float] | None = Field(
        None, description=f"{MEANING}; present only when the SSD is calibrated"
    )
    calibration: str | None = Field(None, description="the calibration method, if any")
    familiarity: list[float] | None = Field(
        None,
        description="per question, the share of the scorer's validation prompts farther from "
        "its training prompts (low = unlike its training set); present when the scorer has a "
        "familiarity model",
    )


class VerifyRequest(_Request):
    """Candidate answers to one question."""

    prompt: StrictStr
    answers: list[StrictStr]


class VerifyResponse(BaseModel):
    """Log-likelihood of each answer under the SSD (higher = more plausible), in input order."""

    log_likelihoods: list[float]


class ChooseRequest(_Request):
    """Options to rank for one question."""

    prompt: StrictStr
    options: list[StrictStr]


class RankedOption(BaseModel):
    """One option and its log-likelihood."""

    option: str
    log_likelihood: float


class ChooseResponse(BaseModel):
    """Options ranked by log-likelihood, most likely first."""

    ranking: list[RankedOption]


class Load(BaseModel):
    """The decoder's load now."""

    queued: int = Field(description="chat completions waiting for their prefill")
    max_queue: int
    requests_in_flight: int = Field(description="completions prefilled or decoding")
    rows_in_flight: int = Field(description="answer rows being decoded")
    max_rows: int
    decoded_tokens: int = Field(description="answer tokens decoded since the start")


class Health(BaseModel):
    """What the service scores with, and its load."""

    status: str
    model: str
    model_sha256: str | None
    model_revision: str | None
    dtype: str
    layer: int
    layers: list[int]
    embedder: str
    prompt_version: str
    calibrated: bool
    policy: dict[str, object]
    load: Load
    version: str


class _Service:
    """The loaded scorer, the decoder's thread, its batchers (risk, verify/choose, and the
    verification of completions) and the guard of the OpenAI routes."""

    def __init__(self, scorer: Scorer, limits: ServiceLimits, policy: Policy) -> None:
        self.scorer = scorer
        self.limits = limits
        guarded = GuardedModel(scorer, policy)
        teacher = guarded.teacher
        engine = Engine(
            teacher.prefiller,
            teacher.tokenizer,
            teacher.eos_ids,
            max_rows=limits.max_rows,
            pack_tokens=teacher.pack_tokens,
        )
        self.worker = EngineWorker(engine, max_queue=limits.max_queue)
        window = limits.batch_window_ms / 1000

        def batcher(run: Callable, size: Callable) -> MicroBatcher:
            return MicroBatcher(
                run, self.worker, window_s=window, max_size=limits.max_batch_prompts, size=size
            )

        self.risk = batcher(self._risk_batch, len)
        self.verify = batcher(scorer.verify_many, lambda _: 1)
        self.verifications = batcher(guarded.verify, lambda item: len(item[1]))
        self.batchers = (self.risk, self.verify, self.verifications)
        self.guard = Guard(
            guarded=guarded,
            worker=self.worker,
            verifier=self.verifications,
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


async def _scored(batcher: MicroBatcher[T, R], item: T) -> R:
    """The batcher's result for ``item``; input the scorer refuses becomes an HTTP 422."""
    try:
        return await batcher.submit(item)
    except ValueError as err:
        raise HTTPException(422, str(err)) from err


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """A warning when ``host`` is reachable beyond this machine and no API key is set."""
    if api_key or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
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
) -> FastAPI:
    """The scoring service for the SSD trained into directory ``source`` (or a loaded scorer).

    A directory is loaded once, when the app starts. ``policy`` decides when the chat
    completions abstain (default: never); with ``api_key`` every ``/v1`` route needs it as a
    Bearer token (an empty key is no key).
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
    authorized = [Depends(api_key_dependency(api_key))]

    def service_of(request: Request) -> _Service:
        return request.app.state.service

    app.include_router(openai_router(lambda r: service_of(r).guard, authorized))

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

    @app.post("/v1/risk", dependencies=authorized)
    async def risk(body: RiskRequest, request: Request) -> RiskResponse:
        """Rényi-2 entropy per question; with a calibration, also the calibrated probability
        of an incorrect answer; with a familiarity model, each question's familiarity."""
        service = service_of(request)
        service.check_texts(body.prompts, "prompts", limits.max_prompts, "max_prompts")
        scored = await _scored(service.risk, body.prompts)
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

    @app.post("/v1/verify", dependencies=authorized)
    async def verify(body: VerifyRequest, request: Request) -> VerifyResponse:
        """Log-likelihood of each candidate answer to the question."""
        service = service_of(request)
        service.check_text(body.prompt, "prompt")
        service.check_texts(body.answers, "answers", limits.max_answers, "max_answers")
        scores = await _scored(service.verify, (body.prompt, body.answers))
        return VerifyResponse(log_likelihoods=scores.tolist())

    @app.post("/v1/choose", dependencies=authorized)
    async def choose(body: ChooseRequest, request: Request) -> ChooseResponse:
        """The options ranked by log-likelihood, most likely first."""
        service = service_of(request)
        service.check_text(body.prompt, "prompt")
        service.check_texts(body.options, "options", limits.max_answers, "max_answers")
        scores = await _scored(service.verify, (body.prompt, body.options))
        return ChooseResponse(
            ranking=[
                RankedOption(option=option, log_likelihood=score)
                for option, score in rank(body.options, scores)
            ]
        )

    return app
