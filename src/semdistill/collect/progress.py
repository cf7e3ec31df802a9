"""A collection run's bookkeeping, the same for every driver: the questions still to do, the
progress bar, and the run's statistics once it ends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from semdistill.data import Question, check_unique_ids
from semdistill.store import Collection, Store

STAGES = ("generation", "embedding", "judging", "writing")


def to_do(questions: Sequence[Question], store: Store) -> list[Question]:
    """The questions not yet in ``store``, in order (ids checked to be unique)."""
    check_unique_ids(questions)
    done = store.done_ids()
    return [q for q in questions if q.id not in done]


@dataclass(frozen=True)
class CollectStats:
    """What one collection run did and the wall time (seconds) of each stage.

    ``generation`` is the teacher's prefill and decoding, which the engine interleaves.
    ``n_scored`` rows already in the store got their greedy answer's scores by a
    teacher-forced pass, in ``scoring`` seconds (not part of the collection's time).
    """

    n_questions: int
    n_skipped: int
    n_written: int
    n_default_correct: int
    n_labelled: int
    load: float = 0.0
    generation: float = 0.0
    embedding: float = 0.0
    judging: float = 0.0
    writing: float = 0.0
    n_scored: int = 0
    scoring: float = 0.0

    @property
    def collection_seconds(self) -> float:
        """Wall time of every stage but loading."""
        return self.generation + self.embedding + self.judging + self.writing

    @property
    def prompts_per_second(self) -> float:
        """Questions written per second of collection (loading excluded)."""
        seconds = self.collection_seconds
        return self.n_written / seconds if seconds > 0 else 0.0

    @property
    def default_accuracy(self) -> float:
        """Share of this run's labelled questions whose greedy answer the judge marked correct
        (NaN if none was labelled)."""
        return self.n_default_correct / self.n_labelled if self.n_labelled else float("nan")


@dataclass
class Tally:
    """What a run's written rows hold so far: greedy answers judged correct, labelled rows."""

    n_default_correct: int = 0
    n_labelled: int = 0

    def add(self, rows: Collection) -> None:
        """Count one written shard."""
        self.n_default_correct += int(rows.default_correct.sum())
        self.n_labelled += rows.n_labelled


def finish_collection(
    store: Store,
    questions: Sequence[Question],
    todo: Sequence[Question],
    tally: Tally,
    seconds: dict[str, float],
) -> CollectStats:
    """Mark ``store`` complete once it holds every question asked for; the statistics of a run
    that wrote ``todo`` (counted in ``tally``) in ``seconds`` per stage."""
    ids = {q.id for q in questions}
    if ids <= store.done_ids():
        store.mark_complete()
    return CollectStats(
        n_questions=len(questions),
        n_skipped=len(questions) - len(todo),
        n_written=len(todo),
        n_default_correct=tally.n_default_correct,
        n_labelled=tally.n_labelled,
        **{stage: seconds.get(stage, 0.0) for stage in STAGES},
    )


def progress_bar(description: str, enabled: bool) -> Progress:
    """The collection's progress bar on stderr (``enabled=False``: silent)."""
    return Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
