"""A question set trained end to end: prepared data, the selected risk students, the
likelihood student and the deployed SEP/PCP probes, each chosen on train/validation only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semdistill.store import Collection
from semdistill.training.layers import select_layer
from semdistill.training.prepare import PreparedSet, TrainSettings, prepare
from semdistill.training.probes import CorrectnessProbe, LinearProbe, SemanticEntropyProbe
from semdistill.training.selection import (
    Candidate,
    RiskSelection,
    select_likelihood,
    select_risk,
)
from semdistill.training.students import FittedStudent


@dataclass(frozen=True)
class ProbeLayers:
    """Layers the probes read: SEP shares the student's (SE-selected) layer, PCP has its own."""

    sep: int
    pcp: int
    pcp_note: str


def probe_layers(p: PreparedSet) -> ProbeLayers:
    """Select PCP's layer by validation AUROC of a correctness probe per layer (labelled rows)."""
    train, validation = p.labelled_rows(p.train), p.labelled_rows(p.validation)
    try:
        selection = select_layer(
            p.collection.hidden[train],
            p.incorrect[train],
            p.collection.hidden[validation],
            p.incorrect[validation],
        )
        return ProbeLayers(p.layer, selection.best_layer, "best validation AUROC of correctness")
    except ValueError as err:
        return ProbeLayers(p.layer, p.layer, f"student's layer ({err})")


def fit_probes(
    p: PreparedSet, layers: ProbeLayers, rows: np.ndarray | None = None, seed: int = 0
) -> dict[str, LinearProbe | None]:
    """SEP and PCP fitted on the train split (or its ``rows``; PCP on the labelled ones only);
    None where the targets hold too few of a class."""
    hidden, train = p.collection.hidden, p.train if rows is None else rows
    judged = p.labelled_rows(train)
    probes: dict[str, LinearProbe | None] = {}
    for name, make in (
        (
            "SEP",
            lambda: SemanticEntropyProbe(seed=seed).fit(hidden[train, layers.sep], p.se[train]),
        ),
        (
            "PCP",
            lambda: CorrectnessProbe(seed=seed).fit(
                hidden[judged, layers.pcp], p.incorrect[judged]
            ),
        ),
    ):
        try:
            probes[name] = make()
        except ValueError:
            probes[name] = None
    return probes


@dataclass
class TrainedSet:
    """A prepared set with its selected risk students, its likelihood student (d =
    likelihood_dim) and the SEP/PCP probes, with what chose them."""

    prepared: PreparedSet
    selection: RiskSelection
    likelihood: FittedStudent
    likelihood_candidates: list[Candidate]
    probe_layers: ProbeLayers
    probes: dict[str, LinearProbe | None]

    @property
    def risk(self) -> FittedStudent:
        """The deployed risk student (first seed)."""
        return self.selection.deployed_student()


def train_question_set(name: str, collection: Collection, settings: TrainSettings) -> TrainedSet:
    """Prepare one set, select and fit the students, fit the probes (train split only)."""
    prepared = prepare(name, collection, settings)
    selection = select_risk(prepared, settings)
    likelihood, candidates = select_likelihood(prepared, settings, selection.multi)
    layers = probe_layers(prepared)
    return TrainedSet(
        prepared,
        selection,
        likelihood,
        candidates,
        layers,
        fit_probes(prepared, layers),
    )
