"""Which forward each decoder family takes, and how exactly collection reproduces the model.

For every configuration of ``tests/tiny_decoders.py`` (random weights, hidden 64, 4 layers,
the SmolLM2 tokenizer) in float32 and bfloat16: the path taken and why, the largest relative
RMS difference between the stored states and a fresh copy of the model's own forward over
all layers of 8 trivia prompts, and (float32) how many greedy answers equal ``generate``.

    python benchmarks/bench_decoders.py [NAME ...]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch

import tiny_decoders
from semdistill.data import load_questions
from semdistill.teacher import load_teacher
from semdistill.teacher.decoder.backends import relative_difference
from semdistill.teacher.hf import HFTeacher


def check(folder: Path, dtype: str, questions: list[str]) -> tuple[HFTeacher, float, int]:
    """The teacher of ``folder``, its worst state difference and greedy answers that match."""
    teacher = load_teacher(str(folder), dtype=dtype, device="cpu")
    assert isinstance(teacher, HFTeacher)
    prompts = [teacher.format_prompt(q) for q in questions]
    seeds = list(range(len(prompts)))
    sets = dict(teacher.answer_sets(prompts, n=3, temperature=1.0, seeds=seeds, max_new_tokens=8))
    reference = tiny_decoders.reference(folder, dtype)
    worst, same = 0.0, 0
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([teacher.prompt_token_ids(prompt)])
        with torch.inference_mode():
            own = reference(input_ids=ids, output_hidden_states=True).hidden_states
            for layer, state in enumerate(own):
                got = torch.from_numpy(sets[i].hidden[layer])
                worst = max(worst, relative_difference(got, state[0, -1]))
            if dtype == "float32":
                same += sets[i].greedy == tiny_decoders.greedy_answer(reference, teacher, ids, 8)
    return teacher, worst, same


def main() -> None:
    names = sys.argv[1:] or list(tiny_decoders.CONFIGS)
    questions = [q.question for q in load_questions("trivia", limit=8, seed=0)]
    tokenizer = tiny_decoders.smollm2_tokenizer()
    root = Path(tempfile.mkdtemp())
    print("| configuration | dtype | path | largest state difference | greedy = generate | why |")
    print("|---|---|---|---|---|---|")
    for name in names:
        folder = tiny_decoders.build(name, root, tokenizer)
        for dtype in ("float32", "bfloat16"):
            start = time.perf_counter()
            teacher, worst, same = check(folder, dtype, questions)
            greedy = f"{same}/{len(questions)}" if dtype == "float32" else "–"
            print(
                f"| {name} | {dtype} | {teacher.decoder.path} | {worst:.1e} | {greedy} | "
                f"{teacher.decoder.reason} ({time.perf_counter() - start:.1f} s) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
