"""The main job: collect -> layer selection -> PCA -> students -> experiments -> report."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from semdistill.evaluate.evaluation import EvalSettings
from semdistill.evaluate.results import RunResults
from semdistill.pipeline.jobs import evaluate_stores
from semdistill.pipeline.stages import Stages
from semdistill.store import Store
from semdistill.training.prepare import StudentSettings, TrainSettings


@dataclass(frozen=True)
class QuestionSetPlan:
    """One question set of a run and how many of its questions to collect."""

    source: str
    limit: int


@dataclass(frozen=True)
class Preset:
    """A named, complete description of a main-job run."""

    name: str
    model: str
    question_sets: tuple[QuestionSetPlan, ...]
    n_samples: int = 10
    temperature: float = 1.0
    max_new_tokens: int = 24
    batch_size: int = 32
    seed: int = 0
    latency_prompts: int = 8
    evaluation: EvalSettings = field(default_factory=EvalSettings)


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        name="quick",
        # The default model on fewer, shorter answers: it answers about a quarter of trivia
        # correctly, so unlike SmolLM2-135M (3%) there is something to learn and measure.
        model="qwen2.5-coder-1.5b",
        # 480 trivia questions leave about 340 training prompts: enough for the location-free
        # student to approach TD (the learning curve of the default run).
        question_sets=(QuestionSetPlan("trivia", 480), QuestionSetPlan("mmlu", 60)),
        n_samples=5,
        max_new_tokens=16,
        latency_prompts=4,
        evaluation=EvalSettings(
            train=TrainSettings(student=StudentSettings(max_epochs=200, patience=15))
        ),
    ),
    "default": Preset(
        name="default",
        model="qwen2.5-coder-1.5b",
        # About 450 trivia test prompts (bootstrap CI half-width about 0.05) and 1,700
        # training prompts; MMLU's open-style questions are longer, so fewer.
        question_sets=(QuestionSetPlan("trivia", 2400), QuestionSetPlan("mmlu", 1200)),
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
    from semdistill.collect.collection import run_collection
    from semdistill.semantics.embed import load_embedder
    from semdistill.teacher import load_teacher

    console = console or Console(stderr=True)
    stages = Stages(console)
    root = Path(out)
    with stages.stage("load teacher and embedder"):
        teacher = load_teacher(preset.model)
        embedder = load_embedder()
    stores: dict[str, Store] = {}
    for plan in preset.question_sets:
        with stages.stage(f"collect {plan.source} ({plan.limit} questions)"):
            store_dir = root / "collections" / plan.source
            run_collection(
                store_dir,
                model=preset.model,
                questions=plan.source,
                limit=plan.limit,
                n_samples=preset.n_samples,
                temperature=preset.temperature,
                seed=preset.seed,
                batch_size=preset.batch_size,
                max_new_tokens=preset.max_new_tokens,
                progress=progress,
                teacher=teacher,
                embedder_model=embedder,
            )
            stores[plan.source] = Store.open(store_dir)
    settings = {"preset": preset.name, **_preset_settings(preset), "command": command}
    return evaluate_stores(
        stores,
        preset.evaluation,
        root,
        stages=stages,
        settings=settings,
        teacher=teacher,
        embedder=embedder,
        latency_prompts=preset.latency_prompts,
    )


def _preset_settings(preset: Preset) -> dict[str, Any]:
    return {
        "model": preset.model,
        "question_sets": {plan.source: plan.limit for plan in preset.question_sets},
        "n_samples": preset.n_samples,
        "temperature": preset.temperature,
        "max_new_tokens": preset.max_new_tokens,
        "seed": preset.seed,
    }
