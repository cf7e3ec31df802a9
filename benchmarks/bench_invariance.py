"""How often an answer changes with its batch-mates: each question decoded alone and among all
the others, greedy and seeded samples, in the teacher's dtype; in one run.

    python benchmarks/bench_invariance.py [--model smollm2-135m] [--dtype bfloat16]
                                          [--questions 32] [--samples 2]

Runs the decoder (packed prefill, continuously refilled decode batch) once with every question
in flight and once per question alone, and counts the greedy answers, the seeded samples and
the prompt states that are not identical between the two.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from semdistill.data import load_questions
from semdistill.teacher import load_teacher
from semdistill.teacher.answer_sets import answer_sets
from semdistill.teacher.hf import HFTeacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    teacher = load_teacher(args.model, backend="transformers", dtype=args.dtype)
    assert isinstance(teacher, HFTeacher)
    questions = load_questions("trivia", limit=args.questions, seed=0)
    ids = [teacher.prompt_token_ids(teacher.format_prompt(q.question)) for q in questions]
    settings = {
        "n": args.samples,
        "greedy": True,
        "temperature": 1.0,
        "max_new_tokens": args.max_new_tokens,
        "layers": [teacher.n_layers // 2],
    }
    print(f"{args.model} ({teacher.dtype}); load average {os.getloadavg()[0]:.2f}")
    start = time.perf_counter()
    together = dict(answer_sets(teacher.engine, ids, seeds=list(range(len(ids))), **settings))
    alone = {}
    for i, prompt in enumerate(ids):
        ((_, alone[i]),) = answer_sets(teacher.engine, [prompt], seeds=[i], **settings)
    greedy = sum(alone[i].greedy != together[i].greedy for i in alone)
    samples = sum(
        a != b for i in alone for a, b in zip(alone[i].samples, together[i].samples, strict=True)
    )
    states = sum(not np.array_equal(alone[i].hidden, together[i].hidden) for i in alone)
    n = len(ids)
    print(
        f"{n} questions, {args.samples} seeded samples each, <= {args.max_new_tokens} tokens: "
        f"greedy answers differing alone vs among all {greedy}/{n}, samples {samples}/"
        f"{n * args.samples}, prompt states not bit-identical {states}/{n} "
        f"({time.perf_counter() - start:.0f} s)"
    )


if __name__ == "__main__":
    main()
