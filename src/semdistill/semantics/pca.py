"""PCA of answer embeddings, fitted on the training split and stored as safetensors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from sklearn.decomposition import PCA

from semdistill._validation import as_float_array


class PCAReducer:
    """Linear projection onto the leading principal axes of the training embeddings.

    Components are nested (the first ``d`` of a ``D``-component fit are the ``d``-component
    fit), so one reducer serves every target dimension up to ``n_components``:
    ``transform(X, d)`` keeps the first ``d`` coordinates. No whitening.
    """

    def __init__(self, n_components: int) -> None:
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.n_components = n_components
        self.components_: np.ndarray | None = None
        self.mean_: np.ndarray | None = None
        self.explained_variance_ratio_: np.ndarray | None = None

    def fit(self, X: np.ndarray) -> PCAReducer:
        """Fit on embeddings ``X`` of shape ``(n, e)`` (or ``(..., e)``, flattened)."""
        X_arr = as_float_array(X, "X", (2, 3))
        flat = X_arr.reshape(-1, X_arr.shape[-1])
        if self.n_components > min(flat.shape):
            raise ValueError(
                f"n_components={self.n_components} exceeds min(n_samples, n_features) = "
                f"{min(flat.shape)}"
            )
        pca = PCA(n_components=self.n_components, svd_solver="full").fit(flat)
        self.components_ = pca.components_.astype(np.float64)
        self.mean_ = pca.mean_.astype(np.float64)
        self.explained_variance_ratio_ = pca.explained_variance_ratio_.astype(np.float64)
        return self

    def transform(self, X: np.ndarray, n_components: int | None = None) -> np.ndarray:
        """Project ``X (..., e)`` onto the first ``n_components`` axes -> ``(..., d)``."""
        if self.components_ is None or self.mean_ is None:
            raise ValueError("this PCAReducer is not fitted yet; call fit(X) first")
        d = self.n_components if n_components is None else n_components
        if not 1 <= d <= self.n_components:
            raise ValueError(f"n_components must be in 1..{self.n_components}, got {d}")
        X_arr = np.asarray(X, dtype=np.float64)
        if X_arr.shape[-1] != self.mean_.shape[0]:
            raise ValueError(
                f"X has embedding width {X_arr.shape[-1]}, but the PCA was fitted on "
                f"{self.mean_.shape[0]}"
            )
        return (X_arr - self.mean_) @ self.components_[:d].T

    def save(self, path: str | os.PathLike) -> None:
        """Write the basis to a safetensors file."""
        if self.components_ is None:
            raise ValueError("cannot save an unfitted PCAReducer")
        tensors = {
            "components": torch.as_tensor(np.ascontiguousarray(self.components_)),
            "mean": torch.as_tensor(self.mean_),
            "explained_variance_ratio": torch.as_tensor(self.explained_variance_ratio_),
        }
        save_file(tensors, str(path), metadata={"format": "semdistill.pca", "version": "1"})

    @classmethod
    def load(cls, path: str | os.PathLike) -> PCAReducer:
        """Read a basis written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such PCA file")
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path}: not a readable safetensors file: {err}") from err
        missing = {"components", "mean", "explained_variance_ratio"} - tensors.keys()
        if missing:
            raise ValueError(f"{path}: not a PCA basis (missing {sorted(missing)})")
        components = tensors["components"].numpy()
        if components.ndim != 2 or components.shape[1] != tensors["mean"].shape[0]:
            raise ValueError(f"{path}: components and mean have inconsistent shapes")
        reducer = cls(components.shape[0])
        reducer.components_ = components
        reducer.mean_ = tensors["mean"].numpy()
        reducer.explained_variance_ratio_ = tensors["explained_variance_ratio"].numpy()
        return reducer
