"""OpenAI-compatible guarded chat completions: ``POST /v1/chat/completions``, ``GET /v1/models``.

The last user message is the question; it is asked with the prompt the SSD was trained on and
answered by the SSD's base model. One prefill gives the risk and starts the answer (see
:mod:`semdistill.serve.guarded`). Every response carries the standard OpenAI fields plus a
``semdistill`` object: the risk (higher = more likely wrong), the policy's verdict and, once
the answer exists, its log-likelihood under the likelihood student. With ``stream=true`` the
risk comes in the first server-sent event and the verification in the last one before
``data: [DONE]``. Errors on these routes have OpenAI's shape:
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from semdistill.scoring.policy import Policy
from semdistill.serve.guarded import Completion, GuardedModel, Sampling
from semdistill.serve.openai_schema import (
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ResponseMessage,
    Semdistill,
    Usage,
    Verification,
)
from semdistill.teacher.base import clean_answer

OPENAI_PATHS = ("/v1/chat/completions", "/v1/models")
MAX_STOP = 4
ABSTAINED = "abstained"


class OpenAIError(Exception):
    """An error reported in the OpenAI shape with HTTP ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}


def _is_openai(request: Request) -> bool:
    return request.url.path in OPENAI_PATHS or request.url.path.startswith("/v1/models/")


def install_error_handlers(app: FastAPI) -> None:
    """Answer errors on the OpenAI routes in OpenAI's shape; other routes keep FastAPI's."""

    @app.exception_handler(OpenAIError)
    async def openai_error(_request: Request, err: OpenAIError) -> Response:
        return JSONResponse(err.body, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> Response:
        if not _is_openai(request):
            return await request_validation_exception_handler(request, err)
        first = err.errors()[0]
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(location) or None
        where = f" (at {param})" if param else ""
        error = OpenAIError(400, f"{first.get('msg', 'invalid request')}{where}", param=param)
        return JSONResponse(error.body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        if not _is_openai(request):
            return await http_exception_handler(request, err)
        error = OpenAIError(
            err.status_code,
            str(err.detail),
            type="server_error" if err.status_code >= 500 else "invalid_request_error",
            code="invalid_api_key" if err.status_code == 401 else None,
        )
        return JSONResponse(error.body, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def crashed(request: Request, err: Exception) -> Response:
        if not _is_openai(request):
            return PlainTextResponse("Internal Server Error", status_code=500)
        error = OpenAIError(500, f"internal error: {err}", type="server_error")
        return JSONResponse(error.body, status_code=500)


def api_key_dependency(api_key: str | None) -> Callable[[Request], Awaitable[None]]:
    """A route dependency refusing (401) requests without ``Authorization: Bearer <api_key>``.

    With ``api_key`` None every request passes.
    """

    async def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), api_key.encode()
        ):
            raise HTTPException(
                401,
                "missing or incorrect API key: send the header 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


# ---------------------------------------------------------------------- the guarded job
@dataclass
class GuardedAnswer:
    """The outcome of one request: the SSD object, the completions (none if abstained)."""

    info: Semdistill
    prompt_tokens: int
    completions: list[Completion]


@dataclass
class Guard:
    """The pieces the OpenAI routes need from the service."""

    guarded: GuardedModel
    policy: Policy
    executor: Executor
    model_id: str
    fingerprint: str
    max_chars: int
    max_new_tokens: int
    max_choices: int

    def answer(
        self,
        question: str,
        sampling: Sampling,
        *,
        on_start: Callable[[Semdistill], None] | None = None,
        on_text: Callable[[int, str], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> GuardedAnswer:
        """Prefill, decide by the policy, then decode and verify unless abstaining."""
        prefill = self.guarded.prefill(question)
        calibration = self.guarded.scorer.calibration
        probability = (
            None if calibration is None else float(calibration.probability([prefill.risk])[0])
        )
        info = Semdistill(
            question=question,
            risk_entropy=prefill.risk,
            risk_probability=probability,
            calibration=None if calibration is None else calibration.method,
            verdict=self.policy.verdict(prefill.risk, probability),
            policy=self.policy.describe(),
            layer=self.guarded.layer,
        )
        if on_start is not None:
            on_start(info.model_copy())
        prompt_tokens = int(prefill.input_ids.shape[1])
        if info.verdict == ABSTAINED:
            return GuardedAnswer(info, prompt_tokens, [])
        completions = self.guarded.decode(prefill, sampling, on_text=on_text, cancelled=cancelled)
        scores = self.guarded.verify(prefill, [c.text for c in completions])
        info.verification = [
            Verification(index=i, answer=clean_answer(c.text), log_likelihood=score)
            for i, (c, score) in enumerate(zip(completions, scores, strict=True))
        ]
        return GuardedAnswer(info, prompt_tokens, completions)

    def parse(self, body: ChatCompletionRequest) -> tuple[str, Sampling]:
        """The question and decoding settings of a request, or an OpenAIError (400/404)."""
        if body.model != self.model_id:
            raise OpenAIError(
                404,
                f"The model '{body.model}' does not exist; this server serves '{self.model_id}'",
                param="model",
                code="model_not_found",
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
        return question, Sampling(
            max_new_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            n=body.n,
            stop=stops,
            seed=body.seed,
        )


def _head(guard: Guard, completion_id: str, created: int) -> dict[str, Any]:
    return {
        "id": completion_id,
        "created": created,
        "model": guard.model_id,
        "system_fingerprint": f"semdistill-{guard.fingerprint[:12]}",
    }


def _choices(guard: Guard, answer: GuardedAnswer, n: int) -> list[tuple[str, str]]:
    """(content, finish_reason) per choice; the abstention message when abstaining."""
    if not answer.completions:
        return [(guard.policy.abstain_message, ABSTAINED)] * n
    return [(c.text, c.finish_reason) for c in answer.completions]


def _usage(answer: GuardedAnswer) -> Usage:
    generated = sum(c.completion_tokens for c in answer.completions)
    return Usage(
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=generated,
        total_tokens=answer.prompt_tokens + generated,
    )


async def _in_executor(guard: Guard, job: Callable[[], GuardedAnswer]) -> GuardedAnswer:
    """Run ``job`` in the model's worker thread; refused input becomes a 400."""
    try:
        return await asyncio.get_running_loop().run_in_executor(guard.executor, job)
    except ValueError as err:
        raise OpenAIError(400, str(err)) from err


def openai_router(guard_of: Callable[[Request], Guard], dependencies: list[Any]) -> APIRouter:
    """The OpenAI routes over the guard that ``guard_of`` finds for a request."""
    router = APIRouter(prefix="/v1", dependencies=dependencies, tags=["OpenAI-compatible"])

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
            raise OpenAIError(404, f"The model '{model}' does not exist", code="model_not_found")
        return card(guard)

    @router.post("/chat/completions", response_model=ChatCompletion)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """Answer the last user message with the base model, guarded by the SSD risk."""
        guard = guard_of(request)
        question, sampling = guard.parse(body)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return await _stream(guard, question, sampling, completion_id, created, include_usage)
        answer = await _in_executor(guard, lambda: guard.answer(question, sampling))
        completion = ChatCompletion(
            **_head(guard, completion_id, created),
            choices=[
                Choice(index=i, message=ResponseMessage(content=text), finish_reason=reason)
                for i, (text, reason) in enumerate(_choices(guard, answer, sampling.n))
            ],
            usage=_usage(answer),
            semdistill=answer.info,
        )
        return JSONResponse(completion.model_dump(mode="json"))

    return router


def _event(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def _stream(
    guard: Guard,
    question: str,
    sampling: Sampling,
    completion_id: str,
    created: int,
    include_usage: bool,
) -> StreamingResponse:
    """Start the job; once the risk is known (or the job failed), stream its events."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancelled = threading.Event()

    def put(kind: str, value: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

    job = loop.run_in_executor(
        guard.executor,
        lambda: guard.answer(
            question,
            sampling,
            on_start=lambda info: put("start", info),
            on_text=lambda i, text: put("text", (i, text)),
            cancelled=cancelled,
        ),
    )
    job.add_done_callback(lambda _: queue.put_nowait(("done", None)))
    kind, info = await queue.get()
    if kind == "done":  # failed before the risk was known: a plain HTTP error
        try:
            job.result()
        except ValueError as err:
            raise OpenAIError(400, str(err)) from err
    head = {**_head(guard, completion_id, created), "object": "chat.completion.chunk"}

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        return _event({**head, "choices": choices, **extra})

    def delta(index: int, content: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": content, "finish_reason": finish, "logprobs": None}

    async def events() -> AsyncIterator[str]:
        try:
            start = {"role": "assistant", "content": ""}
            yield chunk([delta(0, start)], semdistill=info.model_dump(mode="json"))
            for index in range(1, sampling.n):
                yield chunk([delta(index, start)])
            while (item := await queue.get())[0] != "done":
                index, text = item[1]
                yield chunk([delta(index, {"content": text})])
            try:
                answer = job.result()
            except Exception as err:  # the stream has started: report in-band, as OpenAI does
                yield _event({"error": {"message": str(err), "type": "server_error"}})
                return
            for index, (text, reason) in enumerate(_choices(guard, answer, sampling.n)):
                content = {"content": text} if reason == ABSTAINED else {}
                yield chunk([delta(index, content, reason)])
            usage = _usage(answer).model_dump() if include_usage else None
            yield chunk([], usage=usage, semdistill=answer.info.model_dump(mode="json"))
            yield _event("[DONE]")
        finally:
            cancelled.set()

    return StreamingResponse(events(), media_type="text/event-stream")
