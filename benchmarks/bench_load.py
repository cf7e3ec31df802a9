"""The guarded server under load and fuzzing, on loopback: server errors, malformed replies and
resident memory, in one run.

    python benchmarks/bench_load.py [--requests 400] [--concurrency 16] [--examples 200]

Trains the tests' tiny SSD on SmolLM2-135M (float32), serves it in this process, warms it up,
then sends ``--requests`` random chat completions ``--concurrency`` at a time (streamed or
not, n up to 3, stop sequences, seeds, nucleus; 15% of the streams disconnect after two
events) and fuzzes every operation of the OpenAPI schema with schemathesis (``--examples``
valid and as many invalid requests per operation). Prints the statuses, the disconnects, the
malformed replies and the resident memory before and after the load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from load import fuzz, mixed_load, resident_mb
from serving import serving
from tiny_ssd import QUESTIONS, build_ssd_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--examples", type=int, default=200, help="per operation and mode")
    args = parser.parse_args()

    from semdistill import Scorer
    from semdistill.serve import ServiceLimits, create_app

    with tempfile.TemporaryDirectory() as directory:
        scorer = Scorer.load(build_ssd_dir(Path(directory)).directory)
        limits = ServiceLimits(max_new_tokens=24, max_choices=3, max_rows=64)
        with serving(create_app(scorer, limits)) as url:
            asyncio.run(mixed_load(url, "smollm2-135m", QUESTIONS, requests=32, concurrency=16))
            print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
            before, start = resident_mb(), time.perf_counter()
            result = asyncio.run(
                mixed_load(
                    url,
                    "smollm2-135m",
                    QUESTIONS,
                    requests=args.requests,
                    concurrency=args.concurrency,
                )
            )
            seconds, after = time.perf_counter() - start, resident_mb()
            print(
                f"load: {args.requests} requests at concurrency {args.concurrency} in "
                f"{seconds:.0f} s; statuses {dict(result.statuses)}, {result.server_errors} "
                f"server errors, {result.disconnected} streams disconnected, "
                f"{len(result.malformed)} malformed replies {result.malformed[:3]}"
            )
            print(f"resident memory: {before:.0f} MB before, {after:.0f} MB after")
        limits = ServiceLimits(max_new_tokens=4, max_choices=2, max_prompts=4, max_answers=4)
        with serving(create_app(scorer, limits)) as url:
            statuses = fuzz(url, examples=args.examples)
        errors = sum(n for status, n in statuses.items() if status >= 500)
        print(
            f"fuzzing: {sum(statuses.values())} requests, statuses {dict(statuses)}, "
            f"{errors} server errors"
        )
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
