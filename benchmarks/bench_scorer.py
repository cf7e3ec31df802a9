"""SSD ``risk`` latency vs the prefill alone and vs Semantic Entropy (N=10), in one run.

    python benchmarks/bench_scorer.py [--model qwen2.5-coder-1.5b] [--prompts 16]

For trivia questions on one base model:

1. Semantic Entropy on the first ``--se-prompts`` questions, one at a time: sample N answers,
   embed them, cluster them with the rule judge, take the entropy. Timed with each sampler the
   model has: transformers (the runtime the SSD prefill uses) and, for GGUF models with
   llama-cpp-python installed, llama.cpp on the quantised file.
2. A latency-only SSD is trained on the spot from those questions (real hidden states, the SE
   samples as targets, few epochs): its quality is irrelevant here, only its cost.
3. On ``--prompts`` questions, per question, interleaved and repeated: the prefill alone
   (prompt formatting + the last-token state at the SSD's layer) and ``Scorer.risk`` (the same
   prefill + the student's closed-form Rényi-2 entropy); the student head alone; and a
   full-depth prefill, to show what stopping the forward at the layer saves.

All ratios printed are measured in this run, on this machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _median_time(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--prompts", type=int, default=16, help="questions timed with SSD")
    parser.add_argument("--se-prompts", type=int, default=4, help="questions timed with SE")
    parser.add_argument("--samples", type=int, default=10, help="N of Semantic Entropy")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--layer", type=int, default=None, help="default: the middle layer")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from semdistill.data import load_questions
    from semdistill.scoring.artifacts import SSDArtifacts, save_artifacts
    from semdistill.scoring.scorer import Scorer
    from semdistill.semantics.embed import load_embedder
    from semdistill.semantics.pca import PCAReducer
    from semdistill.semantics.semantic_entropy import RuleEquivalence, semantic_entropies
    from semdistill.student import SSDStudent
    from semdistill.teacher import load_teacher
    from semdistill.teacher.prompt import PROMPT_TEMPLATE, PROMPT_VERSION

    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    teacher = load_teacher(args.model)
    hf = getattr(teacher, "hf", teacher)  # the transformers half of the llama.cpp teacher
    samplers = {"transformers": hf} | ({teacher.backend: teacher} if teacher is not hf else {})
    embedder = load_embedder()
    n_questions = max(args.prompts, args.se_prompts)
    questions = [q.question for q in load_questions("trivia", limit=n_questions, seed=0)]
    layer = teacher.n_layers // 2 if args.layer is None else args.layer
    judge = RuleEquivalence(threshold=0.85)
    print(
        f"model {args.model}: {teacher.n_layers} layers, SSD layer {layer}, prefill on "
        f"transformers {hf.dtype}"
    )

    # 1. Semantic Entropy, one question at a time (its answers become the SSD's targets).
    se_seconds: dict[str, float] = {}
    targets = []
    for backend, sampler in samplers.items():
        times = []
        for i, question in enumerate(questions[: args.se_prompts]):
            start = time.perf_counter()
            prompt = sampler.format_prompt(question)
            answers = sampler.sample(
                [prompt],
                n=args.samples,
                temperature=1.0,
                seeds=[i],
                max_new_tokens=args.max_new_tokens,
            )[0]
            answers = [a if a.strip() else "(empty)" for a in answers]
            embeddings = embedder.encode(answers)
            semantic_entropies([answers], judge, embeddings=embeddings[None])
            times.append(time.perf_counter() - start)
            if backend == "transformers":
                targets.append(embeddings)
        se_seconds[backend] = statistics.mean(times)

    # 2. A latency-only SSD from those states and samples.
    se_prompts = [hf.format_prompt(q) for q in questions[: args.se_prompts]]
    H = hf.hidden_states(se_prompts, layers=[layer])[:, 0].astype(np.float32)
    Y = np.stack(targets)
    pca = PCAReducer(min(32, Y.shape[0] * Y.shape[1] - 1)).fit(Y)
    dims = {"risk": min(16, pca.n_components), "likelihood": pca.n_components}
    students = {
        role: SSDStudent(max_epochs=20, validation_fraction=0.0, verbose=False).fit(
            H, pca.transform(Y, d)
        )
        for role, d in dims.items()
    }
    artifacts = SSDArtifacts(
        teacher=hf.spec,
        dtype=hf.dtype,
        prompt_template=PROMPT_TEMPLATE,
        prompt_version=PROMPT_VERSION,
        layer=layer,
        embedder=embedder.name,
        embedder_dim=embedder.dim,
        students=dims,
    )
    with tempfile.TemporaryDirectory() as directory:
        save_artifacts(directory, artifacts, pca, students)
        scorer = Scorer.load(directory, model=hf, embedder=embedder)

    # 3. Per-question latencies, interleaved so load drifts hit all of them alike.
    def prefill(question: str, depth: int) -> np.ndarray:
        return hf.hidden_states([hf.format_prompt(question)], layers=[depth])

    timed = questions[: args.prompts]
    scorer.risk(timed[:2])  # warm-up
    prefill(timed[0], teacher.n_layers)
    pre, risk, full, head = [], [], [], []
    state = H[:1]
    for q in timed:
        pre.append(_median_time(lambda q=q: prefill(q, layer), args.repeats))
        risk.append(_median_time(lambda q=q: scorer.risk([q]), args.repeats))
        full.append(_median_time(lambda q=q: prefill(q, teacher.n_layers), args.repeats))
        head.append(_median_time(lambda: scorer.students["risk"].renyi2_entropy(state), 20))
    batched = _median_time(lambda: scorer.risk(timed), 1)

    ms = 1000.0
    mean_pre, mean_risk = statistics.mean(pre), statistics.mean(risk)
    mean_full, mean_head = statistics.mean(full), statistics.mean(head)
    print(f"SSD: {len(timed)} prompts, per-prompt medians of {args.repeats} runs, then means")
    print(f"prefill to layer {layer} alone: {mean_pre * ms:.1f} ms/prompt")
    print(f"SSD risk (prefill + head):     {mean_risk * ms:.1f} ms/prompt")
    print(f"student head alone:            {mean_head * ms:.3f} ms/prompt (median of 20)")
    print(
        f"head overhead: {mean_head / mean_pre:.2%} of the prefill (head alone); "
        f"end to end {(mean_risk - mean_pre) / mean_pre:+.2%} (goal <= 5%)"
    )
    print(
        f"full-depth prefill ({teacher.n_layers} layers): {mean_full * ms:.1f} ms/prompt; "
        f"stopping at layer {layer} saves {1 - mean_pre / mean_full:.1%}"
    )
    print(
        f"SSD risk batched ({len(timed)} prompts in one call): "
        f"{batched / len(timed) * ms:.1f} ms/prompt"
    )
    for backend, seconds in se_seconds.items():
        print(
            f"Semantic Entropy N={args.samples}, sampled with {backend} "
            f"({args.se_prompts} prompts; sample + embed + rule clustering): "
            f"{seconds * ms:.0f} ms/prompt; SSD risk is {seconds / mean_risk:.1f}x faster "
            "(goal >= 20x)"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
