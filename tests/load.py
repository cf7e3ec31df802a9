"""A mixed load of chat completions against a live server, and a schema fuzzer, for the tests
and ``benchmarks/bench_load.py``: every reply checked for its shape, server errors counted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

STOPS = [".", " the", "\n"]


@dataclass
class LoadResult:
    """What a load run saw: HTTP statuses, disconnects, and the replies that broke the rules."""

    statuses: Counter = field(default_factory=Counter)
    disconnected: int = 0
    malformed: list[str] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        """Replies with a 5xx status."""
        return sum(count for status, count in self.statuses.items() if status >= 500)


def resident_mb() -> float:
    """This process's resident memory in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _body(rng: random.Random, model: str, questions: list[str]) -> dict:
    body: dict = {
        "model": model,
        "messages": [{"role": "user", "content": rng.choice(questions)}],
        "max_tokens": rng.randint(1, 24),
        "n": rng.choice([1, 1, 2, 3]),
        "temperature": rng.choice([0.0, 0.7, 1.0]),
        "stream": rng.random() < 0.5,
    }
    if rng.random() < 0.5:
        body["seed"] = rng.randint(-(2**40), 2**40)
    if rng.random() < 0.3:
        body["stop"] = rng.sample(STOPS, rng.randint(1, 2))
    if rng.random() < 0.3:
        body["top_p"] = rng.choice([0.5, 0.9])
    return body


def _check_completion(reply: dict, body: dict) -> str | None:
    """What is wrong with a non-streamed reply, or None."""
    choices = reply.get("choices", [])
    if [c["index"] for c in choices] != list(range(body["n"])):
        return f"choices {[c.get('index') for c in choices]} for n={body['n']}"
    for choice in choices:
        text = choice["message"]["content"]
        if not isinstance(text, str) or choice["finish_reason"] not in ("stop", "length"):
            return f"choice {choice}"
        if any(s in text for s in body.get("stop", ())):
            return f"a stop sequence in {text!r}"
    risk = reply["semdistill"]["risk_entropy"]
    if (
        not math.isfinite(risk)
        or reply["usage"]["completion_tokens"] > body["n"] * body["max_tokens"]
    ):
        return f"risk {risk} or usage {reply['usage']}"
    return None


async def _one(http: httpx.AsyncClient, body: dict, disconnect: bool, result: LoadResult) -> None:
    if not body["stream"]:
        reply = await http.post("/v1/chat/completions", json=body)
        result.statuses[reply.status_code] += 1
        if reply.status_code == 200:
            problem = _check_completion(reply.json(), body)
            if problem:
                result.malformed.append(problem)
        return
    async with http.stream("POST", "/v1/chat/completions", json=body) as reply:
        result.statuses[reply.status_code] += 1
        if reply.status_code != 200:
            await reply.aread()
            return
        lines, texts = [], [""] * body["n"]
        async for line in reply.aiter_lines():
            if not line:
                continue
            lines.append(line)
            if disconnect and len(lines) == 2:
                result.disconnected += 1
                return  # leaving the block closes the connection mid-stream
            payload = line.removeprefix("data: ")
            if payload != "[DONE]":
                event = json.loads(payload)
                if "error" in event:
                    result.malformed.append(f"in-band error {event['error']}")
                for choice in event.get("choices", []):
                    texts[choice["index"]] += choice["delta"].get("content") or ""
        if lines[-1] != "data: [DONE]" or not all(line.startswith("data: ") for line in lines):
            result.malformed.append(f"stream ended with {lines[-1:]}")
        elif any(s in t for s in body.get("stop", ()) for t in texts):
            result.malformed.append(f"a stop sequence in streamed {texts}")


async def mixed_load(
    url: str,
    model: str,
    questions: list[str],
    *,
    requests: int,
    concurrency: int,
    seed: int = 0,
    disconnect_rate: float = 0.15,
) -> LoadResult:
    """``requests`` random chat completions (streamed or not, n up to 3, stops, seeds,
    nucleus), ``concurrency`` at a time; a share of the streams disconnects after two events."""
    rng = random.Random(seed)
    plan = [(_body(rng, model, questions), rng.random() < disconnect_rate) for _ in range(requests)]
    result = LoadResult()
    queue: asyncio.Queue = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)

    async def worker(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            body, disconnect = queue.get_nowait()
            await _one(http, body, disconnect and body["stream"], result)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return result


def fuzz(url: str, *, examples: int, seed: int = 0) -> Counter:
    """Statuses of schemathesis-generated requests (valid and invalid) to every operation of
    the server's OpenAPI schema; the caller checks that none is a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_dict(httpx.get(f"{url}/openapi.json", timeout=60).json())
    statuses: Counter = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @hypothesis_seed(seed)
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(mode))
            def call(case: schemathesis.Case) -> None:
                response = case.call(base_url=url, timeout=120)
                statuses[response.status_code] += 1

            with contextlib.suppress(Unsatisfiable):  # e.g. no invalid GET /healthz
                call()
    return statuses
