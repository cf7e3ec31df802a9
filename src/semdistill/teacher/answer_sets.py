"""Collection on the decoder: per prompt its states, a greedy answer and N samples, first lines.

Sample ``j`` of prompt ``i`` draws its tokens at the uniforms of ``default_rng([seeds[i], j])``
(:mod:`~semdistill.teacher.decoder.sampling`), so its answer depends on its prompt and seed alone.
The greedy row also records its tokens' statistics at temperature 1 (``AnswerSet.greedy_scores``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from semdistill.teacher.base import AnswerSet, clean_answer
from semdistill.teacher.decoder.engine import Engine
from semdistill.teacher.decoder.jobs import Completion, Job, RowSpec, TokenScores


def answer_sets(
    engine: Engine,
    prompt_ids: Sequence[Sequence[int]],
    *,
    n: int,
    greedy: bool,
    temperature: float,
    seeds: Sequence[int],
    max_new_tokens: int,
    layers: Sequence[int],
) -> Iterator[tuple[int, AnswerSet]]:
    """``(index, AnswerSet)`` for every prompt, in the order ``engine`` completes them.

    Each set holds the states of ``layers``, the greedy answer and its token statistics if
    ``greedy`` and ``n`` answers sampled at ``temperature``, sample ``j`` of prompt ``i``
    drawn with the uniforms of ``(seeds[i], j)``; every answer is cut at its first line.
    """
    columns = ([0] if greedy else []) + list(range(1, n + 1))
    if not columns:
        raise ValueError("ask for a greedy answer, samples, or both")
    done: deque[tuple[int, AnswerSet | BaseException]] = deque()
    jobs = []
    for index, ids in enumerate(prompt_ids):
        specs = [
            RowSpec(
                max_new_tokens=max_new_tokens,
                temperature=temperature if j else 0.0,
                seed=(int(seeds[index]), j) if j else None,
                first_line=True,
                score=not j,
            )
            for j in columns
        ]
        jobs.append(_AnswerSetJob(ids, layers, specs, lambda s, i=index: done.append((i, s))))
        engine.submit(jobs[-1])
    try:
        while engine.busy or done:
            if not done:
                engine.step()
            while done:
                index, result = done.popleft()
                if isinstance(result, BaseException):
                    raise result
                yield index, result
    finally:  # stopped early or failed: nothing of this call stays in the engine
        for job in jobs:
            job.cancel()
        engine.drop_stopped()


class _AnswerSetJob(Job):
    """A collection prompt: its states, the greedy answer and samples, each first line."""

    def __init__(
        self,
        prompt_ids: Sequence[int],
        layers: Sequence[int],
        specs: list[RowSpec],
        deliver: Callable[[AnswerSet | BaseException], None],
    ) -> None:
        super().__init__(prompt_ids, layers, width=len(specs))
        self.specs = specs
        self.greedy = specs[0].temperature == 0
        self.deliver = deliver
        self.states: np.ndarray | None = None
        self.answers: dict[int, str] = {}
        self.scores: TokenScores | None = None

    def prefilled(self, states: np.ndarray) -> Sequence[RowSpec]:
        self.states = states
        return self.specs

    def finished(self, row: int, completion: Completion) -> None:
        self.answers[row] = clean_answer(completion.text)
        if row == 0 and self.greedy:
            self.scores = completion.scores

    def ended(self, error: BaseException | None) -> None:
        if error is not None:
            self.deliver(error)
            return
        assert self.states is not None
        answers = [self.answers[i] for i in range(len(self.specs))]
        greedy = answers.pop(0) if self.greedy else None
        self.deliver(
            AnswerSet(hidden=self.states, greedy=greedy, samples=answers, greedy_scores=self.scores)
        )
