"""The SSD scoring service's app: the native routes ``/v1/risk``, ``/v1/verify``,
``/v1/choose`` and ``/healthz``, the OpenAI-compatible routes, and what guards them.

``create_app(DIR)`` loads the scorer once at startup into a :class:`Service`
(:mod:`semdistill.serve.service`): one thread owns the model and decodes the guarded chat
completions of all clients (:mod:`semdistill.serve.openai_routes`), and between two decoding
steps it scores the native routes' requests, gathered into batched prefills. With an API key,
every ``/v1`` route requires ``Authorization: Bearer <key>``, checked before the body is
read; a body over ``max_body`` bytes is refused (413) before it is parsed
(:mod:`semdistill.serve.limits`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from starlette.middleware.trustedhost import TrustedHostMiddleware

from semdistill import __version__
from semdistill.scoring.policy import Policy
from semdistill.scoring.scorer import Scorer, rank
from semdistill.serve.limits import RequestGate
from semdistill.serve.openai_errors import install_error_handlers
from semdistill.serve.openai_routes import openai_router
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
from semdistill.serve.service import Service
from semdistill.serve.service_limits import ServiceLimits
from semdistill.serve.upstream import Upstream


def create_app(
    source: str | os.PathLike | Scorer,
    limits: ServiceLimits | None = None,
    *,
    policy: Policy | None = None,
    api_key: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    refine_above: float | None = None,
    refine_budget: float | None = None,
    upstream: Upstream | None = None,
) -> FastAPI:
    """The scoring service for the SSD trained into directory ``source`` (or a loaded scorer).

    A directory is loaded once, when the app starts. ``policy`` decides when the chat
    completions abstain (default: never); with ``api_key`` every ``/v1`` route needs it as a
    Bearer token (an empty key is no key); with ``allowed_hosts`` a request whose ``Host``
    header names another host gets a 400 (against DNS rebinding; ``*.example.com`` patterns
    as Starlette's ``TrustedHostMiddleware`` reads them). ``refine_above`` (a risk in nats) or
    ``refine_budget`` (the share of the scorer's validation prompts above the threshold)
    turns the sampling cascade on (:mod:`semdistill.scoring.refine`); at most one of them.
    With ``upstream``, the chat completions' answers come from that server, after the local
    prefill gave the risk and the policy's verdict (:mod:`semdistill.serve.upstream`); the
    cascade samples on the local decoder and is not offered with it.
    """
    limits = limits or ServiceLimits()
    policy = policy or Policy()
    api_key = api_key or None
    if refine_above is not None and refine_budget is not None:
        raise ValueError("give at most one of refine_above and refine_budget")
    if upstream is not None and (refine_above is not None or refine_budget is not None):
        raise ValueError("the sampling cascade samples on the local decoder: not with upstream")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scorer = (
            source if isinstance(source, Scorer) else await asyncio.to_thread(Scorer.load, source)
        )
        policy.check(scorer)
        threshold = None
        if refine_above is not None or refine_budget is not None:
            threshold = scorer.refinement.threshold(above=refine_above, budget=refine_budget)
        service = await asyncio.to_thread(
            Service, scorer, limits, policy, refine_above=threshold, upstream=upstream
        )
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

    def service_of(request: Request) -> Service:
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
            refine=service.guard.guarded.describe_refine(),
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
        of an incorrect answer; with a familiarity model, each question's familiarity; with the
        sampling cascade on, the Semantic Entropy of each refined question's samples."""
        service = service_of(request)
        service.check_texts(body.prompts, "prompts", limits.max_prompts, "max_prompts")
        scored = await service.risk_of(body.prompts)
        entropies = scored[0]
        fields: dict[str, Any] = {"entropies": entropies.tolist()}
        if len(scored) > 1:
            fields["familiarity"] = scored[1].tolist()
        calibration = service.scorer.calibration
        if calibration is not None:
            fields["probabilities"] = calibration.probability(entropies).tolist()
            fields["calibration"] = calibration.method
        if service.guard.guarded.refine_above is not None:
            refined = await service.refine_of(body.prompts, entropies, body.seed)
            fields["refined"] = [r is not None for r in refined]
            fields["semantic_entropies"] = [None if r is None else r[0] for r in refined]
            fields["samples"] = [None if r is None else r[1] for r in refined]
        return RiskResponse(**fields)

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
