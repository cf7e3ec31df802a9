"""Guarded generation on the decoder: the prompt's own prefill gives the risk, then its answers.

A request becomes one :class:`GuardedJob` for the decoder
(:class:`~semdistill.teacher.decoder.engine.Engine`): the question is formatted with the scorer's
prompt and prefilled with the other waiting prompts (packed after the cached template prefix,
each prompt's attention kept to itself); the last-token states of the scorer's layers in that
forward give the risk, the policy decides, and unless it abstains the request's choices join
the running decode batch, each with the request's own temperature, nucleus, seed, stops and
token budget. Events reach the request's asyncio loop as they happen. After decoding, the
server submits each answer for scoring by the likelihood student against the states of that
prefill (verification) as work of its own, outside the decoding step.

The risk itself is computed inside the step, from the prefill's states: the policy's verdict
decides whether the request's rows join the decode batch at all, so it must be known before
the next step, and it costs one forward pass of the small risk MLP on states already in
memory.

With a refine threshold (the sampling cascade, :mod:`semdistill.scoring.refine`), a question
whose risk is above it and that is answered gets N more rows in the same job, sampled as the
scorer's collection sampled; once they end, their Semantic Entropy is computed beside the
verification. :class:`RefineJob` samples the same rows for a question that is only scored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from semdistill.scoring.policy import Policy, Verdict
from semdistill.scoring.refine import RefineSettings
from semdistill.scoring.scorer import LIKELIHOOD, RISK, Scorer
from semdistill.teacher.base import DecodingTeacher, clean_answer
from semdistill.teacher.decoder.jobs import Completion, Job, RowSpec

ABSTAINED = "abstained"


@dataclass(frozen=True)
class Decoding:
    """How to decode: token budget, temperature (0 = greedy), nucleus mass, choices, stops,
    and a seed that fixes sampled choices (choice ``i`` draws the uniforms of
    ``default_rng([seed mod 2**64, i])``)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        self.rows(stream=False)  # the row settings check the rest

    def rows(self, *, stream: bool) -> list[RowSpec]:
        """One row per choice."""
        sampled = self.temperature > 0 and self.seed is not None
        return [
            RowSpec(
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                seed=(self.seed % 2**64, i) if sampled and self.seed is not None else None,
                stop=self.stop,
                stream=stream,
            )
            for i in range(self.n)
        ]


@dataclass(frozen=True)
class Assessment:
    """What the prefill said about a question: its states ``(layers, hidden)`` float32, the
    risk (Rényi-2 entropy in nats, higher = more likely wrong), the calibrated probability of
    a wrong answer when the SSD is calibrated, the policy's verdict, the prompt's
    familiarity to the scorer (None when the scorer has no familiarity model) and whether its
    answers are refined (sampled for Semantic Entropy)."""

    question: str
    states: np.ndarray
    risk: float
    probability: float | None
    verdict: Verdict
    familiarity: float | None = None
    refine: bool = False


class GuardedModel:
    """The base model of a :class:`Scorer` behind a :class:`Policy`: assessments, jobs for
    the decoder and verification of their answers. With ``refine_above`` (a risk in nats),
    an answered question above it is refined as the scorer records (:attr:`refinement`)."""

    def __init__(self, scorer: Scorer, policy: Policy, refine_above: float | None = None) -> None:
        teacher = scorer.teacher
        if not isinstance(teacher, DecodingTeacher):
            raise ValueError(
                "guarded generation needs a teacher with decoders of its own (DecodingTeacher, "
                "as the transformers teacher that Scorer.load builds), got "
                f"{type(teacher).__name__}"
            )
        if RISK not in scorer.students:
            raise ValueError(f"the SSD in {scorer.directory} has no '{RISK}' student")
        self.scorer = scorer
        self.policy = policy
        self.teacher = teacher
        self.layers = scorer.layers
        self.refine_above = refine_above
        self.refinement: RefineSettings | None = None if refine_above is None else scorer.refinement

    def prompt_ids(self, question: str) -> list[int]:
        """The token ids of ``question`` in the scorer's prompt."""
        return self.teacher.prompt_token_ids(self.teacher.format_prompt(question))

    def assess(self, question: str, states: np.ndarray) -> Assessment:
        """Risk, probability, familiarity and verdict of ``question`` from its prefill's
        ``states``."""
        risk = float(self.scorer.risk_from_states(states[None])[0])
        calibration = self.scorer.calibration
        probability = None if calibration is None else float(calibration.probability([risk])[0])
        familiarity = None
        if self.scorer.familiarity_model is not None:
            familiarity = float(self.scorer.familiarity_from_states(states[None])[0])
        verdict = self.policy.verdict(risk, probability, familiarity)
        refine = self.refines(risk) and verdict != ABSTAINED
        return Assessment(question, states, risk, probability, verdict, familiarity, refine)

    def refines(self, risk: float) -> bool:
        """Whether a question of this risk is refined (when it is answered)."""
        return self.refine_above is not None and risk > self.refine_above

    def semantic_entropy(self, samples: Sequence[str]) -> float:
        """The Semantic Entropy (nats) of one question's sampled answers, judged as the
        scorer's training judged."""
        return float(self.scorer.semantic_entropy([samples])[0])

    def describe_refine(self) -> dict[str, Any] | None:
        """The cascade's threshold and sampling, as the endpoint reports it (None when off)."""
        if self.refinement is None:
            return None
        r = self.refinement
        return {
            "rule": f"risk_entropy > {self.refine_above:.6g}",
            "n_samples": r.n_samples,
            "temperature": r.temperature,
            "max_new_tokens": r.max_new_tokens,
            "se_cosine": r.se_cosine,
        }

    def verify(self, items: Sequence[tuple[np.ndarray, Sequence[str]]]) -> list[list[float | None]]:
        """Per ``(states, answers)`` item, each answer's first line scored by
        :meth:`Scorer.verify_from_states` (None for an empty answer, or for all without a
        likelihood student)."""
        cleaned = [[clean_answer(a) for a in answers] for _, answers in items]
        result: list[list[float | None]] = [[None] * len(c) for c in cleaned]
        if LIKELIHOOD not in self.scorer.students or not any(any(c) for c in cleaned):
            return result
        states = np.stack([states for states, _ in items])
        scored = self.scorer.verify_from_states(states, [[t for t in c if t] for c in cleaned])
        for row, texts, scores in zip(result, cleaned, scored, strict=True):
            where = [j for j, text in enumerate(texts) if text]
            for j, score in zip(where, scores.tolist(), strict=True):
                row[j] = float(score)
        return result


class GuardedJob(Job):
    """One chat completion on the decoder; its events go to ``loop`` as ``(kind, value)``:
    ``("start", Assessment)`` after the prefill, ``("text", (choice, piece))`` for streamed
    text, and ``("end", error or None)`` once, when the last row is done. A refined question's
    samples are rows after the ``n`` choices."""

    def __init__(
        self,
        model: GuardedModel,
        question: str,
        sampling: Decoding,
        *,
        stream: bool,
        loop: asyncio.AbstractEventLoop,
        deadline: float | None,
    ) -> None:
        extra = 0 if model.refinement is None else model.refinement.n_samples
        super().__init__(
            model.prompt_ids(question), model.layers, width=sampling.n + extra, deadline=deadline
        )
        self.model = model
        self.question = question
        self.sampling = sampling
        self.stream = stream
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.completions: dict[int, Completion] = {}
        self.assessment: Assessment | None = None
        self._loop = loop

    def _post(self, kind: str, value: Any) -> None:
        self._loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def prefilled(self, states: np.ndarray) -> Sequence[RowSpec]:
        self.assessment = self.model.assess(self.question, states)
        self._post("start", self.assessment)
        if self.assessment.verdict == ABSTAINED:
            return []
        rows = self.sampling.rows(stream=self.stream)
        if self.assessment.refine and self.model.refinement is not None:
            rows += self.model.refinement.rows(self.sampling.seed)
        return rows

    def text(self, row: int, piece: str) -> None:
        self._post("text", (row, piece))

    def finished(self, row: int, completion: Completion) -> None:
        self.completions[row] = completion

    def ended(self, error: BaseException | None) -> None:
        self._post("end", error)

    def answers(self) -> list[Completion]:
        """The choices in order (empty when abstained)."""
        return [self.completions[i] for i in sorted(self.completions) if i < self.sampling.n]

    def samples(self) -> list[str]:
        """A refined question's sampled answers, cleaned (empty when not refined)."""
        rows = sorted(i for i in self.completions if i >= self.sampling.n)
        return [clean_answer(self.completions[i].text) for i in rows]


class RefineJob(Job):
    """The refine samples of one question that is only scored, on the decoder; ``done``
    (a future of ``loop``) gets the cleaned answers, or the job's error."""

    def __init__(
        self,
        model: GuardedModel,
        question: str,
        *,
        seed: int | None,
        loop: asyncio.AbstractEventLoop,
        deadline: float | None,
    ) -> None:
        if model.refinement is None:
            raise ValueError("this guard does not refine")
        self.rows = model.refinement.rows(seed)
        super().__init__(
            model.prompt_ids(question), model.layers, width=len(self.rows), deadline=deadline
        )
        self.done: asyncio.Future[list[str]] = loop.create_future()
        self.completions: dict[int, Completion] = {}
        self._loop = loop

    def prefilled(self, states: np.ndarray) -> Sequence[RowSpec]:
        return self.rows

    def finished(self, row: int, completion: Completion) -> None:
        self.completions[row] = completion

    def ended(self, error: BaseException | None) -> None:
        answers = [clean_answer(self.completions[i].text) for i in sorted(self.completions)]
        self._loop.call_soon_threadsafe(self._settle, error, answers)

    def _settle(self, error: BaseException | None, answers: list[str]) -> None:
        if self.done.done():
            return
        if error is None:
            self.done.set_result(answers)
        else:
            self.done.set_exception(error)
