"""Evaluate stored collections: prepare, select and fit the students, run every experiment."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from semdistill.evaluate.cascade import Cascade, run_cascade
from semdistill.evaluate.combined import fit_combined
from semdistill.evaluate.experiments import (
    ABLATION_GRID,
    ablations,
    answer_level,
    consensus,
    detect,
    fidelity,
    hallucination_scores,
    multiple_choice,
    ssd_rows,
)
from semdistill.evaluate.learning_curve import LEARNING_SIZES, learning_curve
from semdistill.evaluate.protocol import GroupProtocol
from semdistill.evaluate.results import SetResults
from semdistill.evaluate.signals import has_greedy_scores, post_generation
from semdistill.metrics import DetectionResult
from semdistill.training.prepare import PreparedSet, TrainSettings
from semdistill.training.trained import TrainedSet


@dataclass(frozen=True)
class EvalSettings:
    """What an evaluation computes: training settings, bootstrap size, ablation grid and the
    learning curve's training-set sizes (each below the train split's size, then all of it),
    and the leave-one-group-out protocol run on the pooled sets (None: not run).

    ``evaluated_first`` maps a question set's name to how many of its first questions (in the
    collection's seeded order) may be validation or test; its other questions only train
    (:func:`~semdistill.data.train_beyond`): a larger pool keeps a smaller run's test split.
    """

    train: TrainSettings = field(default_factory=TrainSettings)
    n_boot: int = 1000
    seed: int = 0
    ablation_grid: dict[str, tuple[int, ...]] = field(default_factory=lambda: dict(ABLATION_GRID))
    learning_sizes: tuple[int, ...] = LEARNING_SIZES
    groups: GroupProtocol | None = None
    evaluated_first: dict[str, int] = field(default_factory=dict)


def check_labelled_test(name: str, n_labelled_test: int) -> None:
    """A ValueError unless a set has the 2 labelled test questions the experiments need."""
    if n_labelled_test < 2:
        raise ValueError(
            f"{name} has {n_labelled_test} labelled test questions; the experiments need at "
            "least 2 with reference answers (an unlabelled set can be trained on, not evaluated)"
        )


def evaluate_trained(
    trained: TrainedSet, settings: EvalSettings, *, source: str = ""
) -> SetResults:
    """Every experiment of the paper on one trained set (the test split's labelled rows; the
    students and SEP also learnt from unlabelled ones); ``source`` names the question set it
    was collected from (e.g. ``trivia``)."""
    p, n_boot, seed = trained.prepared, settings.n_boot, settings.seed
    n_test = len(p.test)
    p = replace(p, test=p.labelled_rows(p.test))
    check_labelled_test(p.name, len(p.test))
    scores = hallucination_scores(p, trained.selection, trained.probes, trained.probe_layers)
    if has_greedy_scores(p):
        scores |= post_generation(trained, p.test)
    combined = fit_combined(trained, p.test)
    scores |= combined.test
    labels = p.incorrect[p.test]
    hallucination: dict[str, DetectionResult | None] = {}
    for method, values in scores.items():
        try:
            hallucination[method] = (
                None if values is None else detect(labels, values, n_boot=n_boot, seed=seed)
            )
        except ValueError:  # a single class in the test split
            hallucination[method] = None
    selection = trained.selection
    return SetResults(
        name=p.name,
        source=source or p.name,
        n_questions={
            "train": len(p.train),
            "validation": len(p.validation),
            "test": n_test,
            "labelled": int(p.labelled.sum()),
            "labelled_test": len(p.test),
        },
        accuracy=float(1.0 - np.mean(p.incorrect[p.labelled])),
        layer=p.layer,
        layer_note=p.layer_note,
        layer_selection=p.layer_selection,
        probe_layers=trained.probe_layers,
        se_judge=p.se_judge,
        hallucination=hallucination,
        combined={name: choice.to_dict() for name, choice in combined.choices.items()},
        cascade=_cascade(p, combined.test, labels, n_boot=n_boot, seed=seed),
        answer_level=answer_level(p, trained.likelihood, n_boot=n_boot, seed=seed),
        multiple_choice=multiple_choice(p, trained.likelihood, n_boot=n_boot, seed=seed),
        fidelity={name: fidelity(p, students) for name, students in ssd_rows(selection).items()},
        consensus=consensus(p, trained.likelihood),
        selection=selection.to_dict(),
        likelihood=[c.to_dict() for c in trained.likelihood_candidates],
        likelihood_setting=trained.likelihood.setting.to_dict(),
        training_curves={
            name: [record.__dict__ for record in students[0].student.history_]
            for name, students in ssd_rows(selection).items()
        },
        learning_curve=learning_curve(
            p, selection, trained.probe_layers, settings.train, settings.learning_sizes
        ),
        ablations=ablations(
            p,
            settings.train.student,
            selection.ssd,
            settings.train.risk_dim,
            grid=settings.ablation_grid,
            seed=seed,
        ),
    )


def _cascade(
    p: PreparedSet,
    combined: dict[str, np.ndarray],
    labels: np.ndarray,
    *,
    n_boot: int,
    seed: int,
) -> Cascade | None:
    """The sampling cascade on the test rows: ranked by ``combined-pre``, the rest keeping
    the best one-pass score (None where the test labels hold a single class)."""
    kept = "combined-post" if "combined-post" in combined else "combined-pre"
    try:
        return run_cascade(
            labels,
            ("combined-pre", combined["combined-pre"]),
            (kept, combined[kept]),
            p.se[p.test],
            p.collection.sample_embeddings.shape[1],
            n_boot=n_boot,
            seed=seed,
        )
    except ValueError:
        return None
