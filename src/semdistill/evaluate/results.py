"""Typed results of one evaluation run and their JSON form (``metrics.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from semdistill.evaluate.cascade import Cascade
from semdistill.evaluate.experiments import (
    AblationPoint,
    AnswerLevel,
    ConsensusSubset,
    MultipleChoice,
)
from semdistill.evaluate.learning_curve import LearningCurvePoint, summarise
from semdistill.evaluate.protocol import GroupTransfer
from semdistill.evaluate.transfer import TransferResult
from semdistill.metrics import DetectionResult, auroc, bootstrap_ci
from semdistill.training.layers import LayerSelection
from semdistill.training.trained import ProbeLayers

METRICS_SCHEMA_VERSION = 2
"""Version of the ``metrics.json`` layout; bumped whenever a field changes meaning or place."""


@dataclass(frozen=True)
class Latency:
    """Per-prompt wall time (ms, batch of one, mean over ``n_prompts``) of each method."""

    model: str
    n_prompts: int
    n_samples: int
    ms: dict[str, float]
    notes: dict[str, str]


@dataclass
class SetResults:
    """Every experiment's outcome on one question set.

    ``fidelity`` is per SSD row (mean over seeds); ``selection`` the label-free model
    selection of the risk student (candidates and choices), ``likelihood`` the likelihood
    student's candidates and ``likelihood_setting`` the chosen one; ``training_curves`` each SSD
    row's per-epoch train/validation NLL and validation fidelity (first seed). ``combined``
    records what each combined one-pass score chose and ``cascade`` the sampling cascade.
    """

    name: str
    source: str
    n_questions: dict[str, int]
    accuracy: float
    layer: int
    layer_note: str
    layer_selection: LayerSelection | None
    probe_layers: ProbeLayers
    se_judge: str
    hallucination: dict[str, DetectionResult | None]
    answer_level: AnswerLevel
    multiple_choice: MultipleChoice | None
    fidelity: dict[str, float]
    consensus: dict[str, ConsensusSubset]
    selection: dict[str, Any] = field(default_factory=dict)
    likelihood: list[dict[str, Any]] = field(default_factory=list)
    likelihood_setting: dict[str, Any] = field(default_factory=dict)
    training_curves: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    learning_curve: list[LearningCurvePoint] = field(default_factory=list)
    ablations: list[AblationPoint] = field(default_factory=list)
    combined: dict[str, dict[str, Any]] = field(default_factory=dict)
    cascade: Cascade | None = None


@dataclass
class RunResults:
    """One run: the settings that made it, per-set results, cross-set results, latency and
    stage timings."""

    settings: dict[str, Any]
    sets: dict[str, SetResults]
    latency: Latency | None
    timings: dict[str, float]
    transfer: list[TransferResult] = field(default_factory=list)
    groups: GroupTransfer | None = None

    def to_metrics(self) -> dict[str, Any]:
        """The nested dict written to ``metrics.json``.

        ``hallucination.<set>.<method>`` holds ``auroc``, ``auroc_ci`` ([low, high]), ``auprc``,
        ``auprc_ci``, ``prr``, ``prr_ci``, ``n``, ``n_pos``, and for the SSD rows (several
        training seeds) ``seed_auroc``, each seed's AUROC, the other values being means over
        seeds; higher scores mean higher risk. A metric that cannot be computed (one class in
        the test labels) is left out and named under ``undefined`` instead. ``transfer`` lists
        scorers applied to other sets (``scorer`` -> ``target``), ``learning_curve.<set>`` the
        per-seed points and their summary, ``leave_one_group_out`` the protocol's folds and
        summary (None when it was not run). ``familiarity_ood.<scorer>.<set>`` is how well the
        scorer's familiarity tells ``set``'s test prompts from its own set's
        (:func:`familiarity_ood`). ``combined.<set>`` records what each label-free combined
        one-pass score (``combined-pre``, ``combined-post``) chose, ``cascade.<set>`` the
        sampling cascade's AUROC per budget and ``budget_to_match_se``.
        """
        sets = self.sets.values()
        return {
            "schema_version": METRICS_SCHEMA_VERSION,
            "settings": self.settings,
            "questions": {s.name: s.n_questions for s in sets},
            "sources": {s.name: s.source for s in sets},
            "accuracy": {s.name: s.accuracy for s in sets},
            "layers": {
                s.name: {
                    "student": s.layer,
                    "note": s.layer_note,
                    "sep": s.probe_layers.sep,
                    "pcp": s.probe_layers.pcp,
                    "pcp_note": s.probe_layers.pcp_note,
                    "selection": None if s.layer_selection is None else s.layer_selection.to_dict(),
                }
                for s in sets
            },
            "se_judge": {s.name: s.se_judge for s in sets},
            "hallucination": {
                s.name: {m: _detection(r) for m, r in s.hallucination.items() if r is not None}
                for s in sets
            },
            "undefined": {
                s.name: {
                    f"hallucination.{m}": "a single class in the test labels, or in the "
                    "probe's training targets"
                    for m, r in s.hallucination.items()
                    if r is None
                }
                for s in sets
            },
            "ood": {
                s.name: {
                    "mismatch": _detection(s.answer_level.mismatch),
                    "hallucination_loglik": _detection(s.answer_level.hallucination),
                }
                for s in sets
            },
            "multiple_choice": {
                s.name: _multiple_choice(s.multiple_choice)
                for s in sets
                if s.multiple_choice is not None
            },
            "fidelity": {s.name: {"spearman": s.fidelity} for s in sets},
            "consensus": {s.name: {k: asdict(v) for k, v in s.consensus.items()} for s in sets},
            "selection": {s.name: s.selection for s in sets},
            "likelihood_selection": {
                s.name: {"chosen": s.likelihood_setting, "candidates": s.likelihood} for s in sets
            },
            "training_curves": {s.name: s.training_curves for s in sets},
            "learning_curve": {
                s.name: {
                    "points": [p.to_dict() for p in s.learning_curve],
                    "summary": summarise(s.learning_curve),
                }
                for s in sets
            },
            "ablations": {s.name: [asdict(p) for p in s.ablations] for s in sets},
            "combined": {s.name: s.combined for s in sets},
            "cascade": {s.name: _cascade(s.cascade) for s in sets},
            "transfer": [
                {
                    "scorer": t.scorer,
                    "target": t.target,
                    "split": t.split,
                    "n": t.n,
                    "n_labelled": t.n_labelled,
                    "hallucination": {m: _detection(r) for m, r in t.hallucination.items()},
                    "diagnostics": asdict(t.diagnostics),
                }
                for t in self.transfer
            ],
            "familiarity_ood": familiarity_ood(self.transfer),
            "leave_one_group_out": None if self.groups is None else self.groups.to_dict(),
            "latency": None if self.latency is None else asdict(self.latency),
            "timings_s": self.timings,
        }


def familiarity_ood(
    results: list[TransferResult], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, dict[str, Any]]]:
    """For each scorer that scored its own set (a result with ``target == scorer``) and each
    other set it scored, the AUROC of unfamiliarity (``-familiarity``) at telling the other
    set's prompts (positive) from its own set's, with a 95% stratified bootstrap CI:
    ``{scorer: {set: {"auroc", "ci": [low, high], "n" (the set's prompts), "n_own"}}}``.
    Scorers without a familiarity model, or without their own set among the targets (the
    union of the sets), are left out."""
    own = {
        t.scorer: t.familiarity
        for t in results
        if t.target == t.scorer and t.familiarity is not None
    }
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for t in results:
        inside = own.get(t.scorer)
        if t.target == t.scorer or inside is None or t.familiarity is None:
            continue
        labels = np.r_[np.zeros(len(inside)), np.ones(len(t.familiarity))].astype(int)
        scores = -np.r_[inside, t.familiarity]
        result = bootstrap_ci(auroc, labels, scores, n_boot=n_boot, seed=seed)
        table.setdefault(t.scorer, {})[t.target] = {
            "auroc": result.value,
            "ci": [result.low, result.high],
            "n": len(t.familiarity),
            "n_own": len(inside),
        }
    return table


def _detection(result: DetectionResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "auroc": result.auroc.value,
        "auroc_ci": [result.auroc.low, result.auroc.high],
        "auprc": result.auprc.value,
        "auprc_ci": [result.auprc.low, result.auprc.high],
        "prr": result.prr.value,
        "prr_ci": [result.prr.low, result.prr.high],
        "n": result.n,
        "n_pos": result.n_pos,
        "base_rate": result.base_rate,
        **({"seed_auroc": list(result.seed_auroc)} if result.seed_auroc else {}),
    }


def _cascade(cascade: Cascade | None) -> dict[str, Any] | None:
    if cascade is None:
        return None
    return {
        "ranked_by": cascade.ranked_by,
        "kept": cascade.kept,
        "n_samples": cascade.n_samples,
        "se_auroc": cascade.se_auroc,
        "budget_to_match_se": cascade.budget_to_match_se,
        "samples_to_match_se": cascade.budget_to_match_se * cascade.n_samples,
        "points": [
            {
                "budget": p.budget,
                "samples_per_prompt": p.samples_per_prompt,
                **(_detection(p.result) or {}),
            }
            for p in cascade.points
        ],
    }


def _multiple_choice(result: MultipleChoice) -> dict[str, Any]:
    return {
        "top1": result.top1.value,
        "top1_ci": [result.top1.low, result.top1.high],
        "chance": result.chance,
        "open_ended_accuracy": result.open_ended_accuracy.value,
        "open_ended_accuracy_ci": [result.open_ended_accuracy.low, result.open_ended_accuracy.high],
        "n": result.n,
    }
