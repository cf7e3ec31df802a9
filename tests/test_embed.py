"""The answer embedder: unit-length float32 vectors that put paraphrases close together."""

from __future__ import annotations

import os

import numpy as np
import pytest

from semdistill.semantics.embed import DEFAULT_EMBEDDER, Embedder, load_embedder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder()


def test_default_embedder_gives_normalised_float32(embedder: Embedder) -> None:
    assert (embedder.name, embedder.dim) == (DEFAULT_EMBEDDER, 384)
    vectors = embedder.encode(["Paris", "William Shakespeare", "Au"], batch_size=2)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


def test_paraphrases_are_closer_than_other_answers(embedder: Embedder) -> None:
    paris, capital_paris, jupiter = embedder.encode(["Paris", "The capital is Paris.", "Jupiter"])
    assert paris @ capital_paris > paris @ jupiter + 0.2


def test_alias_of_the_default_and_truncation(embedder: Embedder) -> None:
    full = embedder.encode(["Hydrogen"])
    short = Embedder(embedder.model, embedder.name, truncate_dim=64)
    cut = short.encode(["Hydrogen"])
    assert short.dim == 64 and cut.shape == (1, 64)
    np.testing.assert_allclose(np.linalg.norm(cut), 1.0, atol=1e-5)
    expected = full[0, :64] / np.linalg.norm(full[0, :64])
    np.testing.assert_allclose(cut[0], expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"truncate_dim must be in 1\.\.384"):
        Embedder(embedder.model, embedder.name, truncate_dim=999)
    assert load_embedder(f"sentence-transformers/{DEFAULT_EMBEDDER}").name == DEFAULT_EMBEDDER


def test_unknown_embedder_is_a_clear_error(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(ValueError, match="could not load embedder"):
        load_embedder(str(tmp_path / "no-such-embedder"))
    with pytest.raises(ValueError, match="non-empty"):
        load_embedder("  ")
