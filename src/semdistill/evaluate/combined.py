"""Label-free combined one-pass scores: the signals of one pass mapped onto semantic entropy.

``combined-pre`` combines the pre-generation signals (SSD, SSD-multi, SEP), ``combined-post``
adds the greedy answer's (:data:`~semdistill.evaluate.signals.POST_SIGNALS`). Each is a ridge
regression of the training prompts' SE (their N sampled answers' semantic entropy: no label)
on the signals, standardised or rank-normalised, one fit per SSD training seed. The
transform and the ridge penalty are chosen by the Spearman correlation of the prediction with
SE on the validation prompts, again with no label; no test prompt is read. The prediction is
on SE's scale, which is what the sampling cascade needs to mix the two.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import spearmanr
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import QuantileTransformer, StandardScaler

from semdistill.evaluate.experiments import COMBINED, POST_SIGNALS
from semdistill.evaluate.signals import (
    PRE_SIGNALS,
    has_greedy_scores,
    post_generation,
    pre_generation,
)
from semdistill.training.prepare import PreparedSet
from semdistill.training.trained import TrainedSet

ALPHAS = (0.1, 1.0, 10.0, 100.0)
TRANSFORMS = ("standard", "quantile")


@dataclass(frozen=True)
class CombinedChoice:
    """What was chosen for one combined score: its signals, the transform and penalty, and
    the validation Spearman ρ with SE behind the choice (mean over seeds)."""

    method: str
    signals: tuple[str, ...]
    transform: str
    alpha: float
    val_spearman: float
    weights: tuple[tuple[float, ...], ...]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class CombinedScores:
    """Each combined method's choice and its test-split scores ``(seeds, n)``."""

    choices: dict[str, CombinedChoice]
    test: dict[str, np.ndarray]


def signal_table(
    trained: TrainedSet, rows: np.ndarray, *, out_of_fold: bool = False
) -> dict[str, np.ndarray]:
    """Every available one-pass signal on ``rows``, each ``(seeds, n)``."""
    signals = pre_generation(trained, rows, out_of_fold=out_of_fold)
    if has_greedy_scores(trained.prepared):
        seeds = next(iter(signals.values())).shape[0]
        for name, values in post_generation(trained, rows).items():
            signals[name] = np.broadcast_to(values, (seeds, len(rows)))
    return signals


def fit_combined(trained: TrainedSet, test: np.ndarray) -> CombinedScores:
    """Fit ``combined-pre`` (and ``combined-post`` where the greedy answer's token statistics
    were collected) on the train split, choose each on validation, score the ``test`` rows."""
    p = trained.prepared
    tables = {
        "train": signal_table(trained, p.train, out_of_fold=True),
        "validation": signal_table(trained, p.validation),
        "test": signal_table(trained, test),
    }
    wanted = dict(zip(COMBINED, (PRE_SIGNALS, PRE_SIGNALS + POST_SIGNALS), strict=True))
    if not has_greedy_scores(p):
        del wanted["combined-post"]
    choices, scores = {}, {}
    for method, names in wanted.items():
        present = tuple(name for name in names if name in tables["train"])
        choices[method], scores[method] = _fit_one(method, present, tables, p)
    return CombinedScores(choices, scores)


def _design(table: dict[str, np.ndarray], names: tuple[str, ...], seed: int) -> np.ndarray:
    return np.column_stack([table[name][seed] for name in names]).astype(np.float64)


def _model(transform: str, alpha: float, n_rows: int) -> Pipeline:
    scale = (
        StandardScaler()
        if transform == "standard"
        else QuantileTransformer(
            n_quantiles=min(1000, n_rows), output_distribution="normal", random_state=0
        )
    )
    return make_pipeline(scale, Ridge(alpha=alpha))


def _fit_one(
    method: str, names: tuple[str, ...], tables: dict[str, dict[str, np.ndarray]], p: PreparedSet
) -> tuple[CombinedChoice, np.ndarray]:
    n_seeds = tables["train"][names[0]].shape[0]
    train = p.train
    target, val_target = p.se[train], p.se[p.validation]
    best: tuple[float, str, float] | None = None
    for transform in TRANSFORMS:
        for alpha in ALPHAS:
            rhos = []
            for seed in range(n_seeds):
                model = _model(transform, alpha, len(train))
                model.fit(_design(tables["train"], names, seed), target)
                predicted = model.predict(_design(tables["validation"], names, seed))
                rhos.append(_spearman(predicted, val_target))
            rho = float(np.mean(rhos))
            if best is None or rho > best[0]:
                best = (rho, transform, alpha)
    assert best is not None
    rho, transform, alpha = best
    scores, weights = [], []
    for seed in range(n_seeds):
        model = _model(transform, alpha, len(train)).fit(
            _design(tables["train"], names, seed), target
        )
        scores.append(model.predict(_design(tables["test"], names, seed)))
        weights.append(tuple(float(w) for w in model[-1].coef_))
    choice = CombinedChoice(method, names, transform, alpha, rho, tuple(weights))
    return choice, np.stack(scores)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    rho = spearmanr(a, b).statistic
    return float(rho) if np.isfinite(rho) else -1.0
