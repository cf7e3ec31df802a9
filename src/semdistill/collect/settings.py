"""One description of a collection, and what both drivers (local and Ray) do before and after
collecting: check the settings, pick the questions, find those still to do, build the store
config and the judge, and report the run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from semdistill.data import Question, load_questions
from semdistill.semantics.embed import DEFAULT_EMBEDDER, Embedder
from semdistill.semantics.judge import Judge, LLMJudge, MatchJudge
from semdistill.store import CollectConfig, Store
from semdistill.teacher import Teacher, load_teacher
from semdistill.teacher.base import ChatGreedy
from semdistill.teacher.prompt import PROMPT_TEMPLATE, PROMPT_VERSION

JUDGES = ("match", "llm")
SPLIT_SEED = 0
JUDGE_CACHE_NAME = "judge-cache.json"
STAGES = ("generation", "embedding", "judging", "writing")


@dataclass(frozen=True)
class SamplingSettings:
    """How each question's answers are drawn: N samples at ``temperature`` plus a greedy one,
    each at most ``max_new_tokens`` tokens, prompt ``i``'s samples fixed by ``seed`` and i."""

    n_samples: int = 10
    temperature: float = 1.0
    seed: int = 0
    max_new_tokens: int = 24


@dataclass(frozen=True)
class CollectSettings:
    """Everything a collection is made of, for the local driver, the Ray driver, the CLI
    and the presets alike.

    ``questions`` is a question set's name or a file; ``limit`` takes a subset seeded by
    ``sampling.seed``. ``backend``, ``dtype``, ``device``, ``decode_rows`` and ``decoder``
    say how the teacher ``model`` runs (:func:`~semdistill.teacher.load_teacher`);
    ``batch_size`` is the questions per shard of the store.
    """

    model: str
    questions: str
    limit: int | None = None
    sampling: SamplingSettings = SamplingSettings()
    batch_size: int = 32
    backend: str = "auto"
    dtype: str = "auto"
    device: str = "auto"
    decode_rows: int = 128
    decoder: str = "auto"
    embedder: str = DEFAULT_EMBEDDER
    judge: str = "match"

    def check(self) -> None:
        """Raise a ValueError naming the first unusable setting."""
        s = self.sampling
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if s.n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {s.n_samples}")
        if not s.temperature > 0:
            raise ValueError(f"temperature must be positive, got {s.temperature}")
        if s.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {s.max_new_tokens}")
        if self.judge not in JUDGES:
            raise ValueError(f"judge must be one of {', '.join(JUDGES)}, got {self.judge!r}")

    def for_questions(self, questions: str, limit: int | None) -> CollectSettings:
        """These settings for another question source and subset size."""
        return replace(self, questions=questions, limit=limit)

    @property
    def source(self) -> str:
        """The question source as recorded: a file's absolute path, or the set's name."""
        path = Path(self.questions)
        return str(path.resolve()) if path.is_file() else self.questions

    def pick_questions(self) -> list[Question]:
        """The questions to collect (a ValueError if there are none, or ids repeat)."""
        picked = load_questions(self.source, limit=self.limit, seed=self.sampling.seed)
        if not picked:
            raise ValueError(f"question source {self.questions!r} holds no questions")
        check_unique_ids(picked)
        return picked

    def load_teacher(self) -> Teacher:
        """The teacher these settings name, loaded as they say."""
        return load_teacher(
            self.model,
            backend=self.backend,
            dtype=self.dtype,
            device=self.device,
            decode_rows=self.decode_rows,
            decoder=self.decoder,
        )

    def store_config(self, teacher: Teacher, embedder: Embedder, judge: Judge) -> CollectConfig:
        """The store config of this collection with these loaded models."""
        return CollectConfig(
            model=teacher.spec,
            backend=teacher.backend,
            dtype=teacher.dtype,
            prompt_template=PROMPT_TEMPLATE,
            prompt_version=PROMPT_VERSION,
            top_p=1.0,
            top_k=0,
            **asdict(self.sampling),
            embedder=embedder.name,
            embedding_dim=embedder.dim,
            judge=judge.name,
            questions=self.source,
            limit=self.limit,
            question_seed=self.sampling.seed,
            split_seed=SPLIT_SEED,
            n_layers=teacher.n_layers,
            hidden_size=teacher.hidden_size,
        )


def check_unique_ids(questions: Sequence[Question]) -> None:
    """A ValueError naming the ids that occur more than once."""
    counts = Counter(q.id for q in questions)
    repeated = sorted(i for i, count in counts.items() if count > 1)
    if repeated:
        raise ValueError(f"questions has repeated ids: {repeated[:5]}")


def to_do(questions: Sequence[Question], store: Store) -> list[Question]:
    """The questions not yet in ``store``, in order (ids checked to be unique)."""
    check_unique_ids(questions)
    done = store.done_ids()
    return [q for q in questions if q.id not in done]


def make_judge(kind: str, teacher: Teacher, cache_path: Path) -> Judge:
    """The ``kind`` judge: "match" (alias matching) or "llm" (the teacher asked, cached)."""
    if kind == "match":
        return MatchJudge()
    if kind == "llm":
        return LLMJudge(ChatGreedy(teacher), model_name=teacher.spec.name, cache_path=cache_path)
    raise ValueError(f"judge must be one of {', '.join(JUDGES)}, got {kind!r}")


@dataclass(frozen=True)
class CollectStats:
    """What one collection run did and the wall time (seconds) of each stage.

    ``generation`` is the teacher's prefill and decoding, which the engine interleaves.
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


def finish_collection(
    store: Store,
    questions: Sequence[Question],
    *,
    n_written: int,
    n_default_correct: int,
    n_labelled: int,
    seconds: dict[str, float],
) -> CollectStats:
    """Mark ``store`` complete once it holds every question asked for; the run's statistics."""
    ids = {q.id for q in questions}
    if ids <= store.done_ids():
        store.mark_complete()
    return CollectStats(
        n_questions=len(questions),
        n_skipped=len(questions) - n_written,
        n_written=n_written,
        n_default_correct=n_default_correct,
        n_labelled=n_labelled,
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
