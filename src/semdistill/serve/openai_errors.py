"""Errors in OpenAI's shape, and error replies that never echo their input.

Errors on the OpenAI routes are ``{"error": {"message", "type", "param", "code"}}`` with the
HTTP status; the other routes keep FastAPI's shape. A validation error names the field and
what is wrong with it, never the value sent (a reply stays small whatever the request held);
an unexpected exception is logged and answered with a generic 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from semdistill.serve.upstream import UpstreamError
from semdistill.teacher.decoder.jobs import Expired

OPENAI_PATHS = ("/v1/chat/completions", "/v1/models")
MAX_NAME_CHARS = 64
"""Longest field name (or path part) an error repeats; longer ones are cut."""

_log = logging.getLogger(__name__)


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
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}
        self.headers = headers


def is_openai_path(path: str) -> bool:
    """Whether ``path`` is one of the OpenAI routes (their errors take OpenAI's shape)."""
    return path in OPENAI_PATHS or path.startswith("/v1/models/")


def field_name(location: tuple[object, ...] | list[object]) -> str | None:
    """The dotted field name of a validation error's location, printable whatever the client
    sent: ``body`` dropped, each part cut to :data:`MAX_NAME_CHARS` and non-encodable
    characters (lone surrogates) written as escapes."""
    parts = []
    for part in location:
        if part == "body":
            continue
        text = str(part)
        if len(text) > MAX_NAME_CHARS:
            text = text[:MAX_NAME_CHARS] + "..."
        parts.append(text.encode("utf-8", "backslashreplace").decode("utf-8"))
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    """Answer errors on the OpenAI routes in OpenAI's shape; other routes keep FastAPI's.

    Validation errors carry no input, on every route.
    """

    @app.exception_handler(OpenAIError)
    async def openai_error(_request: Request, err: OpenAIError) -> Response:
        return JSONResponse(err.body, status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> Response:
        errors = [
            {"type": e.get("type"), "loc": field_name(e.get("loc", ())), "msg": e.get("msg")}
            for e in err.errors()[:8]
        ]
        if not is_openai_path(request.url.path):
            return JSONResponse({"detail": errors}, status_code=422)
        first = errors[0]
        param = first["loc"]
        where = f" (at {param})" if param else ""
        error = OpenAIError(400, f"{first['msg'] or 'invalid request'}{where}", param=param)
        return JSONResponse(error.body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        if not is_openai_path(request.url.path):
            return await http_exception_handler(request, err)
        error = OpenAIError(
            err.status_code,
            str(err.detail),
            type="server_error" if err.status_code >= 500 else "invalid_request_error",
        )
        return JSONResponse(error.body, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def crashed(request: Request, err: Exception) -> Response:
        _log.error("unhandled error on %s", request.url.path, exc_info=err)
        if not is_openai_path(request.url.path):
            return JSONResponse({"detail": "internal server error"}, status_code=500)
        error = OpenAIError(500, "internal server error (logged)", type="server_error")
        return JSONResponse(error.body, status_code=500)


def job_failure(error: BaseException) -> OpenAIError:
    """The OpenAI-shaped HTTP error of a completion that ended with ``error`` before
    answering: 503 past its deadline, 400 for a bad request, 502 when the upstream failed,
    else 500 (logged)."""
    if isinstance(error, Expired):
        return OpenAIError(
            503,
            f"{error}: the server is too busy to answer in time; retry later",
            type="server_error",
            code="timeout",
            headers={"Retry-After": "1"},
        )
    if isinstance(error, ValueError):
        return OpenAIError(400, str(error))
    if isinstance(error, UpstreamError):
        _log.warning("the upstream failed: %s", error)
        return OpenAIError(502, "the upstream model server failed (logged)", type="server_error")
    _log.error("a completion failed", exc_info=error)
    return OpenAIError(500, "internal server error (logged)", type="server_error")
