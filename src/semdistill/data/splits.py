"""Deterministic seeded subsets and train/validation/test splits keyed on question ids."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from semdistill.data.question import Question

SPLIT_NAMES = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)

Q = TypeVar("Q", bound=Question)


def _unit_hash(purpose: str, seed: int, question_id: str) -> float:
    """A uniform number in [0, 1) fixed by (purpose, seed, id); purposes are independent."""
    digest = hashlib.sha256(f"{purpose}\x00{seed}\x00{question_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(
    question_id: str, *, seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> str:
    """The split ("train", "validation" or "test") of a question, fixed by its id and seed."""
    if len(fractions) != len(SPLIT_NAMES):
        raise ValueError(f"fractions must have {len(SPLIT_NAMES)} entries, got {len(fractions)}")
    if any(not math.isfinite(f) or f < 0 for f in fractions) or not math.isclose(
        sum(fractions), 1.0, abs_tol=1e-9
    ):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {tuple(fractions)}")
    if not question_id:
        raise ValueError("question_id must be a non-empty string")
    u = _unit_hash("split", seed, question_id)
    cumulative = 0.0
    for name, fraction in zip(SPLIT_NAMES[:-1], fractions[:-1], strict=True):
        cumulative += fraction
        if u < cumulative:
            return name
    return SPLIT_NAMES[-1]


def seeded_subset(questions: Sequence[Q], limit: int | None, *, seed: int = 0) -> list[Q]:
    """The first ``limit`` questions of a seeded shuffle, or all of them in order when None.

    The shuffle orders questions by a seeded hash of their ids, so the same seed gives the
    same subset, a smaller limit gives a prefix of a larger one, and adding questions to a
    set never reorders the ones already there. It is independent of ``split_of``.
    """
    if limit is None:
        return list(questions)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    ordered = sorted(questions, key=lambda q: (_unit_hash("subset", seed, q.id), q.id))
    return ordered[:limit]


def train_beyond(
    ids: Sequence[str], splits: Sequence[str], first: int, *, seed: int = 0
) -> np.ndarray:
    """``splits`` with every question outside the first ``first`` of the seeded order
    (:func:`seeded_subset`'s) moved to "train": a larger pool keeps a smaller one's validation
    and test questions and adds training questions only."""
    if isinstance(first, bool) or not isinstance(first, int) or first < 1:
        raise ValueError(f"first must be a positive integer, got {first!r}")
    order = sorted(range(len(ids)), key=lambda i: (_unit_hash("subset", seed, ids[i]), ids[i]))
    out = np.array(splits, dtype=object)
    out[order[first:]] = "train"
    return out
