"""Teacher collection: questions in, a store of hidden states, answers, embeddings and labels out.

The teacher streams answer sets (all-layer last-token states, a greedy "default" answer and N
sampled answers) for every question not yet in the store, as each completes; every
``batch_size`` completed questions get sentence embeddings of their answers (and of the
options of multiple-choice questions) and correctness labels, and are written as one shard.
Questions already in the store are skipped, so a rerun after a crash resumes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from semdistill.collect.greedy import add_greedy_scores
from semdistill.collect.progress import CollectStats, Tally, finish_collection, progress_bar, to_do
from semdistill.collect.rows import answered_shards, shard_rows
from semdistill.collect.settings import CollectSettings
from semdistill.data import Question
from semdistill.semantics.embed import Embedder
from semdistill.semantics.judge import Judge
from semdistill.store import CollectConfig, Store
from semdistill.teacher import Teacher
from semdistill.teacher.base import ScoringTeacher
from semdistill.teacher.vllm_teacher import VLLMTeacher
from semdistill.timing import StageTimer

# What a resumed store must share with the run that extends it: the models and the sampling.
RESUME_FIELDS = (
    "model",
    "backend",
    "dtype",
    "n_layers",
    "hidden_size",
    "embedder",
    "embedding_dim",
    "judge",
    "n_samples",
    "temperature",
    "seed",
    "max_new_tokens",
    "prompt_version",
)


def check_store(stored: CollectConfig, given: CollectConfig) -> None:
    """Raise a ValueError naming every field of :data:`RESUME_FIELDS` that differs between
    the store's config and the run's."""
    same = replace(stored, **{name: getattr(given, name) for name in RESUME_FIELDS})
    differences = stored.differences(same)
    if differences:
        raise ValueError(
            "collection settings differ from the store's config (stored != given): "
            + "; ".join(differences)
        )


def collect(
    questions: Sequence[Question],
    teacher: Teacher,
    embedder: Embedder,
    judge: Judge,
    store: Store,
    settings: CollectSettings,
    *,
    progress: bool = True,
) -> CollectStats:
    """Collect every question not yet in ``store``, writing one shard per batch.

    The teacher, embedder, judge and sampling must match the store's config (a ValueError
    names those that differ). The store is marked complete once every question is in it.
    Rows without the greedy answer's scores (a store collected before they were recorded)
    then get them teacher-forced (:func:`~semdistill.collect.greedy.add_greedy_scores`).
    """
    settings.check()
    given = settings.store_config(teacher, embedder, judge)
    check_store(store.config, given)
    todo = to_do(questions, store)
    store.record("decoder", teacher.decoder.to_dict())
    if isinstance(teacher, VLLMTeacher):
        store.record("vllm", teacher.route.to_dict())
    timer = StageTimer()
    tally = Tally()
    with progress_bar("collect", progress) as bar:
        task = bar.add_task("collect", total=len(todo))
        shards = answered_shards(
            todo, teacher, timer, batch_size=settings.batch_size, **asdict(settings.sampling)
        )
        for shard in shards:
            rows = shard_rows(
                shard,
                embedder,
                judge,
                timer,
                n_samples=settings.sampling.n_samples,
                split_seed=store.config.split_seed,
            )
            with timer.stage("writing"):
                store.append(rows)
            tally.add(rows)
            bar.advance(task, len(shard))
    stats = finish_collection(store, questions, todo, tally, timer.seconds)
    if not (store.unscored_shards() and isinstance(teacher, ScoringTeacher)):
        return stats
    start = time.perf_counter()
    scored = add_greedy_scores(store, teacher)
    return replace(stats, n_scored=scored, scoring=time.perf_counter() - start)


def run_collection(
    out: str | Path,
    settings: CollectSettings,
    *,
    progress: bool = True,
    teacher: Teacher | None = None,
    embedder: Embedder | None = None,
) -> CollectStats:
    """Load the questions, teacher, embedder and judge of ``settings``, then collect into the
    store at ``out``.

    An already loaded ``teacher`` and ``embedder`` are used instead of loading them again;
    they must be the ones ``settings`` name (a ValueError says which is not). Everything is
    checked before the store is created or opened; reopening a store made with other
    settings is refused with the differing fields named.
    """
    settings.check()
    start = time.perf_counter()
    picked = settings.pick_questions()
    teacher, embedder, judge = settings.load_models(out, teacher=teacher, embedder=embedder)
    load_seconds = time.perf_counter() - start
    store = Store.open_or_create(out, settings.store_config(teacher, embedder, judge))
    stats = collect(picked, teacher, embedder, judge, store, settings, progress=progress)
    return replace(stats, load=load_seconds)
