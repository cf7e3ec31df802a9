"""Guarded generation: one prefill gives both the SSD risk and the start of the answer.

The question is formatted with the scorer's prompt and prefilled exactly as the scorer's
risk is (the teacher's packed prefill after its cached template prefix), keeping the KV
cache. The last-token state at the recorded layer of that forward feeds the risk student;
its last-token logits and cache start the decoding, so the prompt is never computed twice.
After decoding, each answer is scored by the likelihood student against the state of that
prefill (post-generation verification).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from transformers import DynamicCache

from semdistill.scoring.scorer import LIKELIHOOD, RISK, Scorer
from semdistill.teacher.base import clean_answer
from semdistill.teacher.hf import HFTeacher

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Sampling:
    """How to decode: token budget, temperature (0 = greedy), nucleus mass, choices, stops."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if any(not s for s in self.stop):
            raise ValueError("stop sequences must be non-empty strings")


@dataclass
class Prefill:
    """One question's prefill: its token ids, risk and what decoding continues from.

    ``state`` holds the last-token hidden states of the scorer's layers ``(layers, hidden)``;
    ``risk`` the Rényi-2 entropy (nats, higher = more likely wrong) the risk student gives them;
    ``logits`` the next-token logits and ``cache`` the KV cache of the prompt.
    """

    question: str
    input_ids: torch.Tensor
    state: np.ndarray
    risk: float
    logits: torch.Tensor
    cache: object


@dataclass(frozen=True)
class Completion:
    """One decoded choice: its text, why it ended and how many tokens it took."""

    text: str
    finish_reason: FinishReason
    completion_tokens: int


TextCallback = Callable[[int, str], None]
"""Called with (choice index, new text) as decoded text becomes final, for streaming."""


class GuardedModel:
    """The base model of a :class:`Scorer`, generating answers that carry their SSD risk.

    Methods are not thread-safe: call them from one worker thread.
    """

    def __init__(self, scorer: Scorer) -> None:
        teacher = scorer.teacher
        if not isinstance(teacher, HFTeacher):
            raise ValueError(
                "guarded generation needs the transformers teacher (HFTeacher) that "
                f"Scorer.load builds, got {type(teacher).__name__}"
            )
        if RISK not in scorer.students:
            raise ValueError(f"the SSD in {scorer.directory} has no '{RISK}' student")
        self.scorer = scorer
        self.teacher = teacher
        self.layer = scorer.artifacts.layer
        eos = teacher.model.generation_config.eos_token_id
        self.eos_ids = frozenset(eos if isinstance(eos, list) else [eos]) - {None}

    def prefill(self, question: str) -> Prefill:
        """Run ``question``'s formatted prompt through the model as :meth:`Scorer.risk` does
        (the teacher's packed prefill after its cached template prefix), keeping its cache."""
        ids = self.teacher.prompt_token_ids(self.teacher.format_prompt(question))
        layers = list(self.scorer.layers)
        prefilled = self.teacher.prefiller.run([ids], layers, keep_cache=True)
        assert prefilled.logits is not None
        state = prefilled.states[0].cpu().numpy()  # (layers, hidden)
        risk = float(self.scorer.risk_from_states(state[None])[0])
        return Prefill(
            question=question,
            input_ids=torch.tensor([ids], dtype=torch.long, device=self.teacher.model.device),
            state=state,
            risk=risk,
            logits=prefilled.logits[0],
            cache=DynamicCache(ddp_cache_data=prefilled.kv(0)),
        )

    def decode(
        self,
        prefill: Prefill,
        sampling: Sampling,
        *,
        on_text: TextCallback | None = None,
        cancelled: threading.Event | None = None,
    ) -> list[Completion]:
        """Decode ``sampling.n`` answers continuing ``prefill`` (consumes its cache).

        ``on_text`` receives each choice's text in order, piece by piece, held back only
        while it might still turn into a stop sequence; setting ``cancelled`` stops early.
        """
        n = sampling.n
        cache = prefill.cache
        if n > 1:
            cache.batch_repeat_interleave(n)
        generator = torch.Generator(device=prefill.logits.device)
        if sampling.seed is None:
            generator.seed()
        else:
            generator.manual_seed(sampling.seed)
        logits = prefill.logits.expand(n, -1)
        tokens: list[list[int]] = [[] for _ in range(n)]
        texts = [""] * n
        emitted = [0] * n
        finish: list[FinishReason | None] = [None] * n
        hold = max((len(s) for s in sampling.stop), default=1) - 1
        for step in range(sampling.max_new_tokens):
            chosen = _next_tokens(logits, sampling, generator)
            for i, token in enumerate(chosen.tolist()):
                if finish[i] is not None:
                    continue
                if token in self.eos_ids:
                    finish[i] = "stop"
                else:
                    tokens[i].append(token)
                    texts[i] = self.teacher.tokenizer.decode(tokens[i], skip_special_tokens=True)
                    cut = _first_stop(texts[i], sampling.stop)
                    if cut is not None:
                        texts[i], finish[i] = texts[i][:cut], "stop"
                if on_text is not None:
                    ready = _ready(texts[i], hold, final=finish[i] is not None)
                    if ready > emitted[i]:
                        on_text(i, texts[i][emitted[i] : ready])
                        emitted[i] = ready
            done = all(f is not None for f in finish)
            if done or step + 1 == sampling.max_new_tokens:
                break
            if cancelled is not None and cancelled.is_set():
                break
            with torch.inference_mode():
                output = self.teacher.model(input_ids=chosen[:, None], use_cache=True, cache=cache)
            logits = output.logits[:, -1].float()
        completions = []
        for i in range(n):
            reason: FinishReason = finish[i] or "length"
            if on_text is not None and len(texts[i]) > emitted[i]:
                on_text(i, texts[i][emitted[i] :])
            completions.append(Completion(texts[i], reason, len(tokens[i]) + (reason == "stop")))
        return completions

    def verify(self, prefill: Prefill, answers: list[str]) -> list[float | None]:
        """Log-likelihood under the likelihood student of each answer's first line.

        None for an empty answer, or for every answer when the SSD has no likelihood student.
        """
        cleaned = [clean_answer(answer) for answer in answers]
        scored = [i for i, text in enumerate(cleaned) if text]
        result: list[float | None] = [None] * len(answers)
        if LIKELIHOOD not in self.scorer.students or not scored:
            return result
        coordinates = self.scorer.answer_coordinates([cleaned[i] for i in scored])
        states = np.repeat(prefill.state[None], len(scored), axis=0)
        scores = self.scorer.log_likelihood_from_states(states, coordinates)
        for i, value in zip(scored, scores, strict=True):
            result[i] = float(value)
        return result


def _next_tokens(
    logits: torch.Tensor, sampling: Sampling, generator: torch.Generator
) -> torch.Tensor:
    """One token per row: argmax at temperature 0, else a draw from the nucleus."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= sampling.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop sequence starts in ``text``, or None."""
    found = [at for at in (text.find(s) for s in stops) if at >= 0]
    return min(found) if found else None


def _ready(text: str, hold: int, *, final: bool) -> int:
    """How much of ``text`` can be sent: all once final, else less a possible stop prefix and
    any incomplete UTF-8 character."""
    if final:
        return len(text)
    return max(0, min(len(text) - hold, len(text.rstrip("\ufffd"))))
