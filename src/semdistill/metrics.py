"""Detection metrics for risk scores: AUROC, AUPRC, PRR, risk-coverage, bootstrap CIs.

Convention everywhere: ``labels`` are 1 for the positive class (e.g. "the default answer is
incorrect") and 0 otherwise; a higher ``score`` means "more likely positive" (more risk).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score

Metric = Callable[[np.ndarray, np.ndarray], float]
BatchedMetric = Callable[[np.ndarray, np.ndarray], np.ndarray]

_BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class ScoreWithCI:
    """A point estimate with a percentile-bootstrap confidence interval."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class DetectionResult:
    """Detection quality of one risk score against binary labels (higher score = riskier).

    For a score fitted with several training seeds (:func:`evaluate_seeds`) each metric is the
    mean over seeds, its interval the bootstrap interval of that mean, and ``seed_auroc`` holds
    each seed's AUROC (empty for a single score).
    """

    auroc: ScoreWithCI
    auprc: ScoreWithCI
    prr: ScoreWithCI
    n: int
    n_pos: int
    base_rate: float
    seed_auroc: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """Plain nested dict (JSON-serialisable)."""
        return asdict(self)


def _validate(
    labels: np.ndarray, scores: np.ndarray, *, both_classes: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Return labels as int64 {0,1} and scores as float64, or raise ValueError."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    if y.shape[0] != s.shape[0]:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if y.shape[0] == 0:
        raise ValueError("labels and scores are empty")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError("labels contain NaN or infinite values")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be binary (0/1 or bool)")
    y = y.astype(np.int64)
    if both_classes and (y.min() == y.max()):
        raise ValueError(f"labels contain a single class ({int(y[0])}); need both 0 and 1")
    return y, s


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (0.5 = chance, 1 = perfect ranking of positives above)."""
    y, s = _validate(labels, scores)
    return float(roc_auc_score(y, s))


def auroc_or_none(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """:func:`auroc`, or None when ``labels`` hold a single class."""
    labels = np.asarray(labels, dtype=int)
    return auroc(labels, scores) if 0 < labels.sum() < len(labels) else None


def auprc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (scikit-learn definition)."""
    y, s = _validate(labels, scores)
    return float(average_precision_score(y, s))


def _tie_groups(s_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last index of each element's group of equal values (rows sorted)."""
    n = s_sorted.shape[-1]
    idx = np.arange(n)
    is_end = np.ones(s_sorted.shape, dtype=bool)
    is_end[..., :-1] = s_sorted[..., :-1] != s_sorted[..., 1:]
    is_start = np.ones(s_sorted.shape, dtype=bool)
    is_start[..., 1:] = is_end[..., :-1]
    end = np.minimum.accumulate(np.where(is_end, idx, n)[..., ::-1], axis=-1)[..., ::-1]
    start = np.maximum.accumulate(np.where(is_start, idx, 0), axis=-1)
    return start, end


def _tie_averaged_labels(y_sorted: np.ndarray, s_sorted: np.ndarray) -> np.ndarray:
    """Replace each label by the mean label of its group of tied scores (rows sorted)."""
    start, end = _tie_groups(s_sorted)
    csum = np.concatenate(
        [np.zeros((*y_sorted.shape[:-1], 1)), np.cumsum(y_sorted, axis=-1, dtype=np.float64)],
        axis=-1,
    )
    group_sum = np.take_along_axis(csum, end + 1, -1) - np.take_along_axis(csum, start, -1)
    return group_sum / (end - start + 1)


def prr(labels: np.ndarray, scores: np.ndarray) -> float:
    """Prediction rejection ratio (Malinin et al.): 1 = oracle, 0 = random, -1 = reversed.

    Samples are rejected in order of decreasing score and a rejected sample counts as
    handled (no error). The rejection curve is the number of errors (positives) left among
    the retained samples after rejecting k = 0..n; PRR = (A_random - A_score) / (A_random -
    A_oracle) with A the area under each curve. Tied scores are rejected in random order,
    i.e. the curve is its expectation over tie orders. With 0/1 errors this equals
    2 * AUROC - 1 exactly.
    """
    y, s = _validate(labels, scores)
    order = np.argsort(-s, kind="stable")
    y_eff = _tie_averaged_labels(y[order].astype(np.float64), s[order])
    n, n_pos = y.shape[0], int(y.sum())
    rejected_errors = np.concatenate([[0.0], np.cumsum(y_eff)])
    area_score = np.sum(n_pos - rejected_errors)
    area_random = np.sum(n_pos * (n - np.arange(n + 1)) / n)
    area_oracle = np.sum(np.maximum(n_pos - np.arange(n + 1), 0))
    return float((area_random - area_score) / (area_random - area_oracle))


def _auroc_batch(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Row-wise AUROC via Mann-Whitney midranks; every row must contain both classes."""
    ranks = rankdata(s, axis=-1)
    n_pos = y.sum(axis=-1)
    n_neg = y.shape[-1] - n_pos
    rank_sum = np.sum(ranks * y, axis=-1)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _auprc_batch(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Row-wise average precision with scikit-learn's tie handling (one step per threshold)."""
    order = np.argsort(-s, axis=-1, kind="stable")
    y_sorted = np.take_along_axis(y, order, -1).astype(np.float64)
    s_sorted = np.take_along_axis(s, order, -1)
    _, end = _tie_groups(s_sorted)
    idx = np.arange(y.shape[-1])
    precision_at_end = np.take_along_axis(np.cumsum(y_sorted, axis=-1) / (idx + 1), end, -1)
    return np.sum(y_sorted * precision_at_end, axis=-1) / y_sorted.sum(axis=-1)


def _prr_batch(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Row-wise PRR through the exact identity PRR = 2 * AUROC - 1 (see `prr`)."""
    return 2.0 * _auroc_batch(y, s) - 1.0


_BATCHED: tuple[tuple[Metric, BatchedMetric], ...] = (
    (auroc, _auroc_batch),
    (auprc, _auprc_batch),
    (prr, _prr_batch),
)


def _stratified_indices(y: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) resample indices keeping the number of positives and negatives fixed."""
    pos = np.flatnonzero(y == 1)
    neg = np.flatnonzero(y == 0)
    return np.concatenate(
        [
            pos[rng.integers(0, pos.size, size=(n_boot, pos.size))],
            neg[rng.integers(0, neg.size, size=(n_boot, neg.size))],
        ],
        axis=1,
    )


def _resampled_values(metric: Metric, y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Metric value on each resample (vectorised for the metrics of this module)."""
    batched = next((fast for slow, fast in _BATCHED if slow is metric), None)
    if batched is None:
        return np.array([metric(y[row], s[row]) for row in idx])
    rows_per_chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // idx.shape[1])
    return np.concatenate(
        [
            batched(y[idx[i : i + rows_per_chunk]], s[idx[i : i + rows_per_chunk]])
            for i in range(0, idx.shape[0], rows_per_chunk)
        ]
    )


def _check_bootstrap_args(n_boot: int, level: float) -> None:
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _interval(value: float, boot: np.ndarray, level: float) -> ScoreWithCI:
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return ScoreWithCI(value=value, low=float(low), high=float(high))


def bootstrap_ci(
    metric: Metric,
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> ScoreWithCI:
    """Point estimate of ``metric`` with a stratified percentile-bootstrap interval.

    Positives and negatives are resampled separately with replacement, so every resample
    has the original class counts. ``metric`` is any ``(labels, scores) -> float``; for
    `auroc`, `auprc` and `prr` the resamples are evaluated vectorised.
    """
    y, s = _validate(labels, scores)
    _check_bootstrap_args(n_boot, level)
    idx = _stratified_indices(y, n_boot, np.random.default_rng(seed))
    return _interval(float(metric(y, s)), _resampled_values(metric, y, s, idx), level)


def evaluate_scores(
    labels: np.ndarray, scores: np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> DetectionResult:
    """AUROC, AUPRC and PRR with 95% stratified bootstrap CIs (shared resamples)."""
    y, s = _validate(labels, scores)
    return evaluate_seeds(y, s[None], n_boot=n_boot, seed=seed)


def evaluate_seeds(
    labels: np.ndarray, scores: np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> DetectionResult:
    """:func:`evaluate_scores` of the mean over rows of ``scores`` ``(seeds, n)``: each metric
    averaged over the seeds' scores, on every bootstrap resample of the prompts alike."""
    table = np.asarray(scores, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] == 0:
        raise ValueError(f"scores must have shape (seeds, n) with seeds >= 1, got {table.shape}")
    checked = [_validate(labels, row) for row in table]
    y = checked[0][0]
    _check_bootstrap_args(n_boot, 0.95)
    idx = _stratified_indices(y, n_boot, np.random.default_rng(seed))

    def mean_over_seeds(metric: Metric) -> ScoreWithCI:
        values = [metric(y, s) for _, s in checked]
        boot = np.mean([_resampled_values(metric, y, s, idx) for _, s in checked], axis=0)
        return _interval(float(np.mean(values)), boot, 0.95)

    au = mean_over_seeds(auroc)
    return DetectionResult(
        auroc=au,
        auprc=mean_over_seeds(auprc),
        prr=ScoreWithCI(2.0 * au.value - 1.0, 2.0 * au.low - 1.0, 2.0 * au.high - 1.0),
        n=int(y.shape[0]),
        n_pos=int(y.sum()),
        base_rate=float(y.mean()),
        seed_auroc=tuple(auroc(y, s) for _, s in checked) if len(checked) > 1 else (),
    )
