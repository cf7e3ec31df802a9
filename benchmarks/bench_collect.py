"""Collection throughput: the default path against the naive transformers loop, in one run.

Default path: ``collect`` with batched left-padded prefill and the teacher ``load_teacher``
picks (llama.cpp decoding when installed). Naive loop: transformers only, one prompt at a
time, one completion per ``generate`` call. Both embed and judge the same way, on the same
questions and model; model loading is excluded from both. Also times a prefill stopped
after a middle layer against the all-layer prefill.

    python benchmarks/bench_collect.py [--questions 6] [--model qwen2.5-coder-1.5b]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from semdistill.collect import collect, collect_config
from semdistill.data import Question, load_questions
from semdistill.embed import Embedder, load_embedder
from semdistill.judge import MatchJudge
from semdistill.store import Store
from semdistill.teacher import load_teacher
from semdistill.teacher.base import clean_answer
from semdistill.teacher.hf import HFTeacher

N_SAMPLES, TEMPERATURE, MAX_NEW_TOKENS, SEED = 10, 1.0, 24, 0


def _load() -> str:
    """The 1/5/15-minute load averages: other work on the machine skews both timings."""
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def naive_loop(questions: list[Question], hf: HFTeacher, embedder: Embedder) -> float:
    """Seconds for the naive loop: per question, one prefill and 1 + N single generations."""
    judge = MatchJudge()
    start = time.perf_counter()
    for index, question in enumerate(questions):
        prompt = hf.format_prompt(question.question)
        hf.hidden_states([prompt])
        encoded = hf.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        answers = []
        for k in range(N_SAMPLES + 1):
            sampled = k > 0
            torch.manual_seed(SEED + 1000 * index + k)
            with torch.inference_mode():
                output = hf.model.generate(
                    **encoded,
                    do_sample=sampled,
                    temperature=TEMPERATURE if sampled else None,
                    top_k=0 if sampled else None,
                    top_p=1.0 if sampled else None,
                    max_new_tokens=MAX_NEW_TOKENS,
                )
            text = hf.tokenizer.decode(
                output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True
            )
            answers.append(clean_answer(text))
        embedder.encode(answers)
        judge.judge(answers, [list(question.answers)] * len(answers))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--questions", type=int, default=6)
    args = parser.parse_args()

    questions = load_questions("trivia", limit=args.questions, seed=SEED)
    teacher = load_teacher(args.model)
    hf = teacher.hf if hasattr(teacher, "hf") else teacher
    embedder = load_embedder()
    judge = MatchJudge()
    print(
        f"model {teacher.spec.name}, backend {teacher.backend}, dtype {teacher.dtype}, "
        f"{len(questions)} trivia questions, N={N_SAMPLES}, T={TEMPERATURE}, "
        f"max_new_tokens={MAX_NEW_TOKENS}, torch threads {torch.get_num_threads()}"
    )

    prompts = [teacher.format_prompt(q.question) for q in questions]
    hf.hidden_states(prompts[:2])
    start = time.perf_counter()
    full = hf.hidden_states(prompts)
    full_seconds = time.perf_counter() - start
    middle = hf.n_layers // 2
    start = time.perf_counter()
    part = hf.hidden_states(prompts, layers=[middle])
    part_seconds = time.perf_counter() - start
    assert np.array_equal(part[:, 0], full[:, middle])
    print(
        f"prefill all {hf.n_layers + 1} layers: {full_seconds:.2f} s; stopped after layer "
        f"{middle}: {part_seconds:.2f} s; speedup {full_seconds / part_seconds:.2f}x"
    )

    config = collect_config(
        teacher,
        embedder,
        judge,
        questions="trivia",
        limit=args.questions,
        n_samples=N_SAMPLES,
        temperature=TEMPERATURE,
        seed=SEED,
        max_new_tokens=MAX_NEW_TOKENS,
    )
    print(f"load average before the default path: {_load()}")
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.create(tmp, config)
        stats = collect(
            questions,
            teacher,
            embedder,
            judge,
            store,
            batch_size=8,
            n_samples=N_SAMPLES,
            temperature=TEMPERATURE,
            seed=SEED,
            max_new_tokens=MAX_NEW_TOKENS,
            progress=False,
        )
    stages = ", ".join(
        f"{stage} {getattr(stats, stage):.1f} s"
        for stage in ("prefill", "sampling", "embedding", "judging", "writing")
    )
    print(
        f"default path ({teacher.backend}): {stats.collection_seconds:.1f} s, "
        f"{stats.prompts_per_second:.3f} prompts/s ({stages})"
    )
    print(f"load average before the naive loop: {_load()}")
    naive_seconds = naive_loop(questions, hf, embedder)
    naive_rate = len(questions) / naive_seconds
    print(
        f"naive loop (transformers, 1 completion/generate): {naive_seconds:.1f} s, "
        f"{naive_rate:.3f} prompts/s"
    )
    print(f"load average at the end: {_load()}")
    print(f"speedup: {stats.prompts_per_second / naive_rate:.2f}x")


if __name__ == "__main__":
    main()
