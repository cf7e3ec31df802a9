"""Familiarity: a label-free measure of how far a prompt lies from a scorer's training prompts,
its files, the policy rule on it, and the service fields that carry it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from semdistill.evaluate.results import RunResults
from semdistill.evaluate.tables import familiarity_ood_table
from semdistill.evaluate.transfer import ShiftDiagnostics, TransferResult
from semdistill.metrics import auroc
from semdistill.scoring.familiarity import (
    JSON_FILE,
    TENSORS_FILE,
    Familiarity,
    familiarity_layers,
)
from semdistill.scoring.policy import Policy
from semdistill.scoring.scorer import Scorer
from semdistill.student.inputs import LayerInputs

W = 24
N_STATES = 5  # embedding output + 4 layers: the familiarity reads layers 1, 2, 3 and 4


def gaussian(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """States ``(n, N_STATES, W)`` of correlated Gaussian features (mean 3, scale about 2) at
    every layer; ``shift`` moves 6 of the features of every layer by ``-2 * shift``, turning
    the states' direction (the familiarity reads directions, not scale)."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(size=(W, W)) / np.sqrt(W)
    X = 3.0 + 2.0 * rng.normal(size=(n, N_STATES, W)) @ (np.eye(W) + 0.5 * mix)
    X[:, :, :6] -= shift * 2.0
    return X


@pytest.fixture(scope="module")
def fitted() -> Familiarity:
    return Familiarity.fit(gaussian(600, seed=0), gaussian(150, seed=1), k=10)


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


def test_calibration_holds_validation_and_left_out_training_prompts(
    fitted: Familiarity,
) -> None:
    """150 validation prompts and 600 training prompts, each left out of its own
    neighbours: the familiarity's floor is 1 / 751 (it was 1 / 151 on validation alone)."""
    assert len(fitted.calibration) == 750
    scores = fitted.score_distance(np.array([0.0, 1e9]))
    assert scores[0] == 1.0 and scores[1] == pytest.approx(1 / 751)
    distance = fitted.distance(gaussian(50, seed=4))
    assert np.all((distance > 0) & (distance <= 2))  # unit vectors per layer


def test_the_space_is_recorded_and_read_at_inference(fitted: Familiarity, tmp_path: Path) -> None:
    """The layers (fixed fractions of the depth) and the scales are saved; the familiarity
    reads its own layers out of whichever layers the caller holds, and refuses states that
    lack one."""
    assert fitted.layers == familiarity_layers(N_STATES) == (1, 2, 3, 4)
    assert familiarity_layers(29) == (7, 14, 21, 28)  # a 28-layer model
    fitted.save(tmp_path)
    meta = json.loads((tmp_path / JSON_FILE).read_text())
    assert meta["layers"] == [1, 2, 3, 4] and meta["format_version"] == 2 and meta["k"] == 10
    again = Familiarity.load(tmp_path)
    probe = gaussian(50, seed=4, shift=0.5)
    np.testing.assert_allclose(again.score(probe), fitted.score(probe))
    np.testing.assert_allclose(again.scale, fitted.scale)
    held = [0, 1, 2, 3, 4]  # e.g. a scorer's prefill: the familiarity's layers and layer 0
    np.testing.assert_allclose(again.score(probe[:, held], held), fitted.score(probe))
    with pytest.raises(ValueError, match=r"missing \[4\]"):
        fitted.score(probe[:, :4], [0, 1, 2, 3])
    with pytest.raises(ValueError, match="width 5, the familiarity expects 24"):
        fitted.score(np.zeros((2, N_STATES, 5)))
    with pytest.raises(ValueError, match="shape"):
        fitted.score(np.zeros((2, W)))  # the risk student's input is not the space


def test_save_load_refuses_damage(fitted: Familiarity, tmp_path: Path) -> None:
    fitted.save(tmp_path)
    assert Familiarity.load(tmp_path / "nowhere") is None
    meta = json.loads((tmp_path / JSON_FILE).read_text())
    (tmp_path / JSON_FILE).write_text(json.dumps(meta | {"layers": [1, 2]}))
    with pytest.raises(ValueError, match="records"):
        Familiarity.load(tmp_path)
    (tmp_path / TENSORS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="unreadable familiarity"):
        Familiarity.load(tmp_path)


def two_styles(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A broad and a narrow set of states, as MMLU's and trivia's prompts are: at the
    shallow layer 1 the narrow set sits at the broad one's centre (a standardised distance
    there calls it the more familiar); at the deeper layers each set leans its own way."""
    rng = np.random.default_rng(seed)
    base = 3.0 + rng.normal(size=(2 * n, N_STATES, W))
    base[:n, 1] = 3.0 + 2.0 * rng.normal(size=(n, W))  # broad
    base[n:, 1] = 3.0 + 0.3 * rng.normal(size=(n, W))  # narrow, at the broad set's centre
    base[:n, 2:, :8] += 2.0
    base[n:, 2:, :8] -= 2.0
    return base[:n], base[n:]


def test_each_set_flags_the_other_both_ways() -> None:
    """Fitted on either set, the familiarity flags the other set's prompts (OOD AUROC > 0.9
    both ways), where the shallow layer alone, standardised, fails for the broad set."""
    broad, narrow = two_styles(300, seed=0)
    for own, other in ((broad, narrow), (narrow, broad)):
        familiarity = Familiarity.fit(own[:200], own[200:240])
        inside, outside = familiarity.score(own[240:]), familiarity.score(other[:100])
        labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
        assert auroc(labels, -np.r_[inside, outside]) > 0.9
    shallow = Familiarity.fit(broad[:200], broad[200:240], layers=[1])
    inside, outside = shallow.score(broad[240:]), shallow.score(narrow[:100])
    assert auroc(np.r_[np.zeros(60), np.ones(100)], -np.r_[inside, outside]) < 0.5


def test_scorer_prefills_and_reads_the_familiaritys_layers(fitted: Familiarity) -> None:
    """A scorer whose risk student reads layer 1 prefills the familiarity's layers too, and
    its familiarity is the model's on those layers, not on the student's input."""
    scorer = Scorer.__new__(Scorer)  # no base model needed for states already computed
    scorer.inputs = {"risk": LayerInputs([1]), "likelihood": LayerInputs([1])}
    scorer.familiarity_model = fitted
    scorer.directory = Path("scorer")
    assert scorer.layers == (1, 2, 3, 4)
    states = gaussian(20, seed=7, shift=0.5).astype(np.float16)
    np.testing.assert_allclose(
        scorer.familiarity_from_states(states[:, 1:]), fitted.score(states), rtol=1e-6
    )


def test_extended_familiarity_knows_the_new_prompts(fitted: Familiarity) -> None:
    """Adding a new region's prompts (as fitting a scorer further does) makes it familiar."""
    new = gaussian(300, seed=5, shift=3.0)
    before = fitted.score(gaussian(200, seed=6, shift=3.0))
    after = fitted.extended(new[:250], new[250:]).score(gaussian(200, seed=6, shift=3.0))
    assert np.mean(before < 0.05) > 0.9 and np.mean(after < 0.05) < 0.2
    assert after.shape == (200,) and fitted.extended(new[:1], new[:1]).layers == fitted.layers


def test_bad_settings_are_one_line_errors() -> None:
    X = gaussian(20, seed=0)[:, 1]
    scale = np.ones((1, W))
    with pytest.raises(ValueError, match=r"k must be in 1\.\.19"):
        Familiarity(X, X, [1], scale, k=20)
    with pytest.raises(ValueError, match="do not match"):
        Familiarity(X, X[:, :3], [1], scale)
    with pytest.raises(ValueError, match="at least 2 training prompts"):
        Familiarity.fit(gaussian(1, seed=0), gaussian(3, seed=1))


def transfer_result(scorer: str, target: str, familiarity: np.ndarray | None) -> TransferResult:
    diagnostics = ShiftDiagnostics(0.1, 0.9, 0.95, 1.0, 0.2)
    n = 0 if familiarity is None else len(familiarity)
    return TransferResult(scorer, target, "test", n, n, {}, diagnostics, familiarity)


def test_familiarity_ood_in_metrics_and_report() -> None:
    """Each scorer's familiarity of every other set's test prompts against its own set's:
    AUROC, CI and counts in metrics.json, and a row each in the report's table; the union
    scorer (no own set among the targets) is left out."""
    rng = np.random.default_rng(0)
    own_a, own_b = rng.uniform(0.1, 1, 40), rng.uniform(0, 1, 30)
    runs = [
        transfer_result("a", "a", own_a),
        transfer_result("a", "b", rng.uniform(0, 0.1, 30)),  # less familiar: AUROC 1
        transfer_result("b", "b", own_b),
        transfer_result("b", "a", rng.uniform(0, 1, 40)),  # as familiar as its own: near 0.5
        transfer_result("union", "a", own_a),
    ]
    ood = RunResults({}, {}, None, {}, runs).to_metrics()["familiarity_ood"]
    assert set(ood) == {"a", "b"} and set(ood["a"]) == {"b"} and set(ood["b"]) == {"a"}
    a_b = ood["a"]["b"]
    assert set(a_b) == {"auroc", "ci", "n", "n_own"}
    assert a_b["auroc"] == 1.0 and a_b["n"] == 30 and a_b["n_own"] == 40
    assert a_b["ci"][0] <= a_b["auroc"] <= a_b["ci"][1]
    assert abs(ood["b"]["a"]["auroc"] - 0.5) < 0.2
    json.dumps(ood)  # plain numbers
    table = familiarity_ood_table(RunResults({}, {}, None, {}, runs))
    assert [row[0] for row in table.rows] == ["a → b", "b → a"]
    assert familiarity_ood_table(RunResults({}, {}, None, {}, runs[-1:])) is None


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
def test_scorer_risk_endpoint_and_chat_carry_familiarity(tmp_path: Path, tiny_ssd_built) -> None:
    """On a real SmolLM2 scorer: `Scorer.familiarity`, `/v1/risk` and the chat endpoint's
    `semdistill` object and header agree, and the policy flags the unfamiliar prompt."""
    import httpx

    from semdistill import Scorer
    from semdistill.serve import ServiceLimits, create_app
    from serving import serving
    from tiny_ssd import QUESTIONS, copy_of

    scorer = Scorer.load(copy_of(tiny_ssd_built, tmp_path).directory)
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
