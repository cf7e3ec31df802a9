"""Keep a scorer up to date: fit its students further on new (unlabelled) prompts.

Nothing is refitted from scratch: the answer PCA basis, each student's inputs (layers and
their reductions) and the students' input and target standardisation stay as they were, so
the scorer's numbers keep their meaning, and each student goes on training from its weights
(:meth:`~semdistill.student.SSDStudent.fit_more`) on the new collection's train split, with
early stopping on its validation split in which the student as it was counts as epoch 0 (it
changes only if the new prompts' validation NLL improves). The familiarity model gains the
new prompts. The SEP/PCP probes are copied unchanged (they need labels or a refit). No label
is read. A ``calibration.json`` is not carried over: the risk it calibrated has changed; the
refine budget's validation risk (:mod:`~semdistill.scoring.refine`) becomes that of the new
collection's validation prompts under the updated risk student.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from semdistill.scoring.artifacts import load_artifacts, save_artifacts
from semdistill.scoring.compatibility import check_compatible
from semdistill.scoring.familiarity import Familiarity
from semdistill.scoring.refine import REFINE_KEY
from semdistill.scoring.scorer import RISK
from semdistill.store import CollectConfig, Collection
from semdistill.student.estimator import SSDStudent


@dataclass(frozen=True)
class RoleUpdate:
    """What fitting one student further did: new prompts, epochs run, the epoch kept (0 =
    unchanged) and the validation NLL before and after."""

    role: str
    n_train: int
    n_validation: int
    epochs: int
    best_epoch: int
    val_nll_before: float
    val_nll_after: float


def update_scorer(
    scorer: str | os.PathLike,
    collection: Collection,
    config: CollectConfig,
    where: str,
    out: str | os.PathLike,
    *,
    max_epochs: int = 100,
) -> list[RoleUpdate]:
    """Fit the scorer in ``scorer`` further on ``collection`` (collected with ``config`` from
    ``where``) and write the updated scorer into ``out``, a new directory."""
    source, target = Path(scorer), Path(out)
    if target.resolve() == source.resolve():
        raise ValueError(f"write the updated scorer to a new directory, not {source}")
    loaded = load_artifacts(source)
    artifacts = loaded.artifacts
    check_compatible(artifacts, config, where)
    splits = np.asarray(collection.splits)
    train, validation = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "validation")
    if len(train) < 2 or len(validation) < 1:
        raise ValueError(
            f"{where} has {len(train)} train and {len(validation)} validation questions; "
            "at least 2 and 1 are needed to fit further"
        )
    updates = []
    for role, student in loaded.students.items():
        inputs = loaded.inputs[role]
        X = inputs.transform(collection.hidden[:, list(inputs.layers)].astype(np.float32))
        Y = loaded.pca.transform(collection.sample_embeddings, artifacts.students[role])
        before = _val_nll(student, X[validation], Y[validation])
        student.max_epochs = max_epochs
        student.fit_more(X[train], Y[train], validation=(X[validation], Y[validation]))
        after = _val_nll(student, X[validation], Y[validation])
        updates.append(
            RoleUpdate(role, len(train), len(validation), len(student.history_),
                       int(student.best_epoch_ or 0), before, after)
        )  # fmt: skip
    history = [*artifacts.extra.get("updates", []), {"collection": where, "students": [
        asdict(u) for u in updates
    ]}]  # fmt: skip
    extra = {**artifacts.extra, "updates": history}
    if REFINE_KEY in extra and RISK in loaded.students:
        inputs = loaded.inputs[RISK]
        X = inputs.transform(
            collection.hidden[validation][:, list(inputs.layers)].astype(np.float32)
        )
        risk = np.sort(loaded.students[RISK].renyi2_entropy(X))
        extra[REFINE_KEY] = {**extra[REFINE_KEY], "validation_risk": risk.tolist()}
    previous = Familiarity.load(source)
    hidden = collection.hidden
    familiarity = (
        Familiarity.fit(hidden[train], hidden[validation])
        if previous is None
        else previous.extended(hidden[train], hidden[validation])
    )
    save_artifacts(
        target,
        replace(artifacts, extra=extra),
        loaded.pca,
        loaded.students,
        inputs=loaded.inputs,
        probes={name: (probe, artifacts.probes[name]) for name, probe in loaded.probes.items()},
        familiarity=familiarity,
    )
    return updates


def _val_nll(student: SSDStudent, X: np.ndarray, Y: np.ndarray) -> float:
    """Mean NLL per sample of ``Y`` (centred for a centred student) given ``X``."""
    if student.targets == "centred":
        Y = Y - Y.mean(axis=1, keepdims=True)
    return float(-np.mean(student.log_prob(X, Y)))
