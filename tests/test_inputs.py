"""LayerInputs: per-layer standardisation + PCA of hidden states, persistence, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from semdistill.student.inputs import LayerInputs


@pytest.fixture
def states() -> np.ndarray:
    rng = np.random.default_rng(0)
    scales = rng.uniform(0.1, 10, size=(1, 3, 20))
    return (rng.normal(size=(80, 3, 20)) * scales + rng.normal(size=(1, 3, 20))).astype(np.float32)


def test_reduced_inputs_match_an_sklearn_pipeline_per_layer(states):
    inputs = LayerInputs([4, 7, 9], n_components=5).fit(states[:60])
    out = inputs.transform(states[60:])
    assert out.shape == (20, 15) and inputs.width == 15
    for i in range(3):
        pipe = make_pipeline(StandardScaler(), PCA(5, svd_solver="full")).fit(states[:60, i])
        expected = pipe.transform(states[60:, i])
        got = out[:, 5 * i : 5 * (i + 1)]
        # PCA axes are defined up to sign
        np.testing.assert_allclose(np.abs(got), np.abs(expected), rtol=1e-4, atol=1e-4)


def test_raw_inputs_concatenate_the_states(states):
    inputs = LayerInputs([3, 5, 8]).fit(states)
    np.testing.assert_array_equal(inputs.transform(states), states.reshape(80, -1))
    assert inputs.width is None and inputs.describe() == "layers 3, 5, 8"


def test_round_trip_and_refusals(states, tmp_path):
    inputs = LayerInputs([1, 2, 3], n_components=4).fit(states)
    inputs.save(tmp_path / "in.safetensors")
    loaded = LayerInputs.load(tmp_path / "in.safetensors")
    assert loaded.layers == (1, 2, 3) and loaded.n_components == 4
    np.testing.assert_allclose(loaded.transform(states), inputs.transform(states))
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match=r"bad\.safetensors"):
        LayerInputs.load(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="missing"):
        LayerInputs.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="hold 2 layers"):
        inputs.transform(states[:, :2])
    with pytest.raises(ValueError, match="distinct"):
        LayerInputs([2, 2]).fit(states[:, :2])
    with pytest.raises(ValueError, match="exceeds"):
        LayerInputs([1, 2, 3], n_components=50).fit(states)
    with pytest.raises(ValueError, match="not fitted"):
        LayerInputs([1, 2, 3], n_components=2).transform(states)
