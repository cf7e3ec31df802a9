"""The students' input: last-prompt-token states of one or several layers, as one vector."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from sklearn.utils import Tags
from sklearn.utils.validation import check_is_fitted

from semdistill._validation import as_float_array, check_not_empty, check_positive_int

FORMAT = "semdistill.inputs"


class LayerInputs(TransformerMixin, BaseEstimator):
    """Maps the states of ``layers`` (``(n, len(layers), hidden)``) to one input vector.

    With ``n_components=None`` the states are concatenated as they are: for one layer, the
    paper's input (the student standardises it itself). With ``n_components=k`` each layer is
    standardised and projected onto its ``k`` leading principal axes, both fitted on the
    training prompts' states, and the projections are concatenated (``len(layers) * k``).

    Fitted attributes: ``layers_`` (the layers as a tuple of ints) and, per layer,
    ``mean_``/``scale_ (layers, hidden)`` and ``components_ (layers, k, hidden)``, all three
    None for raw states.
    """

    def __init__(self, layers: Sequence[int], n_components: int | None = None) -> None:
        self.layers = layers
        self.n_components = n_components

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        return tags

    @property
    def reduces(self) -> bool:
        """Whether each layer is standardised and projected (else passed through)."""
        return self.n_components is not None

    @property
    def width(self) -> int | None:
        """Features per prompt of reducing inputs; None for raw states (the hidden width)."""
        return len(self.layers) * self.n_components if self.reduces else None

    def describe(self) -> str:
        """E.g. ``layer 20`` or ``layers 14, 17, 20 (64 PCs each)``."""
        names = ", ".join(str(layer) for layer in self.layers)
        label = f"layer{'s' if len(self.layers) > 1 else ''} {names}"
        return f"{label} ({self.n_components} PCs each)" if self.reduces else label

    def fit(self, states: np.ndarray, y: object = None) -> LayerInputs:
        """Fit the per-layer standardisation and PCA on training states ``(n, layers, hidden)``
        (nothing to fit for raw states beyond checking them); ``y`` is ignored."""
        layers = _check_layers(self.layers)
        if self.n_components is not None:
            check_positive_int(self.n_components, "n_components")
        X = _check_states(states, layers, self.describe())
        check_not_empty(X, "states")
        self.layers_ = layers
        self.mean_ = self.scale_ = self.components_ = None
        if not self.reduces:
            return self
        k = self.n_components
        if k > min(X.shape[0], X.shape[2]):
            raise ValueError(
                f"n_components={k} exceeds min(prompts, hidden) = {min(X.shape[0], X.shape[2])}"
            )
        means, scales, components = [], [], []
        for i in range(X.shape[1]):
            scaler = StandardScaler().fit(X[:, i])
            # exact eigendecomposition of the covariance, faster than a full SVD when n >> k
            pca = PCA(n_components=k, svd_solver="covariance_eigh").fit(scaler.transform(X[:, i]))
            means.append(scaler.mean_)
            scales.append(scaler.scale_)
            components.append(pca.components_)
        self.mean_ = np.stack(means)
        self.scale_ = np.stack(scales)
        self.components_ = np.stack(components)
        return self

    def transform(self, states: np.ndarray) -> np.ndarray:
        """Input vectors ``(n, width)`` float32 of states ``(n, len(layers), hidden)``."""
        check_is_fitted(self)
        X = _check_states(states, self.layers_, self.describe())
        if self.components_ is None:
            return X.reshape(len(X), -1).astype(np.float32)
        if X.shape[2] != self.mean_.shape[1]:
            raise ValueError(
                f"states have width {X.shape[2]}, the inputs were fitted on {self.mean_.shape[1]}"
            )
        standard = (X - self.mean_) / self.scale_
        projected = np.einsum("nlh,lkh->nlk", standard, self.components_)
        return projected.reshape(len(X), -1).astype(np.float32)

    @classmethod
    def from_arrays(
        cls,
        layers: Sequence[int],
        mean: np.ndarray | None = None,
        scale: np.ndarray | None = None,
        components: np.ndarray | None = None,
    ) -> LayerInputs:
        """Fitted inputs for ``layers``: raw states without arrays, else reduced with the given
        per-layer ``mean``/``scale (layers, hidden)`` and ``components (layers, k, hidden)``."""
        chosen = _check_layers(layers)
        if components is None:
            if mean is not None or scale is not None:
                raise ValueError("mean and scale need components")
            inputs = cls(chosen)
            inputs.layers_ = chosen
            inputs.mean_ = inputs.scale_ = inputs.components_ = None
            return inputs
        if (
            mean is None
            or scale is None
            or components.ndim != 3
            or components.shape[0] != len(chosen)
            or mean.shape != scale.shape
            or mean.shape != (len(chosen), components.shape[2])
        ):
            raise ValueError("layers, mean, scale and components have inconsistent shapes")
        inputs = cls(chosen, components.shape[1])
        inputs.layers_ = chosen
        inputs.mean_, inputs.scale_, inputs.components_ = mean, scale, components
        return inputs

    def save(self, path: str | os.PathLike) -> None:
        """Write the layers and fitted projections to a safetensors file."""
        check_is_fitted(self)
        tensors = {"layers": torch.tensor(self.layers_, dtype=torch.int64)}
        if self.components_ is not None:
            tensors |= {
                "mean": torch.as_tensor(self.mean_),
                "scale": torch.as_tensor(self.scale_),
                "components": torch.as_tensor(np.ascontiguousarray(self.components_)),
            }
        save_file(tensors, str(path), metadata={"format": FORMAT, "version": "1"})

    @classmethod
    def load(cls, path: str | os.PathLike) -> LayerInputs:
        """Read inputs written by :meth:`save`; refuses other or inconsistent files."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such inputs file")
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path}: not a readable safetensors file: {err}") from err
        if "layers" not in tensors:
            raise ValueError(f"{path}: not a semdistill inputs file (no 'layers')")
        layers = tensors["layers"].tolist()
        if "components" not in tensors:
            return cls.from_arrays(layers)
        missing = {"mean", "scale"} - tensors.keys()
        if missing:
            raise ValueError(f"{path}: not a semdistill inputs file (missing {sorted(missing)})")
        try:
            return cls.from_arrays(
                layers,
                tensors["mean"].numpy(),
                tensors["scale"].numpy(),
                tensors["components"].numpy(),
            )
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err


def _check_layers(layers: Sequence[int]) -> tuple[int, ...]:
    """``layers`` as a tuple of distinct non-negative ints, or a ValueError."""
    try:
        chosen = tuple(int(layer) for layer in layers)
    except (TypeError, ValueError) as err:
        raise ValueError(f"layers must be a sequence of integer indices, got {layers!r}") from err
    if not chosen or len(set(chosen)) != len(chosen) or min(chosen) < 0:
        raise ValueError(f"layers must be distinct non-negative indices, got {layers!r}")
    return chosen


def _check_states(states: np.ndarray, layers: tuple[int, ...], description: str) -> np.ndarray:
    """``states`` as a finite float64 array ``(n, len(layers), hidden)``, or a ValueError."""
    X = as_float_array(states, "states", 3)
    if X.shape[1] != len(layers):
        raise ValueError(
            f"states hold {X.shape[1]} layers; these inputs read {len(layers)} ({description})"
        )
    return X.astype(np.float64)
