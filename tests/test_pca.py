"""PCAReducer against scikit-learn, nesting of components, persistence."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

from semdistill.semantics.pca import PCAReducer


@pytest.fixture
def embeddings() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20))


def test_transform_matches_sklearn(embeddings):
    reducer = PCAReducer(8).fit(embeddings)
    expected = PCA(8, svd_solver="full").fit(embeddings).transform(embeddings)
    np.testing.assert_allclose(reducer.transform(embeddings), expected, atol=1e-9)


def test_components_are_nested(embeddings):
    wide = PCAReducer(12).fit(embeddings).transform(embeddings, 5)
    narrow = PCA(5, svd_solver="full").fit(embeddings).transform(embeddings)
    np.testing.assert_allclose(np.abs(wide), np.abs(narrow), atol=1e-9)


def test_transform_keeps_leading_axes(embeddings):
    reducer = PCAReducer(6).fit(embeddings)
    batch = embeddings.reshape(30, 10, 20)
    assert reducer.transform(batch, 4).shape == (30, 10, 4)
    np.testing.assert_allclose(
        reducer.transform(batch).reshape(300, 6), reducer.transform(embeddings)
    )


def test_round_trip(embeddings, tmp_path):
    reducer = PCAReducer(6).fit(embeddings)
    reducer.save(tmp_path / "pca.safetensors")
    loaded = PCAReducer.load(tmp_path / "pca.safetensors")
    np.testing.assert_array_equal(loaded.transform(embeddings), reducer.transform(embeddings))


def test_bad_input(embeddings, tmp_path):
    with pytest.raises(ValueError, match="not fitted"):
        PCAReducer(3).transform(embeddings)
    reducer = PCAReducer(3).fit(embeddings)
    with pytest.raises(ValueError, match="X has 5 features, but PCAReducer is expecting 20"):
        reducer.transform(embeddings[:, :5])
    with pytest.raises(ValueError, match=r"n_components must be in 1\.\.3"):
        reducer.transform(embeddings, 4)
    with pytest.raises(ValueError, match="exceeds"):
        PCAReducer(50).fit(embeddings[:10])
    with pytest.raises(ValueError, match="n_components must be an integer >= 1"):
        PCAReducer(0).fit(embeddings)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"bad\.safetensors: not a readable"):
        PCAReducer.load(tmp_path / "bad.safetensors")
