"""Throughput and latency of ``semdistill serve`` on loopback: ``/v1/risk`` and the guarded
OpenAI-compatible chat completions, and the guard's cost over plain generation, in one run.

    python benchmarks/bench_service.py [--model qwen2.5-coder-1.5b] [--concurrency 1 8]

Trains a latency-only SSD on the spot (real hidden states of trivia questions, their reference
answers' embeddings as targets: its quality is irrelevant here), then:

1. Guard vs plain generation, in this process, per question, interleaved and repeated: plain
   greedy generation with transformers' ``generate`` (prompt as the SSD formats it, same token
   budget), and the guarded path the endpoint runs (one prefill that also yields the risk,
   decoding from its KV cache, verification of the answer). The answers must be identical;
   the ratio of the summed times is printed, with the risk head and the verification alone.
2. ``semdistill serve`` in a subprocess on 127.0.0.1; for each concurrency level a bounded
   load (at most ``--requests`` requests or ``--seconds`` seconds) of ``/v1/risk`` requests
   holding ``--batch`` questions each, then of greedy ``/v1/chat/completions`` requests
   (``--max-tokens``), from an httpx async client. Prints requests/s and the p50/p99 request
   latency per level, all measured in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_ssd(directory: str, model: str, n_questions: int, dtype: str) -> list[str]:
    """Train a latency-only SSD into ``directory``; return the questions it was trained on."""
    from semdistill.data import load_questions
    from semdistill.scoring.artifacts import SSDArtifacts, save_artifacts
    from semdistill.semantics.embed import load_embedder
    from semdistill.semantics.pca import PCAReducer
    from semdistill.student import SSDStudent
    from semdistill.teacher import load_teacher
    from semdistill.teacher.prompt import PROMPT_TEMPLATE, PROMPT_VERSION

    teacher = load_teacher(model, backend="transformers", dtype=dtype)
    embedder = load_embedder()
    picked = load_questions("trivia", limit=n_questions, seed=0)
    layer = teacher.n_layers // 2
    prompts = [teacher.format_prompt(q.question) for q in picked]
    H = teacher.hidden_states(prompts, layers=[layer])[:, 0].astype(np.float32)
    Y = embedder.encode([q.answers[0] for q in picked])[:, None, :]
    pca = PCAReducer(min(32, len(picked) - 1)).fit(Y)
    dims = {"risk": min(16, pca.n_components), "likelihood": pca.n_components}
    students = {
        role: SSDStudent(max_epochs=20, validation_fraction=0.0, verbose=False).fit(
            H, pca.transform(Y, d)
        )
        for role, d in dims.items()
    }
    artifacts = SSDArtifacts(
        teacher=teacher.spec,
        dtype=teacher.dtype,
        prompt_template=PROMPT_TEMPLATE,
        prompt_version=PROMPT_VERSION,
        layer=layer,
        embedder=embedder.name,
        embedder_dim=embedder.dim,
        students=dims,
    )
    save_artifacts(directory, artifacts, pca, students)
    return [q.question for q in picked]


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Poll ``/healthz`` until it answers (bounded by ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"semdistill serve exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.25)
    raise RuntimeError(f"semdistill serve did not answer within {timeout_s:.0f} s")


async def load(
    url: str,
    request: Callable[[int], tuple[str, dict[str, Any]]],
    *,
    concurrency: int,
    requests: int,
    seconds: float,
) -> tuple[list[float], int, float]:
    """Send ``request(i)`` (path, JSON body) for i = 0, 1, ... at most ``requests`` times for
    at most ``seconds``; latencies, errors, wall time."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent, errors
        while sent < requests and time.perf_counter() < deadline:
            path, body = request(sent)
            sent += 1
            began = time.perf_counter()
            reply = await client.post(path, json=body)
            latencies.append(time.perf_counter() - began)
            errors += reply.status_code != 200

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - start


def guard_overhead(
    directory: str, questions: list[str], *, max_tokens: int, repeats: int
) -> dict[str, float]:
    """Summed seconds of plain greedy generation and of the guarded path over ``questions``.

    The guarded path is what the endpoint runs for one request, without HTTP: a job on the
    decoder (prefill with the risk from its states, greedy decoding from that prefill's keys
    and values) and the verification of its answer. Also the risk head and the verification
    alone, and how many answers were identical.
    """
    import torch

    from semdistill.scoring.policy import Policy
    from semdistill.scoring.scorer import Scorer
    from semdistill.serve.guarded import Decoding, GuardedModel
    from semdistill.teacher.decoder.jobs import Job

    scorer = Scorer.load(directory)
    guarded = GuardedModel(scorer, Policy())
    teacher = scorer.teacher
    engine = teacher.new_engine(max_rows=8)
    rows = Decoding(max_new_tokens=max_tokens, temperature=0).rows(stream=False)

    class Guarded(Job):
        def prefilled(self, states: np.ndarray):
            self.assessment = guarded.assess("", states)
            return rows

        def finished(self, row: int, completion) -> None:
            self.text = completion.text

    def plain(question: str) -> str:
        ids = torch.tensor([teacher.prompt_token_ids(teacher.format_prompt(question))])
        with torch.inference_mode():
            output = teacher.model.generate(
                input_ids=ids, do_sample=False, max_new_tokens=max_tokens
            )
        return teacher.tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)

    def guard(question: str) -> tuple[str, np.ndarray]:
        job = Guarded(guarded.prompt_ids(question), guarded.layers, width=1)
        engine.submit(job)
        while engine.busy:
            engine.step()
        guarded.verify([(job.assessment.states, [job.text])])
        return job.text, job.assessment.states

    plain(questions[0]), guard(questions[0])  # warm-up
    times: dict[str, list[float]] = {"plain": [], "guarded": [], "risk": [], "verify": []}
    same = 0
    for repeat in range(repeats):
        for question in questions:
            answers = {}
            order = [("plain", plain), ("guarded", lambda q: guard(q)[0])]
            for name, run in order if repeat % 2 == 0 else order[::-1]:
                began = time.perf_counter()
                answers[name] = run(question)
                times[name].append(time.perf_counter() - began)
            same += answers["plain"].strip() == answers["guarded"].strip()
            _, states = guard(question)
            began = time.perf_counter()
            scorer.risk_from_states(states[None])
            times["risk"].append(time.perf_counter() - began)
            began = time.perf_counter()
            guarded.verify([(states, [answers["guarded"]])])
            times["verify"].append(time.perf_counter() - began)
    return {
        "plain": sum(times["plain"]),
        "guarded": sum(times["guarded"]),
        "risk_ms": statistics.median(times["risk"]) * 1000,
        "verify_ms": statistics.median(times["verify"]) * 1000,
        "same": same,
        "answers": repeats * len(questions),
    }


def report(
    name: str, concurrency: int, latencies: list[float], errors: int, wall: float
) -> tuple[float, float]:
    """Print one load level's requests/s and latency percentiles; return requests/s and p50."""
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    print(
        f"{name} concurrency {concurrency}: {len(latencies)} requests in {wall:.1f} s, "
        f"{len(latencies) / wall:.2f} requests/s, p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
        f"{errors} errors"
    )
    return len(latencies) / wall, float(p50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--dtype", default="auto", help="precision of the base model")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4, help="questions per /v1/risk request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=200, help="most requests per level")
    parser.add_argument("--seconds", type=float, default=20.0, help="most seconds per level")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per chat answer")
    parser.add_argument("--guard-questions", type=int, default=8, help="for the guard's cost")
    parser.add_argument("--repeats", type=int, default=2, help="of the guard comparison")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        questions = build_ssd(directory, args.model, args.questions, args.dtype)
        dtype = json.loads((Path(directory) / "ssd.json").read_text())["dtype"]
        print(
            f"model {args.model} ({dtype}); load average {os.getloadavg()[0]:.2f} on "
            f"{os.cpu_count()} CPUs"
        )
        cost = guard_overhead(
            directory,
            questions[: args.guard_questions],
            max_tokens=args.max_tokens,
            repeats=args.repeats,
        )
        n = cost["answers"]
        print(
            f"guarded vs plain greedy generation ({n} answers of <= {args.max_tokens} tokens, "
            f"{cost['same']}/{n} identical): plain {cost['plain'] / n * 1000:.0f} ms, guarded "
            f"{cost['guarded'] / n * 1000:.0f} ms per answer, ratio "
            f"{cost['guarded'] / cost['plain']:.3f} (risk head {cost['risk_ms']:.1f} ms, "
            f"verification {cost['verify_ms']:.1f} ms)"
        )
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [str(Path(sys.executable).with_name("semdistill")), "serve", directory]
        process = subprocess.Popen(
            [*command, "--port", str(port), "--max-prompts", str(max(args.batch, 64))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        model_id = args.model

        def risk_request(i: int) -> tuple[str, dict[str, Any]]:
            first = i * args.batch
            batch = [questions[(first + k) % len(questions)] for k in range(args.batch)]
            return "/v1/risk", {"prompts": batch}

        def chat_request(i: int) -> tuple[str, dict[str, Any]]:
            question = questions[i % len(questions)]
            return "/v1/chat/completions", {
                "model": model_id,
                "messages": [{"role": "user", "content": question}],
                "temperature": 0,
                "max_tokens": args.max_tokens,
            }

        try:
            wait_healthy(url, process, timeout_s=300)
            model_id = httpx.get(f"{url}/v1/models", timeout=60).json()["data"][0]["id"]
            httpx.post(f"{url}/v1/risk", json={"prompts": questions[:2]}, timeout=120)  # warm-up
            httpx.post(f"{url}/v1/chat/completions", json=chat_request(0)[1], timeout=120)
            chat: dict[int, tuple[float, float]] = {}
            for name, request in (
                (f"/v1/risk ({args.batch} questions/request)", risk_request),
                (f"/v1/chat/completions (greedy, <= {args.max_tokens} tokens)", chat_request),
            ):
                for concurrency in args.concurrency:
                    latencies, errors, wall = asyncio.run(
                        load(
                            url,
                            request,
                            concurrency=concurrency,
                            requests=args.requests,
                            seconds=args.seconds,
                        )
                    )
                    measured = report(name, concurrency, latencies, errors, wall)
                    if request is chat_request:
                        chat[concurrency] = measured
            low, high = min(args.concurrency), max(args.concurrency)
            print(
                f"chat completions: concurrency {high} served {chat[high][0] / chat[low][0]:.2f}x "
                f"the requests/s of concurrency {low}; p50 at concurrency {low} "
                f"{chat[low][1]:.0f} ms = {chat[low][1] / (cost['plain'] / n * 1000):.2f}x "
                "plain generate's time per answer"
            )
            print(f"load average after: {os.getloadavg()[0]:.2f}")
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
