"""Rényi-2 entropy of Gaussian mixtures against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.special import logsumexp
from scipy.stats import multivariate_normal, norm
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from semdistill.student import renyi2_entropy


def mixture(weights, loc, scale) -> MixtureSameFamily:
    weights, loc, scale = (
        torch.as_tensor(np.asarray(a), dtype=torch.float64) for a in (weights, loc, scale)
    )
    return MixtureSameFamily(Categorical(probs=weights), Independent(Normal(loc, scale), 1))


def reference_renyi2(weights, loc, scale) -> float:
    """Double loop over component pairs with scipy's multivariate normal log-density."""
    terms = []
    for i in range(len(weights)):
        for j in range(len(weights)):
            cov = np.diag(scale[i] ** 2 + scale[j] ** 2)
            terms.append(
                math.log(weights[i])
                + math.log(weights[j])
                + multivariate_normal(mean=loc[j], cov=cov).logpdf(loc[i])
            )
    return -float(logsumexp(terms))


def random_mixture(rng: np.random.Generator, k: int, d: int, spread: float = 1.0):
    weights = rng.dirichlet(np.ones(k))
    loc = rng.normal(scale=spread, size=(k, d))
    scale = np.exp(rng.normal(scale=0.5, size=(k, d)))
    return weights, loc, scale


def test_single_gaussian_matches_closed_form():
    rng = np.random.default_rng(0)
    d = 7
    scale = np.exp(rng.normal(size=(1, d)))
    expected = d / 2 * math.log(4 * math.pi) + np.log(scale).sum()
    got = renyi2_entropy(mixture([1.0], rng.normal(size=(1, d)), scale)).item()
    assert got == pytest.approx(expected, rel=1e-12)


def test_matches_monte_carlo_estimate():
    """-log E_p[p(x)] estimated from 200k draws; tolerance = 5 standard errors (delta method)."""
    rng = np.random.default_rng(1)
    weights, loc, scale = random_mixture(rng, k=4, d=3, spread=1.5)
    dist = mixture(weights, loc, scale)
    torch.manual_seed(0)
    density = dist.log_prob(dist.sample((200_000,))).exp().numpy()
    estimate = -math.log(density.mean())
    standard_error = density.std(ddof=1) / math.sqrt(len(density)) / density.mean()
    assert renyi2_entropy(dist).item() == pytest.approx(estimate, abs=5 * standard_error)
    assert standard_error < 0.01  # the check is informative


def test_matches_numerical_integration_1d():
    weights, loc, scale = [0.2, 0.5, 0.3], [[-2.0], [0.0], [3.0]], [[0.5], [1.0], [0.2]]

    def density(x: float) -> float:
        return sum(w * norm(m[0], s[0]).pdf(x) for w, m, s in zip(weights, loc, scale, strict=True))

    squared, _ = integrate.quad(lambda x: density(x) ** 2, -20, 20, points=[-2, 0, 3], limit=200)
    assert renyi2_entropy(mixture(weights, loc, scale)).item() == pytest.approx(
        -math.log(squared), rel=1e-8
    )


def test_matches_numerical_integration_2d():
    weights = [0.6, 0.4]
    loc = [[0.0, 0.0], [1.5, -1.0]]
    scale = [[1.0, 0.5], [0.4, 0.8]]
    components = [
        multivariate_normal(mean=m, cov=np.diag(np.square(s)))
        for m, s in zip(loc, scale, strict=True)
    ]

    def density_squared(y: float, x: float) -> float:
        return sum(w * c.pdf([x, y]) for w, c in zip(weights, components, strict=True)) ** 2

    squared, _ = integrate.dblquad(density_squared, -8, 8, -8, 8, epsabs=1e-11)
    assert renyi2_entropy(mixture(weights, loc, scale)).item() == pytest.approx(
        -math.log(squared), rel=1e-6
    )


def test_invariant_to_permuting_components():
    rng = np.random.default_rng(2)
    weights, loc, scale = random_mixture(rng, k=6, d=5)
    perm = rng.permutation(6)
    a = renyi2_entropy(mixture(weights, loc, scale)).item()
    b = renyi2_entropy(mixture(weights[perm], loc[perm], scale[perm])).item()
    assert a == pytest.approx(b, rel=1e-12)


def test_batched_matches_individual():
    rng = np.random.default_rng(3)
    parts = [random_mixture(rng, k=3, d=4) for _ in range(5)]
    batched = renyi2_entropy(mixture(*(np.stack(p) for p in zip(*parts, strict=True))))
    assert batched.shape == (5,)
    for value, part in zip(batched, parts, strict=True):
        assert value.item() == pytest.approx(reference_renyi2(*part), rel=1e-10)


@pytest.mark.parametrize("d", [1, 16, 128])
@pytest.mark.parametrize("log_scale", [-12.0, 0.0, 12.0])
def test_stable_in_high_dimension_and_extreme_scales(d, log_scale):
    """Identical components collapse to one Gaussian, whose entropy is known exactly."""
    scale = np.full((3, d), math.exp(log_scale))
    loc = np.zeros((3, d))
    got = renyi2_entropy(mixture([0.2, 0.3, 0.5], loc, scale)).item()
    expected = d / 2 * math.log(4 * math.pi) + d * log_scale
    assert math.isfinite(got)
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-8)


def test_float32_far_apart_components_stay_finite():
    """Components 1e4 scales apart: the linear-space sum would underflow the cross terms."""
    loc = torch.tensor([[0.0] * 64, [1e4] * 64])
    scale = torch.full((2, 64), 1e-3)
    dist = MixtureSameFamily(Categorical(logits=torch.zeros(2)), Independent(Normal(loc, scale), 1))
    got = renyi2_entropy(dist).item()
    # Two disjoint equal-weight components: ∫p² = 2 · (1/2)² · ∫N² = ∫N² / 2.
    expected = 32 * math.log(4 * math.pi) + 64 * math.log(1e-3) + math.log(2)
    assert got == pytest.approx(expected, rel=1e-5)


def test_rejects_other_distributions():
    with pytest.raises(TypeError, match="MixtureSameFamily"):
        renyi2_entropy(Normal(torch.zeros(2), torch.ones(2)))


mixture_params = st.tuples(
    st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**32 - 1), st.floats(0.1, 5.0)
)


@settings(max_examples=60, deadline=None)
@given(mixture_params)
def test_property_matches_scipy_reference(params):
    k, d, seed, spread = params
    parts = random_mixture(np.random.default_rng(seed), k, d, spread)
    assert renyi2_entropy(mixture(*parts)).item() == pytest.approx(
        reference_renyi2(*parts), rel=1e-9, abs=1e-9
    )


@settings(max_examples=60, deadline=None)
@given(mixture_params, st.floats(0.01, 100.0))
def test_property_scaling_adds_d_log_a(params, a):
    """H2 of the law of a·Y is H2(Y) + d·log a."""
    k, d, seed, spread = params
    weights, loc, scale = random_mixture(np.random.default_rng(seed), k, d, spread)
    base = renyi2_entropy(mixture(weights, loc, scale)).item()
    scaled = renyi2_entropy(mixture(weights, a * loc, a * scale)).item()
    assert scaled == pytest.approx(base + d * math.log(a), rel=1e-9, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(mixture_params)
def test_property_bounded_below_by_narrowest_component(params):
    """∫p² <= max_i ∫N_i² (Cauchy-Schwarz), so H2 >= min_i H2(component i)."""
    k, d, seed, spread = params
    weights, loc, scale = random_mixture(np.random.default_rng(seed), k, d, spread)
    component_h2 = d / 2 * math.log(4 * math.pi) + np.log(scale).sum(axis=1)
    assert renyi2_entropy(mixture(weights, loc, scale)).item() >= component_h2.min() - 1e-9
