"""The greedy answers' token statistics added to a store's rows that have none.

Stores collected before the decoder recorded them, and shards whose teacher gave none
(llama.cpp), get them by one teacher-forced forward per row over the prompt's token ids and
the stored greedy answer's tokens (route "teacher-forced"), one shard at a time: each shard is
rewritten atomically with its scores before the next is read, so a stopped run resumes.
"""

from __future__ import annotations

from collections.abc import Callable

from semdistill.store import GreedyScores, Store
from semdistill.teacher import Teacher
from semdistill.teacher.base import ScoringTeacher
from semdistill.teacher.decoder.jobs import TokenScores
from semdistill.teacher.loader import describe_model, same_model

ROUTE = "teacher-forced"

Scorer = Callable[[list[str], list[str], int], list[TokenScores]]
"""(prompts, greedy answers, max_new_tokens) -> each answer's statistics."""


def add_greedy_scores(store: Store, teacher: Teacher) -> int:
    """Score every row of ``store`` that has no greedy-answer scores with ``teacher`` (the
    store's model, in its dtype), teacher-forced; the number of rows scored.

    A ValueError if ``teacher`` is not the store's model and dtype or cannot score.
    """
    config = store.config
    if not same_model(teacher.spec, config.model) or teacher.dtype != config.dtype:
        raise ValueError(
            f"store {store.path} was collected with {describe_model(config.model)} in "
            f"{config.dtype}, not {describe_model(teacher.spec)} in {teacher.dtype}"
        )
    if not isinstance(teacher, ScoringTeacher):
        raise ValueError(f"the {teacher.backend} teacher cannot score given answers")
    return score_shards(
        store,
        lambda prompts, answers, budget: teacher.greedy_scores(
            prompts, answers, max_new_tokens=budget
        ),
    )


def score_shards(store: Store, scorer: Scorer) -> int:
    """Score the rows of every shard of ``store`` without greedy-answer scores with
    ``scorer``, writing each shard before the next; the number of rows scored."""
    scored = 0
    for index in store.unscored_shards():
        prompts, answers = store.shard_answers(index)
        scores = scorer(prompts, answers, store.config.max_new_tokens)
        store.add_greedy(index, GreedyScores.of(scores, ROUTE))
        scored += len(prompts)
    return scored
