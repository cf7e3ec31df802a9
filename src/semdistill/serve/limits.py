"""What every request passes before the app reads it: the API key, the body's size, and the
Host headers a server accepts.

:class:`RequestGate` is ASGI middleware. On a ``/v1`` route with an API key set it refuses a
request without ``Authorization: Bearer <key>`` (401, constant-time compare) before reading
any of its body; it then refuses a body over ``max_body`` bytes (413) as soon as its
``Content-Length`` says so, or once that many bytes have streamed in, so that no more than
``max_body`` bytes of a request are ever held. A body up to :data:`DRAIN_FACTOR` times the
limit is read to its end and dropped before the 413, so that an ordinary client, which
sends its whole body before it reads, gets the 413 rather than a reset connection; a larger
one is answered at once. Errors have OpenAI's shape on the OpenAI routes and FastAPI's
``{"detail": ...}`` elsewhere.

:func:`default_allowed_hosts` gives the Host headers a server accepts by default (checked by
Starlette's ``TrustedHostMiddleware``), and :func:`exposure_warning` the warning for a server
reachable beyond this machine without an API key.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from semdistill.serve.openai_errors import OpenAIError, is_openai_path

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY = 1 << 20
"""1 MiB: the largest request the per-request limits admit (64 questions of 2,000
characters) takes at most 768 KiB even with every character JSON-escaped as ``\\uXXXX``."""

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
"""The Host names a server bound to loopback accepts by default (against DNS rebinding)."""


DRAIN_FACTOR = 4
"""Bodies up to this many times ``max_body`` are drained (read and dropped) before the 413."""


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


class _TooLarge(Exception):
    """The body streamed past the limit."""


class RequestGate:
    """ASGI middleware: the API key before the body, then the body limit (see the module)."""

    def __init__(self, app: ASGIApp, *, max_body: int, api_key: str | None) -> None:
        if max_body < 1:
            raise ValueError(f"max_body must be positive, got {max_body}")
        self.app = app
        self.max_body = max_body
        self.api_key = api_key or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key is not None and path.startswith("/v1") and not self._authorized(headers):
            await _reply(
                send,
                path,
                401,
                "missing or incorrect API key: send the header 'Authorization: Bearer <key>'",
                {"www-authenticate": "Bearer"},
                code="invalid_api_key",
            )
            return
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await _reply(send, path, 400, "Content-Length must be a whole number of bytes")
                return
            if int(declared) > self.max_body:
                if int(declared) <= DRAIN_FACTOR * self.max_body:
                    await self._drain(receive, 0)
                await self._too_large(send, path, int(declared))
                return
        try:
            body = await self._read(receive)
        except _TooLarge as err:
            await self._drain(receive, err.args[0])
            await self._too_large(send, path, None)
            return
        await self.app(scope, _replay(body, receive), send)

    def _authorized(self, headers: dict[str, str]) -> bool:
        assert self.api_key is not None
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode("latin-1"), self.api_key.encode()
        )

    async def _read(self, receive: Receive) -> list[Message]:
        """The request's body messages, counted as they arrive; :class:`_TooLarge` past the
        limit (what came so far is dropped)."""
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            size += len(message.get("body", b""))
            if size > self.max_body:
                raise _TooLarge(size) if message.get("more_body", False) else _TooLarge(-1)
            if not message.get("more_body", False):
                return messages

    async def _drain(self, receive: Receive, size: int) -> None:
        """Read and drop the rest of a body (``size`` bytes read so far, -1 if it has ended)
        until it ends or passes ``DRAIN_FACTOR * max_body`` bytes."""
        while 0 <= size <= DRAIN_FACTOR * self.max_body:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            size += len(message.get("body", b""))

    async def _too_large(self, send: Send, path: str, declared: int | None) -> None:
        size = f"{declared} bytes" if declared is not None else "the body"
        await _reply(
            send,
            path,
            413,
            f"request body too large: {size} over the limit of {self.max_body} bytes (--max-body)",
            {"connection": "close"},
            code="request_too_large",
        )


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` first, then whatever ``receive`` gives (a
    disconnect)."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


async def _reply(
    send: Send,
    path: str,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    code: str | None = None,
) -> None:
    """A JSON error response: OpenAI's shape on the OpenAI routes, ``{"detail"}`` elsewhere."""
    if is_openai_path(path):
        body = OpenAIError(status, message, code=code).body
    else:
        body = {"detail": message}
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
