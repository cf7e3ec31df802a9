"""OpenAI-compatible guarded chat completions: ``POST /v1/chat/completions``, ``GET /v1/models``.

The last user message is the question; it is asked with the prompt the SSD was trained on and
answered by the SSD's base model on the shared decoder, batched with every other request (see
:mod:`semdistill.serve.guarded`). Every response carries the standard OpenAI fields plus a
``semdistill`` object: the risk (higher = more likely wrong), the policy's verdict and, once
the answer exists, its log-likelihood under the likelihood student; the risk and verdict also
come as ``x-semdistill-*`` response headers, which clients that drop unknown fields still
show. With ``stream=true`` the risk comes in the first server-sent event and the
verification in the last one before ``data: [DONE]``. A refined question (the sampling
cascade) carries the Semantic Entropy of its samples beside the risk, in the body and the
``x-semdistill-semantic-entropy`` header; a stream's headers say ``x-semdistill-refined:
pending`` and its last event carries the entropy.

A request waits at most ``max_queue`` deep for the decoder (429 beyond) and at most
``timeout_s`` in all (503 after); a client that disconnects frees its rows at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from semdistill.serve.guarded import ABSTAINED, Assessment, Decoding, GuardedJob, GuardedModel
from semdistill.serve.openai_errors import OpenAIError, job_failure
from semdistill.serve.openai_schema import (
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ResponseMessage,
    Semdistill,
    Usage,
    Verification,
)
from semdistill.serve.upstream import Upstream, UpstreamJob
from semdistill.teacher.base import clean_answer
from semdistill.teacher.decoder.jobs import Cancelled, Completion
from semdistill.teacher.decoder.worker import EngineWorker, QueueFull

MAX_STOP = 4
_POLL_S = 0.25
_log = logging.getLogger(__name__)


def _cut(name: str, limit: int = 64) -> str:
    """``name`` as an error message may repeat it: at most ``limit`` characters, encodable."""
    short = name if len(name) <= limit else name[:limit] + "..."
    return short.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class Guard:
    """The pieces the OpenAI routes need from the service; with ``upstream``, answers come
    from that server after the local prefill (:mod:`semdistill.serve.upstream`)."""

    guarded: GuardedModel
    worker: EngineWorker
    model_id: str
    fingerprint: str
    max_chars: int
    max_new_tokens: int
    max_choices: int
    timeout_s: float
    upstream: Upstream | None = None

    def parse(self, body: ChatCompletionRequest) -> tuple[str, Decoding]:
        """The question and decoding settings of a request, or an OpenAIError (400/404)."""
        if body.model != self.model_id:
            raise OpenAIError(
                404,
                f"The model '{_cut(body.model)}' does not exist; this server serves "
                f"'{self.model_id}'",
                param="model",
                code="model_not_found",
            )
        refused = body.unsupported()
        if refused is not None:
            raise OpenAIError(
                400, f"{refused[0]}: {refused[1]}", param=refused[0], code="unsupported_value"
            )
        users = [m for m in body.messages if m.role == "user"]
        question = users[-1].text().strip() if users else ""
        if not question:
            raise OpenAIError(400, "messages hold no non-empty user message", param="messages")
        if len(question) > self.max_chars:
            raise OpenAIError(
                400,
                f"the question has {len(question)} characters, over the limit of "
                f"{self.max_chars} (max_chars)",
                param="messages",
                code="context_length_exceeded",
            )
        max_tokens = body.max_completion_tokens or body.max_tokens or self.max_new_tokens
        stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        for value, limit, param in (
            (max_tokens, self.max_new_tokens, "max_tokens"),
            (body.n, self.max_choices, "n"),
            (len(stops), MAX_STOP, "stop"),
        ):
            if value > limit:
                raise OpenAIError(
                    400, f"{param} is {value}, over the limit of {limit}", param=param
                )
        if any(not stop for stop in stops):
            raise OpenAIError(400, "stop sequences must not be empty", param="stop")
        if any(len(stop) > self.max_chars for stop in stops):
            raise OpenAIError(
                400,
                f"a stop sequence is over the limit of {self.max_chars} characters (max_chars)",
                param="stop",
            )
        return question, Decoding(
            max_new_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            n=body.n,
            stop=stops,
            seed=body.seed,
        )

    def start(self, question: str, sampling: Decoding, *, stream: bool) -> GuardedJob:
        """Hand the request to the decoder; a 429 when its queue is full."""
        loop, deadline = asyncio.get_running_loop(), time.monotonic() + self.timeout_s
        if self.upstream is None:
            job = GuardedJob(
                self.guarded, question, sampling, stream=stream, loop=loop, deadline=deadline
            )
        else:
            job = UpstreamJob(
                self.guarded,
                question,
                sampling,
                stream=stream,
                loop=loop,
                deadline=deadline,
                upstream=self.upstream,
            )
        try:
            if isinstance(job, UpstreamJob):  # a place for the prefill and the relay after it
                job.hold(self.worker.admitted())
            self.worker.enqueue(job, admitted=isinstance(job, UpstreamJob))
        except QueueFull as err:
            raise OpenAIError(
                429,
                str(err),
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from err
        return job

    def info(self, assessment: Assessment) -> Semdistill:
        """The ``semdistill`` object of an assessed question."""
        calibration = self.guarded.scorer.calibration
        return Semdistill(
            question=assessment.question,
            risk_entropy=assessment.risk,
            risk_probability=assessment.probability,
            calibration=None if calibration is None else calibration.method,
            familiarity=assessment.familiarity,
            verdict=assessment.verdict,
            refined=assessment.refine,
            policy=self.guarded.policy.describe(),
            layer=self.guarded.scorer.artifacts.layer,
            layers=list(self.guarded.layers),
        )

    async def verification(self, job: GuardedJob) -> list[Verification]:
        """Each choice's first line and its log-likelihood, scored in the decoder's
        ``verification`` lane once the job has ended (not inside a decoding step)."""
        answers = [c.text for c in job.answers()]
        if job.assessment is None or not answers:
            return []
        items = [(job.assessment.states, answers)]
        lane = self.worker.lane("verification")
        scores = (await asyncio.wrap_future(lane.submit(self.guarded.verify, items)))[0]
        return [
            Verification(index=i, answer=clean_answer(text), log_likelihood=score)
            for i, (text, score) in enumerate(zip(answers, scores, strict=True))
        ]

    async def refine(self, job: GuardedJob, info: Semdistill) -> None:
        """Fill ``info`` with a refined job's samples and their Semantic Entropy, computed in
        the decoder's ``verification`` lane once the job has ended."""
        samples = job.samples()
        if job.assessment is None or not job.assessment.refine or not samples:
            return
        lane = self.worker.lane("verification")
        entropy = lane.submit(self.guarded.semantic_entropy, samples)
        info.semantic_entropy = await asyncio.wrap_future(entropy)
        info.samples = samples

    def headers(self, assessment: Assessment, info: Semdistill | None = None) -> dict[str, str]:
        """:func:`risk_headers`, and with the cascade on, ``x-semdistill-refined`` (``true``,
        ``false`` or, before the samples are judged, ``pending``) with the Semantic Entropy."""
        headers = risk_headers(assessment)
        if self.guarded.refine_above is not None:
            entropy = None if info is None else info.semantic_entropy
            state = "pending" if entropy is None else "true"
            headers["x-semdistill-refined"] = state if assessment.refine else "false"
            if entropy is not None:
                headers["x-semdistill-semantic-entropy"] = f"{entropy:.6g}"
        return headers


def risk_headers(assessment: Assessment) -> dict[str, str]:
    """The risk, familiarity and verdict as response headers (``x-semdistill-*``)."""
    headers = {
        "x-semdistill-risk-entropy": f"{assessment.risk:.6g}",
        "x-semdistill-verdict": assessment.verdict,
    }
    if assessment.probability is not None:
        headers["x-semdistill-risk-probability"] = f"{assessment.probability:.6g}"
    if assessment.familiarity is not None:
        headers["x-semdistill-familiarity"] = f"{assessment.familiarity:.6g}"
    return headers


async def _event_of(job: GuardedJob, request: Request | None) -> tuple[str, Any]:
    """The job's next event; with ``request``, a client that disconnects meanwhile cancels the
    job (:class:`Cancelled`)."""
    getter = asyncio.ensure_future(job.events.get())
    try:
        while True:
            done, _ = await asyncio.wait({getter}, timeout=_POLL_S)
            if done:
                return getter.result()
            if request is not None and await request.is_disconnected():
                job.cancel()
                raise Cancelled("the client disconnected")
    finally:
        getter.cancel()


def _head(guard: Guard, completion_id: str, created: int) -> dict[str, Any]:
    return {
        "id": completion_id,
        "created": created,
        "model": guard.model_id,
        "system_fingerprint": f"semdistill-{guard.fingerprint[:12]}",
    }


def _choices(
    guard: Guard, completions: list[Completion], verdict: str, n: int
) -> list[tuple[str, str]]:
    """(content, finish_reason) per choice; the abstention message when abstaining."""
    if verdict == ABSTAINED:
        return [(guard.guarded.policy.abstain_message, ABSTAINED)] * n
    return [(c.text, c.finish_reason) for c in completions]


def _usage(job: GuardedJob) -> Usage:
    generated = sum(c.tokens for c in job.answers())
    prompt = len(job.prompt_ids)
    return Usage(prompt_tokens=prompt, completion_tokens=generated, total_tokens=prompt + generated)


def openai_router(guard_of: Callable[[Request], Guard]) -> APIRouter:
    """The OpenAI routes over the guard that ``guard_of`` finds for a request."""
    router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])

    def card(guard: Guard) -> dict[str, Any]:
        return {"id": guard.model_id, "object": "model", "created": 0, "owned_by": "semdistill"}

    @router.get("/models")
    async def models(request: Request) -> dict[str, Any]:
        """The one model this server answers with."""
        return {"object": "list", "data": [card(guard_of(request))]}

    @router.get("/models/{model}")
    async def model(model: str, request: Request) -> dict[str, Any]:
        """The model's card, if it is the one this server answers with."""
        guard = guard_of(request)
        if model != guard.model_id:
            raise OpenAIError(
                404, f"The model '{_cut(model)}' does not exist", code="model_not_found"
            )
        return card(guard)

    @router.post("/chat/completions", response_model=ChatCompletion)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """Answer the last user message with the base model, guarded by the SSD risk."""
        guard = guard_of(request)
        question, sampling = guard.parse(body)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        job = guard.start(question, sampling, stream=body.stream)
        streaming = False
        try:
            kind, value = await _event_of(job, request)
            if kind == "end":  # failed before the risk was known: a plain HTTP error
                raise job_failure(value or RuntimeError("the job ended without a prefill"))
            assessment: Assessment = value
            if body.stream:
                include = body.stream_options is not None and body.stream_options.include_usage
                events = _stream(guard, job, assessment, completion_id, created, include)
                streaming = True  # from here on the stream's own cleanup cancels the job
                return StreamingResponse(
                    events, media_type="text/event-stream", headers=guard.headers(assessment)
                )
            while (event := await _event_of(job, request))[0] != "end":
                pass
            if event[1] is not None:
                raise job_failure(event[1])
        except Cancelled:
            return Response(status_code=499)  # nobody is listening any more
        finally:
            if not streaming:
                job.cancel()
        info = guard.info(assessment)
        if assessment.verdict != ABSTAINED:
            try:
                info.verification = await guard.verification(job)
                await guard.refine(job, info)
            except Exception as err:  # reported as the request's error
                raise job_failure(err) from err
        completion = ChatCompletion(
            **_head(guard, completion_id, created),
            choices=[
                Choice(index=i, message=ResponseMessage(content=text), finish_reason=reason)
                for i, (text, reason) in enumerate(
                    _choices(guard, job.answers(), assessment.verdict, sampling.n)
                )
            ],
            usage=_usage(job),
            semdistill=info,
        )
        headers = guard.headers(assessment, info)
        return JSONResponse(completion.model_dump(mode="json"), headers=headers)

    return router


def _event(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def _stream(
    guard: Guard,
    job: GuardedJob,
    assessment: Assessment,
    completion_id: str,
    created: int,
    include_usage: bool,
) -> AsyncIterator[str]:
    """The server-sent events of a streamed completion whose prefill is done; a client that
    goes away cancels the job (the rows are freed at the decoder's next step)."""
    head = {**_head(guard, completion_id, created), "object": "chat.completion.chunk"}
    n = job.sampling.n

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        return _event({**head, "choices": choices, **extra})

    def delta(index: int, content: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": content, "finish_reason": finish, "logprobs": None}

    try:
        info = guard.info(assessment)
        start = {"role": "assistant", "content": ""}
        yield chunk([delta(0, start)], semdistill=info.model_dump(mode="json"))
        for index in range(1, n):
            yield chunk([delta(index, start)])
        while (item := await _event_of(job, None))[0] != "end":
            index, text = item[1]
            yield chunk([delta(index, {"content": text})])
        if item[1] is not None:  # the stream has started: report in-band, as OpenAI does
            error = job_failure(item[1]).body["error"]
            yield _event({"error": error})
            return
        for index, (text, reason) in enumerate(
            _choices(guard, job.answers(), assessment.verdict, n)
        ):
            yield chunk([delta(index, {"content": text} if reason == ABSTAINED else {}, reason)])
        if assessment.verdict != ABSTAINED:
            try:
                info.verification = await guard.verification(job)
                await guard.refine(job, info)
            except Exception as err:  # in-band, as for a failed decode
                yield _event({"error": job_failure(err).body["error"]})
                return
        usage = _usage(job).model_dump() if include_usage else None
        yield chunk([], usage=usage, semdistill=info.model_dump(mode="json"))
        yield _event("[DONE]")
    finally:
        job.cancel()
