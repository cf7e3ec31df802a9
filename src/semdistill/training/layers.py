"""Layer selection (paper Appendix D.1, after Kossen et al. 2024): one linear probe per layer.

For every layer a probe predicts binarised semantic entropy from the last-prompt-token
hidden state: ``StandardScaler -> LogisticRegression(L2, C, lbfgs)`` fitted on the training
prompts only. The fixed, fairly strong default C = 0.01 (on standardised features) keeps the
fit well-posed when h > n and makes lbfgs converge in tens of iterations (well under a
second per layer for n ~ 1000, h ~ 1536). The layer with the best validation AUROC wins
(ties -> the deeper layer); validation accuracy (threshold 0.5) is reported too. (The
paper's Appendix D.1 names validation accuracy as the criterion; AUROC is used here because
it does not depend on the 0.5 cut-off.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from semdistill.metrics import auroc


@dataclass(frozen=True)
class LayerSelection:
    """Validation quality of a per-layer SE probe; ``best_layer`` indexes axis 1 of H."""

    layers: np.ndarray
    val_auroc: np.ndarray
    val_accuracy: np.ndarray
    best_layer: int

    def to_dict(self) -> dict[str, object]:
        """Plain dict with lists (JSON-serialisable)."""
        return {
            "layers": self.layers.tolist(),
            "val_auroc": self.val_auroc.tolist(),
            "val_accuracy": self.val_accuracy.tolist(),
            "best_layer": self.best_layer,
        }


def _check_states(H: np.ndarray, argument: str) -> np.ndarray:
    states = np.asarray(H)
    if states.ndim != 3 or 0 in states.shape:
        raise ValueError(
            f"{argument} must have shape (n, L, h) with all sizes > 0, got {states.shape}"
        )
    if states.dtype.kind != "f":
        raise ValueError(f"{argument} must be a floating-point array, got dtype {states.dtype}")
    return states


def _check_labels(labels: np.ndarray, n: int, argument: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"{argument} must have shape ({n},), got {y.shape}")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError(f"{argument} contains NaN or infinite values")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"{argument} must be binary (0/1 or bool)")
    if y.min() == y.max():
        raise ValueError(f"{argument} contains a single class; need both 0 and 1")
    return y.astype(np.int64)


def _layer(states: np.ndarray, layer: int, argument: str) -> np.ndarray:
    x = states[:, layer, :].astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{argument} contains NaN or infinite values at layer {layer}")
    return x


def select_layer(
    H_train: np.ndarray,
    high_se_train: np.ndarray,
    H_val: np.ndarray,
    high_se_val: np.ndarray,
    *,
    C: float = 0.01,
    max_iter: int = 300,
) -> LayerSelection:
    """Fit a probe per layer on train, score it on validation, pick the best layer.

    Args:
        H_train: ``(n, L, h)`` hidden states (float16/32/64) of the training prompts.
        high_se_train: ``(n,)`` binarised SE (1 = high), e.g. ``se >= binarize_threshold(se)``.
        H_val: ``(m, L, h)`` hidden states of the validation prompts.
        high_se_val: ``(m,)`` binarised SE with the training threshold.
        C: inverse L2 strength of the logistic regression (on standardised features).
        max_iter: lbfgs iteration cap.
    """
    train = _check_states(H_train, "H_train")
    val = _check_states(H_val, "H_val")
    if train.shape[1:] != val.shape[1:]:
        raise ValueError(
            f"H_train and H_val differ in (L, h): {train.shape[1:]} vs {val.shape[1:]}"
        )
    y_train = _check_labels(high_se_train, train.shape[0], "high_se_train")
    y_val = _check_labels(high_se_val, val.shape[0], "high_se_val")
    if C <= 0:
        raise ValueError(f"C must be > 0, got {C}")
    n_layers = train.shape[1]
    val_auroc = np.empty(n_layers)
    val_accuracy = np.empty(n_layers)
    for layer in range(n_layers):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
        probe.fit(_layer(train, layer, "H_train"), y_train)
        x_val = _layer(val, layer, "H_val")
        val_auroc[layer] = auroc(y_val, probe.predict_proba(x_val)[:, 1])
        val_accuracy[layer] = float(np.mean(probe.predict(x_val) == y_val))
    best = int(np.flatnonzero(val_auroc == val_auroc.max())[-1])
    return LayerSelection(
        layers=np.arange(n_layers),
        val_auroc=val_auroc,
        val_accuracy=val_accuracy,
        best_layer=best,
    )
