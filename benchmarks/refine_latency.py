"""Per-request latency of the guarded chat endpoint without and with the sampling cascade.

    python benchmarks/refine_latency.py SCORER_DIR [--questions 12] [--repeats 3]

Loads the scorer once and serves it twice on loopback, in this process: once plain, once with
a refine threshold below every risk, so that every request also samples the scorer's N
answers (its collection's N, temperature and token budget) and computes their Semantic
Entropy. The test-split questions of the scorer's collection are sent one at a time (greedy,
``--max-tokens``), alternating between the two servers, each ``--repeats`` times. Prints the
median and mean latency of each, the ratio of the means and the load average, all measured in
this run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@contextmanager
def serving(app) -> Iterator[str]:
    """``app`` under uvicorn on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scorer", help="a trained SSD directory (semdistill train)")
    parser.add_argument("--questions", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()

    import numpy as np

    from semdistill import Scorer
    from semdistill.serve import ServiceLimits, create_app
    from semdistill.store import Store

    load_start = os.getloadavg()[0]
    scorer = Scorer.load(args.scorer)
    settings = scorer.refinement
    test = Store.open(scorer.artifacts.collection).load(split="test")
    questions = list(test.questions)[: args.questions]
    below_all = float(np.min(scorer.risk(questions))) - 1.0
    limits = ServiceLimits(max_new_tokens=args.max_tokens)
    plain, refined = create_app(scorer, limits), create_app(scorer, limits, refine_above=below_all)
    times: dict[str, list[float]] = {"plain": [], "refined": []}
    with serving(plain) as plain_url, serving(refined) as refined_url, httpx.Client() as client:
        urls = {"plain": plain_url, "refined": refined_url}

        def ask(mode: str, question: str) -> dict:
            body = {
                "model": scorer.teacher.spec.name,
                "messages": [{"role": "user", "content": question}],
                "temperature": 0,
                "max_tokens": args.max_tokens,
            }
            start = time.perf_counter()
            reply = client.post(f"{urls[mode]}/v1/chat/completions", json=body, timeout=600)
            elapsed = time.perf_counter() - start
            reply.raise_for_status()
            times[mode].append(elapsed)
            return reply.json()["semdistill"]

        for mode in times:  # warm-up
            ask(mode, questions[0])
        for measured in times.values():
            measured.clear()
        for _ in range(args.repeats):
            for question in questions:
                ask("plain", question)
                assert ask("refined", question)["refined"]
    print(
        f"{scorer.teacher.spec.name} ({scorer.teacher.dtype}), {len(questions)} test questions x "
        f"{args.repeats}, greedy answers of at most {args.max_tokens} tokens; refine: "
        f"{settings.n_samples} samples at T={settings.temperature:g}, at most "
        f"{settings.max_new_tokens} tokens, SE at cosine {settings.se_cosine:g}"
    )
    print("| guarded endpoint | median ms | mean ms |")
    print("|---|---|---|")
    for mode, label in (
        ("plain", "without refine"),
        ("refined", f"with refine (N={settings.n_samples})"),
    ):
        ms = [1000 * t for t in times[mode]]
        print(f"| {label} | {statistics.median(ms):,.0f} | {statistics.fmean(ms):,.0f} |")
    ratio = statistics.fmean(times["refined"]) / statistics.fmean(times["plain"])
    print(f"ratio of the means (with / without): {ratio:.2f}x")
    print(f"load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
