"""One description of a collection for every driver (local and Ray), the CLI and the presets:
its checks, its questions, the models it loads and the store config they make."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from semdistill.data import Question, check_unique_ids, load_questions
from semdistill.semantics.embed import DEFAULT_EMBEDDER, Embedder, load_embedder
from semdistill.semantics.judge import Judge, LLMJudge, MatchJudge
from semdistill.store import CollectConfig
from semdistill.teacher import Teacher, load_teacher
from semdistill.teacher.base import ChatGreedy
from semdistill.teacher.loader import describe_model, resolve_model, same_model
from semdistill.teacher.prompt import PROMPT_TEMPLATE, PROMPT_VERSION

JUDGES = ("match", "llm")
SPLIT_SEED = 0
JUDGE_CACHE_NAME = "judge-cache.json"


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
    say how the teacher ``model`` runs (:func:`~semdistill.teacher.load_teacher`; backend
    ``"vllm"`` with a server's ``vllm_url`` or the ``vllm_python`` to start one with);
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
    vllm_url: str | None = None
    vllm_python: str | None = None

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
        if self.backend == "vllm" and (self.vllm_url is None) == (self.vllm_python is None):
            raise ValueError("backend 'vllm' needs exactly one of --vllm-url and --vllm-python")
        if self.backend != "vllm" and (self.vllm_url, self.vllm_python) != (None, None):
            raise ValueError(
                f"--vllm-url and --vllm-python need --backend vllm, not {self.backend!r}"
            )
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
            vllm_url=self.vllm_url,
            vllm_python=self.vllm_python,
        )

    def load_models(
        self,
        out: str | Path,
        *,
        teacher: Teacher | None = None,
        embedder: Embedder | None = None,
    ) -> tuple[Teacher, Embedder, Judge]:
        """The teacher, embedder and judge these settings name, for a store at ``out`` (where
        the "llm" judge caches its verdicts). An already loaded ``teacher`` or ``embedder`` is
        used instead of loading it again; a ValueError says if it is not the one named."""
        if teacher is None:
            teacher = self.load_teacher()
        elif not same_model(teacher.spec, resolve_model(self.model)):
            raise ValueError(
                f"the loaded teacher {describe_model(teacher.spec)} is not the settings' model "
                f"{self.model!r}"
            )
        if embedder is None:
            embedder = load_embedder(self.embedder)
        elif embedder.name != self.embedder:
            raise ValueError(
                f"the loaded embedder {embedder.name!r} is not the settings' {self.embedder!r}"
            )
        return teacher, embedder, self.load_judge(teacher, out)

    def load_judge(self, teacher: Teacher, out: str | Path) -> Judge:
        """The judge these settings name: "match" (alias matching) or "llm" (``teacher`` asked,
        its verdicts cached in the store folder ``out``)."""
        self.check()
        if self.judge == "match":
            return MatchJudge()
        cache = Path(out) / JUDGE_CACHE_NAME
        return LLMJudge(ChatGreedy(teacher), model_name=teacher.spec.name, cache_path=cache)

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
