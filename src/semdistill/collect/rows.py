"""Answered questions into store rows: the teacher's answer sets in shards, embedded and judged.

The teacher streams answer sets (all-layer last-token states, a greedy "default" answer with
its token statistics, and N sampled answers) as each question completes; every
``batch_size`` of them become one shard of rows, with sentence embeddings of the answers
(and of the options of multiple-choice questions) and correctness labels where the question
has reference answers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from semdistill.data import Question, split_of
from semdistill.semantics.embed import Embedder
from semdistill.semantics.judge import Judge
from semdistill.store import Collection, GreedyScores
from semdistill.teacher import Teacher
from semdistill.teacher.base import AnswerSet, to_float16
from semdistill.timing import StageTimer

UNJUDGED = "none"  # the judge column of a question without reference answers


def question_seed(seed: int, question_id: str) -> int:
    """The sampling seed of one question, fixed by the run seed and the question id."""
    digest = hashlib.sha256(f"{seed}\x00{question_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class Answered:
    """One question, its formatted prompt and the teacher's answer set for it."""

    question: Question
    prompt: str
    answers: AnswerSet


def answered_shards(
    todo: Sequence[Question],
    teacher: Teacher,
    timer: StageTimer,
    *,
    batch_size: int,
    n_samples: int,
    temperature: float,
    seed: int,
    max_new_tokens: int,
) -> Iterator[list[Answered]]:
    """The answered questions of ``todo`` in completion order, ``batch_size`` at a time."""
    prompts = [teacher.format_prompt(q.question) for q in todo]
    stream = teacher.answer_sets(
        prompts,
        n=n_samples,
        temperature=temperature,
        seeds=[question_seed(seed, q.id) for q in todo],
        max_new_tokens=max_new_tokens,
    )
    shard: list[Answered] = []
    while True:
        with timer.stage("generation"):
            item = next(stream, None)
        if item is None:
            break
        index, answers = item
        shard.append(Answered(todo[index], prompts[index], answers))
        if len(shard) == batch_size:
            yield shard
            shard = []
    if shard:
        yield shard


def shard_rows(
    shard: list[Answered],
    embedder: Embedder,
    judge: Judge,
    timer: StageTimer,
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
    references = [list(q.answers) for q in batch]
    texts = [q.question for q in batch]
    labelled = np.array([q.labelled for q in batch], dtype=bool)
    default_correct = np.zeros(n, dtype=bool)
    sample_correct = np.zeros((n, n_samples), dtype=bool)
    with timer.stage("judging"):
        judged = np.flatnonzero(labelled)
        if len(judged):
            default_correct[judged] = judge.judge(
                [defaults[i] for i in judged],
                [references[i] for i in judged],
                questions=[texts[i] for i in judged],
            )
            sample_correct[judged] = judge.judge(
                [answer for i in judged for answer in samples[i]],
                [references[i] for i in judged for _ in range(n_samples)],
                questions=[texts[i] for i in judged for _ in range(n_samples)],
            ).reshape(len(judged), n_samples)
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
        default_correct=default_correct,
        sample_correct=sample_correct,
        judges=np.array([judge.name if ok else UNJUDGED for ok in labelled], dtype=object),
        labelled=labelled,
        greedy=decoder_scores([item.answers for item in shard]),
    )


def decoder_scores(sets: Sequence[AnswerSet]) -> GreedyScores | None:
    """The greedy answers' scores the decoder recorded, route "decoder"; None unless every
    set has them (llama.cpp records none)."""
    scores = [s.greedy_scores for s in sets]
    if any(score is None for score in scores):
        return None
    return GreedyScores.of(scores, "decoder")


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
    timer = StageTimer()
    (shard,) = answered_shards(
        batch,
        teacher,
        timer,
        batch_size=len(batch),
        n_samples=n_samples,
        temperature=temperature,
        seed=seed,
        max_new_tokens=max_new_tokens,
    )
    rows = shard_rows(shard, embedder, judge, timer, n_samples=n_samples, split_seed=split_seed)
    return rows, timer.seconds
