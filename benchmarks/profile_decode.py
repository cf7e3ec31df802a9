"""Where greedy decoding spends its time: the linear-layer kernels against everything else, for
one request alone and for several in one batch; in one run.

    python benchmarks/profile_decode.py [--model smollm2-135m] [--dtype auto] [--prompts 1 8]

Runs the decoder's greedy path (packed prefill, continuously refilled decode batch) under
cProfile and prints, per batch size, the wall time, the time per decoded step, and the shares
of the packed (oneDNN) or plain linear kernels, of attention, and of the rest (norms, rotary
embedding, sampling, cache writes and Python).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from semdistill.data import load_questions
from semdistill.teacher import load_teacher

KERNELS = {
    "linear": ("_linear_pointwise", "torch._C._nn.linear"),
    "attention": ("scaled_dot_product_attention", "torch.matmul", "torch.softmax"),
}


def kernel_seconds(stats: pstats.Stats) -> tuple[dict[str, float], int, list[tuple[float, str]]]:
    """Own time of the built-in calls whose name matches each entry of :data:`KERNELS`, the
    number of decode steps (calls of ``LeanForward.decode``) and the other calls by own time."""
    spent = dict.fromkeys(KERNELS, 0.0)
    steps = 0
    others = []
    for (path, line, name), (_, calls, own, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        if name == "decode" and path.endswith(os.path.join("teacher", "forward.py")):
            steps += calls
        kinds = [kind for kind, needles in KERNELS.items() if any(n in name for n in needles)]
        for kind in kinds:
            spent[kind] += own
        if not kinds:
            others.append((own, f"{os.path.basename(path)}:{line}({name})"))
    return spent, steps, sorted(others, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    teacher = load_teacher(args.model, backend="transformers", dtype=args.dtype)
    questions = load_questions("trivia", limit=max(args.prompts), seed=0)
    prompts = [teacher.format_prompt(q.question) for q in questions]
    teacher.greedy(prompts[:1], max_new_tokens=args.max_new_tokens)  # warm-up
    print(f"model {args.model} ({teacher.dtype}), greedy, <= {args.max_new_tokens} tokens")
    for n in args.prompts:
        profile = cProfile.Profile()
        start = time.perf_counter()
        profile.enable()
        teacher.greedy(prompts[:n], max_new_tokens=args.max_new_tokens)
        profile.disable()
        wall = time.perf_counter() - start
        stats = pstats.Stats(profile)
        spent, steps, others = kernel_seconds(stats)
        total = stats.total_tt  # type: ignore[attr-defined]
        shares = ", ".join(f"{kind} {spent[kind] / total:.0%}" for kind in KERNELS)
        rest = 1 - sum(spent.values()) / total
        print(
            f"{n} prompt(s): {wall * 1000:.0f} ms for the prefill and {steps} decode steps "
            f"({wall / max(steps, 1) * 1000:.1f} ms per step); {shares}, rest {rest:.0%}"
        )
        print(
            "  largest of the rest: "
            + "; ".join(f"{name} {own / total:.0%}" for own, name in others[:4])
        )


if __name__ == "__main__":
    main()
