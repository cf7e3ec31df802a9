"""The main job: collect -> layer selection -> PCA -> students -> experiments -> report."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from semdistill.evaluate.evaluation import EvalSettings, TrainedSet, evaluate_trained, train_set
from semdistill.evaluate.report import write_report
from semdistill.evaluate.results import RunResults, SetResults
from semdistill.scoring.artifacts import SSDArtifacts, save_artifacts
from semdistill.store import CollectConfig, Store
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
        question_sets=(QuestionSetPlan("trivia", 180), QuestionSetPlan("mmlu", 40)),
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
        question_sets=(QuestionSetPlan("trivia", 200), QuestionSetPlan("mmlu", 150)),
    ),
}


class Stages:
    """Times named stages and reports each one as it ends."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.console.print(f"[bold cyan]▶[/] {name}")
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        self.console.print(f"[green]✓[/] {name} ({self.seconds[name]:.1f} s)")


def run_main_job(
    out: str | os.PathLike, preset: Preset, *, progress: bool = True, console: Console | None = None
) -> RunResults:
    """Collect every question set of ``preset`` into ``out/collections`` (resuming what is
    there when its config matches), then train and evaluate into ``out``."""
    from semdistill.collect.collection import run_collection
    from semdistill.collect.embed import load_embedder
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
    settings = {"preset": preset.name, **_preset_settings(preset)}
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


def evaluate_stores(
    stores: dict[str, Store],
    evaluation: EvalSettings,
    out: str | os.PathLike,
    *,
    stages: Stages | None = None,
    settings: dict[str, Any] | None = None,
    teacher: Any = None,
    embedder: Any = None,
    latency_prompts: int = 8,
) -> RunResults:
    """Train, save the scorer artifacts, run every experiment and write the report.

    With a ``teacher`` and ``embedder`` the latency of every method is measured too.
    """
    from semdistill.evaluate.latency import measure_latency

    stages = stages or Stages(Console(stderr=True))
    root = Path(out)
    results: dict[str, SetResults] = {}
    trained_sets: dict[str, TrainedSet] = {}
    for name, store in stores.items():
        with stages.stage(f"train {name}: SE, layer selection, PCA, students"):
            trained = train_set(name, store.load(), evaluation.train)
            save_trained(trained, store, root / "ssd" / name)
        with stages.stage(f"experiments {name}"):
            results[name] = evaluate_trained(trained, evaluation)
        trained_sets[name] = trained
    latency = None
    if teacher is not None and embedder is not None:
        first = next(iter(results))
        config = stores[first].config
        with stages.stage("latency"):
            latency = measure_latency(
                teacher,
                embedder,
                trained_sets[first],
                results[first].probe_layers,
                n_prompts=latency_prompts,
                n_samples=config.n_samples,
                temperature=config.temperature,
                max_new_tokens=config.max_new_tokens,
                se_cosine=evaluation.train.se_cosine,
            )
    run_settings = {
        **(settings or {}),
        "command": " ".join(["semdistill", *sys.argv[1:]]),
        "evaluation": asdict(evaluation),
        "collections": {name: store.config.to_dict() for name, store in stores.items()},
    }
    run = RunResults(run_settings, results, latency, dict(stages.seconds))
    with stages.stage("report"):
        write_report(run, root)
    return run


def save_trained(trained: TrainedSet, store: Store, directory: str | os.PathLike) -> None:
    """Write the scorer artifacts (``ssd.json``, PCA, both students) of a trained set."""
    config: CollectConfig = store.config
    p = trained.prepared
    artifacts = SSDArtifacts(
        teacher=config.model,
        dtype=config.dtype,
        prompt_template=config.prompt_template,
        prompt_version=config.prompt_version,
        layer=p.layer,
        embedder=config.embedder,
        embedder_dim=config.embedding_dim,
        students={"risk": trained.risk.n_targets_, "likelihood": trained.likelihood.n_targets_},
        collection=str(store.path),
    )
    save_artifacts(
        directory, artifacts, p.pca, {"risk": trained.risk, "likelihood": trained.likelihood}
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
