"""Teacher collection: questions in, a store of hidden states, answers, embeddings and labels out.

The teacher streams answer sets (all-layer last-token states, a greedy "default" answer and N
sampled answers) for every question not yet in the store, as each completes; every
``batch_size`` completed questions get sentence embeddings of their answers (and of the
options of multiple-choice questions) and correctness labels, and are written as one shard.
Questions already in the store are skipped, so a rerun after a crash resumes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from semdistill.collect.rows import StageTimer, answered_shards, shard_rows
from semdistill.data import Question, load_questions
from semdistill.semantics.embed import DEFAULT_EMBEDDER, Embedder, load_embedder
from semdistill.semantics.judge import Judge, LLMJudge, MatchJudge
from semdistill.store import CollectConfig, Store
from semdistill.teacher import Teacher, load_teacher
from semdistill.teacher.base import ChatGreedy
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
    n_labelled: int
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
        """Share of this run's labelled questions whose greedy answer the judge marked correct
        (NaN if none was labelled)."""
        return self.n_default_correct / self.n_labelled if self.n_labelled else float("nan")


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
    store.record("decoder", teacher.decoder.to_dict())
    done = store.done_ids()
    todo = [q for q in questions if q.id not in done]
    timer = StageTimer()
    n_correct = n_labelled = 0
    with _progress(progress) as bar:
        task = bar.add_task("collect", total=len(todo))
        shards = answered_shards(
            todo,
            teacher,
            timer,
            batch_size=batch_size,
            n_samples=n_samples,
            temperature=temperature,
            seed=seed,
            max_new_tokens=max_new_tokens,
        )
        for shard in shards:
            rows = shard_rows(
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
            n_labelled += rows.n_labelled
            bar.advance(task, len(shard))
    return finish_collection(
        store,
        ids,
        n_written=len(todo),
        n_default_correct=n_correct,
        n_labelled=n_labelled,
        seconds={name: timer.seconds.get(name, 0.0) for name in _STAGES},
    )


def finish_collection(
    store: Store,
    ids: Sequence[str],
    *,
    n_written: int,
    n_default_correct: int,
    n_labelled: int,
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
        n_labelled=n_labelled,
        **seconds,
    )


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
    decoder: str = "auto",
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
    per shard. ``dtype``, ``device``, ``decode_rows`` (answers decoded together) and
    ``decoder`` (which forward) are the teacher's (see :func:`~semdistill.teacher.load_teacher`).
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
            model,
            backend=backend,
            dtype=dtype,
            device=device,
            decode_rows=decode_rows,
            decoder=decoder,
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
