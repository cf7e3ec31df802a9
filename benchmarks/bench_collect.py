"""Collection throughput: the answer-set engine against two generate() loops, in one run.

- engine: ``collect`` end to end (packed prefill after the cached template prefix, greedy +
  N samples decoded from each prompt's cache in a continuously refilled batch, MiniLM
  embeddings, judge, Parquet writes);
- per-prompt generate: the previous transformers path, per prompt one all-layer prefill,
  ``generate(do_sample=False)`` and ``generate(num_return_sequences=N)``;
- naive loop: per prompt one prefill and N + 1 single ``generate`` calls.

The two loops embed and judge the same way. Model loading is excluded everywhere. Also
measures the machine's dense matmul throughput in the teacher's dtype, and reports the
engine's achieved model FLOP/s as a fraction of it; the engine on the generic forward (the
model's own, :mod:`semdistill.teacher.decoder.generic`) on the same questions, as a ratio to the
engine on the forward ``--decoder`` picks; and the peak resident memory against that of the
transformers model alone (loaded in a process of its own).

    python benchmarks/bench_collect.py [--model qwen2.5-coder-1.5b] [--questions 48]
                                       [--baseline-questions 8] [--dtype auto]
                                       [--generic-questions 48]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import GenerationConfig

from semdistill.collect.local import collect
from semdistill.collect.progress import CollectStats
from semdistill.collect.rows import question_seed
from semdistill.collect.settings import CollectSettings, SamplingSettings
from semdistill.data import Question, load_questions
from semdistill.semantics.embed import Embedder, load_embedder
from semdistill.semantics.judge import MatchJudge
from semdistill.store import Store
from semdistill.teacher import load_teacher
from semdistill.teacher.base import clean_answer
from semdistill.teacher.checkpoint import load_hf_model
from semdistill.teacher.hf import HFTeacher
from semdistill.teacher.loader import resolve_model

N_SAMPLES, TEMPERATURE, MAX_NEW_TOKENS, SEED = 10, 1.0, 24, 0


def _load() -> str:
    """The 1/5/15-minute load averages: other work on the machine skews every timing."""
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def matmul_throughput(dtype: torch.dtype, seconds: float = 3.0) -> float:
    """FLOP/s of a (512 x 1536) @ (1536 x 8960) matmul in ``dtype``, the 1.5B's MLP shape."""
    a = torch.randn(512, 1536, dtype=dtype)
    b = torch.randn(1536, 8960, dtype=dtype)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * 512 * 1536 * 8960 * count / (time.perf_counter() - start)


def model_flops(hf: HFTeacher, prompt_tokens: int, decoded: int, prompts: int) -> float:
    """Matmul FLOPs of the engine's work: every token through the body's linear layers,
    logits where needed (the linear layers may be packed in place: counted by their shapes)."""
    head_module = hf.model.get_output_embeddings()
    head = head_module.in_features * head_module.out_features
    body = sum(
        m.in_features * m.out_features
        for m in hf.model.modules()
        if hasattr(m, "in_features") and hasattr(m, "out_features") and m is not head_module
    )
    return 2.0 * (body * (prompt_tokens + decoded) + head * (decoded + prompts))


def resident_gb() -> float:
    """This process's resident memory now, GB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


class ResidentPeak:
    """The most resident memory seen (every 20 ms) while the ``with`` block runs, GB."""

    def __enter__(self) -> ResidentPeak:
        self.peak, self._done = resident_gb(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, resident_gb())

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, resident_gb())


def model_alone_gb(model: str, dtype: str) -> tuple[float, float]:
    """Resident GB of a process that only loads ``model`` with transformers and runs one
    forward pass (which reads every weight in): after it, and at its peak while loading."""
    code = (
        "import resource, sys, torch; sys.path.insert(0, sys.argv[3]); from bench_collect "
        "import resident_gb; from semdistill.teacher.checkpoint import load_hf_model; "
        "from semdistill.teacher.loader import resolve_model; "
        "model = load_hf_model(resolve_model(sys.argv[1]), sys.argv[2], 'cpu')[0]; "
        "model(input_ids=torch.tensor([[1, 2, 3]])); "
        "print(resident_gb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)"
    )
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [sys.executable, "-c", code, model, dtype, here], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    loaded, peak = out.stdout.split()[-2:]
    return float(loaded), float(peak)


def engine_rate(
    teacher: HFTeacher, questions: list[Question], embedder: Embedder
) -> tuple[float, CollectStats]:
    """Prompts/s of ``collect`` on ``teacher`` over ``questions`` (into a scratch store), and
    the run's statistics."""
    judge = MatchJudge()
    settings = CollectSettings(
        teacher.spec.name,
        "trivia",
        limit=len(questions),
        sampling=SamplingSettings(N_SAMPLES, TEMPERATURE, SEED, MAX_NEW_TOKENS),
    )
    config = settings.store_config(teacher, embedder, judge)
    teacher.greedy([teacher.format_prompt("Warm-up?")], max_new_tokens=2)
    with tempfile.TemporaryDirectory() as tmp:
        stats = collect(
            questions,
            teacher,
            embedder,
            judge,
            Store.create(tmp, config),
            settings,
            progress=False,
        )
    return stats.prompts_per_second, stats


def _generate(hf: HFTeacher, encoded: dict, **settings: object) -> list[str]:
    # a clean generation config: no model default (top_k, repetition penalty...) applies
    clean = GenerationConfig(eos_token_id=hf.eos_ids, pad_token_id=hf.eos_ids[0])
    with torch.inference_mode():
        output = hf.model.generate(
            **encoded, generation_config=clean, max_new_tokens=MAX_NEW_TOKENS, **settings
        )
    new = output[:, encoded["input_ids"].shape[1] :]
    return [clean_answer(t) for t in hf.tokenizer.batch_decode(new, skip_special_tokens=True)]


def generate_loop(
    questions: list[Question], hf: HFTeacher, embedder: Embedder, *, per_sample: bool
) -> float:
    """Seconds for a generate() loop over ``questions``: one completion per call if
    ``per_sample``, else greedy + ``num_return_sequences=N`` (the previous default)."""
    judge = MatchJudge()
    start = time.perf_counter()
    for question in questions:
        prompt = hf.format_prompt(question.question)
        encoded = hf.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            hf.model(**encoded, output_hidden_states=True, logits_to_keep=1)
        answers = _generate(hf, encoded, do_sample=False)
        sampling = {"do_sample": True, "temperature": TEMPERATURE, "top_k": 0, "top_p": 1.0}
        torch.manual_seed(question_seed(SEED, question.id) % 2**32)
        if per_sample:
            for _ in range(N_SAMPLES):
                answers += _generate(hf, encoded, **sampling)
        else:
            answers += _generate(hf, encoded, num_return_sequences=N_SAMPLES, **sampling)
        embedder.encode(answers)
        judge.judge(answers, [list(question.answers)] * len(answers))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--questions", type=int, default=48, help="for the engine")
    parser.add_argument("--baseline-questions", type=int, default=8, help="for each loop")
    parser.add_argument("--decode-rows", type=int, default=128)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--decoder", default="auto", help="the engine's forward: auto, lean")
    parser.add_argument(
        "--generic-questions", type=int, default=None, help="for the generic forward (0: skip)"
    )
    args = parser.parse_args()

    questions = load_questions("trivia", limit=args.questions, seed=SEED)
    teacher = load_teacher(
        args.model,
        backend="transformers",
        dtype=args.dtype,
        decode_rows=args.decode_rows,
        decoder=args.decoder,
    )
    assert isinstance(teacher, HFTeacher)
    embedder = load_embedder()
    dtype, dtype_name = teacher.model.dtype, teacher.dtype
    print(
        f"model {teacher.spec.name}, dtype {teacher.dtype}, device {teacher.model.device}, "
        f"N={N_SAMPLES}, T={TEMPERATURE}, max_new_tokens={MAX_NEW_TOKENS}, "
        f"torch threads {torch.get_num_threads()}, decode rows {args.decode_rows}; "
        f"{teacher.decoder.path} forward ({teacher.decoder.reason})"
    )
    peak = matmul_throughput(dtype)
    print(f"machine: {peak / 1e9:.1f} GFLOP/s dense {dtype} matmul (512x1536 @ 1536x8960)")

    clock = teacher.engine.clock
    print(f"load average before the engine: {_load()}")
    before = (clock.prompt_tokens, clock.decoded_tokens)
    with ResidentPeak() as collecting:
        rate, stats = engine_rate(teacher, questions, embedder)
    prompt_tokens = clock.prompt_tokens - before[0]
    decoded = clock.decoded_tokens - before[1]
    flops = model_flops(teacher, prompt_tokens, decoded, len(questions))
    stages = ", ".join(
        f"{stage} {getattr(stats, stage):.1f} s"
        for stage in ("generation", "embedding", "judging", "writing")
    )
    print(
        f"engine: {len(questions)} questions in {stats.collection_seconds:.1f} s, "
        f"{rate:.3f} prompts/s ({stages}; greedy accuracy {stats.default_accuracy:.2f})"
    )
    print(
        f"  work: {prompt_tokens / len(questions):.1f} prompt tokens (after the cached "
        f"{len(teacher.prefiller.prefix)}-token template prefix) and "
        f"{decoded / len(questions):.1f} decoded row-steps per question; "
        f"{flops / stats.generation / 1e9:.1f} GFLOP/s in generation = "
        f"{flops / stats.generation / peak:.0%} of the machine's matmul throughput"
    )
    baseline = questions[: args.baseline_questions]
    print(f"load average before the per-prompt generate loop: {_load()}")
    loop_rate = len(baseline) / generate_loop(baseline, teacher, embedder, per_sample=False)
    print(f"per-prompt generate(num_return_sequences=N): {loop_rate:.3f} prompts/s")
    print(f"load average before the naive loop: {_load()}")
    naive_rate = len(baseline) / generate_loop(baseline, teacher, embedder, per_sample=True)
    print(f"naive loop (1 completion per generate): {naive_rate:.3f} prompts/s")
    print(f"load average at the end: {_load()}")
    print(
        f"speed-up of the engine: {rate / loop_rate:.1f}x the per-prompt generate "
        f"loop, {rate / naive_rate:.1f}x the naive loop"
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    alone, alone_peak = model_alone_gb(args.model, dtype_name)
    print(
        f"resident memory while the engine collected (teacher, embedder, cache): at most "
        f"{collecting.peak:.1f} GB = {collecting.peak / alone:.2f}x the transformers model "
        f"alone in a process of its own ({alone:.1f} GB after one forward pass); peak of this "
        f"process {rss:.1f} GB, of loading the model alone {alone_peak:.1f} GB"
    )
    generic_questions = args.questions if args.generic_questions is None else args.generic_questions
    if generic_questions and teacher.decoder.path == "lean":
        subset = questions[:generic_questions]
        del teacher
        model, tokenizer, spec = load_hf_model(resolve_model(args.model), dtype_name, "cpu")
        generic = HFTeacher(
            model,
            tokenizer,
            spec,
            dtype=dtype_name,
            decode_rows=args.decode_rows,
            decoder="generic",
        )
        print(f"load average before the generic forward: {_load()}")
        generic_rate, _ = engine_rate(generic, subset, embedder)
        print(
            f"generic forward: {len(subset)} questions, {generic_rate:.3f} prompts/s = "
            f"{generic_rate / rate:.2f}x the engine's {rate:.3f} on the lean forward"
        )


if __name__ == "__main__":
    main()
