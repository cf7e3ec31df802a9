"""Throughput and latency of ``semdistill serve`` for batched ``/v1/risk`` requests, on loopback.

    python benchmarks/bench_service.py [--model qwen2.5-coder-1.5b] [--concurrency 1 8]

Trains a latency-only SSD on the spot (real hidden states of trivia questions, their reference
answers' embeddings as targets: its quality is irrelevant here), starts ``semdistill serve`` on
it in a subprocess on 127.0.0.1, then for each concurrency level runs a bounded load (at most
``--requests`` requests or ``--seconds`` seconds) of ``/v1/risk`` requests holding
``--batch`` questions each, from an httpx async client. Prints requests/s, questions/s and the
p50/p99 request latency per level, all measured in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_ssd(directory: str, model: str, n_questions: int) -> list[str]:
    """Train a latency-only SSD into ``directory``; return the questions it was trained on."""
    from semdistill.artifacts import SSDArtifacts, save_artifacts
    from semdistill.data import load_questions
    from semdistill.embed import load_embedder
    from semdistill.pca import PCAReducer
    from semdistill.student import SSDStudent
    from semdistill.teacher import load_teacher
    from semdistill.teacher.prompt import PROMPT_TEMPLATE, PROMPT_VERSION

    teacher = load_teacher(model, backend="transformers")
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
    url: str, questions: list[str], *, concurrency: int, batch: int, requests: int, seconds: float
) -> tuple[list[float], int, float]:
    """Send at most ``requests`` requests for at most ``seconds``; latencies, errors, wall time."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def worker(client: httpx.AsyncClient, offset: int) -> None:
        nonlocal sent, errors
        while sent < requests and time.perf_counter() < deadline:
            first = (offset + sent * batch) % len(questions)
            sent += 1
            body = {"prompts": [questions[(first + k) % len(questions)] for k in range(batch)]}
            began = time.perf_counter()
            reply = await client.post("/v1/risk", json=body)
            latencies.append(time.perf_counter() - began)
            errors += reply.status_code != 200

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(worker(client, i) for i in range(concurrency)))
    return latencies, errors, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4, help="questions per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=200, help="most requests per level")
    parser.add_argument("--seconds", type=float, default=30.0, help="most seconds per level")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        questions = build_ssd(directory, args.model, args.questions)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [str(Path(sys.executable).with_name("semdistill")), "serve", directory]
        process = subprocess.Popen(
            [*command, "--port", str(port), "--max-prompts", str(max(args.batch, 64))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_healthy(url, process, timeout_s=300)
            httpx.post(f"{url}/v1/risk", json={"prompts": questions[:2]}, timeout=120)  # warm-up
            print(
                f"model {args.model}; {args.batch} questions per request; load average "
                f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
            )
            for concurrency in args.concurrency:
                latencies, errors, wall = asyncio.run(
                    load(
                        url,
                        questions,
                        concurrency=concurrency,
                        batch=args.batch,
                        requests=args.requests,
                        seconds=args.seconds,
                    )
                )
                p50, p99 = np.percentile(latencies, [50, 99]) * 1000
                print(
                    f"concurrency {concurrency}: {len(latencies)} requests in {wall:.1f} s, "
                    f"{len(latencies) / wall:.2f} requests/s, "
                    f"{len(latencies) * args.batch / wall:.1f} questions/s, "
                    f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, {errors} errors"
                )
            print(f"load average after: {os.getloadavg()[0]:.2f}")
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
