"""The sampling cascade: N samples only for the prompts whose pre-generation risk is highest.

At a budget ``b`` the share ``b`` of test prompts with the highest ``combined-pre`` risk get
semantic entropy from their N sampled answers; the others keep the best one-pass score
(``combined-post`` where the greedy answer's statistics exist, else ``combined-pre``), which
is already on SE's scale (:mod:`semdistill.evaluate.combined`). Both the ranking and the
mapping were fitted on training prompts; the test split is only scored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from semdistill.metrics import DetectionResult, evaluate_seeds

BUDGETS = tuple(round(0.1 * k, 1) for k in range(11))


@dataclass(frozen=True)
class CascadePoint:
    """One budget: the share of prompts sampled, the mean samples per prompt and the AUROC
    (with its CI; mean over the SSD training seeds)."""

    budget: float
    samples_per_prompt: float
    result: DetectionResult

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class Cascade:
    """The cascade's AUROC at every budget, SE's own (every prompt sampled) and the smallest
    budget whose AUROC reaches it (1.0 at worst: every prompt sampled is SE itself)."""

    ranked_by: str
    kept: str
    n_samples: int
    points: tuple[CascadePoint, ...]
    se_auroc: float
    budget_to_match_se: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return asdict(self)


def cascade_scores(
    ranking: np.ndarray, kept: np.ndarray, se: np.ndarray, budget: float
) -> np.ndarray:
    """Per seed, ``kept`` with SE in place of the ``budget`` share of highest ``ranking``,
    ``(seeds, n)``."""
    ranking, kept = np.atleast_2d(ranking), np.atleast_2d(kept)
    n = ranking.shape[1]
    k = round(budget * n)
    out = kept.astype(np.float64)
    for seed in range(len(out)):
        refined = np.argsort(-ranking[seed], kind="stable")[:k]
        out[seed, refined] = se[refined]
    return out


def run_cascade(
    labels: np.ndarray,
    ranking: tuple[str, np.ndarray],
    kept: tuple[str, np.ndarray],
    se: np.ndarray,
    n_samples: int,
    *,
    budgets: tuple[float, ...] = BUDGETS,
    n_boot: int,
    seed: int,
) -> Cascade:
    """The cascade over ``budgets`` on the test prompts: ``ranking`` and ``kept`` are the
    (name, ``(seeds, n)`` scores) of the pre-generation risk and the one-pass score."""
    points = []
    for budget in budgets:
        scores = cascade_scores(ranking[1], kept[1], se, budget)
        result = evaluate_seeds(labels, scores, n_boot=n_boot, seed=seed)
        points.append(CascadePoint(budget, budget * n_samples, result))
    se_auroc = evaluate_seeds(labels, se[None], n_boot=n_boot, seed=seed).auroc.value
    reached = [p.budget for p in points if p.result.auroc.value >= se_auroc - 1e-12]
    return Cascade(ranking[0], kept[0], n_samples, tuple(points), se_auroc, min(reached))
