"""Evaluate stored collections: prepare, fit the two students, run every experiment."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from semdistill.evaluate.experiments import (
    ABLATION_GRID,
    ablations,
    answer_level,
    consensus,
    detect,
    fidelity,
    hallucination_scores,
    multiple_choice,
    probe_layers,
)
from semdistill.evaluate.metrics import DetectionResult
from semdistill.evaluate.results import SetResults
from semdistill.store import Collection
from semdistill.student import SSDStudent
from semdistill.training.prepare import PreparedSet, TrainSettings, fit_student, prepare


@dataclass(frozen=True)
class EvalSettings:
    """What an evaluation computes: training settings, bootstrap size, ablation grid."""

    train: TrainSettings = field(default_factory=TrainSettings)
    n_boot: int = 1000
    seed: int = 0
    ablation_grid: dict[str, tuple[int, ...]] = field(default_factory=lambda: dict(ABLATION_GRID))


@dataclass
class TrainedSet:
    """A prepared set with its risk (d = risk_dim) and likelihood (d = likelihood_dim) students."""

    prepared: PreparedSet
    risk: SSDStudent
    likelihood: SSDStudent


def train_set(name: str, collection: Collection, settings: TrainSettings) -> TrainedSet:
    """Prepare one set and fit both students."""
    prepared = prepare(name, collection, settings)
    return TrainedSet(
        prepared,
        fit_student(prepared, settings.risk_dim, settings.student),
        fit_student(prepared, settings.likelihood_dim, settings.student),
    )


def evaluate_trained(trained: TrainedSet, settings: EvalSettings) -> SetResults:
    """Every experiment of the paper on one trained set (test split)."""
    p, n_boot, seed = trained.prepared, settings.n_boot, settings.seed
    layers = probe_layers(p)
    scores = hallucination_scores(p, trained.risk, layers)
    labels = p.incorrect[p.test]
    hallucination: dict[str, DetectionResult | None] = {}
    for method, values in scores.items():
        try:
            hallucination[method] = (
                None if values is None else detect(labels, values, n_boot=n_boot, seed=seed)
            )
        except ValueError:  # a single class in the test split
            hallucination[method] = None
    return SetResults(
        name=p.name,
        n_questions={"train": len(p.train), "validation": len(p.validation), "test": len(p.test)},
        accuracy=float(1.0 - np.mean(p.incorrect)),
        layer=p.layer,
        layer_note=p.layer_note,
        layer_selection=p.layer_selection,
        probe_layers=layers,
        se_judge=p.se_judge,
        hallucination=hallucination,
        answer_level=answer_level(p, trained.likelihood, n_boot=n_boot, seed=seed),
        multiple_choice=multiple_choice(p, trained.likelihood, n_boot=n_boot, seed=seed),
        fidelity=fidelity(p, trained.risk),
        consensus=consensus(p, trained.likelihood),
        ablations=ablations(
            p,
            settings.train.student,
            settings.train.risk_dim,
            grid=settings.ablation_grid,
            seed=seed,
        ),
    )
