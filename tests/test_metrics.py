"""Tests for semdistill.metrics against scikit-learn, hand computations, brute force."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from semdistill.metrics import (
    DetectionResult,
    ScoreWithCI,
    auprc,
    auroc,
    bootstrap_ci,
    evaluate_scores,
    prr,
)


@pytest.fixture
def tied_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, size=300)
    scores = np.round(rng.normal(size=300) + 0.8 * labels, 1)  # many ties
    return labels, scores


def test_auroc_auprc_known_values() -> None:
    labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert auroc(labels, scores) == pytest.approx(0.75)
    assert auprc(labels, scores) == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))


def test_auroc_auprc_match_sklearn(tied_data: tuple[np.ndarray, np.ndarray]) -> None:
    labels, scores = tied_data
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert auprc(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )
    assert auroc(labels.astype(bool), scores) == pytest.approx(roc_auc_score(labels, scores))


@pytest.mark.parametrize(
    ("metric", "reference"),
    [
        (auroc, roc_auc_score),
        (auprc, average_precision_score),
        (prr, lambda y, s: prr(y, s)),  # loop path runs the rejection-curve code
    ],
)
def test_vectorised_bootstrap_matches_loop(
    tied_data: tuple[np.ndarray, np.ndarray], metric, reference
) -> None:
    labels, scores = tied_data
    fast = bootstrap_ci(metric, labels, scores, n_boot=200, seed=3)
    slow = bootstrap_ci(reference, labels, scores, n_boot=200, seed=3)
    assert fast.value == pytest.approx(slow.value, abs=1e-12)
    assert fast.low == pytest.approx(slow.low, abs=1e-12)
    assert fast.high == pytest.approx(slow.high, abs=1e-12)
    assert fast.low < fast.value < fast.high


def test_bootstrap_is_stratified_and_seeded(tied_data: tuple[np.ndarray, np.ndarray]) -> None:
    labels, scores = tied_data
    seen: list[tuple[int, int]] = []

    def spy(y: np.ndarray, s: np.ndarray) -> float:
        seen.append((int(y.sum()), int(y.size)))
        return float(s[y == 1].mean())

    bootstrap_ci(spy, labels, scores, n_boot=20, seed=0)
    assert set(seen) == {(int(labels.sum()), labels.size)}
    a = bootstrap_ci(auroc, labels, scores, n_boot=100, seed=1)
    b = bootstrap_ci(auroc, labels, scores, n_boot=100, seed=1)
    c = bootstrap_ci(auroc, labels, scores, n_boot=100, seed=2)
    assert a == b
    assert a != c


def test_bootstrap_ci_coverage_binormal() -> None:
    """~100 binormal datasets with known AUROC: the 95% CI should cover it ~95% of the time."""
    shift = 1.0
    true_auroc = norm.cdf(shift / np.sqrt(2.0))
    rng = np.random.default_rng(2024)
    covered = 0
    n_datasets = 100
    for i in range(n_datasets):
        labels = np.r_[np.ones(60, dtype=int), np.zeros(90, dtype=int)]
        scores = np.r_[rng.normal(shift, 1.0, 60), rng.normal(0.0, 1.0, 90)]
        ci = bootstrap_ci(auroc, labels, scores, n_boot=200, seed=i)
        covered += ci.low <= true_auroc <= ci.high
    assert 88 <= covered <= 99


def test_prr_hand_computed_and_extremes() -> None:
    labels = np.array([1, 0, 1, 0])
    # rejection order 1,0,1,0: errors left 2,1,1,0,0 -> A=4; random A=5; oracle A=3.
    assert prr(labels, np.array([4.0, 3.0, 2.0, 1.0])) == pytest.approx(0.5)
    assert prr(labels, np.array([0.9, 0.1, 0.8, 0.2])) == pytest.approx(1.0)
    assert prr(labels, np.array([0.1, 0.9, 0.2, 0.8])) == pytest.approx(-1.0)
    assert prr(labels, np.full(4, 0.3)) == pytest.approx(0.0, abs=1e-12)


def test_prr_random_scores_near_zero() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=4000)
    values = [prr(labels, rng.normal(size=labels.size)) for _ in range(5)]
    assert abs(np.mean(values)) < 0.03


def test_prr_equals_gini(tied_data: tuple[np.ndarray, np.ndarray]) -> None:
    labels, scores = tied_data
    assert prr(labels, scores) == pytest.approx(2 * roc_auc_score(labels, scores) - 1, abs=1e-12)


def _tie_orders(scores: np.ndarray, ascending: bool) -> list[tuple[int, ...]]:
    """All orderings of the indices consistent with sorting by score (any tie order)."""
    sign = 1 if ascending else -1
    return [
        perm
        for perm in itertools.permutations(range(scores.size))
        if all(sign * (scores[perm[k + 1]] - scores[perm[k]]) >= 0 for k in range(scores.size - 1))
    ]


def test_prr_with_ties_matches_brute_force() -> None:
    labels = np.array([1, 0, 0, 1, 0, 1])
    scores = np.array([1.0, 1.0, 2.0, 2.0, 2.0, 0.5])
    n, n_pos = labels.size, labels.sum()
    area_random = sum(n_pos * (n - k) / n for k in range(n + 1))
    area_oracle = sum(max(n_pos - k, 0) for k in range(n + 1))
    prrs = []
    for perm in _tie_orders(scores, False):
        left = n_pos - np.r_[0, np.cumsum(labels[list(perm)])]
        prrs.append((area_random - left.sum()) / (area_random - area_oracle))
    assert prr(labels, scores) == pytest.approx(np.mean(prrs), abs=1e-12)


def test_evaluate_scores(tied_data: tuple[np.ndarray, np.ndarray]) -> None:
    labels, scores = tied_data
    result = evaluate_scores(labels, scores, n_boot=300, seed=5)
    assert isinstance(result, DetectionResult)
    assert result.n == labels.size
    assert result.n_pos == int(labels.sum())
    assert result.base_rate == pytest.approx(labels.mean())
    assert result.auroc.value == pytest.approx(roc_auc_score(labels, scores))
    assert result.auprc.value == pytest.approx(average_precision_score(labels, scores))
    assert result.auroc == bootstrap_ci(auroc, labels, scores, n_boot=300, seed=5)
    assert result.auprc == bootstrap_ci(auprc, labels, scores, n_boot=300, seed=5)
    expected_prr = ScoreWithCI(
        2 * result.auroc.value - 1, 2 * result.auroc.low - 1, 2 * result.auroc.high - 1
    )
    for field in ("value", "low", "high"):
        assert getattr(result.prr, field) == pytest.approx(getattr(expected_prr, field))
    as_dict = json.loads(json.dumps(result.to_dict()))
    assert as_dict["auroc"]["value"] == pytest.approx(result.auroc.value)
    assert as_dict["n_pos"] == result.n_pos


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([0, 1, 1], [0.1, 0.2], "differ in length"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "scores contain NaN"),
        ([1, 1, 1], [0.1, 0.2, 0.3], "single class"),
        ([0, 2, 1], [0.1, 0.2, 0.3], "binary"),
        ([0, np.nan, 1], [0.1, 0.2, 0.3], "labels contain NaN"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
        ([], [], "empty"),
    ],
)
@pytest.mark.parametrize("metric", [auroc, auprc, prr])
def test_bad_input(labels, scores, message, metric) -> None:
    with pytest.raises(ValueError, match=message):
        metric(np.asarray(labels), np.asarray(scores))
    with pytest.raises(ValueError, match=message):
        evaluate_scores(np.asarray(labels), np.asarray(scores), n_boot=10)


def test_bad_bootstrap_arguments() -> None:
    labels, scores = np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(auroc, labels, scores, n_boot=1)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(auroc, labels, scores, level=1.5)
    with pytest.raises(ValueError, match="scores contain NaN"):
        auroc(labels, np.array([0.1, np.nan, 0.3, 0.4]))


def test_evaluate_seeds_averages_each_metric_over_seeds() -> None:
    from semdistill.metrics import evaluate_seeds

    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, size=300)
    scores = np.stack([y + rng.normal(scale=s, size=300) for s in (0.5, 1.0, 2.0)])
    result = evaluate_seeds(y, scores, n_boot=200, seed=1)
    per_seed = [roc_auc_score(y, row) for row in scores]
    np.testing.assert_allclose(result.seed_auroc, per_seed, rtol=1e-12)
    assert result.auroc.value == pytest.approx(np.mean(per_seed))
    assert result.auprc.value == pytest.approx(
        np.mean([average_precision_score(y, r) for r in scores])
    )
    assert result.auroc.low < result.auroc.value < result.auroc.high
    single = evaluate_seeds(y, scores[:1], n_boot=200, seed=1)
    assert single == evaluate_scores(y, scores[0], n_boot=200, seed=1) and single.seed_auroc == ()
    with pytest.raises(ValueError, match="seeds, n"):
        evaluate_seeds(y, scores[0], n_boot=10)


def test_auroc_or_none_is_none_for_one_class_and_sklearns_auroc_otherwise() -> None:
    from sklearn.metrics import roc_auc_score

    from semdistill.metrics import auroc_or_none

    scores = np.array([0.1, 0.4, 0.35, 0.8])
    assert auroc_or_none(np.zeros(4), scores) is None
    assert auroc_or_none(np.ones(4), scores) is None
    labels = np.array([0, 0, 1, 1])
    assert auroc_or_none(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
