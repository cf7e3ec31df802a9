"""Collected rows in memory: one array (or list) entry per question, in store order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from semdistill.teacher.decoder.jobs import TokenScores


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

    The greedy answer's own token statistics at temperature 1, from the decoder's logits
    (:class:`GreedyScores`), are ``greedy`` (None for a store collected without them).
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
    greedy: GreedyScores | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.labelled is None:
            self.labelled = np.ones(n, dtype=bool)
        self.labelled = np.asarray(self.labelled, dtype=bool)
        wrong = [
            field.name
            for field in fields(self)
            if getattr(self, field.name) is not None and len(getattr(self, field.name)) != n
        ]
        if wrong:
            raise ValueError(f"collection fields {wrong} do not have one entry per id ({n})")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_labelled(self) -> int:
        """Rows with reference answers, whose correctness labels are real."""
        return int(np.sum(self.labelled))

    def require_greedy(self, store: str, command: str) -> GreedyScores:
        """The greedy answers' scores; without them, a ValueError in one line naming ``store``
        and the ``command`` that adds them (:meth:`Store.collect_command
        <semdistill.store.parquet.Store.collect_command>`)."""
        if self.greedy is None:
            raise ValueError(
                f"store {store} has no greedy-answer scores for every row (collected before "
                f"they were recorded); add them with: {command}"
            )
        return self.greedy

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
            if value is None or isinstance(value, (np.ndarray, GreedyScores)):
                values[field.name] = None if value is None else value[index]
            else:
                values[field.name] = [value[i] for i in index]
        return Collection(**values)

    @classmethod
    def concat(cls, parts: Sequence[Collection]) -> Collection:
        """The rows of ``parts`` one after another (at least one part)."""
        values = {}
        for field in fields(cls):
            columns = [getattr(part, field.name) for part in parts]
            if field.name == "greedy":
                values[field.name] = GreedyScores.concat(columns)
            elif isinstance(columns[0], np.ndarray):
                values[field.name] = np.concatenate(columns)
            else:
                values[field.name] = [item for column in columns for item in column]
        return cls(**values)


@dataclass(frozen=True)
class GreedyScores:
    """The greedy answer's token statistics under the model at temperature 1, one entry per
    row: ``logprob`` the sum of its tokens' log-probabilities, ``tokens`` how many tokens
    it has, ``entropy`` the mean entropy (nats) of the next-token distributions it was
    drawn from. ``route`` says how they were computed: "decoder" (the logits the greedy
    answer was decoded from) or "teacher-forced" (a forward over prompt + answer text)."""

    logprob: np.ndarray
    tokens: np.ndarray
    entropy: np.ndarray
    route: str

    def __post_init__(self) -> None:
        n = len(self.logprob)
        if len(self.tokens) != n or len(self.entropy) != n:
            raise ValueError("greedy scores need one logprob, token count and entropy per row")

    def __len__(self) -> int:
        return len(self.logprob)

    def __getitem__(self, index: np.ndarray) -> GreedyScores:
        return GreedyScores(
            self.logprob[index], self.tokens[index], self.entropy[index], self.route
        )

    @property
    def perplexity(self) -> np.ndarray:
        """exp of the mean negative token log-probability (1 for an empty answer)."""
        return np.exp(-self.logprob / np.maximum(self.tokens, 1))

    @classmethod
    def of(cls, scores: Sequence[TokenScores], route: str) -> GreedyScores:
        """One row per answer's :class:`~semdistill.teacher.decoder.jobs.TokenScores`."""
        return cls(
            np.array([s.logprob for s in scores], dtype=np.float64),
            np.array([s.tokens for s in scores], dtype=np.int64),
            np.array([s.entropy for s in scores], dtype=np.float64),
            route,
        )

    @classmethod
    def concat(cls, parts: Sequence[GreedyScores | None]) -> GreedyScores | None:
        """The parts one after another; None unless every part has scores."""
        if any(part is None for part in parts):
            return None
        routes = {part.route for part in parts}
        return cls(
            np.concatenate([p.logprob for p in parts]),
            np.concatenate([p.tokens for p in parts]),
            np.concatenate([p.entropy for p in parts]),
            routes.pop() if len(routes) == 1 else "mixed",
        )
