"""A scorer trained on one collection, scored on another: cross-set AUROC and what shifted.

The scorer is read from its directory (``ssd.json`` + PCA + inputs + students + probes), as a
deployment would; the target collection must come from the same base model, dtype, prompt
and embedder. SSD is the deployed risk student, SEP and PCP the probes saved beside it, TD
the target's own sample spread in the scorer's PCA basis. Three label-free diagnostics say
what moved between the sets: the input shift (how far the target prompts' mean input lies
from the training prompts', in training standard deviations, root-mean-square over
features), the share of the target answers' embedding variance inside the scorer's PCA basis
(against a basis fitted on the target answers themselves), and the entropy's level.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from semdistill.evaluate.experiments import detect
from semdistill.metrics import DetectionResult
from semdistill.scoring.artifacts import LoadedSSD
from semdistill.scoring.familiarity import Familiarity
from semdistill.scoring.scorer import RISK
from semdistill.semantics.dispersion import projected_dispersion
from semdistill.semantics.pca import PCAReducer
from semdistill.store import Collection

TRANSFER_METHODS = ("SSD", "SEP", "PCP", "TD")
UNFAMILIAR_BELOW = 0.05


@dataclass(frozen=True)
class ShiftDiagnostics:
    """What differs between the scorer's training prompts and the target's (no labels used).

    ``input_shift`` is the root-mean-square over the risk student's input features of the
    target's mean input, standardised with the student's training statistics (about
    ``1/sqrt(n)`` for prompts drawn like the training ones). ``pca_captured`` is the fraction of
    the target answers' embedding variance within the scorer's risk PCA basis and
    ``pca_captured_own`` within a basis of the same size fitted on the target answers.
    ``entropy_mean``/``entropy_std`` describe the risk on the target prompts. ``unfamiliar``
    is the share of target prompts whose familiarity to the scorer is below
    ``UNFAMILIAR_BELOW`` (None for a scorer without a familiarity model).
    """

    input_shift: float
    pca_captured: float
    pca_captured_own: float
    entropy_mean: float
    entropy_std: float
    unfamiliar: float | None = None


@dataclass(frozen=True)
class TransferResult:
    """Hallucination AUROC etc. of a scorer (trained on ``scorer``) on ``target``'s ``split``:
    ``n`` rows scored, of which ``n_labelled`` (the only ones behind the AUROCs) have labels.
    ``familiarity`` holds each scored row's familiarity to the scorer (None without a
    familiarity model); it is not written to ``metrics.json``, only summarised there
    (``familiarity_ood``, :mod:`semdistill.evaluate.results`)."""

    scorer: str
    target: str
    split: str
    n: int
    n_labelled: int
    hallucination: dict[str, DetectionResult | None]
    diagnostics: ShiftDiagnostics
    familiarity: np.ndarray | None = field(default=None, repr=False, compare=False)


def transfer(
    loaded: LoadedSSD,
    scorer: str,
    collection: Collection,
    target: str,
    *,
    split: str = "test",
    n_boot: int = 1000,
    seed: int = 0,
    familiarity: Familiarity | None = None,
) -> TransferResult:
    """Score ``collection``'s ``split`` (or ``"all"`` rows) with the loaded scorer (and its
    ``familiarity`` model, when given, for each row's familiarity and the share of unfamiliar
    prompts)."""
    rows = (
        np.arange(len(collection))
        if split == "all"
        else np.flatnonzero(np.asarray(collection.splits) == split)
    )
    if len(rows) < 2:
        raise ValueError(f"{target} has {len(rows)} rows in split {split!r}; at least 2 needed")
    hidden = collection.hidden[rows]
    labels = (~np.asarray(collection.default_correct, dtype=bool))[rows].astype(int)
    judged = np.asarray(collection.labelled, dtype=bool)[rows]
    inputs, student = loaded.inputs[RISK], loaded.students[RISK]
    X = inputs.transform(hidden[:, list(inputs.layers)].astype(np.float32))
    entropy = student.renyi2_entropy(X)
    familiar = None if familiarity is None else familiarity.score(hidden)
    d = loaded.artifacts.students[RISK]
    samples = collection.sample_embeddings[rows]
    scores: dict[str, np.ndarray | None] = {
        "SSD": entropy,
        "TD": projected_dispersion(samples, loaded.pca.components_[:d]),
    }
    for name in ("SEP", "PCP"):
        probe = loaded.probes.get(name)
        layer = loaded.artifacts.probes.get(name)
        scores[name] = None if probe is None else probe.predict_risk(hidden[:, layer])
    hallucination: dict[str, DetectionResult | None] = {}
    for name in TRANSFER_METHODS:
        try:
            values = scores[name]
            hallucination[name] = (
                None
                if values is None
                else detect(labels[judged], values[judged], n_boot=n_boot, seed=seed)
            )
        except ValueError:  # one class (or none) among the labels
            hallucination[name] = None
    return TransferResult(
        scorer=scorer,
        target=target,
        split=split,
        n=len(rows),
        n_labelled=int(judged.sum()),
        hallucination=hallucination,
        diagnostics=ShiftDiagnostics(
            input_shift=input_shift(student.model_, X),
            pca_captured=captured_variance(loaded.pca, samples, d),
            pca_captured_own=captured_variance(PCAReducer(d).fit(samples), samples, d),
            entropy_mean=float(entropy.mean()),
            entropy_std=float(entropy.std()),
            unfamiliar=None if familiar is None else float(np.mean(familiar < UNFAMILIAR_BELOW)),
        ),
        familiarity=familiar,
    )


def input_shift(model: object, X: np.ndarray) -> float:
    """RMS over features of the mean of ``X`` in the student's training standardisation."""
    mean = model.input_mean.numpy()
    std = model.input_std.numpy()
    return float(np.sqrt(np.mean(((X.mean(axis=0) - mean) / std) ** 2)))


def captured_variance(pca: PCAReducer, embeddings: np.ndarray, d: int) -> float:
    """Share of the variance of ``embeddings`` (about their own mean) in ``pca``'s first ``d``
    axes."""
    flat = embeddings.reshape(-1, embeddings.shape[-1]).astype(np.float64)
    centred = flat - flat.mean(axis=0)
    axes = pca.components_[:d]
    return float(np.sum((centred @ axes.T) ** 2) / np.sum(centred**2))
