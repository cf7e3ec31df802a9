"""PCA of answer embeddings, fitted on the training split and stored as safetensors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.utils import Tags
from sklearn.utils.validation import check_is_fitted

from semdistill._validation import as_float_array, check_not_empty, check_positive_int


class PCAReducer(TransformerMixin, BaseEstimator):
    """Linear projection onto the leading principal axes of the training embeddings.

    Components are nested (the first ``d`` of a ``D``-component fit are the ``d``-component
    fit), so one reducer serves every target dimension up to ``n_components``:
    ``transform(X, d)`` keeps the first ``d`` coordinates. No whitening.

    Fitted attributes: ``components_ (n_components, e)``, ``mean_ (e,)``,
    ``explained_variance_ratio_ (n_components,)`` and ``n_features_in_`` (``e``).
    """

    def __init__(self, n_components: int) -> None:
        self.n_components = n_components

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        return tags

    def fit(self, X: np.ndarray, y: object = None) -> PCAReducer:
        """Fit on embeddings ``X`` of shape ``(n, e)`` (or ``(n, N, e)``, flattened); ``y`` is
        ignored."""
        check_positive_int(self.n_components, "n_components")
        X_arr = as_float_array(X, "X", (2, 3))
        check_not_empty(X_arr, "X")
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
        self.n_features_in_ = flat.shape[1]
        return self

    def transform(self, X: np.ndarray, n_components: int | None = None) -> np.ndarray:
        """Project ``X (n, e)`` or ``(n, N, e)`` onto the first ``n_components`` axes (default:
        all fitted ones) -> ``(n, d)`` or ``(n, N, d)``."""
        check_is_fitted(self)
        fitted = self.components_.shape[0]
        d = fitted if n_components is None else n_components
        if not 1 <= d <= fitted:
            raise ValueError(f"n_components must be in 1..{fitted}, got {d}")
        X_arr = as_float_array(X, "X", (2, 3))
        if X_arr.shape[-1] != self.n_features_in_:
            raise ValueError(
                f"X has {X_arr.shape[-1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input"
            )
        return (X_arr - self.mean_) @ self.components_[:d].T

    @classmethod
    def from_arrays(
        cls,
        components: np.ndarray,
        mean: np.ndarray,
        explained_variance_ratio: np.ndarray,
    ) -> PCAReducer:
        """A fitted reducer with the given basis ``(k, e)``, mean ``(e,)`` and explained
        variance ratios ``(k,)``, used as they are."""
        if components.ndim != 2 or mean.shape != (components.shape[1],):
            raise ValueError(
                f"components {components.shape} and mean {mean.shape} have inconsistent shapes"
            )
        if explained_variance_ratio.shape != (components.shape[0],):
            raise ValueError(
                f"explained_variance_ratio {explained_variance_ratio.shape} does not match "
                f"{components.shape[0]} components"
            )
        reducer = cls(components.shape[0])
        reducer.components_ = components
        reducer.mean_ = mean
        reducer.explained_variance_ratio_ = explained_variance_ratio
        reducer.n_features_in_ = mean.shape[0]
        return reducer

    def save(self, path: str | os.PathLike) -> None:
        """Write the basis to a safetensors file."""
        check_is_fitted(self)
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
        try:
            return cls.from_arrays(
                tensors["components"].numpy(),
                tensors["mean"].numpy(),
                tensors["explained_variance_ratio"].numpy(),
            )
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
