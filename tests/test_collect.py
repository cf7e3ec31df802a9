"""Collection: batching, resuming, labels and the ``semdistill collect`` command."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from semdistill.cli import app
from semdistill.collect import (
    CollectSettings,
    CollectStats,
    SamplingSettings,
    collect,
    run_collection,
)
from semdistill.collect.rows import question_seed
from semdistill.data import Question, load_questions
from semdistill.semantics.judge import MatchJudge
from semdistill.store import CollectConfig, Store
from semdistill.teacher import registry
from semdistill.teacher.base import AnswerSet, ModelSpec
from semdistill.teacher.decoder.backends import DecoderPath

# ---------------------------------------------------------------- unit tests with fakes


class FakeTeacher:
    """Deterministic stand-in: states and answers are functions of the prompt and seed."""

    spec = ModelSpec("fake", "gguf", "/fake.gguf", None, "0" * 64)
    backend = "transformers"
    dtype = "float32"
    n_layers = 2
    hidden_size = 4
    decoder = DecoderPath("generic", "a stand-in")

    def __init__(self) -> None:
        self.prefill_batches: list[int] = []

    def format_prompt(self, question: str) -> str:
        return f"Q: {question}"

    def chat_prompt(self, message: str) -> str:
        return message

    def hidden_states(self, prompts: list[str], *, layers: Sequence[int] | None = None):
        self.prefill_batches.append(len(prompts))
        codes = [int(hashlib.sha256(p.encode()).hexdigest()[:6], 16) % 1000 for p in prompts]
        return np.array([np.full((3, 4), c / 100.0) for c in codes], dtype=np.float16)

    def sample(self, prompts, *, n, temperature, seeds, max_new_tokens):
        return [
            [f"{p[3:8]}-{s % 1000}-{j}" for j in range(n)]
            for p, s in zip(prompts, seeds, strict=True)
        ]

    def greedy(self, prompts: list[str], *, max_new_tokens: int) -> list[str]:
        return ["Paris" if "France" in p else "no idea" for p in prompts]

    def answer_sets(self, prompts, *, n, temperature, seeds, max_new_tokens):
        states = self.hidden_states(prompts).astype(np.float32)
        greedy = self.greedy(prompts, max_new_tokens=max_new_tokens)
        samples = self.sample(
            prompts, n=n, temperature=temperature, seeds=seeds, max_new_tokens=max_new_tokens
        )
        for i in self.completion_order(len(prompts)):
            yield i, AnswerSet(states[i], greedy[i], samples[i])

    def completion_order(self, n: int) -> list[int]:
        return list(range(n))


class ShuffledTeacher(FakeTeacher):
    """Completes prompts out of order, as the engine does when answers differ in length."""

    def completion_order(self, n: int) -> list[int]:
        return [*range(1, n, 2), *range(0, n, 2)][::-1]


class FakeEmbedder:
    name = "fake-embedder"
    dim = 3

    def encode(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        rows = [[len(t), sum(map(ord, t)) % 97, 1.0] for t in texts]
        vectors = np.array(rows, dtype=np.float32).reshape(len(texts), 3)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


QUESTIONS = [
    Question("q/0", "What is the capital of France?", ("Paris",), "unit"),
    Question("q/1", "Who wrote Hamlet?", ("Shakespeare",), "unit"),
    Question("q/2", "Pick the primary colour", ("red",), "unit", ("red", "green", "mauve"), 0),
    Question("q/3", "What is 2+2?", ("4", "four"), "unit"),
    Question("q/4", "Largest planet?", ("Jupiter",), "unit"),
]


def fake_config(**changes: object) -> CollectConfig:
    config = CollectConfig(
        model=FakeTeacher.spec,
        backend="transformers",
        dtype="float32",
        prompt_template="Q: {question}",
        prompt_version="short-answer-v1",
        n_samples=3,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=8,
        seed=7,
        embedder="fake-embedder",
        embedding_dim=3,
        judge=MatchJudge().name,
        questions="unit",
        limit=None,
        question_seed=7,
        split_seed=0,
        n_layers=2,
        hidden_size=4,
    )
    return replace(config, **changes)


def fake_settings(batch_size: int = 2, **sampling: object) -> CollectSettings:
    """The settings of the fake collection (those of :func:`fake_config`)."""
    chosen = {"n_samples": 3, "temperature": 1.0, "seed": 7, "max_new_tokens": 8, **sampling}
    return CollectSettings(
        "fake", "unit", sampling=SamplingSettings(**chosen), batch_size=batch_size
    )


def run_fake(
    store: Store, questions: Sequence[Question], batch_size: int, teacher: FakeTeacher | None = None
) -> CollectStats:
    return collect(
        questions,
        teacher or FakeTeacher(),
        FakeEmbedder(),
        MatchJudge(),
        store,
        fake_settings(batch_size),
        progress=False,
    )


def test_collect_writes_a_shard_per_batch_and_resumes(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "s", fake_config())
    first = run_fake(store, QUESTIONS[:3], batch_size=2)
    assert (first.n_written, first.n_skipped, first.n_default_correct) == (3, 0, 1)
    assert store.complete and store.done_ids() == {"q/0", "q/1", "q/2"}
    second = run_fake(store, QUESTIONS, batch_size=2)
    assert (second.n_questions, second.n_skipped, second.n_written) == (5, 3, 2)
    assert store.complete
    shards = sorted(p.name for p in (store.path / "shards").glob("*.parquet"))
    assert len(shards) == 3
    rows = Store.open(store.path).load()
    assert rows.ids.tolist() == ["q/0", "q/1", "q/2", "q/3", "q/4"]
    assert rows.default_answer.tolist()[:2] == ["Paris", "no idea"]
    assert rows.default_correct.tolist() == [True, False, False, False, False]
    assert rows.sample_correct.shape == (5, 3) and not rows.sample_correct.any()
    assert rows.hidden.shape == (5, 3, 4)
    assert rows.option_embeddings[2].shape == (3, 3)
    np.testing.assert_allclose(
        rows.option_embeddings[2], FakeEmbedder().encode(["red", "green", "mauve"])
    )
    assert rows.options[2] == ["red", "green", "mauve"] and rows.correct_option[2] == 0
    assert rows.options[0] is None and rows.correct_option[0] == -1
    assert set(rows.splits.tolist()) <= {"train", "validation", "test"}
    assert rows.judges.tolist() == [MatchJudge().name] * 5
    assert second.prompts_per_second > 0 and second.collection_seconds > 0


def test_rows_do_not_depend_on_batching(tmp_path: Path) -> None:
    one = Store.create(tmp_path / "one", fake_config())
    run_fake(one, QUESTIONS, batch_size=1)
    three = Store.create(tmp_path / "three", fake_config())
    run_fake(three, QUESTIONS, batch_size=3)
    a, b = one.load(), three.load()
    assert a.samples == b.samples
    assert a.samples[0][0].endswith(f"-{question_seed(7, 'q/0') % 1000}-0")
    np.testing.assert_array_equal(a.hidden, b.hidden)


def test_rows_written_in_completion_order_keep_each_question_with_its_answers(
    tmp_path: Path,
) -> None:
    ordered = Store.create(tmp_path / "ordered", fake_config())
    run_fake(ordered, QUESTIONS, batch_size=2)
    shuffled = Store.create(tmp_path / "shuffled", fake_config())
    stats = run_fake(shuffled, QUESTIONS, batch_size=2, teacher=ShuffledTeacher())
    assert stats.n_written == 5 and shuffled.complete
    a, b = ordered.load(), shuffled.load()
    assert b.ids.tolist() != a.ids.tolist(), "the shuffled teacher must change the row order"
    order = [b.ids.tolist().index(qid) for qid in a.ids.tolist()]
    assert [b.samples[i] for i in order] == a.samples
    assert b.default_answer[order].tolist() == a.default_answer.tolist()
    assert b.questions[order].tolist() == a.questions.tolist()
    np.testing.assert_array_equal(b.hidden[order], a.hidden)
    np.testing.assert_array_equal(b.sample_embeddings[order], a.sample_embeddings)
    assert b.default_correct[order].tolist() == a.default_correct.tolist()


def test_collect_refuses_settings_that_differ_from_the_store(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "s", fake_config(n_samples=5, judge="other-judge"))
    with pytest.raises(ValueError, match=r"n_samples: 5 != 3.*judge: 'other-judge'"):
        run_fake(store, QUESTIONS, batch_size=2)
    assert store.done_ids() == set()


def test_collect_refuses_repeated_ids_and_bad_settings(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "s", fake_config())
    with pytest.raises(ValueError, match=r"repeated ids: \['q/0'\]"):
        run_fake(store, [QUESTIONS[0], QUESTIONS[1], QUESTIONS[0]], batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        run_fake(store, QUESTIONS, batch_size=0)
    with pytest.raises(ValueError, match="temperature must be positive"):
        fake_settings(1, temperature=0.0).check()


def test_llm_judge_asks_the_teacher_through_its_chat_template(tmp_path: Path) -> None:
    class YesTeacher(FakeTeacher):
        seen: list[str]

        def chat_prompt(self, message: str) -> str:
            return f"<chat>{message}"

        def greedy(self, prompts: list[str], *, max_new_tokens: int) -> list[str]:
            self.seen = prompts
            return ["YES"] * len(prompts)

    teacher = YesTeacher()
    judge = CollectSettings("fake", "unit", judge="llm").load_judge(teacher, tmp_path)
    assert judge.judge(["Lima"], [["Lima"]], questions=["Capital of Peru?"]).tolist() == [True]
    assert teacher.seen[0].startswith("<chat>") and "Capital of Peru?" in teacher.seen[0]
    assert "fake" in judge.name
    assert (tmp_path / "judge-cache.json").is_file()  # the verdicts are cached in the store folder
    matching = CollectSettings("fake", "unit", judge="match").load_judge(teacher, tmp_path)
    assert matching.name == MatchJudge().name
    with pytest.raises(ValueError, match="judge must be one of match, llm"):
        CollectSettings("fake", "unit", judge="oracle").load_judge(teacher, tmp_path)


def test_question_seed_is_stable_and_distinct() -> None:
    assert question_seed(0, "trivia/general/1") == question_seed(0, "trivia/general/1")
    seeds = {question_seed(s, f"id{i}") for s in range(3) for i in range(100)}
    assert len(seeds) == 300
    assert all(0 <= s < 2**63 for s in seeds)


# ---------------------------------------------------------------- CLI, real models

runner = CliRunner()
# float32 on every CPU: the batch-independence checked below is float32's (bfloat16 on AMX
# machines rounds a prompt's rows differently in differently sized batches)
SMALL = ["--model", "smollm2-135m", "--samples", "2", "--max-new-tokens", "6", "--quiet"]
SMALL += ["--dtype", "float32"]


def invoke(args: list[str]):
    return runner.invoke(app, ["collect", *args])


def assert_clean_failure(result, out: Path, *words: str) -> None:
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message, message
    for word in words:
        assert word in message, message
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model", "gpt-7", "--questions", "trivia"], ["unknown model", "smollm2-135m"]),
        (["--model", "smollm2-135m", "--questions", "/nowhere/q.jsonl"], ["does not exist"]),
        (["--model", "smollm2-135m", "--questions", "trivia", "--samples", "0"], ["n_samples"]),
        (["--model", "smollm2-135m", "--questions", "trivia", "--backend", "vllm"], ["backend"]),
        (["--model", "smollm2-135m", "--questions", "trivia", "--judge", "oracle"], ["judge"]),
    ],
)
def test_bad_input_is_one_red_line_and_exit_2(
    tmp_path: Path, args: list[str], words: list[str]
) -> None:
    out = tmp_path / "store"
    assert_clean_failure(invoke([*args, "--out", str(out)]), out, *words)


def test_empty_question_is_refused(tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        json.dumps({"question": "Capital of Peru?", "answers": ["Lima"]})
        + "\n"
        + json.dumps({"question": "  ", "answers": ["x"]})
        + "\n"
    )
    out = tmp_path / "store"
    result = invoke(["--model", "smollm2-135m", "--questions", str(questions), "--out", str(out)])
    assert_clean_failure(result, out, "row 1", "empty")


def test_gguf_hash_mismatch_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    bad = cache / "models" / registry.REGISTRY["qwen2.5-coder-1.5b"].filename
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"GGUF but truncated")
    monkeypatch.setenv(registry.CACHE_ENV, str(cache))
    out = tmp_path / "store"
    result = invoke(["--model", "qwen2.5-coder-1.5b", "--questions", "trivia", "--out", str(out)])
    assert_clean_failure(result, out, str(bad), registry.REGISTRY["qwen2.5-coder-1.5b"].sha256)


def _shard_digests(store_dir: Path) -> dict[str, str]:
    manifest = json.loads((store_dir / "manifest.json").read_text())
    return {
        s["file"]: hashlib.sha256((store_dir / s["file"]).read_bytes()).hexdigest()
        for s in manifest["shards"]
    }


@pytest.mark.slow
def test_resume_after_kill_9_keeps_rows_and_finishes(tmp_path: Path) -> None:
    out = tmp_path / "store"
    # one question in flight at a time (N + 1 = 3 rows), so shards land one by one
    args = [*SMALL, "--questions", "trivia", "--limit", "6", "--batch-size", "2"]
    slow = ["--decode-rows", "3"]
    command = [
        str(Path(sys.executable).parent / "semdistill"),
        "collect",
        *args,
        *slow,
        "--out",
        str(out),
    ]
    log = tmp_path / "first-run.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        manifest = out / "manifest.json"
        if manifest.exists() and json.loads(manifest.read_text())["shards"]:
            break
        assert process.poll() is None, log.read_text()
        time.sleep(0.1)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed = Store.open(out)
    before = _shard_digests(out)
    first_rows = killed.load()
    assert not killed.complete and len(first_rows) == 2

    result = invoke([*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"({len(first_rows)} already there)" in result.output
    resumed = Store.open(out)
    assert resumed.complete
    rows = resumed.load()
    expected = [q.id for q in load_questions("trivia", limit=6, seed=0)]
    assert sorted(rows.ids.tolist()) == sorted(expected) and len(rows) == 6
    after = _shard_digests(out)
    assert {k: after[k] for k in before} == before
    assert rows.ids[: len(first_rows)].tolist() == first_rows.ids.tolist()

    # The same settings in one uninterrupted run give the same answers.
    fresh = tmp_path / "fresh"
    settings = CollectSettings(
        "smollm2-135m",
        "trivia",
        limit=6,
        sampling=SamplingSettings(n_samples=2, max_new_tokens=6),
        batch_size=2,
        dtype="float32",
    )
    run_collection(fresh, settings, progress=False)
    whole = Store.open(fresh).load()
    order = {qid: i for i, qid in enumerate(whole.ids.tolist())}
    index = [order[qid] for qid in rows.ids.tolist()]
    assert [whole.samples[i] for i in index] == rows.samples
    assert whole.default_answer[index].tolist() == rows.default_answer.tolist()
    np.testing.assert_allclose(
        whole.hidden[index].astype(np.float32), rows.hidden.astype(np.float32), atol=0.05
    )

    # Reopening with other settings is refused and names the field.
    other = [*SMALL[:2], "--samples", "3", *SMALL[4:], *args[len(SMALL) :]]
    result = invoke([*other, "--out", str(out)])
    assert result.exit_code == 2
    assert "n_samples: 2 != 3" in result.stderr
    assert len(Store.open(out).load()) == 6


def test_presets_command_reads_the_presets() -> None:
    from semdistill.pipeline.main import PRESETS

    result = CliRunner().invoke(app, ["presets"])
    assert result.exit_code == 0, result.output
    for preset in PRESETS.values():
        line = next(x for x in result.output.splitlines() if x.startswith(f"{preset.name}:"))
        for settings in preset.collections:
            assert f"{settings.questions} {settings.limit}" in line
        assert f"N={preset.collections[0].sampling.n_samples} " in line
    assert "preset" in CliRunner().invoke(app, ["run", "--help"]).output
