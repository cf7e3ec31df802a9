"""Familiarity: a label-free measure of how far a prompt lies from a scorer's training prompts,
its files, the policy rule on it, and the service fields that carry it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from semdistill.metrics import auroc
from semdistill.scoring.familiarity import JSON_FILE, TENSORS_FILE, Familiarity
from semdistill.scoring.policy import Policy

W = 24


def gaussian(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Correlated Gaussian inputs (mean 3, scale about 2); ``shift`` moves 6 of the features by
    ``2 * shift``."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(size=(W, W)) / np.sqrt(W)
    X = 3.0 + 2.0 * rng.normal(size=(n, W)) @ (np.eye(W) + 0.5 * mix)
    X[:, :6] += shift * 2.0
    return X


@pytest.fixture(scope="module")
def fitted() -> Familiarity:
    train = gaussian(600, seed=0)
    return Familiarity.fit(train, gaussian(150, seed=1), train.mean(0), train.std(0), k=10)


def test_in_distribution_prompts_get_uniform_familiarity(fitted: Familiarity) -> None:
    """Prompts drawn like the training ones: about 5% fall below 0.05 and the mean is about
    one half (a conformal p-value); shifted prompts fall below 0.05 almost always."""
    same = fitted.score(gaussian(2000, seed=2))
    assert 0.02 < np.mean(same < 0.05) < 0.08
    assert abs(same.mean() - 0.5) < 0.05
    shifted = fitted.score(gaussian(500, seed=3, shift=3.0))
    assert np.mean(shifted < 0.05) > 0.9
    labels = np.r_[np.zeros(len(same)), np.ones(len(shifted))]
    assert auroc(labels, -np.r_[same, shifted]) > 0.95


def test_distance_is_in_training_standard_deviations(fitted: Familiarity) -> None:
    """A prompt at a training prompt's place plus 3 SDs on every feature lies about 3 away
    (its nearest neighbours are a little farther than the point itself)."""
    train = gaussian(600, seed=0)
    far = train[:5] + 3.0 * train.std(0)
    assert np.all((fitted.distance(far) > 2.5) & (fitted.distance(far) < 4.0))
    scores = fitted.score_distance(np.array([0.0, 1e9]))
    assert scores[0] == 1.0 and scores[1] == pytest.approx(1 / 151)


def test_save_and_load_round_trip_and_refuse_damage(fitted: Familiarity, tmp_path: Path) -> None:
    fitted.save(tmp_path)
    again = Familiarity.load(tmp_path)
    probe = gaussian(50, seed=4, shift=0.5)
    np.testing.assert_allclose(again.score(probe), fitted.score(probe))
    assert json.loads((tmp_path / JSON_FILE).read_text())["k"] == 10
    assert Familiarity.load(tmp_path / "nowhere") is None
    (tmp_path / TENSORS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="unreadable familiarity"):
        Familiarity.load(tmp_path)
    with pytest.raises(ValueError, match="width 5, familiarity expects 24"):
        fitted.score(np.zeros((2, 5)))


def test_extended_familiarity_knows_the_new_prompts(fitted: Familiarity) -> None:
    """Adding a new region's prompts (as fitting a scorer further does) makes it familiar."""
    new = gaussian(300, seed=5, shift=3.0)
    before = fitted.score(gaussian(200, seed=6, shift=3.0))
    after = fitted.extended(new[:250], new[250:]).score(gaussian(200, seed=6, shift=3.0))
    assert np.mean(before < 0.05) > 0.9 and np.mean(after < 0.05) < 0.2


def test_bad_settings_are_one_line_errors() -> None:
    X = gaussian(20, seed=0)
    with pytest.raises(ValueError, match=r"k must be in 1\.\.20"):
        Familiarity(X, X, X.mean(0), X.std(0), k=30)
    with pytest.raises(ValueError, match="do not match"):
        Familiarity(X, X[:, :3], X.mean(0), X.std(0))


@pytest.mark.parametrize(
    ("policy", "familiarity", "entropy", "verdict"),
    [
        (Policy(unfamiliar_below=0.05), 0.5, 9.0, "answered"),
        (Policy(unfamiliar_below=0.05), 0.01, 9.0, "flagged"),
        (Policy(unfamiliar_below=0.05, unfamiliar_action="abstain"), 0.01, 0.0, "abstained"),
        (Policy(abstain_above_entropy=1.0, unfamiliar_below=0.05), 0.01, 0.0, "flagged"),
        (Policy(abstain_above_entropy=1.0, unfamiliar_below=0.05), 0.01, 2.0, "abstained"),
        (
            Policy(unfamiliar_below=0.05, unfamiliar_action="abstain", flag_only=True),
            0.01,
            0.0,
            "flagged",
        ),
    ],
)
def test_policy_rule_on_familiarity(
    policy: Policy, familiarity: float, entropy: float, verdict: str
) -> None:
    assert policy.verdict(entropy, None, familiarity) == verdict


def test_policy_refuses_bad_familiarity_rules() -> None:
    with pytest.raises(ValueError, match=r"familiarity in \(0, 1\)"):
        Policy(unfamiliar_below=1.5)
    with pytest.raises(ValueError, match="'flag' or 'abstain'"):
        Policy(unfamiliar_below=0.1, unfamiliar_action="ignore")
    with pytest.raises(ValueError, match="needs the prompt's familiarity"):
        Policy(unfamiliar_below=0.1).verdict(0.0, None)
    described = Policy(unfamiliar_below=0.1).describe()
    assert described["unfamiliar_rule"] == "familiarity < 0.1"
    assert described["unfamiliar_action"] == "flag"


@pytest.mark.slow
def test_scorer_risk_endpoint_and_chat_carry_familiarity(tmp_path: Path) -> None:
    """On a real SmolLM2 scorer: `Scorer.familiarity`, `/v1/risk` and the chat endpoint's
    `semdistill` object and header agree, and the policy flags the unfamiliar prompt."""
    import httpx

    from semdistill import Scorer
    from semdistill.serve import ServiceLimits, create_app
    from serving import serving
    from tiny_ssd import QUESTIONS, build_ssd_dir

    scorer = Scorer.load(build_ssd_dir(tmp_path).directory)
    prompts = [QUESTIONS[0], "def quicksort(xs): return sorted(xs)  # explain this Python code"]
    familiarity = scorer.familiarity(prompts)
    assert familiarity.shape == (2,) and np.all((familiarity > 0) & (familiarity <= 1))
    threshold = float(familiarity.min()) + 1e-6  # the less familiar prompt falls below it
    policy = Policy(unfamiliar_below=threshold)
    limits = ServiceLimits(max_new_tokens=4, batch_window_ms=5)
    with serving(create_app(scorer, limits, policy=policy)) as url:
        risk = httpx.post(f"{url}/v1/risk", json={"prompts": prompts}, timeout=120).json()
        np.testing.assert_allclose(risk["familiarity"], familiarity, rtol=1e-5)
        low = prompts[int(np.argmin(familiarity))]
        body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": low}]}
        reply = httpx.post(f"{url}/v1/chat/completions", json=body | {"max_tokens": 2}, timeout=120)
    ssd = reply.json()["semdistill"]
    assert ssd["familiarity"] == pytest.approx(familiarity.min(), rel=1e-5)
    assert float(reply.headers["x-semdistill-familiarity"]) == pytest.approx(ssd["familiarity"])
    assert ssd["verdict"] == "flagged" and ssd["policy"]["unfamiliar_action"] == "flag"
