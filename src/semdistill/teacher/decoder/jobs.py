"""What the decoder is asked to do: jobs (one prompt each) and the answer rows they decode.

A :class:`Job` is one prompt: the layers whose last-token states its prefill must capture,
and hooks the decoder calls from its thread. After the prefill, :meth:`Job.prefilled` sees
the states and says which rows to decode (none: the job is done); each row follows its own
:class:`RowSpec`. Text reaches :meth:`Job.text` as it becomes final (for streaming rows),
each row's :class:`Completion` reaches :meth:`Job.finished`, and :meth:`Job.ended` is called
exactly once, with the error if the job failed, was cancelled or ran out of time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class RowSpec:
    """How one answer row is decoded.

    ``temperature`` 0 takes the argmax; above 0 a row samples (within ``top_p`` of the mass)
    at the uniforms of ``default_rng([seed, stream])`` for ``seed = (seed, stream)``, or
    fresh ones for None. The row ends at end-of-sequence, after ``max_new_tokens``, at the
    first of the ``stop`` strings (not included), or with ``first_line`` at the newline that
    ends the first non-empty line. ``stream`` rows report their text as it becomes final.
    ``score`` rows also report their tokens' statistics at temperature 1 (:class:`TokenScores`).
    """

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: tuple[int, int] | None = None
    first_line: bool = False
    stop: tuple[str, ...] = ()
    stream: bool = False
    score: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and min(self.seed) < 0:
            raise ValueError(f"seed and stream must be non-negative, got {self.seed}")
        if any(not s for s in self.stop):
            raise ValueError("stop sequences must be non-empty strings")


@dataclass(frozen=True)
class TokenScores:
    """An answer's tokens under the model at temperature 1: ``logprob`` the sum of their
    log-probabilities, ``tokens`` how many there are (the token that ended the answer, an
    end-of-sequence or the one holding the newline, included), ``entropy`` the mean entropy
    (nats) of the next-token distributions they were chosen from (0 for no tokens)."""

    logprob: float
    tokens: int
    entropy: float


@dataclass(frozen=True)
class Completion:
    """One decoded row: its text, why it ended, how many tokens the model produced, and
    their statistics for a row that asked for them (``RowSpec.score``)."""

    text: str
    finish_reason: FinishReason
    tokens: int
    scores: TokenScores | None = None


class Cancelled(Exception):
    """The job was cancelled (its client went away) before it finished."""


class Expired(TimeoutError):
    """The job ran past its deadline."""


class Job:
    """One prompt for the decoder. Subclasses override the hooks; all run in its thread.

    ``width`` is the most rows :meth:`prefilled` may ask for (the decoder keeps that many
    free before prefilling the job); ``deadline`` a :func:`time.monotonic` time or None.
    :meth:`cancel` may be called from any thread.
    """

    def __init__(
        self,
        prompt_ids: Sequence[int],
        layers: Sequence[int],
        *,
        width: int,
        deadline: float | None = None,
    ) -> None:
        if not prompt_ids:
            raise ValueError("a job needs a non-empty prompt")
        if width < 0:
            raise ValueError(f"width must be >= 0, got {width}")
        self.prompt_ids = list(prompt_ids)
        self.layers = tuple(layers)
        self.width = width
        self.deadline = deadline
        self.cancelled = False

    def cancel(self) -> None:
        """Ask the decoder to drop this job (its rows are freed at the next step)."""
        self.cancelled = True

    def stopped(self, now: float) -> BaseException | None:
        """Why the decoder should drop the job now, if it should."""
        if self.cancelled:
            return Cancelled("the request was cancelled")
        if self.deadline is not None and now > self.deadline:
            return Expired("the request ran out of time")
        return None

    def prefilled(self, states: np.ndarray) -> Sequence[RowSpec]:
        """The rows to decode, given the prompt's states ``(len(layers), hidden)`` float32."""
        raise NotImplementedError

    def text(self, row: int, piece: str) -> None:
        """New final text of streaming row ``row``."""

    def finished(self, row: int, completion: Completion) -> None:
        """Row ``row`` is done."""

    def ended(self, error: BaseException | None) -> None:
        """The job is over: every row finished (``error`` None), or it failed."""


class RowText:
    """A row's tokens and text, its stop strings cut off, and how much of it is final."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self.stop = stop
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0
        self._hold = max((len(s) for s in stop), default=1) - 1

    def push(self, token: int, decode: Callable[[list[int]], str]) -> bool:
        """Add ``token`` (``decode`` turns ids into text); whether a stop string was reached."""
        self.tokens.append(token)
        self.text = decode(self.tokens)
        found = [at for at in (self.text.find(s) for s in self.stop) if at >= 0]
        if found:
            self.text = self.text[: min(found)]
            return True
        return False

    def ready(self, *, final: bool) -> str:
        """The text not yet sent that can be: all of it once final, else less what might
        still become a stop string and any incomplete UTF-8 character."""
        text = self.text
        end = len(text)
        if not final:
            end = max(0, min(end - self._hold, len(text.rstrip("\ufffd"))))
        piece = text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return piece
