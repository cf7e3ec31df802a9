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
    """Validation quality of a per-layer SE probe; ``best_layer`` indexes axis 1 of H.

    ``held_out_groups`` is empty for the random validation split of :func:`select_layer`;
    for :func:`select_layer_by_groups` it names the training groups held out in turn, and
    ``val_auroc``/``val_accuracy`` are means over them.
    """

    layers: np.ndarray
    val_auroc: np.ndarray
    val_accuracy: np.ndarray
    best_layer: int
    held_out_groups: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """Plain dict with lists (JSON-serialisable)."""
        out: dict[str, object] = {
            "layers": self.layers.tolist(),
            "val_auroc": self.val_auroc.tolist(),
            "val_accuracy": self.val_accuracy.tolist(),
            "best_layer": self.best_layer,
        }
        if self.held_out_groups:
            out["held_out_groups"] = list(self.held_out_groups)
        return out


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
    return _selection(val_auroc, val_accuracy)


def select_layer_by_groups(
    H: np.ndarray,
    high_se: np.ndarray,
    groups: np.ndarray,
    held_out: tuple[str, ...],
    *,
    C: float = 0.01,
    max_iter: int = 300,
) -> LayerSelection:
    """Pick the layer whose SE probe transfers best to unseen question groups.

    For every group in ``held_out`` and every layer a probe (as in :func:`select_layer`) is
    fitted on the rows of all other groups and scored (AUROC) on that group's rows; the layer
    with the best mean AUROC over the held-out groups wins (ties -> the deeper layer). A layer
    that separates semantic entropy within one question style through the prompt's form
    (length, template position) scores well on a random validation split of the same groups
    but not here. Only ``high_se`` (binarised semantic entropy, no correctness label) is read.

    Args:
        H: ``(n, L, h)`` hidden states of the training and validation prompts.
        high_se: ``(n,)`` binarised SE (1 = high).
        groups: ``(n,)`` each row's question group.
        held_out: at least two groups to hold out in turn, each with both SE classes.
    """
    states = _check_states(H, "H")
    y = _check_labels(high_se, states.shape[0], "high_se")
    names = np.asarray(groups).astype(str)
    if names.shape != (states.shape[0],):
        raise ValueError(f"groups must have shape ({states.shape[0]},), got {names.shape}")
    if len(held_out) < 2:
        raise ValueError(f"need at least two groups to hold out, got {list(held_out)}")
    if C <= 0:
        raise ValueError(f"C must be > 0, got {C}")
    folds = []
    for group in held_out:
        inside = names == group
        _check_labels(y[inside], int(inside.sum()), f"high_se of group {group!r}")
        _check_labels(y[~inside], int((~inside).sum()), f"high_se outside group {group!r}")
        folds.append(inside)
    n_layers = states.shape[1]
    val_auroc = np.zeros(n_layers)
    val_accuracy = np.zeros(n_layers)
    for layer in range(n_layers):
        x = _layer(states, layer, "H")
        for inside in folds:
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
            probe.fit(x[~inside], y[~inside])
            val_auroc[layer] += auroc(y[inside], probe.predict_proba(x[inside])[:, 1])
            val_accuracy[layer] += float(np.mean(probe.predict(x[inside]) == y[inside]))
    val_auroc /= len(folds)
    val_accuracy /= len(folds)
    return _selection(val_auroc, val_accuracy, tuple(held_out))


def _selection(
    val_auroc: np.ndarray, val_accuracy: np.ndarray, held_out: tuple[str, ...] = ()
) -> LayerSelection:
    """The selection whose best layer is the deepest of those with the highest AUROC."""
    best = int(np.flatnonzero(val_auroc == val_auroc.max())[-1])
    return LayerSelection(
        layers=np.arange(len(val_auroc)),
        val_auroc=val_auroc,
        val_accuracy=val_accuracy,
        best_layer=best,
        held_out_groups=held_out,
    )
