"""Students on a prepared set: what each one fits and reads, fitted on the training split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.stats import spearmanr

from semdistill.semantics.dispersion import teacher_dispersion
from semdistill.student import SSDStudent
from semdistill.student.estimator import Targets
from semdistill.student.inputs import LayerInputs
from semdistill.student.training import EpochRecord
from semdistill.training.prepare import PreparedSet, StudentSettings

OBJECTIVE_NAMES: dict[str, str] = {"samples": "paper objective", "centred": "location-free"}


@dataclass(frozen=True)
class Setting:
    """One student's recipe beyond the shared architecture: its targets (the paper's sampled
    embeddings, or each prompt's samples minus their mean), its scale floor (``min_scale``, in
    standardised target units), the layers it reads and their reduction (``layer_dim``
    principal components per layer, or None for the raw states)."""

    targets: Targets
    min_scale: float
    layers: tuple[int, ...]
    layer_dim: int | None = None

    def inputs(self) -> LayerInputs:
        """Unfitted inputs for :attr:`layers`."""
        return LayerInputs(self.layers, self.layer_dim)

    def describe(self) -> str:
        """E.g. ``location-free, floor 0.05, layers 14, 17, 20 (64 PCs each)``."""
        return (
            f"{OBJECTIVE_NAMES[self.targets]}, floor {self.min_scale:g}, {self.inputs().describe()}"
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (with its description)."""
        return {
            "targets": self.targets,
            "min_scale": self.min_scale,
            "layers": list(self.layers),
            "layer_dim": self.layer_dim,
            "description": self.describe(),
        }


@dataclass
class FittedStudent:
    """A student with the inputs it reads; ``features`` maps a collection's hidden states
    ``(n, n_layers + 1, hidden)`` to its input."""

    setting: Setting
    inputs: LayerInputs
    student: SSDStudent

    def features(self, hidden: np.ndarray) -> np.ndarray:
        """The student's input for every row of ``hidden``."""
        return self.inputs.transform(hidden[:, list(self.setting.layers)].astype(np.float32))

    def renyi2_entropy(self, hidden: np.ndarray) -> np.ndarray:
        """Rényi-2 entropy (nats) of the predicted mixture per row of ``hidden``."""
        return self.student.renyi2_entropy(self.features(hidden))

    @property
    def best(self) -> EpochRecord:
        """The epoch whose weights were kept (best validation NLL)."""
        return self.student.history_[self.student.best_epoch_ - 1]


def fit_setting(
    p: PreparedSet,
    setting: Setting,
    d: int,
    student: StudentSettings,
    *,
    seed: int,
    rows: Sequence[int] | np.ndarray | None = None,
    validation: Sequence[int] | np.ndarray | None = None,
) -> FittedStudent:
    """Fit ``setting`` with targets in ``d`` PCA coordinates on the training rows (``rows``, a
    subset of the train split, or all of it), early-stopped on the validation split (or its
    rows ``validation``)."""
    rows = p.train if rows is None else np.asarray(rows)
    held = p.validation if validation is None else np.asarray(validation)
    hidden = p.collection.hidden
    key = (setting.layers, setting.layer_dim, rows.tobytes())
    if key not in p.inputs_cache:  # the same for every seed and target space
        states = hidden[rows][:, list(setting.layers)].astype(np.float32)
        p.inputs_cache[key] = setting.inputs().fit(states)
    inputs = p.inputs_cache[key]
    fitted = FittedStudent(setting, inputs, SSDStudent(verbose=False))
    X = fitted.features(hidden[np.r_[rows, held]])
    Y = p.targets(d)
    settings = replace(student, targets=setting.targets, min_scale=setting.min_scale, seed=seed)
    fitted.student = settings.build().fit(
        X[: len(rows)], Y[rows], validation=(X[len(rows) :], Y[held])
    )
    return fitted


def group_out_fidelity(
    p: PreparedSet, setting: Setting, d: int, student: StudentSettings, *, seed: int
) -> float:
    """Mean over ``p.held_out_groups`` of the fidelity on a group that the student never saw.

    For each group, ``setting`` is fitted on the training rows of the other groups
    (early-stopped on their validation rows) and scored on the group's training and
    validation rows: Spearman rho of its entropy with the spread of their sampled answers
    (teacher dispersion in the ``d`` PCA axes). Label-free; test rows are never read.
    """
    if p.groups is None or len(p.held_out_groups) < 2:
        raise ValueError("group-out fidelity needs at least two held-out training groups")
    seen = np.r_[p.train, p.validation]
    spread = teacher_dispersion(p.targets(d)[seen])
    rhos = []
    for group in p.held_out_groups:
        inside = p.groups[seen] == group
        rows = p.train[p.groups[p.train] != group]
        reduced = setting
        if setting.layer_dim is not None and setting.layer_dim > len(rows):
            reduced = replace(setting, layer_dim=len(rows))  # PCA needs that many rows
        fitted = fit_setting(
            p,
            reduced,
            d,
            student,
            seed=seed,
            rows=rows,
            validation=p.validation[p.groups[p.validation] != group],
        )
        entropy = fitted.renyi2_entropy(p.collection.hidden[seen[inside]])
        rho = spearmanr(entropy, spread[inside]).statistic
        rhos.append(float(rho) if np.isfinite(rho) else 0.0)
    return float(np.mean(rhos))


def single_layer(p: PreparedSet, targets: Targets, min_scale: float) -> Setting:
    """The paper's input: the raw state of the prepared set's layer."""
    return Setting(targets, min_scale, (p.layer,))


def layer_sets(
    layer: int, n_layers: int, offsets: Sequence[Sequence[int]]
) -> list[tuple[int, ...]]:
    """Each offset pattern around ``layer``, clipped to 1..``n_layers``; distinct sets of at
    least two layers, in the order given."""
    sets: list[tuple[int, ...]] = []
    for pattern in offsets:
        chosen = tuple(sorted({min(max(layer + o, 1), n_layers) for o in pattern}))
        if len(chosen) >= 2 and chosen not in sets:
            sets.append(chosen)
    return sets
