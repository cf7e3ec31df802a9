"""Scorer over raw text, and risk calibration: real tiny model end to end, maths by hand."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from semdistill.scoring.calibration import (
    CALIBRATION_FILE,
    RiskCalibration,
    fit_calibration,
    load_calibration,
    save_calibration,
)
from semdistill.scoring.checksums import write_checksums
from tiny_ssd import LAYER, LIKELIHOOD_DIM, QUESTIONS, Built, copy_of


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_ssd_built: Built) -> Built:
    return copy_of(tiny_ssd_built, tmp_path_factory.mktemp("ssd"))


@pytest.fixture(scope="module")
def scorer(built: Built):
    from semdistill import Scorer

    return Scorer.load(built.directory)  # as the teacher that built it


def _copy(built: Built, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(built.directory, target)
    return target


def _edit_manifest(directory: Path, **changes: object) -> None:
    path = directory / "ssd.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            data[key].update(value)
        else:
            data[key] = value
    path.write_text(json.dumps(data))
    write_checksums(directory)  # re-signed: the checks behind the checksums are under test


# ---------------------------------------------------------------------- calibration (no model)
def _labels(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    entropy = rng.normal(size=n)
    incorrect = entropy + rng.normal(scale=0.8, size=n) > 0.2
    return entropy, incorrect


def test_isotonic_calibration_matches_sklearn_and_is_monotone() -> None:
    entropy, incorrect = _labels()
    calibration = fit_calibration(entropy, incorrect, "isotonic")
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(
        entropy, incorrect.astype(float)
    )
    grid = np.linspace(-5, 5, 2001)
    np.testing.assert_allclose(calibration.probability(grid), reference.predict(grid), atol=1e-12)
    assert np.all(np.diff(calibration.probability(grid)) >= 0)
    assert calibration.incorrect_rate == pytest.approx(incorrect.mean())


def test_platt_calibration_uses_smoothed_targets() -> None:
    entropy, incorrect = _labels()
    calibration = fit_calibration(entropy, incorrect, "platt")
    n_bad, n_good = incorrect.sum(), (~incorrect).sum()
    targets = np.where(incorrect, (n_bad + 1) / (n_bad + 2), 1 / (n_good + 2))
    # Minimise the cross-entropy to the soft targets directly and compare the optimum.
    reference = LogisticRegression(C=np.inf).fit(
        np.r_[entropy, entropy][:, None],
        np.r_[np.ones_like(entropy), np.zeros_like(entropy)],
        sample_weight=np.r_[targets, 1 - targets],
    )
    assert calibration.slope == pytest.approx(reference.coef_[0, 0], rel=1e-6)
    assert calibration.slope > 0
    p = calibration.probability(np.array([-1.0, 0.0, 1.0]))
    expected = 1 / (1 + np.exp(-(calibration.slope * np.array([-1, 0, 1]) + calibration.intercept)))
    np.testing.assert_allclose(p, expected)


def test_platt_calibration_stays_finite_on_separable_labels() -> None:
    entropy = np.array([0.0, 1.0, 2.0, 3.0])
    calibration = fit_calibration(entropy, np.array([0, 0, 1, 1]), "platt")
    assert np.isfinite(calibration.slope) and 0 < calibration.slope < 10
    p = calibration.probability(entropy)
    assert p[0] < 0.5 < p[-1]


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_calibration_json_round_trip(tmp_path: Path, method: str) -> None:
    entropy, incorrect = _labels(seed=1)
    calibration = fit_calibration(entropy, incorrect, method, fingerprint="abc")
    save_calibration(tmp_path / CALIBRATION_FILE, calibration)
    text = (tmp_path / CALIBRATION_FILE).read_text()
    assert "calibrated probability of an incorrect answer" in text
    loaded = load_calibration(tmp_path / CALIBRATION_FILE)
    assert loaded == calibration
    np.testing.assert_array_equal(loaded.probability(entropy), calibration.probability(entropy))


def test_calibration_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both correct and incorrect"):
        fit_calibration(np.arange(4.0), np.zeros(4, dtype=bool))
    with pytest.raises(ValueError, match="method must be one of"):
        fit_calibration(np.arange(4.0), np.array([0, 1, 0, 1]), "beta")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="incorrect has shape"):
        fit_calibration(np.arange(4.0), np.array([0, 1]))
    with pytest.raises(ValueError, match="booleans or 0/1"):
        fit_calibration(np.arange(4.0), np.array([0, 1, 2, 1]))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "semdistill.calibration", "format_version": 1}))
    with pytest.raises(ValueError, match=r"bad\.json: method must be one of"):
        load_calibration(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        load_calibration(bad)
    isotonic = RiskCalibration("isotonic", 4, 0.5, "", x=(0.0, 1.0), y=(0.1, 0.9)).to_dict()
    isotonic["thresholds"]["entropy"] = [1.0, 0.0]
    with pytest.raises(ValueError, match="x sorted"):
        RiskCalibration.from_dict(isotonic)


# ---------------------------------------------------------------------- Scorer on smollm2-135m
@pytest.mark.slow
def test_risk_is_the_risk_students_entropy_of_the_recorded_layer(scorer, built: Built) -> None:
    states = built.teacher.hidden_states(
        [built.teacher.format_prompt(q) for q in QUESTIONS], layers=[LAYER]
    )[:, 0]
    expected = scorer.students["risk"].renyi2_entropy(states.astype(np.float32))
    risk = scorer.risk(QUESTIONS)
    assert risk.shape == (len(QUESTIONS),)
    np.testing.assert_allclose(risk, expected, rtol=1e-6)
    assert np.ptp(risk) > 0
    # Alone, in a batch or in another order, a question gets the same risk (packed prefill,
    # no padding: a score is a function of its prompt alone).
    alone = np.array([scorer.risk([q])[0] for q in QUESTIONS[:3]])
    np.testing.assert_allclose(alone, risk[:3], rtol=0, atol=0.01)
    reversed_order = scorer.risk(QUESTIONS[::-1])[::-1]
    np.testing.assert_allclose(reversed_order, risk, rtol=0, atol=0.01)


@pytest.mark.slow
def test_load_rebuilds_the_recorded_pieces(scorer, built: Built) -> None:
    assert scorer.teacher.spec.sha256 == built.teacher.spec.sha256
    assert scorer.teacher.dtype == "float32"
    assert scorer.embedder.name == "all-MiniLM-L6-v2" and scorer.embedder.dim == 384
    assert scorer.artifacts.layer == LAYER
    assert scorer.layers == (LAYER,)
    assert scorer.calibration is None


@pytest.mark.slow
def test_verify_choose_and_consensus_follow_the_likelihood_student(scorer) -> None:
    question = "Who painted the Mona Lisa?"
    answers = ["Leonardo da Vinci", "a type of pasta", "Michelangelo"]
    states = scorer.states([question])[:, 0].astype(np.float32)
    coords = scorer.pca.transform(scorer.embedder.encode(answers), LIKELIHOOD_DIM)
    expected = scorer.students["likelihood"].log_prob(np.repeat(states, 3, axis=0), coords)
    scores = scorer.verify(question, answers)
    np.testing.assert_allclose(scores, expected, rtol=1e-9)

    ranking = scorer.choose(question, answers)
    assert sorted(option for option, _ in ranking) == sorted(answers)
    assert [s for _, s in ranking] == sorted(scores.tolist(), reverse=True)

    batched = scorer.verify_many([(question, answers), ("What is two plus two?", ["4"])])
    # packed with another prompt: the same up to float rounding
    np.testing.assert_allclose(batched[0], scores, rtol=0, atol=1e-3)
    assert batched[1].shape == (1,)

    consensus = scorer.consensus(question, answers)
    mean = scorer.students["likelihood"].mean(states)[0]
    np.testing.assert_allclose(consensus.mean, mean)
    distances = np.linalg.norm(coords - mean, axis=1)
    np.testing.assert_allclose(consensus.distances, distances, rtol=1e-9)
    assert consensus.nearest == answers[int(np.argmin(distances))]
    empty = scorer.consensus(question)
    assert empty.nearest is None and empty.mean.shape == (LIKELIHOOD_DIM,)


@pytest.mark.slow
def test_scorer_rejects_bad_text(scorer) -> None:
    with pytest.raises(ValueError, match="prompts must be a list of strings, got str"):
        scorer.risk("What is two plus two?")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prompts must not be empty"):
        scorer.risk([])
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        scorer.risk(["What is two plus two?", "  "])
    with pytest.raises(ValueError, match=r"answers\[0\] must be a string"):
        scorer.verify("What is two plus two?", [4])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="not calibrated"):
        scorer.risk_probability(["What is two plus two?"])


@pytest.mark.slow
def test_calibrate_writes_json_that_load_applies(built: Built, tmp_path: Path) -> None:
    from semdistill import Scorer

    directory = _copy(built, tmp_path)
    scorer = Scorer.load(directory, model=built.teacher, embedder=built.embedder)
    risk = scorer.risk(QUESTIONS)
    incorrect = risk > np.median(risk)
    calibration = scorer.calibrate(QUESTIONS, incorrect, method="platt")
    assert calibration.method == "platt" and calibration.slope > 0
    reloaded = Scorer.load(directory, model=built.teacher, embedder=built.embedder)
    assert reloaded.calibration == calibration
    probability = reloaded.risk_probability(QUESTIONS)
    np.testing.assert_allclose(probability, calibration.probability(risk), rtol=1e-9)
    assert np.all(np.diff(probability[np.argsort(risk)]) >= 0)

    scorer.calibrate(QUESTIONS, incorrect)  # isotonic replaces it
    assert load_calibration(directory / CALIBRATION_FILE).method == "isotonic"

    with pytest.raises(ValueError, match="one label per prompt"):
        scorer.calibrate(QUESTIONS, incorrect[:-1])
    # A calibration fitted for other artifacts is refused.
    _edit_manifest(directory, collection="another training run")
    with pytest.raises(ValueError, match="fitted for other SSD artifacts"):
        Scorer.load(directory, model=built.teacher, embedder=built.embedder)


@pytest.mark.slow
def test_load_refuses_another_model_embedder_or_prompt(built: Built, tmp_path: Path) -> None:
    from semdistill import Scorer

    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF not the recorded model")
    with pytest.raises(ValueError, match="not the base model this SSD was trained on"):
        Scorer.load(built.directory, model=str(other), embedder=built.embedder)
    with pytest.raises(ValueError, match="embedder 'paraphrase-MiniLM-L3-v2' is not the one"):
        Scorer.load(built.directory, model=built.teacher, embedder="paraphrase-MiniLM-L3-v2")

    @dataclass
    class Narrow:
        name: str = "all-MiniLM-L6-v2"
        dim: int = 128

    with pytest.raises(ValueError, match=r"\(dim 128\) is not the one"):
        Scorer.load(built.directory, model=built.teacher, embedder=Narrow())  # type: ignore[arg-type]

    directory = _copy(built, tmp_path)
    _edit_manifest(directory, teacher={"sha256": "0" * 64})
    with pytest.raises(ValueError, match="not the base model this SSD was trained on"):
        Scorer.load(directory, model=built.teacher, embedder=built.embedder)
    with pytest.raises(ValueError, match="has sha256 b179c95"):
        Scorer.load(directory, embedder=built.embedder)  # the recorded GGUF fails its hash

    directory = _copy(built, tmp_path / "b")
    _edit_manifest(directory, prompt_version="short-answer-v0")
    with pytest.raises(ValueError, match="prompt version 'short-answer-v0'"):
        Scorer.load(directory, model=built.teacher, embedder=built.embedder)

    directory = _copy(built, tmp_path / "c")
    _edit_manifest(directory, dtype="bfloat16")
    with pytest.raises(ValueError, match="trained on bfloat16 hidden states"):
        Scorer.load(directory, model=built.teacher, embedder=built.embedder)


@pytest.mark.slow
def test_a_multi_layer_centred_risk_student_reads_its_own_layers(built: Built, tmp_path) -> None:
    """A risk student on three PCA-reduced layers (location-free targets) beside a single-layer
    likelihood student: the scorer prefills the union of their layers and each reads its own."""
    from semdistill import Scorer, SSDStudent
    from semdistill.scoring.artifacts import load_artifacts, save_artifacts
    from semdistill.student.inputs import LayerInputs

    loaded = load_artifacts(built.directory)
    prompts = [built.teacher.format_prompt(q) for q in QUESTIONS]
    layers = [6, 9, LAYER]
    states = built.teacher.hidden_states(prompts, layers=layers).astype(np.float32)
    inputs = LayerInputs(layers, n_components=3).fit(states)
    rng = np.random.default_rng(0)
    Y = rng.normal(size=(len(QUESTIONS), 3, loaded.artifacts.students["risk"]))
    risk = SSDStudent(
        targets="centred", n_components=2, hidden_dim=8, depth=1, max_epochs=5,
        validation_fraction=0.0, verbose=False,
    ).fit(inputs.transform(states), Y)  # fmt: skip
    students = {"risk": risk, "likelihood": loaded.students["likelihood"]}
    save_artifacts(
        tmp_path / "multi",
        loaded.artifacts,
        loaded.pca,
        students,
        inputs={"risk": inputs, "likelihood": loaded.inputs["likelihood"]},
    )
    scorer = Scorer.load(tmp_path / "multi", model=built.teacher, embedder=built.embedder)
    assert scorer.layers == (6, 9, LAYER)
    expected = risk.renyi2_entropy(inputs.transform(states.astype(np.float16).astype(np.float32)))
    np.testing.assert_allclose(scorer.risk(QUESTIONS), expected, rtol=0, atol=1e-3)
    single = scorer.verify(QUESTIONS[0], ["Paris"])
    state = built.teacher.hidden_states(prompts[:1], layers=[LAYER])[:, 0].astype(np.float32)
    coords = scorer.answer_coordinates(["Paris"])
    np.testing.assert_allclose(
        single, loaded.students["likelihood"].log_prob(state, coords), rtol=0, atol=1e-3
    )
