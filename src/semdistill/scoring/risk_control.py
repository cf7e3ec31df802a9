"""Risk-controlled abstention: an entropy threshold with a finite-sample error guarantee.

The guarded endpoint answers a question when its SSD risk (Rényi-2 entropy, nats, higher =
more likely wrong) is at most a threshold ``t``, and abstains otherwise. Given held-out
labelled questions, :func:`control_selective_risk` picks ``t`` so that, with probability at
least ``1 - delta`` over the draw of those questions, the error rate among *answered*
questions (the selective risk) is at most ``target_error`` on new questions from the same
distribution (Learn then Test, Angelopoulos et al. 2021):

* each candidate ``t`` of a grid fixed before looking at the held-out labels is a null
  hypothesis "selective risk at ``t`` > target_error", with the exact binomial p-value of
  the errors among the ``n_t`` held-out questions answered at ``t`` (given ``n_t``, those
  errors are Binomial(n_t, selective risk));
* the hypotheses are tested by fixed-sequence testing, upwards in ``t`` from ``starts``
  starting points spread over the grid, each sequence at level ``delta / starts`` (a
  Bonferroni union), which controls the family-wise error at ``delta``;
* the largest certified ``t`` is chosen; if none is certified the policy abstains on
  every question (``t = -inf``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binom

from semdistill.scoring.compatibility import check_compatible
from semdistill.scoring.scorer import Scorer
from semdistill.store import Store

METHOD = "Learn then Test: exact binomial p-values, fixed-sequence testing from several starts"


@dataclass(frozen=True)
class RiskCurvePoint:
    """One candidate threshold on the held-out questions.

    ``coverage`` is the fraction answered (risk <= threshold), ``selective_error`` the error
    rate among them (None when none is answered), ``p_value`` that of "selective risk >
    target", ``certified`` whether the testing procedure rejected that hypothesis.
    """

    threshold: float
    answered: int
    errors: int
    coverage: float
    selective_error: float | None
    p_value: float
    certified: bool


@dataclass(frozen=True)
class RiskControl:
    """The chosen entropy threshold and the risk-coverage curve it was chosen on.

    Answer when ``risk <= threshold``; ``threshold`` is ``-inf`` (abstain on everything)
    when no candidate was certified.
    """

    threshold: float
    target_error: float
    delta: float
    n_calibration: int
    coverage: float
    selective_error: float | None
    curve: tuple[RiskCurvePoint, ...]
    method: str = METHOD

    @property
    def certified(self) -> bool:
        """Whether some threshold was certified (else the policy abstains on everything)."""
        return bool(np.isfinite(self.threshold))

    def describe(self) -> str:
        """One line stating the chosen point and the guarantee."""
        if not self.certified:
            return (
                f"no entropy threshold keeps the error among answered questions <= "
                f"{self.target_error:g} with confidence {1 - self.delta:g} on "
                f"{self.n_calibration} held-out questions: abstaining on every question"
            )
        return (
            f"answer when risk_entropy <= {self.threshold:.4f} nats: held-out coverage "
            f"{self.coverage:.3f}, error among answered {self.selective_error:.3f}; "
            f"guarantee: error among answered <= {self.target_error:g} with probability >= "
            f"{1 - self.delta:g} ({self.n_calibration} held-out questions)"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (an infinite threshold becomes None), with the risk convention."""
        body = asdict(self)
        body["threshold"] = _finite(self.threshold)
        body["curve"] = [{**asdict(p), "threshold": _finite(p.threshold)} for p in self.curve]
        body["certified"] = self.certified
        body["convention"] = "answer when risk_entropy <= threshold; higher = more likely wrong"
        return body


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def binomial_p_value(errors: int, answered: int, target_error: float) -> float:
    """P(Binomial(answered, target_error) <= errors): small when the error rate is below target.

    1.0 when nothing is answered.
    """
    if answered == 0:
        return 1.0
    return float(binom.cdf(errors, answered, target_error))


def threshold_grid(reference_risk: np.ndarray, size: int = 100) -> np.ndarray:
    """Candidate thresholds: ``size`` quantiles of ``reference_risk`` and ``+inf`` (answer all).

    ``reference_risk`` must not be the held-out questions' risk (use another split), so that
    the grid is fixed before the held-out labels are seen.
    """
    values = np.asarray(reference_risk, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0 or not np.isfinite(values).all():
        raise ValueError("reference_risk must be a non-empty 1-d array of finite values")
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    quantiles = np.quantile(values, np.linspace(0, 1, size + 1)[1:])
    return np.append(np.unique(quantiles), np.inf)


def control_selective_risk(
    risk: np.ndarray,
    incorrect: np.ndarray,
    grid: np.ndarray,
    *,
    target_error: float,
    delta: float = 0.1,
    starts: int = 4,
) -> RiskControl:
    """The largest threshold in ``grid`` certified to keep the selective risk <= target_error.

    ``risk`` and ``incorrect`` are the held-out questions' SSD risk and whether the model's
    answer to each was wrong; ``grid`` the candidate thresholds, fixed without these labels.
    The guarantee holds with probability ``1 - delta`` over the held-out draw.
    """
    scores = np.asarray(risk, dtype=np.float64)
    labels = np.asarray(incorrect)
    if scores.ndim != 1 or len(scores) == 0 or not np.isfinite(scores).all():
        raise ValueError("risk must be a non-empty 1-d array of finite values")
    if labels.shape != scores.shape or (labels.dtype != bool and not np.isin(labels, (0, 1)).all()):
        raise ValueError(f"incorrect must hold {len(scores)} booleans or 0/1 values")
    if not 0 < target_error < 1:
        raise ValueError(f"target_error must be in (0, 1), got {target_error}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    thresholds = np.sort(np.asarray(grid, dtype=np.float64))
    if thresholds.ndim != 1 or len(thresholds) == 0 or np.isnan(thresholds).any():
        raise ValueError("grid must be a non-empty 1-d array of thresholds")
    if starts < 1:
        raise ValueError(f"starts must be at least 1, got {starts}")
    labels = labels.astype(bool)
    answering = scores[None, :] <= thresholds[:, None]
    answered, errors = answering.sum(axis=1), (answering & labels[None, :]).sum(axis=1)
    p_values = np.array(
        [
            binomial_p_value(int(k), int(m), target_error)
            for k, m in zip(errors, answered, strict=True)
        ]
    )
    certified = np.zeros(len(thresholds), dtype=bool)
    # Start points spread over the grid's middle (coverage (k + 1/2) / starts when the grid
    # holds quantiles): a start at the smallest thresholds answers too few to certify.
    first = np.unique(((np.arange(starts) + 0.5) / starts * len(thresholds)).astype(int))
    level = delta / len(first)
    for start in first:
        for j in range(start, len(thresholds)):
            if p_values[j] > level:
                break
            certified[j] = True
    curve = tuple(
        RiskCurvePoint(
            threshold=float(t),
            answered=int(m),
            errors=int(k),
            coverage=float(m / len(scores)),
            selective_error=float(k / m) if m else None,
            p_value=float(p),
            certified=bool(c),
        )
        for t, m, k, p, c in zip(thresholds, answered, errors, p_values, certified, strict=True)
    )
    chosen = np.flatnonzero(certified)
    if len(chosen) == 0:
        return RiskControl(-np.inf, target_error, delta, len(scores), 0.0, None, curve)
    point = curve[chosen[-1]]
    return RiskControl(
        point.threshold,
        target_error,
        delta,
        len(scores),
        point.coverage,
        point.selective_error,
        curve,
    )


def held_out_risk(
    scorer: Scorer, collection: str | os.PathLike | None = None, *, split: str = "validation"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SSD risk and greedy-answer errors of a collection's ``split`` (its labelled rows), and a
    grid to test on.

    ``collection`` defaults to the store recorded in the scorer's artifacts; it must hold the
    scorer's base model, dtype and prompt. The grid comes from the risk of the train split
    (no held-out labels involved). Returns ``(risk, incorrect, grid)``.
    """
    location = collection if collection is not None else scorer.artifacts.collection
    if not location:
        raise ValueError(
            f"the SSD in {scorer.directory} records no training collection; name the labelled "
            "collection to calibrate on (--calibration-collection DIR)"
        )
    if split == "train":
        raise ValueError("the train split fitted the students; calibrate on validation or test")
    store = Store.open(location)
    check_compatible(scorer.artifacts, store.config, str(location), embedder=False)
    held = store.load(split=split)
    held = held.subset(held.labelled)
    train = store.load(split="train")
    if len(held) == 0 or len(train) == 0:
        raise ValueError(
            f"collection {location} has {len(held)} labelled {split} and {len(train)} train "
            "questions; both are needed"
        )
    layers = list(scorer.layers)
    risk = scorer.risk_from_states(held.hidden[:, layers])
    grid = threshold_grid(scorer.risk_from_states(train.hidden[:, layers]))
    return risk, ~np.asarray(held.default_correct, dtype=bool), grid


def save_report(control: RiskControl, path: str | os.PathLike) -> list[Path]:
    """Write the curve as JSON at ``path`` and a risk-coverage figure beside it (``.png``)."""
    from matplotlib.figure import Figure

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(control.to_dict(), indent=2))
    points = [p for p in control.curve if p.selective_error is not None]
    figure = Figure(figsize=(5, 3.6))
    axes = figure.subplots()
    axes.plot([p.coverage for p in points], [p.selective_error for p in points], ".-", lw=1)
    axes.axhline(control.target_error, color="grey", ls="--", lw=1, label="target error")
    if control.certified:
        axes.plot([control.coverage], [control.selective_error], "o", color="C3", label="chosen")
    axes.set_xlabel("coverage (fraction answered)")
    axes.set_ylabel("error among answered")
    axes.set_title(f"risk-coverage, {control.n_calibration} held-out questions")
    axes.legend(loc="best")
    figure.tight_layout()
    picture = target.with_suffix(".png")
    figure.savefig(picture, dpi=120)
    return [target, picture]
