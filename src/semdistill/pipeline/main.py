"""The main job: collect -> layer selection -> PCA -> students -> experiments -> report."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from semdistill.collect.settings import CollectSettings, SamplingSettings
from semdistill.evaluate.evaluation import EvalSettings
from semdistill.evaluate.protocol import GroupProtocol
from semdistill.evaluate.results import RunResults
from semdistill.pipeline.store_jobs import evaluate_stores
from semdistill.store import Store
from semdistill.timing import StageTimer
from semdistill.training.prepare import StudentSettings, TrainSettings

# Why these sizes (measured): docs/commands.md, "Presets".
_QUICK = CollectSettings(
    model="qwen2.5-coder-1.5b",
    questions="trivia",
    limit=480,
    sampling=SamplingSettings(n_samples=5, max_new_tokens=16),
)
_DEFAULT = CollectSettings(model="qwen2.5-coder-1.5b", questions="trivia", limit=2400)
_LARGE = replace(_DEFAULT, limit=5976)  # every trivia question; the default's come first


@dataclass(frozen=True)
class Preset:
    """A named, complete description of a main-job run: its collections (one teacher and
    embedder for all), what the evaluation computes and how many prompts time the latency."""

    name: str
    collections: tuple[CollectSettings, ...]
    latency_prompts: int = 8
    evaluation: EvalSettings = field(default_factory=EvalSettings)

    def describe(self) -> str:
        """One line: the model, each question set's size, N and the answer length."""
        first = self.collections[0]
        sets = ", ".join(f"{c.questions} {c.limit or 'all'}" for c in self.collections)
        return (
            f"{self.name}: {first.model}; questions {sets}; N={first.sampling.n_samples} "
            f"samples of at most {first.sampling.max_new_tokens} tokens per question"
        )

    def __post_init__(self) -> None:
        first = self.collections[0]
        for other in self.collections[1:]:
            if replace(other, questions=first.questions, limit=first.limit) != first:
                raise ValueError(
                    f"preset {self.name}: collection {other.questions} differs from "
                    f"{first.questions} in more than its questions"
                )


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        name="quick",
        collections=(_QUICK, _QUICK.for_questions("mmlu", 60)),
        latency_prompts=4,
        evaluation=EvalSettings(
            train=TrainSettings(student=StudentSettings(max_epochs=200, patience=15))
        ),
    ),
    "default": Preset(
        name="default",
        collections=(_DEFAULT, _DEFAULT.for_questions("mmlu", 1200)),
        evaluation=EvalSettings(groups=GroupProtocol()),
    ),
    "large": Preset(
        name="large",
        collections=(_LARGE, _LARGE.for_questions("mmlu", 3150)),
        evaluation=EvalSettings(
            groups=GroupProtocol(),
            learning_sizes=(250, 500, 1000, 2000, 4000),
            evaluated_first={"trivia": 2400, "mmlu": 1200},
        ),
    ),
}


def run_main_job(
    out: str | os.PathLike,
    preset: Preset,
    *,
    progress: bool = True,
    console: Console | None = None,
    command: str | None = None,
) -> RunResults:
    """Collect every question set of ``preset`` into ``out/collections`` (resuming what is
    there when its config matches), then train and evaluate into ``out``; ``command``, the
    command line that ran it, goes into the report."""
    from semdistill.collect.local import run_collection
    from semdistill.semantics.embed import load_embedder

    console = console or Console(stderr=True)
    stages = StageTimer(console)
    root = Path(out)
    first = preset.collections[0]
    with stages.stage("load teacher and embedder"):
        teacher = first.load_teacher()
        embedder = load_embedder(first.embedder)
    stores: dict[str, Store] = {}
    for settings in preset.collections:
        with stages.stage(f"collect {settings.questions} ({settings.limit} questions)"):
            store_dir = root / "collections" / settings.questions
            run_collection(
                store_dir, settings, progress=progress, teacher=teacher, embedder=embedder
            )
            stores[settings.questions] = Store.open(store_dir)
    return evaluate_stores(
        stores,
        preset.evaluation,
        root,
        stages=stages,
        settings={"preset": preset.name, **_preset_settings(preset), "command": command},
        teacher=teacher,
        embedder=embedder,
        latency_prompts=preset.latency_prompts,
    )


def _preset_settings(preset: Preset) -> dict[str, Any]:
    first = preset.collections[0]
    return {
        "model": first.model,
        "question_sets": {s.questions: s.limit for s in preset.collections},
        "n_samples": first.sampling.n_samples,
        "temperature": first.sampling.temperature,
        "max_new_tokens": first.sampling.max_new_tokens,
        "seed": first.sampling.seed,
    }
