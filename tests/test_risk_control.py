"""Risk-controlled abstention: the p-value by brute force, the guarantee by Monte Carlo."""

from __future__ import annotations

import json
from collections.abc import Callable
from fractions import Fraction
from math import comb
from pathlib import Path

import numpy as np
import pytest

from semdistill.scoring.policy import Policy
from semdistill.scoring.risk_control import (
    binomial_p_value,
    control_selective_risk,
    save_report,
    threshold_grid,
)


def _exact_cdf(errors: int, answered: int, target: Fraction) -> Fraction:
    return sum(
        (comb(answered, k) * target**k * (1 - target) ** (answered - k) for k in range(errors + 1)),
        Fraction(0),
    )


@pytest.mark.parametrize(("errors", "answered"), [(0, 1), (0, 30), (3, 40), (10, 50), (7, 7)])
def test_binomial_p_value_is_the_exact_binomial_tail(errors: int, answered: int) -> None:
    exact = _exact_cdf(errors, answered, Fraction(1, 5))
    assert binomial_p_value(errors, answered, 0.2) == pytest.approx(float(exact), rel=1e-9)
    assert binomial_p_value(0, 0, 0.2) == 1.0


def test_a_hand_checked_selection() -> None:
    # Six questions: the three lowest-risk answers are right, the others wrong.
    risk = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    incorrect = np.array([0, 0, 0, 1, 1, 1])
    grid = np.array([0.15, 0.35, 0.45, np.inf])
    # p-values: 0.15: 1 answered, 0 errors, p = 0.5; 0.35: 3 answered, 0 errors, p = 1/8;
    # 0.45: 4 answered, 1 error, p = P(Bin(4, 1/2) <= 1) = 5/16; inf: 6 answered, 3 errors,
    # p = 42/64.
    p_values = [0.5, 0.125, 5 / 16, 42 / 64]

    def certified(delta: float, starts: int) -> list[bool]:
        control = control_selective_risk(
            risk, incorrect, grid, target_error=0.5, delta=delta, starts=starts
        )
        assert [p.p_value for p in control.curve] == pytest.approx(p_values)
        return [p.certified for p in control.curve]

    # One start, in the middle of the grid (index 2), at level 0.5: 0.45 passes, inf fails.
    assert certified(0.5, 1) == [False, False, True, False]
    # Two starts (indices 1 and 3), each at level 0.4: 0.35 and 0.45 pass, then inf fails.
    assert certified(0.8, 2) == [False, True, True, False]
    # At level 0.25 the sequence from index 1 stops at its first failure (0.45).
    assert certified(0.5, 2) == [False, True, False, False]
    # Four starts at level 0.2: only 0.35 passes.
    assert certified(0.8, 4) == [False, True, False, False]
    control = control_selective_risk(risk, incorrect, grid, target_error=0.5, delta=0.8, starts=2)
    assert control.threshold == 0.45
    assert control.coverage == pytest.approx(4 / 6) and control.selective_error == 0.25


GRID = np.linspace(0.05, 1.0, 20)  # fixed before any draw
TARGET, DELTA, TRIALS, N = 0.2, 0.1, 1000, 300


def _draws(error_rate: Callable[[np.ndarray], np.ndarray], seed: int) -> list[tuple[float, float]]:
    """Per calibration draw: the certified threshold and the naive empirical choice.

    Risk is uniform on [0, 1] and P(wrong | risk = s) = error_rate(s).
    """
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(TRIALS):
        risk = rng.random(N)
        incorrect = rng.random(N) < error_rate(risk)
        control = control_selective_risk(risk, incorrect, GRID, target_error=TARGET, delta=DELTA)
        within = [t for t in GRID if (risk <= t).any() and incorrect[risk <= t].mean() <= TARGET]
        draws.append((control.threshold, max(within, default=-np.inf)))
    return draws


def test_the_guarantee_holds_by_monte_carlo_in_the_worst_case() -> None:
    # Every threshold's error among answered is 0.205 > target: any certified threshold
    # violates the target, so the procedure may certify one in at most delta of the draws.
    chosen, naive = np.array(_draws(lambda s: np.full_like(s, 0.205), seed=0)).T
    slack = 3 * np.sqrt(DELTA * (1 - DELTA) / TRIALS)
    assert np.mean(np.isfinite(chosen)) <= DELTA + slack
    # The check has teeth: the largest threshold whose empirical error is within target
    # violates it in most draws.
    assert np.mean(np.isfinite(naive)) > 0.5


def test_the_guarantee_holds_by_monte_carlo_and_is_not_vacuous() -> None:
    # P(wrong | s) = s: the error among answered at t <= 1 is t / 2, so t = 0.4 is the best.
    chosen, naive = np.array(_draws(lambda s: s, seed=1)).T

    def true_error(t: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(t), np.minimum(t, 1.0) / 2, 0.0)

    slack = 3 * np.sqrt(DELTA * (1 - DELTA) / TRIALS)
    assert np.mean(true_error(chosen) > TARGET) <= DELTA + slack
    assert np.mean(true_error(naive) > TARGET) > 0.2
    assert np.mean(np.isfinite(chosen)) > 0.5  # it certifies a useful threshold often
    assert np.median(chosen[np.isfinite(chosen)]) >= 0.15


def test_nothing_certified_means_abstaining_on_everything(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    risk = rng.random(40)
    incorrect = rng.random(40) < 0.8  # a model wrong 80% of the time cannot reach 5%
    control = control_selective_risk(risk, incorrect, threshold_grid(rng.random(50)),
                                     target_error=0.05)  # fmt: skip
    assert not control.certified
    assert "abstaining on every question" in control.describe()
    policy = Policy(risk_control=control)
    assert policy.verdict(float(risk.min()), None) == "abstained"
    assert policy.describe()["rule"].startswith("always")
    written = save_report(control, tmp_path / "rc.json")
    assert json.loads(written[0].read_text())["threshold"] is None
    assert written[1].stat().st_size > 0


def test_threshold_grid_and_report(tmp_path: Path) -> None:
    reference = np.array([3.0, 1.0, 2.0, 2.0])
    grid = threshold_grid(reference, size=4)
    assert grid[-1] == np.inf and np.all(np.diff(grid) > 0)
    assert grid[:-1].max() == 3.0 and set(grid[:-1]) <= set(
        np.quantile(reference, [0.25, 0.5, 0.75, 1])
    )
    rng = np.random.default_rng(2)
    risk = rng.random(500)
    incorrect = rng.random(500) < risk / 2
    control = control_selective_risk(risk, incorrect, threshold_grid(rng.random(200)),
                                     target_error=0.2)  # fmt: skip
    assert control.certified and 0.5 < control.coverage < 1
    assert control.selective_error <= 0.2
    data = json.loads(save_report(control, tmp_path / "sub" / "rc.json")[0].read_text())
    assert data["threshold"] == pytest.approx(control.threshold)
    assert data["curve"][-1]["threshold"] is None and data["curve"][-1]["coverage"] == 1.0
    assert data["convention"].startswith("answer when risk_entropy <= threshold")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_error": 0.0}, "target_error"),
        ({"target_error": 0.2, "delta": 1.0}, "delta"),
        ({"target_error": 0.2, "starts": 0}, "starts"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        control_selective_risk(np.array([0.1, 0.2]), np.array([0, 1]), np.array([0.5]), **kwargs)
    with pytest.raises(ValueError, match="incorrect"):
        control_selective_risk(np.array([0.1, 0.2]), np.array([0, 2]), np.array([0.5]),
                               target_error=0.2)  # fmt: skip


def test_policy_rules_keep_one_sign_convention() -> None:
    assert Policy(abstain_above_entropy=1.0).verdict(1.5, None) == "abstained"
    assert Policy(abstain_above_entropy=1.0).verdict(0.5, None) == "answered"
    assert Policy(abstain_above=0.5, flag_only=True).verdict(0.0, 0.7) == "flagged"
    assert Policy().verdict(100.0, 1.0) == "answered"
    with pytest.raises(ValueError, match="one abstention rule"):
        Policy(abstain_above=0.5, abstain_above_entropy=1.0)
    with pytest.raises(ValueError, match="flag_only needs"):
        Policy(flag_only=True)
