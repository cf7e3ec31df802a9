"""Errors in OpenAI's shape and the API-key check of the ``/v1`` routes.

Errors on the OpenAI routes are ``{"error": {"message", "type", "param", "code"}}`` with the
HTTP status; the other routes keep FastAPI's shape.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

OPENAI_PATHS = ("/v1/chat/completions", "/v1/models")


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


def _is_openai(request: Request) -> bool:
    return request.url.path in OPENAI_PATHS or request.url.path.startswith("/v1/models/")


def install_error_handlers(app: FastAPI) -> None:
    """Answer errors on the OpenAI routes in OpenAI's shape; other routes keep FastAPI's."""

    @app.exception_handler(OpenAIError)
    async def openai_error(_request: Request, err: OpenAIError) -> Response:
        return JSONResponse(err.body, status_code=err.status, headers=err.headers)

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
