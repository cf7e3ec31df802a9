"""Test AUROC of the SSD rows and the probes against the number of training prompts, with
teacher dispersion (which trains nothing) at every size for reference.

For each size below the train split's (and then all of it) and each training seed, a seeded
subset of the train split trains the SSD rows (with the settings the selection chose on the
full split) and the SEP and PCP probes; early stopping still reads the whole validation split.
The layer and the answer-embedding PCA stay those of the full train split: only the students
and the probes see fewer prompts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import spearmanr

from semdistill.evaluate.experiments import probe_scores, ssd_rows
from semdistill.metrics import auroc_or_none
from semdistill.training.prepare import PreparedSet, TrainSettings
from semdistill.training.selection import RiskSelection
from semdistill.training.students import FittedStudent, fit_setting
from semdistill.training.trained import ProbeLayers, fit_probes

LEARNING_SIZES = (250, 500, 1000, 2000, 4000)


@dataclass(frozen=True)
class LearningCurvePoint:
    """One method trained on ``n_train`` prompts with one seed: its test AUROC, and for SSD
    rows its fidelity (Spearman ρ of entropy with TD on the test prompts)."""

    method: str
    n_train: int
    seed: int
    auroc: float | None
    fidelity: float | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return asdict(self)


def curve_sizes(sizes: tuple[int, ...], n_train: int) -> list[int]:
    """The sizes below ``n_train``, then ``n_train`` itself."""
    return sorted({size for size in sizes if 0 < size < n_train} | {n_train})


def learning_curve(
    p: PreparedSet,
    selection: RiskSelection,
    layers: ProbeLayers,
    settings: TrainSettings,
    sizes: tuple[int, ...],
) -> list[LearningCurvePoint]:
    """Every (method, size, seed) point; the full-size SSD students are the selection's own."""
    labels = p.incorrect[p.test]
    hidden = p.collection.hidden[p.test]
    td = p.dispersion(settings.risk_dim)[p.test]
    rows_of = ssd_rows(selection)
    points: list[LearningCurvePoint] = []
    for size in curve_sizes(sizes, len(p.train)):
        for index, seed in enumerate(settings.seeds):
            rows = np.sort(np.random.default_rng([seed, size]).permutation(p.train)[:size])
            for method, students in rows_of.items():
                student: FittedStudent = (
                    students[index]
                    if size == len(p.train)
                    else fit_setting(
                        p,
                        students[0].setting,
                        settings.risk_dim,
                        settings.student,
                        seed=seed,
                        rows=rows,
                    )
                )
                entropy = student.renyi2_entropy(hidden)
                rho = float(spearmanr(entropy, td).statistic)
                points.append(
                    LearningCurvePoint(method, size, seed, auroc_or_none(labels, entropy), rho)
                )
            probes = fit_probes(p, layers, rows, seed=seed)
            for method, scores in probe_scores(p, probes, layers).items():
                value = None if scores is None else auroc_or_none(labels, scores)
                points.append(LearningCurvePoint(method, size, seed, value))
            points.append(LearningCurvePoint("TD", size, seed, auroc_or_none(labels, td)))
    return points


def summarise(points: list[LearningCurvePoint]) -> list[dict[str, object]]:
    """Per (method, size): mean, standard deviation, min and max over seeds of AUROC and
    fidelity (None where no seed gave a value)."""
    out = []
    keys = dict.fromkeys((p.method, p.n_train) for p in points)
    for method, size in keys:
        group = [p for p in points if p.method == method and p.n_train == size]
        row: dict[str, object] = {"method": method, "n_train": size, "seeds": len(group)}
        for name in ("auroc", "fidelity"):
            values = np.array([getattr(p, name) for p in group if getattr(p, name) is not None])
            row[name] = (
                None
                if not len(values)
                else {
                    "mean": float(values.mean()),
                    "std": float(values.std()),
                    "min": float(values.min()),
                    "max": float(values.max()),
                }
            )
        out.append(row)
    return out
