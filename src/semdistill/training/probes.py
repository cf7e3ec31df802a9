"""Linear probes on prompt hidden states: SEP (Kossen et al. 2024) and PCP (Kadavath et al. 2022).

Both are a scikit-learn Pipeline ``StandardScaler -> LogisticRegression`` (L2, lbfgs). The
inverse regularisation strength C is chosen from a small grid by stratified k-fold
cross-validated AUROC (``GridSearchCV``, scaler refitted inside every fold) and the pipeline
is then refitted on all training data. Default grid: C in {1e-3, 1e-2, 1e-1, 1}, i.e. from
strong shrinkage (appropriate when the hidden size exceeds the number of prompts) up to
scikit-learn's default.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
PROBE_FORMAT = "semdistill.probe"


def binarize_threshold(se: np.ndarray, n_candidates: int = 100) -> float:
    """SEP binarisation threshold for semantic entropies (Kossen et al. 2024).

    Over ``n_candidates`` evenly spaced thresholds t from min(se) to max(se), split into
    low = {se < t} and high = {se >= t} and return the t minimising the summed within-group
    squared error (first one on ties). Label "high SE" as ``se >= threshold``.
    """
    values = np.asarray(se, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"se must be a non-empty 1-D array, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("se contains NaN or infinite values")
    if n_candidates < 2:
        raise ValueError(f"n_candidates must be >= 2, got {n_candidates}")
    if values.min() == values.max():
        raise ValueError("se is constant; there is no threshold that splits it")
    centred = values - values.mean()
    candidates = np.linspace(values.min(), values.max(), n_candidates)
    high = values[None, :] >= candidates[:, None]
    sse = np.zeros(n_candidates)
    for mask in (high, ~high):
        count = mask.sum(axis=1)
        total = np.where(mask, centred, 0.0).sum(axis=1)
        square = np.where(mask, centred**2, 0.0).sum(axis=1)
        sse += square - np.divide(total**2, count, out=np.zeros(n_candidates), where=count > 0)
    return float(candidates[np.argmin(sse)])


def _check_features(H: np.ndarray, argument: str = "H") -> np.ndarray:
    features = np.asarray(H, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"{argument} must have shape (n, h) with n, h > 0, got {features.shape}")
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{argument} contains NaN or infinite values")
    return features


def _check_binary(labels: np.ndarray, n: int, argument: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"{argument} must have shape ({n},) to match H, got {y.shape}")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError(f"{argument} contains NaN or infinite values")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"{argument} must be binary (0/1 or bool)")
    return y.astype(np.int64)


class _LogisticProbe:
    """Standardise + L2 logistic regression with C chosen by cross-validated AUROC."""

    def __init__(
        self,
        *,
        Cs: Sequence[float] = DEFAULT_CS,
        cv: int = 5,
        max_iter: int = 1000,
        seed: int = 0,
    ) -> None:
        if len(Cs) == 0 or any(c <= 0 for c in Cs):
            raise ValueError(f"Cs must be a non-empty sequence of positive floats, got {Cs}")
        if cv < 2:
            raise ValueError(f"cv must be >= 2, got {cv}")
        self.Cs = tuple(float(c) for c in Cs)
        self.cv = cv
        self.max_iter = max_iter
        self.seed = seed
        self.pipeline_: Pipeline | None = None
        self.C_: float | None = None

    def _fit_binary(self, H: np.ndarray, y: np.ndarray, argument: str) -> None:
        minority = int(min(y.sum(), y.size - y.sum()))
        if minority == 0:
            raise ValueError(f"{argument} contains a single class; need both 0 and 1")
        if minority < 2:
            raise ValueError(f"{argument} needs at least 2 examples of each class")
        folds = StratifiedKFold(
            n_splits=min(self.cv, minority), shuffle=True, random_state=self.seed
        )
        search = GridSearchCV(
            make_pipeline(
                StandardScaler(),
                LogisticRegression(max_iter=self.max_iter),
            ),
            {"logisticregression__C": list(self.Cs)},
            scoring="roc_auc",
            cv=folds,
        )
        search.fit(H, y)
        self.pipeline_ = search.best_estimator_
        self.C_ = float(search.best_params_["logisticregression__C"])

    def predict_risk(self, H: np.ndarray) -> np.ndarray:
        """``(n,)`` predicted probability of the positive class (the risk)."""
        if self.pipeline_ is None:
            raise ValueError(f"{type(self).__name__} is not fitted; call fit first")
        features = _check_features(H)
        expected = self.pipeline_.n_features_in_
        if features.shape[1] != expected:
            raise ValueError(
                f"H has {features.shape[1]} features, the probe was fitted on {expected}"
            )
        return self.pipeline_.predict_proba(features)[:, 1]

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted scaler and logistic regression to a safetensors file."""
        if self.pipeline_ is None:
            raise ValueError(f"cannot save an unfitted {type(self).__name__}")
        scaler, logistic = self.pipeline_[0], self.pipeline_[-1]
        tensors = {
            "mean": torch.as_tensor(scaler.mean_),
            "scale": torch.as_tensor(scaler.scale_),
            "coef": torch.as_tensor(logistic.coef_),
            "intercept": torch.as_tensor(logistic.intercept_),
        }
        metadata = {"format": PROBE_FORMAT, "kind": type(self).__name__, "C": repr(self.C_)}
        threshold = getattr(self, "threshold_", None)
        if threshold is not None:
            metadata["threshold"] = repr(threshold)
        save_file(tensors, str(path), metadata=metadata)

    def _restore(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        scaler = StandardScaler()
        scaler.mean_ = tensors["mean"].numpy()
        scaler.scale_ = tensors["scale"].numpy()
        scaler.var_ = scaler.scale_**2
        scaler.n_features_in_ = len(scaler.mean_)
        logistic = LogisticRegression(C=float(metadata["C"]), max_iter=self.max_iter)
        logistic.coef_ = tensors["coef"].numpy()
        logistic.intercept_ = tensors["intercept"].numpy()
        logistic.classes_ = np.array([0, 1])
        logistic.n_features_in_ = logistic.coef_.shape[1]
        self.pipeline_ = make_pipeline(scaler, logistic)
        self.C_ = float(metadata["C"])


class SemanticEntropyProbe(_LogisticProbe):
    """SEP: predicts the probability that a prompt's semantic entropy is high.

    `fit` binarises SE with `binarize_threshold` (stored as ``threshold_``; high = se >=
    threshold) and fits the probe; `predict_risk` returns P(high SE).
    """

    threshold_: float | None = None

    def fit(self, H: np.ndarray, se: np.ndarray) -> SemanticEntropyProbe:
        """Fit on hidden states ``(n, h)`` and semantic entropies ``(n,)``."""
        features = _check_features(H)
        values = np.asarray(se, dtype=np.float64)
        if values.shape != (features.shape[0],):
            raise ValueError(
                f"se must have shape ({features.shape[0]},) to match H, got {values.shape}"
            )
        self.threshold_ = binarize_threshold(values)
        self._fit_binary(features, (values >= self.threshold_).astype(np.int64), "binarised se")
        return self


class CorrectnessProbe(_LogisticProbe):
    """PCP / P(I know): predicts the probability that the default answer is incorrect."""

    def fit(self, H: np.ndarray, incorrect: np.ndarray) -> CorrectnessProbe:
        """Fit on hidden states ``(n, h)`` and labels ``(n,)`` (1 = incorrect)."""
        features = _check_features(H)
        self._fit_binary(
            features, _check_binary(incorrect, features.shape[0], "incorrect"), "incorrect"
        )
        return self


LinearProbe = SemanticEntropyProbe | CorrectnessProbe
_KINDS: dict[str, type[SemanticEntropyProbe] | type[CorrectnessProbe]] = {
    "SemanticEntropyProbe": SemanticEntropyProbe,
    "CorrectnessProbe": CorrectnessProbe,
}


def load_probe(path: str | os.PathLike) -> LinearProbe:
    """A probe written by ``save``; refuses files that are not one, naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such probe file")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file: {err}") from err
    kind = _KINDS.get(metadata.get("kind", ""))
    if metadata.get("format") != PROBE_FORMAT or kind is None:
        raise ValueError(f"{path}: not a semdistill probe file")
    missing = {"mean", "scale", "coef", "intercept"} - tensors.keys()
    if missing or tensors["coef"].shape != (1, tensors["mean"].shape[0]):
        raise ValueError(f"{path}: probe tensors are missing or inconsistent ({sorted(missing)})")
    probe = kind()
    probe._restore(tensors, metadata)
    if "threshold" in metadata:
        probe.threshold_ = float(metadata["threshold"])
    return probe
