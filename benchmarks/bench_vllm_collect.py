"""Collection through vLLM against the engine, in one run: the same questions collected into
two stores, by the engine and by a vLLM server (``--backend vllm``), then compared.

Prints each collection's prompts/s (loading excluded) and vLLM's as a ratio to the engine's;
per question the relative RMS difference of the stored all-layer states (bar: <= 1e-3); the
share of equal greedy answers (bar: >= 95%); and for a few prompts the chi-square test of
test_teacher.py on ``--draws`` sampled answers of each (p > 1e-3: one distribution), with the
engine at temperature 0.5 as the test's power check (p < 1e-3).

    python benchmarks/bench_vllm_collect.py [--model smollm2-135m] [--questions 64]
        [--vllm-url URL | --vllm-python .venv-vllm/bin/python] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
from scipy.stats import chi2_contingency

from semdistill.collect import CollectSettings, SamplingSettings, run_collection
from semdistill.semantics.embed import load_embedder
from semdistill.store import Store
from semdistill.teacher import load_teacher
from semdistill.teacher.checkpoint import converted_dir
from semdistill.teacher.vllm_client import VLLMServer, start_vllm_server
from semdistill.teacher.vllm_teacher import VLLMTeacher

CHI_QUESTIONS = ("Name a colour.", "Name a fruit.", "Who wrote Hamlet?")


def frequencies(answers: list[str], other: list[str]) -> np.ndarray:
    """The 2-row contingency table of test_teacher.py: answers seen at least 5 times in
    both lists together, and the rest."""
    counts = Counter(answers) + Counter(other)
    kept = sorted(a for a, c in counts.items() if c >= 5)
    table = [[sum(a == k for a in rows) for k in kept] for rows in (answers, other)]
    rest = [len(answers) - sum(table[0]), len(other) - sum(table[1])]
    if min(rest) > 0:
        table = [[*row, r] for row, r in zip(table, rest, strict=True)]
    return np.array(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--vllm-url")
    parser.add_argument("--vllm-python", default=".venv-vllm/bin/python")
    args = parser.parse_args()

    hf = load_teacher(args.model, dtype=args.dtype, device="cpu")
    if args.vllm_url:
        server = VLLMServer(args.vllm_url)
    else:
        folder = str(converted_dir(hf.spec, args.dtype)) if hf.spec.kind == "gguf" else None
        server = start_vllm_server(
            args.vllm_python,
            folder or hf.spec.location,
            dtype=args.dtype,
            served_name=hf.spec.name,
            port=8732,
        )
    served = VLLMTeacher(hf, server)
    print(
        f"vLLM {server.version} at {server.url}: states route {served.route.states!r}, "
        f"{served.route.checked} within {served.route.difference:.2g}"
    )
    embedder = load_embedder("all-MiniLM-L6-v2")
    base = CollectSettings(
        model=args.model,
        questions="trivia",
        limit=args.questions,
        sampling=SamplingSettings(n_samples=args.samples),
        dtype=args.dtype,
        device="cpu",
    )
    with tempfile.TemporaryDirectory() as tmp:
        stores, speed = {}, {}
        for name, teacher, settings in (
            ("engine", hf, base),
            (
                "vllm",
                served,
                replace(base, backend="vllm", vllm_url=server.url),
            ),
        ):
            out = Path(tmp) / name
            stats = run_collection(
                out, settings, teacher=teacher, embedder=embedder, progress=False
            )
            speed[name] = stats.prompts_per_second
            stores[name] = Store.open(out).load()
            print(
                f"{name}: {stats.n_written} questions, {stats.prompts_per_second:.3f} "
                f"prompts/s (generation {stats.generation:.1f} s)"
            )
    print(
        f"vLLM / engine prompts/s: {speed['vllm'] / speed['engine']:.2f} "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )

    engine, vllm = stores["engine"], stores["vllm"]
    where = {qid: i for i, qid in enumerate(vllm.ids)}
    order = [where[qid] for qid in engine.ids]
    got = vllm.hidden[order].astype(np.float64)
    expected = engine.hidden.astype(np.float64)
    rms = np.linalg.norm(got - expected, axis=(1, 2)) / np.linalg.norm(expected, axis=(1, 2))
    print(
        f"states relative RMS per question: max {rms.max():.2e}, median {np.median(rms):.2e}, "
        f"{int((rms <= 1e-3).sum())}/{len(rms)} <= 1e-3"
    )
    same = vllm.default_answer[order] == engine.default_answer
    print(f"greedy answers equal: {int(same.sum())}/{len(same)} ({same.mean():.1%})")
    for i in np.flatnonzero(~same)[:5]:
        print(
            f"  differs: {engine.default_answer[i]!r} (engine) vs "
            f"{vllm.default_answer[order[i]]!r} (vLLM)"
        )

    for question in CHI_QUESTIONS:
        prompt = [hf.format_prompt(question)]
        draw = {"n": args.draws, "seeds": [5], "max_new_tokens": 3}
        (from_vllm,) = served.sample(prompt, temperature=1.0, **draw)
        (from_engine,) = hf.sample(prompt, temperature=1.0, **draw)
        (cold,) = hf.sample(prompt, temperature=0.5, **draw)
        same_p = chi2_contingency(frequencies(from_vllm, from_engine)).pvalue
        power_p = chi2_contingency(frequencies(from_vllm, cold)).pvalue
        print(
            f"chi-square {question!r}: vLLM vs engine p = {same_p:.3g}; "
            f"vs engine at T=0.5 p = {power_p:.3g}"
        )
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
