"""Tests for teacher dispersion, SEP/PCP probes, SE binarisation and layer selection."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from semdistill.semantics.dispersion import teacher_dispersion
from semdistill.training.layers import LayerSelection, select_layer
from semdistill.training.probes import (
    CorrectnessProbe,
    SemanticEntropyProbe,
    binarize_threshold,
)


def test_teacher_dispersion_matches_np_cov() -> None:
    rng = np.random.default_rng(0)
    Y = rng.normal(size=(7, 10, 4)) * rng.uniform(0.1, 3.0, size=(7, 1, 1))
    expected = [np.sqrt(np.trace(np.cov(Y[i], rowvar=False, bias=True))) for i in range(7)]
    np.testing.assert_allclose(teacher_dispersion(Y), expected, rtol=1e-12)
    Y[3] = Y[3, :1]  # all samples of prompt 3 identical
    assert teacher_dispersion(Y)[3] == 0.0
    assert teacher_dispersion(Y.astype(np.float32)).dtype == np.float64


@pytest.mark.parametrize(
    ("Y", "message"),
    [
        (np.zeros((3, 4)), r"shape \(n, N, d\)"),
        (np.zeros((3, 1, 4)), "at least 2 samples"),
        (np.zeros((0, 3, 4)), "empty"),
        (np.full((2, 3, 4), np.nan), "NaN"),
    ],
)
def test_teacher_dispersion_bad_input(Y: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        teacher_dispersion(Y)


def _sse(values: np.ndarray, high: np.ndarray) -> float:
    return sum(float(np.sum((g - g.mean()) ** 2)) for g in (values[high], values[~high]) if g.size)


def test_binarize_threshold_bimodal_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    se = rng.permutation(np.r_[rng.normal(0.3, 0.08, 70), rng.normal(1.6, 0.15, 30)])
    threshold = binarize_threshold(se)
    # Brute force over every contiguous split of the sorted values.
    ordered = np.sort(se)
    best_cut = min(range(1, se.size), key=lambda k: _sse(ordered, np.arange(se.size) >= k))
    brute_high = se >= ordered[best_cut]
    np.testing.assert_array_equal(se >= threshold, brute_high)
    assert brute_high.sum() == 30
    assert _sse(se, se >= threshold) == pytest.approx(_sse(se, brute_high))
    # Same as a per-candidate loop over the same 100 candidates (Kossen et al.'s procedure).
    candidates = np.linspace(se.min(), se.max(), 100)
    loop = candidates[np.argmin([_sse(se, se >= t) for t in candidates])]
    assert threshold == loop


@pytest.mark.parametrize(
    ("se", "kwargs", "message"),
    [
        (np.ones(5), {}, "constant"),
        (np.array([0.1, np.nan, 0.3]), {}, "NaN"),
        (np.array([]), {}, "non-empty 1-D"),
        (np.array([0.1, 0.5]), {"n_candidates": 1}, "n_candidates"),
    ],
)
def test_binarize_threshold_bad_input(se: np.ndarray, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        binarize_threshold(se, **kwargs)


def _toy_problem(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    H = rng.normal(size=(n, 12)) * rng.uniform(0.5, 20.0, size=12)  # unequal scales
    margin = H[:, 0] / H[:, 0].std() - 0.7 * H[:, 1] / H[:, 1].std()
    return H, margin


def test_correctness_probe_learns_separable_problem() -> None:
    H, margin = _toy_problem(300, seed=2)
    incorrect = (margin > 0).astype(int)
    probe = CorrectnessProbe(cv=3).fit(H[:200], incorrect[:200])
    risk = probe.predict_risk(H[200:])
    assert risk.shape == (100,)
    assert np.all((risk >= 0) & (risk <= 1))
    assert roc_auc_score(incorrect[200:], risk) > 0.97
    assert probe.C_ in probe.Cs


def test_semantic_entropy_probe_binarises_and_learns() -> None:
    H, margin = _toy_problem(300, seed=3)
    rng = np.random.default_rng(4)
    se = np.where(margin > 0, 1.5, 0.2) + rng.normal(0.0, 0.05, size=300)
    probe = SemanticEntropyProbe(cv=3).fit(H[:200], se[:200])
    assert probe.threshold_ == binarize_threshold(se[:200])
    np.testing.assert_array_equal(se[:200] >= probe.threshold_, margin[:200] > 0)
    risk = probe.predict_risk(H[200:])
    assert roc_auc_score(margin[200:] > 0, risk) > 0.97


def test_probe_bad_input() -> None:
    H, margin = _toy_problem(40, seed=5)
    y = (margin > 0).astype(int)
    with pytest.raises(ValueError, match="only one class"):
        CorrectnessProbe().fit(H, np.zeros(40))
    with pytest.raises(ValueError, match="at least 2 examples of each class"):
        CorrectnessProbe().fit(H, np.r_[1, np.zeros(39)])
    with pytest.raises(ValueError, match=r"incorrect must have shape \(40,\)"):
        CorrectnessProbe().fit(H, y[:30])
    with pytest.raises(ValueError, match="incorrect must be binary"):
        CorrectnessProbe().fit(H, y * 2)
    bad = H.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="H contains NaN"):
        CorrectnessProbe().fit(bad, y)
    with pytest.raises(ValueError, match="H must have rank 2"):
        CorrectnessProbe().fit(H[:, 0], y)
    with pytest.raises(ValueError, match="not fitted"):
        CorrectnessProbe().predict_risk(H)
    with pytest.raises(ValueError, match="se is constant"):
        SemanticEntropyProbe().fit(H, np.ones(40))
    with pytest.raises(ValueError, match=r"se must have shape \(40,\)"):
        SemanticEntropyProbe().fit(H, np.ones(10))
    with pytest.raises(ValueError, match="Cs must be"):
        CorrectnessProbe(Cs=(0.0,)).fit(H, y)
    with pytest.raises(ValueError, match="cv must be"):
        CorrectnessProbe(cv=1).fit(H, y)
    probe = CorrectnessProbe(cv=3).fit(H, y)
    with pytest.raises(ValueError, match="X has 5 features, but CorrectnessProbe is expecting 12"):
        probe.predict_risk(H[:, :5])


def _layered_states(
    n: int, rng: np.random.Generator, signal_layer: int, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    n_layers, hidden = 6, 40
    H = rng.normal(size=(n, n_layers, hidden))
    z = H[:, signal_layer] @ w
    labels = (z / z.std() + 0.3 * rng.normal(size=n) > 0).astype(int)
    return H.astype(np.float16), labels


def test_select_layer_finds_signal_layer() -> None:
    rng = np.random.default_rng(6)
    w = rng.normal(size=40)
    H_train, y_train = _layered_states(300, rng, signal_layer=3, w=w)
    H_val, y_val = _layered_states(150, rng, signal_layer=3, w=w)
    result = select_layer(H_train, y_train, H_val, y_val)
    assert isinstance(result, LayerSelection)
    assert result.best_layer == 3
    np.testing.assert_array_equal(result.layers, np.arange(6))
    assert result.val_auroc[3] > 0.9
    assert np.all(np.delete(result.val_auroc, 3) < 0.7)
    assert result.val_accuracy[3] > 0.8
    assert json.loads(json.dumps(result.to_dict()))["best_layer"] == 3


def test_select_layer_ties_go_deeper() -> None:
    rng = np.random.default_rng(7)
    w = rng.normal(size=40)
    H_train, y_train = _layered_states(200, rng, signal_layer=0, w=w)
    H_val, y_val = _layered_states(100, rng, signal_layer=0, w=w)
    same_train = np.repeat(H_train[:, :1], 4, axis=1)
    same_val = np.repeat(H_val[:, :1], 4, axis=1)
    result = select_layer(same_train, y_train, same_val, y_val)
    assert np.all(result.val_auroc == result.val_auroc[0])
    assert result.best_layer == 3


def test_select_layer_bad_input() -> None:
    rng = np.random.default_rng(8)
    H = rng.normal(size=(20, 3, 5))
    y = np.r_[np.zeros(10, dtype=int), np.ones(10, dtype=int)]
    with pytest.raises(ValueError, match=r"H_train must have shape \(n, L, h\)"):
        select_layer(H[:, 0], y, H, y)
    with pytest.raises(ValueError, match="differ in"):
        select_layer(H, y, H[:, :2], y)
    with pytest.raises(ValueError, match="high_se_val contains a single class"):
        select_layer(H, y, H, np.ones(20))
    with pytest.raises(ValueError, match=r"high_se_train must have shape \(20,\)"):
        select_layer(H, y[:5], H, y)
    with pytest.raises(ValueError, match="floating-point"):
        select_layer(H.astype(int), y, H, y)
    with pytest.raises(ValueError, match="C must be"):
        select_layer(H, y, H, y, C=0.0)
    bad = H.copy()
    bad[0, 2, 0] = np.inf
    with pytest.raises(ValueError, match="H_val contains NaN or infinite values at layer 2"):
        select_layer(H, y, bad, y)


def test_probes_round_trip_through_safetensors(tmp_path) -> None:
    from semdistill.training.probes import load_probe

    H, margin = _toy_problem(200, seed=6)
    se = np.where(margin > 0, 1.0, 0.1) + np.random.default_rng(1).normal(0, 0.05, 200)
    for probe in (
        CorrectnessProbe(cv=3).fit(H, (margin > 0).astype(int)),
        SemanticEntropyProbe(cv=3).fit(H, se),
    ):
        path = tmp_path / f"{type(probe).__name__}.safetensors"
        probe.save(path)
        loaded = load_probe(path)
        assert type(loaded) is type(probe) and loaded.C_ == probe.C_
        assert getattr(loaded, "threshold_", None) == getattr(probe, "threshold_", None)
        np.testing.assert_allclose(loaded.predict_risk(H), probe.predict_risk(H), rtol=1e-12)
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"bad\.safetensors"):
        load_probe(tmp_path / "bad.safetensors")


def test_projected_dispersion_is_td_of_the_projection_and_exactly_zero_for_repeats() -> None:
    from semdistill.semantics.dispersion import projected_dispersion

    rng = np.random.default_rng(3)
    E = rng.normal(size=(30, 5, 12)).astype(np.float32)
    E[:10] = E[:10, :1]  # ten prompts whose five answers embed identically
    components = np.linalg.qr(rng.normal(size=(12, 4)))[0].T
    mean = rng.normal(size=12)
    expected = teacher_dispersion((E - mean) @ components.T)
    np.testing.assert_allclose(projected_dispersion(E, components), expected, atol=1e-12)
    assert np.all(projected_dispersion(E, components)[:10] == 0.0)
    assert np.all(projected_dispersion(E[3:7], components)[:7] == 0.0)
