"""The students' input: last-prompt-token states of one or several layers, as one vector."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from semdistill._validation import as_float_array

FORMAT = "semdistill.inputs"


class LayerInputs:
    """Maps the states of ``layers`` (``(n, len(layers), hidden)``) to one input vector.

    With ``n_components=None`` the states are concatenated as they are: for one layer, the
    paper's input (the student standardises it itself). With ``n_components=k`` each layer is
    standardised and projected onto its ``k`` leading principal axes, both fitted on the
    training prompts' states, and the projections are concatenated (``len(layers) * k``).
    """

    def __init__(self, layers: Sequence[int], n_components: int | None = None) -> None:
        chosen = tuple(int(layer) for layer in layers)
        if not chosen or len(set(chosen)) != len(chosen) or min(chosen) < 0:
            raise ValueError(f"layers must be distinct non-negative indices, got {layers!r}")
        if n_components is not None and n_components < 1:
            raise ValueError(f"n_components must be >= 1 or None, got {n_components}")
        self.layers = chosen
        self.n_components = n_components
        self.mean_: np.ndarray | None = None  # (layers, hidden)
        self.scale_: np.ndarray | None = None  # (layers, hidden)
        self.components_: np.ndarray | None = None  # (layers, k, hidden)

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

    def fit(self, states: np.ndarray) -> LayerInputs:
        """Fit the per-layer standardisation and PCA on training states ``(n, layers, hidden)``."""
        X = self._check(states)
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
        X = self._check(states)
        if not self.reduces:
            return X.reshape(len(X), -1).astype(np.float32)
        if self.components_ is None:
            raise ValueError("these LayerInputs are not fitted yet; call fit(states) first")
        if X.shape[2] != self.mean_.shape[1]:
            raise ValueError(
                f"states have width {X.shape[2]}, the inputs were fitted on {self.mean_.shape[1]}"
            )
        standard = (X - self.mean_) / self.scale_
        projected = np.einsum("nlh,lkh->nlk", standard, self.components_)
        return projected.reshape(len(X), -1).astype(np.float32)

    def _check(self, states: np.ndarray) -> np.ndarray:
        X = as_float_array(states, "states", 3)
        if X.shape[1] != len(self.layers):
            raise ValueError(
                f"states hold {X.shape[1]} layers; these inputs read {len(self.layers)} "
                f"({self.describe()})"
            )
        return X.astype(np.float64)

    def save(self, path: str | os.PathLike) -> None:
        """Write the layers and fitted projections to a safetensors file."""
        tensors = {"layers": torch.tensor(self.layers, dtype=torch.int64)}
        if self.reduces:
            if self.components_ is None:
                raise ValueError("cannot save unfitted LayerInputs")
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
            return cls(layers)
        components = tensors["components"].numpy()
        mean, scale = tensors["mean"].numpy(), tensors["scale"].numpy()
        if (
            components.ndim != 3
            or components.shape[0] != len(layers)
            or mean.shape != scale.shape
            or mean.shape != (len(layers), components.shape[2])
        ):
            raise ValueError(f"{path}: layers, mean, scale and components have inconsistent shapes")
        inputs = cls(layers, components.shape[1])
        inputs.mean_, inputs.scale_, inputs.components_ = mean, scale, components
        return inputs
