"""Label-free model selection of the risk student, on the validation split only.

No correctness label and no test prompt is read. Each candidate is fitted once per training
seed, early-stopped on its validation NLL (which fixes the epochs), and scored by the mean
over seeds of the validation NLL and the validation fidelity at the kept epoch.

1. **Objective** (paper's sampled embeddings vs location-free centred samples), at the
   single layer and the default floor: by *validation fidelity* (Spearman ρ of the student's
   entropy with the validation prompts' sample spread). The two objectives fit different
   targets, so their likelihoods are not comparable; fidelity is the one label-free measure of
   how well each distils the teacher's dispersion.
2. **Scale floor**, for the chosen objective at the single layer: by *validation NLL*.
3. **Layers** for SSD-multi (several layers, each standardised and PCA-reduced on train,
   concatenated), with the chosen objective and floor: by *validation NLL*.
4. **The deployed risk student** is SSD-multi if its validation NLL is below the single-layer
   student's, else the single-layer one.

Within one target space the NLL is the distillation objective itself, comparable across
floors and inputs; fidelity is reported but is not a target there (it falls as the student
learns cluster structure that the root-mean-square spread does not see).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from semdistill.student.estimator import TARGETS
from semdistill.training.prepare import PreparedSet, TrainSettings
from semdistill.training.students import (
    FittedStudent,
    Setting,
    fit_setting,
    group_out_fidelity,
    layer_sets,
    single_layer,
)

PAPER_FLOOR = 1e-3  # the student's default floor, with which the objectives are compared

TRANSFER_RULE = (
    "Transfer selection (TrainSettings.transfer_selection, with at least two training groups): "
    "every candidate is also fitted once per held-out training group (on the other groups' "
    "training rows, early-stopped on their validation rows) and scored by its group-out "
    "fidelity, the mean over groups of the Spearman rho of its entropy with the group's sample "
    "spread. The objective, the layer set of SSD-multi and the deployed input (SSD-multi or the "
    "single layer) are the candidates with the highest group-out fidelity; the floor is still "
    "chosen by validation NLL. No label and no test prompt is read."
)


@dataclass(frozen=True)
class Candidate:
    """One candidate of a selection stage and its validation scores (means over seeds)."""

    stage: str
    setting: Setting
    val_nll: float
    val_fidelity: float
    best_epoch: float
    group_fidelity: float | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (``group_fidelity`` only where transfer selection measured it)."""
        out: dict[str, object] = {
            "stage": self.stage,
            "setting": self.setting.to_dict(),
            "val_nll": self.val_nll,
            "val_fidelity": self.val_fidelity,
            "best_epoch": self.best_epoch,
        }
        if self.group_fidelity is not None:
            out["group_fidelity"] = self.group_fidelity
        return out


@dataclass
class RiskSelection:
    """The outcome of :func:`select_risk`: every candidate, the settings chosen for the SSD
    (single layer), SSD (paper objective) and SSD-multi rows, the deployed one, and the fitted
    students of each chosen setting, one per training seed."""

    candidates: list[Candidate]
    ssd: Setting
    paper: Setting
    multi: Setting | None
    deployed: Setting
    fitted: dict[Setting, list[FittedStudent]] = field(repr=False)
    held_out_groups: tuple[str, ...] = ()

    def deployed_student(self) -> FittedStudent:
        """The deployed setting's student of the first seed."""
        return self.fitted[self.deployed][0]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (without the fitted students)."""
        out: dict[str, object] = {
            "rule": __doc__.split("\n\n", 1)[1].strip(),
            "candidates": [c.to_dict() for c in self.candidates],
            "ssd": self.ssd.to_dict(),
            "paper": self.paper.to_dict(),
            "multi": None if self.multi is None else self.multi.to_dict(),
            "deployed": self.deployed.to_dict(),
        }
        if self.held_out_groups:
            out["transfer_rule"] = TRANSFER_RULE
            out["held_out_groups"] = list(self.held_out_groups)
        return out


def select_risk(p: PreparedSet, settings: TrainSettings) -> RiskSelection:
    """Choose the risk student's objective, floor and layers on validation data alone (by
    group-out fidelity where ``p.held_out_groups`` holds two groups or more: see
    :data:`TRANSFER_RULE`)."""
    fitted: dict[Setting, list[FittedStudent]] = {}
    candidates: list[Candidate] = []
    transfer = len(p.held_out_groups) >= 2
    group_fidelity: dict[Setting, float] = {}

    def score(stage: str, setting: Setting) -> Candidate:
        if setting not in fitted:
            fitted[setting] = [
                fit_setting(p, setting, settings.risk_dim, settings.student, seed=seed)
                for seed in settings.seeds
            ]
        if transfer and setting not in group_fidelity:
            group_fidelity[setting] = float(
                np.mean(
                    [
                        group_out_fidelity(p, setting, settings.risk_dim, settings.student, seed=s)
                        for s in settings.seeds
                    ]
                )
            )
        runs = fitted[setting]
        candidate = Candidate(
            stage,
            setting,
            val_nll=float(np.mean([r.best.val_nll for r in runs])),
            val_fidelity=float(np.nanmean([_finite(r.best.val_fidelity) for r in runs])),
            best_epoch=float(np.mean([r.student.best_epoch_ for r in runs])),
            group_fidelity=group_fidelity.get(setting),
        )
        candidates.append(candidate)
        return candidate

    def fidelity(c: Candidate) -> float:
        """Group-out fidelity under transfer selection, else validation fidelity."""
        return _finite(c.group_fidelity if transfer else c.val_fidelity, -np.inf)

    objectives = [score("objective", single_layer(p, t, PAPER_FLOOR)) for t in TARGETS]
    paper = next(c.setting for c in objectives if c.setting.targets == "samples")
    targets = max(objectives, key=fidelity).setting.targets
    floors = [score("floor", single_layer(p, targets, floor)) for floor in settings.min_scales]
    ssd = min(floors, key=lambda c: c.val_nll)
    _, depth, width = p.collection.hidden.shape
    sets = layer_sets(p.layer, depth - 1, settings.layer_offsets)
    layer_dim = min(settings.layer_dim, width, len(p.train))  # PCA needs that many
    multis = [
        score("layers", Setting(targets, ssd.setting.min_scale, layers, layer_dim))
        for layers in sets
    ]
    if transfer:
        multi = max(multis, key=fidelity) if multis else None
        better = multi is not None and fidelity(multi) > fidelity(ssd)
    else:
        multi = min(multis, key=lambda c: c.val_nll) if multis else None
        better = multi is not None and multi.val_nll < ssd.val_nll
    deployed = multi if better else ssd
    chosen = {paper, ssd.setting, deployed.setting} | ({multi.setting} if multi else set())
    return RiskSelection(
        candidates=candidates,
        ssd=ssd.setting,
        paper=paper,
        multi=None if multi is None else multi.setting,
        deployed=deployed.setting,
        fitted={setting: fitted[setting] for setting in chosen},
        held_out_groups=p.held_out_groups if transfer else (),
    )


def select_likelihood(
    p: PreparedSet, settings: TrainSettings, multi: Setting | None
) -> tuple[FittedStudent, list[Candidate]]:
    """The likelihood student (the paper's objective, ``likelihood_dim``): the floor and the
    input (single layer, or the risk selection's layers) with the lowest validation NLL, one
    seed (the first)."""
    inputs = [single_layer(p, "samples", PAPER_FLOOR)]
    if multi is not None:
        inputs.append(Setting("samples", PAPER_FLOOR, multi.layers, multi.layer_dim))
    runs: list[tuple[Candidate, FittedStudent]] = []
    for base in inputs:
        for floor in settings.min_scales:
            setting = Setting("samples", floor, base.layers, base.layer_dim)
            run = fit_setting(
                p, setting, settings.likelihood_dim, settings.student, seed=settings.seeds[0]
            )
            best = run.best
            candidate = Candidate(
                "likelihood", setting, best.val_nll, _finite(best.val_fidelity), best.epoch
            )
            runs.append((candidate, run))
    _, best_run = min(runs, key=lambda pair: pair[0].val_nll)
    return best_run, [candidate for candidate, _ in runs]


def _finite(value: float | None, default: float = np.nan) -> float:
    return default if value is None or not np.isfinite(value) else float(value)
