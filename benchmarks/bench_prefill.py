"""Packed prefill: its cost against one prompt at a time, and how far a risk moves with batch-mates.

Scores the same questions with a trained scorer three ways, in one run: all packed together,
packed in reverse order, and one at a time. Prints the time of each and the largest change of
any question's risk (nats) between them.

    python benchmarks/bench_prefill.py --scorer runs/quick/ssd/trivia [--questions 48]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from semdistill import Scorer
from semdistill.data import load_questions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scorer", required=True, help="a trained SSD directory")
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--source", default="trivia")
    args = parser.parse_args()

    scorer = Scorer.load(args.scorer)
    questions = [q.question for q in load_questions(args.source, limit=args.questions, seed=1)]
    scorer.risk(questions[:2])  # warm-up: the template prefix's cache, allocations
    start = time.perf_counter()
    packed = scorer.risk(questions)
    packed_seconds = time.perf_counter() - start
    reverse = scorer.risk(questions[::-1])[::-1]
    start = time.perf_counter()
    alone = np.array([scorer.risk([q])[0] for q in questions])
    alone_seconds = time.perf_counter() - start
    print(
        f"{scorer.teacher.spec.name} ({scorer.teacher.dtype}), layer {scorer.artifacts.layer}, "
        f"{len(questions)} {args.source} questions; risk spread {np.ptp(packed):.2f} nats"
    )
    print(
        f"packed: {packed_seconds:.2f} s; one at a time: {alone_seconds:.2f} s "
        f"({alone_seconds / packed_seconds:.1f}x slower)"
    )
    print(
        f"largest risk change: alone vs packed {np.abs(alone - packed).max():.2e} nats, "
        f"reversed vs packed {np.abs(reverse - packed).max():.2e} nats"
    )


if __name__ == "__main__":
    main()
