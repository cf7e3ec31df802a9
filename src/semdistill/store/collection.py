"""Collected rows in memory: one array (or list) entry per question, in store order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np


@dataclass
class Collection:
    """Collected rows as arrays: one entry per question, in store order.

    ``hidden`` is (n, n_layers + 1, hidden_size) float16, or (n, hidden_size) when one
    layer was loaded. ``correct_option`` is -1 where a question has no options, and
    ``options`` / ``option_embeddings`` hold None there; option embeddings are (k, dim).
    ``default_embedding`` is (n, dim), ``sample_embeddings`` (n, N, dim), ``sample_correct``
    (n, N). ``judges`` names the judge that labelled each row. ``labelled`` is False for a
    question without reference answers: its states, answers and embeddings are real, its
    ``default_correct``/``sample_correct`` are False placeholders that no metric may read
    (None when constructed means every row is labelled).
    """

    ids: np.ndarray
    splits: np.ndarray
    sources: np.ndarray
    questions: np.ndarray
    prompts: np.ndarray
    references: list[list[str]]
    options: list[list[str] | None]
    correct_option: np.ndarray
    hidden: np.ndarray
    default_answer: np.ndarray
    samples: list[list[str]]
    default_embedding: np.ndarray
    sample_embeddings: np.ndarray
    option_embeddings: list[np.ndarray | None]
    default_correct: np.ndarray
    sample_correct: np.ndarray
    judges: np.ndarray
    labelled: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.labelled is None:
            self.labelled = np.ones(n, dtype=bool)
        self.labelled = np.asarray(self.labelled, dtype=bool)
        wrong = [field.name for field in fields(self) if len(getattr(self, field.name)) != n]
        if wrong:
            raise ValueError(f"collection fields {wrong} do not have one entry per id ({n})")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_labelled(self) -> int:
        """Rows with reference answers, whose correctness labels are real."""
        return int(np.sum(self.labelled))

    def subset(self, selection: np.ndarray | Sequence[int] | Sequence[bool]) -> Collection:
        """The rows picked by a boolean mask or an index array, in that order."""
        picked = np.asarray(selection)
        if picked.dtype == bool:
            if picked.shape != (len(self),):
                raise ValueError(f"mask has shape {picked.shape}, expected ({len(self)},)")
            picked = np.flatnonzero(picked)
        index = picked.astype(np.int64)
        values = {}
        for field in fields(self):
            value = getattr(self, field.name)
            values[field.name] = (
                value[index] if isinstance(value, np.ndarray) else [value[i] for i in index]
            )
        return Collection(**values)

    @classmethod
    def concat(cls, parts: Sequence[Collection]) -> Collection:
        """The rows of ``parts`` one after another (at least one part)."""
        values = {}
        for field in fields(cls):
            columns = [getattr(part, field.name) for part in parts]
            if isinstance(columns[0], np.ndarray):
                values[field.name] = np.concatenate(columns)
            else:
                values[field.name] = [item for column in columns for item in column]
        return cls(**values)
