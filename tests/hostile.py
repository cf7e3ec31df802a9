"""A hostile client's tools: raw HTTP over a socket (bodies as large as it likes, declared or
streamed, never read back in full), JSON with lone surrogates, and the probes shared by the
hostile-client tests and ``benchmarks/bench_hostile.py``."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

SURROGATE = "\ud800"
MODEL = "smollm2-135m"
TEMPLATE_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


@dataclass(frozen=True)
class RawReply:
    """A reply read off the socket: status, headers (lower-case), body, and seconds until the
    status line arrived."""

    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    def json(self) -> object:
        """The body parsed as JSON."""
        return json.loads(self.body)


def raw_post(
    url: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    chunks: Sequence[bytes] = (),
    timeout_s: float = 60.0,
) -> RawReply:
    """POST to ``url`` + ``path`` over a plain socket: the headers, then ``body``, then each of
    ``chunks`` in chunked encoding and the closing chunk; a send that fails because the
    server has answered and closed is ignored. Reads the reply."""
    address = urlparse(url)
    with socket.create_connection((address.hostname, address.port), timeout=timeout_s) as sock:
        lines = [f"POST {path} HTTP/1.1", f"Host: {address.hostname}:{address.port}"]
        lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
        start = time.monotonic()
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            for chunk in chunks:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            if chunks:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass
        return read_reply(sock, start)


def read_reply(sock: socket.socket, start: float) -> RawReply:
    """The HTTP reply on ``sock``, timed from ``start`` (a :func:`time.monotonic` time)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError(f"the server closed the connection without a reply: {data!r}")
        data += piece
    seconds = time.monotonic() - start
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {
        key.strip().lower(): value.strip()
        for key, _, value in (line.partition(":") for line in header_lines)
    }
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        body += piece
    return RawReply(int(status_line.split()[1]), headers, body, seconds)


def json_bytes(payload: object) -> bytes:
    """``payload`` as JSON with every non-ASCII character escaped, lone surrogates included
    (what ``json.dumps`` writes; an HTTP client that encodes UTF-8 cannot send them)."""
    return json.dumps(payload).encode("ascii")


def surrogate_probes() -> list[tuple[str, dict[str, object], str]]:
    """(path, body, field the error must name) with a lone surrogate in each text field a
    client controls, and in a field name (pydantic reports the body, not a field, for
    that: "unable to parse raw data as a unicode string")."""
    chat = {"model": MODEL, "max_tokens": 4}
    return [
        ("/v1/risk", {"prompts": ["Who?", SURROGATE]}, "prompts.1"),
        ("/v1/verify", {"prompt": "Who?", "answers": [f"Paris{SURROGATE}"]}, "answers.0"),
        ("/v1/verify", {"prompt": SURROGATE, "answers": ["Paris"]}, "prompt"),
        ("/v1/choose", {"prompt": "Who?", "options": ["a", SURROGATE]}, "options.1"),
        ("/v1/risk", {"prompts": ["Who?"], SURROGATE: 1}, "unicode string"),
        (
            "/v1/chat/completions",
            {**chat, "messages": [{"role": "user", "content": f"Who{SURROGATE}?"}]},
            "messages.0.content",
        ),
        (
            "/v1/chat/completions",
            {**chat, "messages": [{"role": "user", "content": "Who?"}], "stop": [SURROGATE]},
            "stop",
        ),
        (
            "/v1/chat/completions",
            {**chat, "messages": [{"role": "user", "content": "Who?"}], SURROGATE: 1},
            "unicode string",
        ),
    ]
