"""SSDStudent: distillation on data with a known conditional law, persistence, bad input."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.exceptions import NotFittedError
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from semdistill import SSDStudent
from semdistill.student import renyi2_entropy


def true_law(H: np.ndarray) -> MixtureSameFamily:
    """Two components at ±(h0, h1)/2, weight sigmoid(h2), isotropic scale 0.3·exp(0.6·h3)."""
    h = torch.as_tensor(H, dtype=torch.float64)
    centre = h[:, :2] / 2
    loc = torch.stack([centre, -centre], dim=1)
    scale = (0.3 * torch.exp(0.6 * h[:, 3]))[:, None, None].expand(-1, 2, 2)
    weight = torch.sigmoid(h[:, 2])
    return MixtureSameFamily(
        Categorical(probs=torch.stack([weight, 1 - weight], dim=1)),
        Independent(Normal(loc, scale), 1),
    )


def draw(n: int, n_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    H = rng.normal(size=(n, 6))
    torch.manual_seed(seed)
    Y = true_law(H).sample((n_samples,)).transpose(0, 1).numpy()
    return H, Y


@pytest.fixture(scope="module")
def fitted() -> tuple[SSDStudent, np.ndarray, np.ndarray]:
    H, Y = draw(1500, 10, seed=0)
    student = SSDStudent(
        n_components=3,
        hidden_dim=64,
        depth=2,
        batch_size=128,
        max_epochs=150,
        patience=15,
        learning_rate=3e-3,
        seed=0,
        verbose=False,
    ).fit(H, Y)
    H_test, Y_test = draw(500, 10, seed=1)
    return student, H_test, Y_test


def test_entropy_ranks_prompts_like_the_true_entropy(fitted):
    student, H_test, _ = fitted
    true_h2 = renyi2_entropy(true_law(H_test)).numpy()
    assert spearmanr(student.renyi2_entropy(H_test), true_h2).statistic > 0.9


def test_held_out_nll_approaches_the_true_nll(fitted):
    student, H_test, Y_test = fitted
    true_nll = -true_law(H_test).log_prob(torch.as_tensor(Y_test).transpose(0, 1)).mean().item()
    student_nll = -student.log_prob(H_test, Y_test).mean()
    # Unconditional baseline: one Gaussian fitted to all targets ignores h entirely.
    flat = Y_test.reshape(-1, 2)
    marginal_nll = (
        -Normal(torch.as_tensor(flat.mean(0)), torch.as_tensor(flat.std(0)))
        .log_prob(torch.as_tensor(flat))
        .sum(-1)
        .mean()
        .item()
    )
    assert student_nll - true_nll < 0.1
    assert marginal_nll - true_nll > 0.5  # the gap closed above is a real one


def test_output_shapes_and_consistency(fitted):
    student, H_test, Y_test = fitted
    H, Y = H_test[:7], Y_test[:7]
    assert student.renyi2_entropy(H).shape == (7,)
    assert student.log_prob(H, Y[:, 0]).shape == (7,)
    assert student.log_prob(H, Y).shape == (7, 10)
    np.testing.assert_allclose(student.log_prob(H, Y)[:, 3], student.log_prob(H, Y[:, 3]))
    assert student.mean(H).shape == (7, 2)
    samples = student.sample(H, 4000, seed=0)
    assert samples.shape == (7, 4000, 2)
    # The sample mean converges to the mixture mean (loose: 4000 draws, scales <= ~1).
    np.testing.assert_allclose(samples.mean(axis=1), student.mean(H), atol=0.1)
    np.testing.assert_array_equal(student.sample(H, 5, seed=3), student.sample(H, 5, seed=3))
    dist = student.distribution(torch.as_tensor(H))
    assert isinstance(dist, MixtureSameFamily)
    np.testing.assert_allclose(renyi2_entropy(dist).numpy(), student.renyi2_entropy(H))


def test_fit_is_deterministic():
    H, Y = draw(120, 4, seed=5)
    kwargs = dict(n_components=2, hidden_dim=16, depth=2, max_epochs=5, seed=7, verbose=False)
    a = SSDStudent(**kwargs).fit(H, Y).renyi2_entropy(H)
    b = SSDStudent(**kwargs).fit(H, Y).renyi2_entropy(H)
    np.testing.assert_array_equal(a, b)


def test_explicit_validation_set_drives_early_stopping():
    H, Y = draw(200, 4, seed=6)
    H_val, Y_val = draw(50, 4, seed=7)
    student = SSDStudent(n_components=2, hidden_dim=16, depth=1, max_epochs=30, verbose=False)
    student.fit(H, Y, validation=(H_val, Y_val))
    best = min(student.history_, key=lambda r: r.val_nll)
    assert student.best_epoch_ == best.epoch
    restored = -student.log_prob(H_val, Y_val).mean()
    assert restored == pytest.approx(best.val_nll, rel=1e-5)


def test_save_load_round_trip(fitted, tmp_path):
    student, H_test, Y_test = fitted
    student.save(tmp_path / "s", metadata={"layer": 12})
    loaded = SSDStudent.load(tmp_path / "s")
    np.testing.assert_array_equal(loaded.renyi2_entropy(H_test), student.renyi2_entropy(H_test))
    np.testing.assert_array_equal(loaded.log_prob(H_test, Y_test), student.log_prob(H_test, Y_test))
    np.testing.assert_array_equal(loaded.mean(H_test), student.mean(H_test))
    assert loaded.metadata_ == {"layer": 12}
    config = json.loads((tmp_path / "s" / "student.json").read_text())
    assert config["architecture"]["n_components"] == 3
    assert len(config["standardisation"]["input_mean"]) == 6
    assert not list((tmp_path / "s").glob("*.pkl"))


@pytest.fixture
def saved(tmp_path):
    H, Y = draw(20, 2, seed=8)
    SSDStudent(n_components=2, hidden_dim=8, depth=1, max_epochs=2, verbose=False).fit(H, Y).save(
        tmp_path / "s"
    )
    return tmp_path / "s"


def test_load_refuses_corrupt_weights(saved):
    weights = saved / "student.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"student\.safetensors.*corrupt"):
        SSDStudent.load(saved)


def test_load_refuses_truncated_weights(saved):
    weights = saved / "student.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    config = json.loads((saved / "student.json").read_text())
    config["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (saved / "student.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"student\.safetensors: not a readable safetensors"):
        SSDStudent.load(saved)


def test_load_refuses_other_version(saved):
    config = json.loads((saved / "student.json").read_text())
    config["format_version"] = 99
    (saved / "student.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"student\.json.*version 99"):
        SSDStudent.load(saved)


def test_load_refuses_other_shape(saved):
    config = json.loads((saved / "student.json").read_text())
    config["architecture"]["hidden_dim"] = 9
    (saved / "student.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"student\.safetensors: tensors do not match"):
        SSDStudent.load(saved)


def test_load_refuses_invalid_json_and_missing_files(saved, tmp_path):
    (saved / "student.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"student\.json: not valid JSON"):
        SSDStudent.load(saved)
    with pytest.raises(FileNotFoundError, match="no such file"):
        SSDStudent.load(tmp_path / "nothing-here")


@pytest.mark.parametrize(
    ("H", "Y", "match"),
    [
        (np.zeros((5, 3, 1)), np.zeros((5, 2, 2)), "H must have rank 2"),
        (np.zeros((5, 3)), np.zeros((5, 2)), "Y must have rank 3"),
        (np.zeros((5, 3)), np.zeros((4, 2, 2)), "H has 5 prompts but Y has 4"),
        (np.zeros((1, 3)), np.zeros((1, 2, 2)), "at least 2 prompts"),
        (np.zeros((5, 3)), np.zeros((5, 0, 2)), "N >= 1"),
        (np.full((5, 3), np.nan), np.zeros((5, 2, 2)), "H contains NaN"),
        (np.zeros((5, 3)), np.full((5, 2, 2), np.inf), "Y contains NaN or infinite"),
        ([["a", "b"]] * 5, np.zeros((5, 2, 2)), "H must be a numeric array"),
    ],
)
def test_fit_rejects_bad_input(H, Y, match):
    with pytest.raises(ValueError, match=match):
        SSDStudent(verbose=False, max_epochs=1).fit(H, Y)


def test_queries_reject_bad_input(fitted):
    student, H_test, Y_test = fitted
    with pytest.raises(ValueError, match="H has width 5, but the student was fitted with 6"):
        student.renyi2_entropy(H_test[:, :5])
    with pytest.raises(ValueError, match="y has dimension 3, but the student was fitted with 2"):
        student.log_prob(H_test, np.zeros((len(H_test), 3)))
    with pytest.raises(ValueError, match="y has 3 rows but H has"):
        student.log_prob(H_test, Y_test[:3, 0])
    with pytest.raises(ValueError, match="y must have rank 2 or 3"):
        student.log_prob(H_test, Y_test[0, 0])
    with pytest.raises(ValueError, match="n_samples"):
        student.sample(H_test, 0)


def test_unfitted_student_raises():
    with pytest.raises(ValueError, match="not fitted"):
        SSDStudent().renyi2_entropy(np.zeros((2, 3)))
    with pytest.raises(NotFittedError):
        SSDStudent().save("unused")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_components": 0}, "n_components"),
        ({"hidden_dim": 0}, "hidden_dim"),
        ({"depth": 0}, "depth"),
        ({"min_scale": 0.0}, "min_scale"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"learning_rate": -1.0}, "learning_rate"),
    ],
)
def test_fit_rejects_bad_hyperparameters(kwargs, match):
    """As in scikit-learn, ``__init__`` stores the hyperparameters and ``fit`` checks them."""
    student = SSDStudent(**kwargs)
    assert all(getattr(student, name) == value for name, value in kwargs.items())
    assert not hasattr(student, "model_") and not hasattr(student, "history_")
    H, Y = draw(20, 3, seed=0)
    with pytest.raises(ValueError, match=match):
        student.fit(H, Y)


def test_centred_targets_ignore_each_prompts_location():
    """A centred student fits Y - mean(Y): shifting every prompt's samples by its own random
    offset changes nothing, while the paper's objective sees the shift."""
    H, Y = draw(300, 8, seed=3)
    shifted = Y + np.random.default_rng(9).normal(scale=5.0, size=(300, 1, Y.shape[2]))
    kwargs = dict(hidden_dim=16, depth=1, max_epochs=5, verbose=False)
    a = SSDStudent(targets="centred", **kwargs).fit(H, Y)
    b = SSDStudent(targets="centred", **kwargs).fit(H, shifted)
    np.testing.assert_allclose(
        a.renyi2_entropy(H[:50]), b.renyi2_entropy(H[:50]), rtol=1e-4, atol=1e-4
    )
    c = SSDStudent(targets="samples", **kwargs).fit(H, Y)
    d = SSDStudent(targets="samples", **kwargs).fit(H, shifted)
    assert np.abs(c.renyi2_entropy(H[:50]) - d.renyi2_entropy(H[:50])).max() > 0.1


def test_centred_student_round_trips_its_objective(tmp_path):
    H, Y = draw(100, 4, seed=4)
    student = SSDStudent(targets="centred", hidden_dim=8, depth=1, max_epochs=2, verbose=False)
    student.fit(H, Y).save(tmp_path / "s")
    loaded = SSDStudent.load(tmp_path / "s")
    assert loaded.targets == "centred"
    np.testing.assert_allclose(loaded.renyi2_entropy(H), student.renyi2_entropy(H))
    with pytest.raises(ValueError, match="targets must be one of"):
        SSDStudent(targets="middle").fit(H, Y)


def test_history_records_validation_fidelity_against_the_sample_spread():
    """Each epoch's val_fidelity is Spearman of the (float32) entropy with the RMS spread."""
    H, Y = draw(400, 6, seed=5)
    student = SSDStudent(hidden_dim=16, depth=1, max_epochs=3, verbose=False, patience=3)
    student.fit(H[:300], Y[:300], validation=(H[300:], Y[300:]))
    spread = np.sqrt(((Y[300:] - Y[300:].mean(1, keepdims=True)) ** 2).sum(-1).mean(1))
    last = student.history_[-1]
    if student.best_epoch_ == len(student.history_):
        rho = spearmanr(student.renyi2_entropy(H[300:]), spread).statistic
        assert abs(last.val_fidelity - rho) < 0.02
    assert all(-1 <= r.val_fidelity <= 1 for r in student.history_)
