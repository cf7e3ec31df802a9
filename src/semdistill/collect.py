"""Teacher collection: questions in, a store of hidden states, answers, embeddings and labels out.

The teacher streams answer sets (all-layer last-token states, a greedy "default" answer and N
sampled answers) for every question not yet in the store, as each completes; every
``batch_size`` completed questions get sentence embeddings of their answers (and of the
options of multiple-choice questions) and correctness labels, and are written as one shard.
Questions already in the store are skipped, so a rerun after a crash resumes.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from semdistill.data import Question, load_questions, split_of
from semdistill.embed import DEFAULT_EMBEDDER, Embedder, load_embedder
from semdistill.judge import Judge, LLMJudge, MatchJudge
from semdistill.store import CollectConfig, Collection, Store
from semdistill.teacher import Teacher, load_teacher
from semdistill.teacher.base import ChatGreedy, to_float16
from semdistill.teacher.engine import AnswerSet
from semdistill.teacher.prompt import PROMPT_TEMPLATE, PROMPT_VERSION

JUDGES = ("match", "llm")
SPLIT_SEED = 0
JUDGE_CACHE_NAME = "judge-cache.json"
_STAGES = ("generation", "embedding", "judging", "writing")


@dataclass(frozen=True)
class CollectStats:
    """What one collection run did and the wall time (seconds) of each stage.

    ``generation`` is the teacher's prefill and decoding, which the engine interleaves.
    """

    n_questions: int
    n_skipped: int
    n_written: int
    n_default_correct: int
    load: float = 0.0
    generation: float = 0.0
    embedding: float = 0.0
    judging: float = 0.0
    writing: float = 0.0

    @property
    def collection_seconds(self) -> float:
        """Wall time of every stage but loading."""
        return self.generation + self.embedding + self.judging + self.writing

    @property
    def prompts_per_second(self) -> float:
        """Questions written per second of collection (loading excluded)."""
        seconds = self.collection_seconds
        return self.n_written / seconds if seconds > 0 else 0.0

    @property
    def default_accuracy(self) -> float:
        """Share of this run's greedy answers the judge marked correct (NaN if none)."""
        return self.n_default_correct / self.n_written if self.n_written else float("nan")


def question_seed(seed: int, question_id: str) -> int:
    """The sampling seed of one question, fixed by the run seed and the question id."""
    digest = hashlib.sha256(f"{seed}\x00{question_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def check_settings(
    *, batch_size: int, n_samples: int, temperature: float, max_new_tokens: int
) -> None:
    """Raise a ValueError naming the first unusable collection setting."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")


def _check_store(
    config: CollectConfig,
    teacher: Teacher,
    embedder: Embedder,
    judge: Judge,
    *,
    n_samples: int,
    temperature: float,
    seed: int,
    max_new_tokens: int,
) -> None:
    """Raise a ValueError naming every setting that differs from the store's config."""
    given = {
        "model": teacher.spec,
        "backend": teacher.backend,
        "dtype": teacher.dtype,
        "n_layers": teacher.n_layers,
        "hidden_size": teacher.hidden_size,
        "embedder": embedder.name,
        "embedding_dim": embedder.dim,
        "judge": judge.name,
        "n_samples": n_samples,
        "temperature": temperature,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "prompt_version": PROMPT_VERSION,
    }
    differences = config.differences(replace(config, **given))
    if differences:
        raise ValueError(
            "collection settings differ from the store's config (stored != given): "
            + "; ".join(differences)
        )


class _Timer:
    """Accumulates wall time per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def _batches(items: Sequence[Question], size: int) -> Iterator[Sequence[Question]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def collect(
    questions: Sequence[Question],
    teacher: Teacher,
    embedder: Embedder,
    judge: Judge,
    store: Store,
    *,
    batch_size: int,
    n_samples: int,
    temperature: float,
    seed: int,
    max_new_tokens: int,
    progress: bool = True,
) -> CollectStats:
    """Collect every question not yet in ``store``, writing one shard per batch.

    The settings must match the store's config (a ValueError names those that differ).
    The store is marked complete once every question is in it.
    """
    check_settings(
        batch_size=batch_size,
        n_samples=n_samples,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
    )
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        repeated = sorted(i for i, count in Counter(ids).items() if count > 1)
        raise ValueError(f"questions has repeated ids: {repeated[:5]}")
    _check_store(
        store.config,
        teacher,
        embedder,
        judge,
        n_samples=n_samples,
        temperature=temperature,
        seed=seed,
        max_new_tokens=max_new_tokens,
    )
    done = store.done_ids()
    todo = [q for q in questions if q.id not in done]
    timer = _Timer()
    n_correct = 0
    sampling = {
        "n_samples": n_samples,
        "temperature": temperature,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
    }
    with _progress(progress) as bar:
        task = bar.add_task("collect", total=len(todo))
        for shard in _answered(todo, teacher, timer, batch_size=batch_size, **sampling):
            rows = _rows(
                shard,
                embedder,
                judge,
                timer,
                n_samples=n_samples,
                split_seed=store.config.split_seed,
            )
            with timer.stage("writing"):
                store.append(rows)
            n_correct += int(rows.default_correct.sum())
            bar.advance(task, len(shard))
    return finish_collection(
        store,
        ids,
        n_written=len(todo),
        n_default_correct=n_correct,
        seconds={name: timer.seconds.get(name, 0.0) for name in _STAGES},
    )


def finish_collection(
    store: Store,
    ids: Sequence[str],
    *,
    n_written: int,
    n_default_correct: int,
    seconds: dict[str, float],
) -> CollectStats:
    """Mark ``store`` complete once it holds every id asked for; the run's statistics."""
    if set(ids) <= store.done_ids():
        store.mark_complete()
    return CollectStats(
        n_questions=len(ids),
        n_skipped=len(ids) - n_written,
        n_written=n_written,
        n_default_correct=n_default_correct,
        **seconds,
    )


@dataclass(frozen=True)
class _Answered:
    """One question, its formatted prompt and the teacher's answer set for it."""

    question: Question
    prompt: str
    answers: AnswerSet


def _answered(
    todo: Sequence[Question],
    teacher: Teacher,
    timer: _Timer,
    *,
    batch_size: int,
    n_samples: int,
    temperature: float,
    seed: int,
    max_new_tokens: int,
) -> Iterator[list[_Answered]]:
    """The answered questions of ``todo`` in completion order, ``batch_size`` at a time."""
    prompts = [teacher.format_prompt(q.question) for q in todo]
    stream = teacher.answer_sets(
        prompts,
        n=n_samples,
        temperature=temperature,
        seeds=[question_seed(seed, q.id) for q in todo],
        max_new_tokens=max_new_tokens,
    )
    shard: list[_Answered] = []
    while True:
        with timer.stage("generation"):
            item = next(stream, None)
        if item is None:
            break
        index, answers = item
        shard.append(_Answered(todo[index], prompts[index], answers))
        if len(shard) == batch_size:
            yield shard
            shard = []
    if shard:
        yield shard


def _rows(
    shard: list[_Answered],
    embedder: Embedder,
    judge: Judge,
    timer: _Timer,
    *,
    n_samples: int,
    split_seed: int,
) -> Collection:
    """The store rows of answered questions: their answers embedded and judged."""
    n = len(shard)
    batch = [item.question for item in shard]
    defaults = [str(item.answers.greedy) for item in shard]
    samples = [item.answers.samples for item in shard]
    hidden = to_float16(np.stack([item.answers.hidden for item in shard]))
    with timer.stage("embedding"):
        flat_samples = [answer for answers in samples for answer in answers]
        option_texts = [option for q in batch for option in (q.options or ())]
        embedded = embedder.encode(defaults + flat_samples + option_texts)
        default_embedding = embedded[:n]
        sample_embeddings = embedded[n : n + len(flat_samples)].reshape(n, n_samples, -1)
        option_rows = np.split(
            embedded[n + len(flat_samples) :],
            np.cumsum([len(q.options or ()) for q in batch])[:-1],
        )
        option_embeddings = [
            None if q.options is None else rows for q, rows in zip(batch, option_rows, strict=True)
        ]
    with timer.stage("judging"):
        references = [list(q.answers) for q in batch]
        texts = [q.question for q in batch]
        default_correct = judge.judge(defaults, references, questions=texts)
        sample_correct = judge.judge(
            flat_samples,
            [refs for refs in references for _ in range(n_samples)],
            questions=[text for text in texts for _ in range(n_samples)],
        ).reshape(n, n_samples)
    return Collection(
        ids=np.array([q.id for q in batch], dtype=object),
        splits=np.array([split_of(q.id, seed=split_seed) for q in batch], dtype=object),
        sources=np.array([q.source for q in batch], dtype=object),
        questions=np.array(texts, dtype=object),
        prompts=np.array([item.prompt for item in shard], dtype=object),
        references=references,
        options=[None if q.options is None else list(q.options) for q in batch],
        correct_option=np.array(
            [-1 if q.correct_option is None else q.correct_option for q in batch], dtype=np.int32
        ),
        hidden=hidden,
        default_answer=np.array(defaults, dtype=object),
        samples=samples,
        default_embedding=default_embedding,
        sample_embeddings=sample_embeddings,
        option_embeddings=option_embeddings,
        default_correct=np.asarray(default_correct, dtype=bool),
        sample_correct=np.asarray(sample_correct, dtype=bool),
        judges=np.array([judge.name] * n, dtype=object),
    )


def collect_rows(
    batch: Sequence[Question],
    teacher: Teacher,
    embedder: Embedder,
    judge: Judge,
    *,
    n_samples: int,
    temperature: float,
    seed: int,
    max_new_tokens: int,
    split_seed: int,
) -> tuple[Collection, dict[str, float]]:
    """The store rows of one batch of questions and the seconds spent per stage."""
    timer = _Timer()
    (shard,) = _answered(
        batch,
        teacher,
        timer,
        batch_size=len(batch),
        n_samples=n_samples,
        temperature=temperature,
        seed=seed,
        max_new_tokens=max_new_tokens,
    )
    rows = _rows(shard, embedder, judge, timer, n_samples=n_samples, split_seed=split_seed)
    return rows, timer.seconds


def collect_config(
    teacher: Teacher,
    embedder: Embedder,
    judge: Judge,
    *,
    questions: str,
    limit: int | None,
    n_samples: int,
    temperature: float,
    seed: int,
    max_new_tokens: int,
) -> CollectConfig:
    """The store config of a collection with these models and settings."""
    return CollectConfig(
        model=teacher.spec,
        backend=teacher.backend,
        dtype=teacher.dtype,
        prompt_template=PROMPT_TEMPLATE,
        prompt_version=PROMPT_VERSION,
        n_samples=n_samples,
        temperature=temperature,
        top_p=1.0,
        top_k=0,
        max_new_tokens=max_new_tokens,
        seed=seed,
        embedder=embedder.name,
        embedding_dim=embedder.dim,
        judge=judge.name,
        questions=questions,
        limit=limit,
        question_seed=seed,
        split_seed=SPLIT_SEED,
        n_layers=teacher.n_layers,
        hidden_size=teacher.hidden_size,
    )


def make_judge(kind: str, teacher: Teacher, cache_path: Path) -> Judge:
    """The ``kind`` judge: "match" (alias matching) or "llm" (the teacher asked, cached)."""
    if kind == "match":
        return MatchJudge()
    if kind == "llm":
        return LLMJudge(ChatGreedy(teacher), model_name=teacher.spec.name, cache_path=cache_path)
    raise ValueError(f"judge must be one of {', '.join(JUDGES)}, got {kind!r}")


def run_collection(
    out: str | Path,
    *,
    model: str,
    questions: str,
    limit: int | None = None,
    n_samples: int = 10,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    max_new_tokens: int = 24,
    backend: str = "auto",
    dtype: str = "auto",
    device: str = "auto",
    decode_rows: int = 128,
    embedder: str = DEFAULT_EMBEDDER,
    judge: str = "match",
    progress: bool = True,
    teacher: Teacher | None = None,
    embedder_model: Embedder | None = None,
) -> CollectStats:
    """Load questions, teacher, embedder and judge, then collect into the store at ``out``.

    An already loaded ``teacher`` (of ``model``) and ``embedder_model`` (named ``embedder``)
    are used instead of loading them again.

    Everything is checked before the store is created or opened; reopening a store made
    with other settings is refused with the differing fields named. ``seed`` seeds both
    the question subset (with ``limit``) and the sampling; ``batch_size`` is the questions
    per shard. ``dtype``, ``device`` and ``decode_rows`` (answers decoded together) are the
    teacher's (see :func:`~semdistill.teacher.load_teacher`).
    """
    check_settings(
        batch_size=batch_size,
        n_samples=n_samples,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
    )
    if judge not in JUDGES:
        raise ValueError(f"judge must be one of {', '.join(JUDGES)}, got {judge!r}")
    source = str(Path(questions).resolve()) if Path(questions).is_file() else questions
    start = time.perf_counter()
    picked = load_questions(source, limit=limit, seed=seed)
    if not picked:
        raise ValueError(f"question source {questions!r} holds no questions")
    if teacher is None:
        teacher = load_teacher(
            model, backend=backend, dtype=dtype, device=device, decode_rows=decode_rows
        )
    answer_embedder = embedder_model or load_embedder(embedder)
    the_judge = make_judge(judge, teacher, Path(out) / JUDGE_CACHE_NAME)
    load_seconds = time.perf_counter() - start
    config = collect_config(
        teacher,
        answer_embedder,
        the_judge,
        questions=source,
        limit=limit,
        n_samples=n_samples,
        temperature=temperature,
        seed=seed,
        max_new_tokens=max_new_tokens,
    )
    store = Store.open_or_create(out, config)
    stats = collect(
        picked,
        teacher,
        answer_embedder,
        the_judge,
        store,
        batch_size=batch_size,
        n_samples=n_samples,
        temperature=temperature,
        seed=seed,
        max_new_tokens=max_new_tokens,
        progress=progress,
    )
    return replace(stats, load=load_seconds)
