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
from typing import Self

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import Tags
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, column_or_1d

from semdistill._validation import as_float_array, check_not_empty

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


def _check_features(H: np.ndarray) -> np.ndarray:
    """``H`` as a finite, non-empty float array ``(n, h)``, or a ValueError."""
    features = as_float_array(H, "H", 2)
    check_not_empty(features, "H")
    return features


def _check_target(values: np.ndarray | None, n: int, argument: str) -> np.ndarray:
    """``values`` as an ``(n,)`` array (a column vector is flattened with a warning)."""
    if values is None:
        raise ValueError(f"{argument}: the probe requires y to be passed, but the target y is None")
    y = np.asarray(values)
    if y.ndim == 2 and y.shape[1] == 1:
        y = column_or_1d(y, warn=True)
    if y.shape != (n,):
        raise ValueError(f"{argument} must have shape ({n},) to match H, got {y.shape}")
    return y


def _check_binary(labels: np.ndarray, n: int, argument: str) -> np.ndarray:
    y = _check_target(labels, n, argument)
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError(f"{argument} contains NaN or infinite values")
    check_classification_targets(y)
    kind = type_of_target(y, input_name=argument)
    if kind != "binary":
        raise ValueError(f"Only binary classification is supported; {argument} is of type {kind}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"{argument} must be binary (0/1 or bool)")
    return y.astype(np.int64)


class _LogisticProbe(BaseEstimator):
    """Standardise + L2 logistic regression with C chosen by cross-validated AUROC.

    Fitted attributes: ``pipeline_`` (the refitted scaler and logistic regression), ``C_``
    (the chosen C), ``classes_`` (``[0, 1]``, 1 = the risk), ``n_features_in_`` and, after
    :meth:`fit` (not :meth:`from_arrays`), ``n_iter_`` (lbfgs iterations of the refit).
    """

    def __init__(
        self,
        *,
        Cs: Sequence[float] = DEFAULT_CS,
        cv: int = 5,
        max_iter: int = 1000,
        seed: int = 0,
    ) -> None:
        self.Cs = Cs
        self.cv = cv
        self.max_iter = max_iter
        self.seed = seed

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags

    def _check_params(self) -> None:
        """Raise a ValueError naming the first unusable hyperparameter."""
        if len(self.Cs) == 0 or any(c <= 0 for c in self.Cs):
            raise ValueError(f"Cs must be a non-empty sequence of positive floats, got {self.Cs}")
        if self.cv < 2:
            raise ValueError(f"cv must be >= 2, got {self.cv}")

    def _fit_binary(self, H: np.ndarray, y: np.ndarray, argument: str) -> None:
        minority = int(min(y.sum(), y.size - y.sum()))
        if minority == 0:
            raise ValueError(f"{argument} holds only one class; need both 0 and 1")
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
            {"logisticregression__C": [float(c) for c in self.Cs]},
            scoring="roc_auc",
            cv=folds,
        )
        search.fit(H, y)
        self.pipeline_ = search.best_estimator_
        self.C_ = float(search.best_params_["logisticregression__C"])
        self.classes_ = self.pipeline_.classes_
        self.n_features_in_ = H.shape[1]
        self.n_iter_ = self.pipeline_[-1].n_iter_

    def _features(self, H: np.ndarray) -> np.ndarray:
        check_is_fitted(self)
        features = _check_features(H)
        if features.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {features.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input"
            )
        return features

    def predict_risk(self, H: np.ndarray) -> np.ndarray:
        """``(n,)`` predicted probability of the positive class (the risk)."""
        features = self._features(H)
        return self.pipeline_.predict_proba(features)[:, 1]

    def predict_proba(self, H: np.ndarray) -> np.ndarray:
        """``(n, 2)`` predicted probabilities of classes 0 and 1."""
        features = self._features(H)
        return self.pipeline_.predict_proba(features)

    def predict(self, H: np.ndarray) -> np.ndarray:
        """``(n,)`` predicted class, 1 where the risk exceeds 1/2."""
        features = self._features(H)
        return self.pipeline_.predict(features)

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted scaler and logistic regression to a safetensors file."""
        check_is_fitted(self)
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

    @classmethod
    def from_arrays(
        cls,
        mean: np.ndarray,
        scale: np.ndarray,
        coef: np.ndarray,
        intercept: np.ndarray,
        C: float,
        threshold: float | None = None,
    ) -> Self:
        """A fitted probe with the given scaler ``mean``/``scale (h,)``, logistic ``coef (1, h)``
        and ``intercept (1,)``, chosen ``C`` and (for the SEP) SE ``threshold``."""
        if mean.ndim != 1 or scale.shape != mean.shape or coef.shape != (1, mean.shape[0]):
            raise ValueError(
                f"mean {mean.shape}, scale {scale.shape} and coef {coef.shape} are inconsistent"
            )
        probe = cls()
        scaler = StandardScaler()
        scaler.mean_ = mean
        scaler.scale_ = scale
        scaler.var_ = scaler.scale_**2
        scaler.n_features_in_ = len(scaler.mean_)
        logistic = LogisticRegression(C=C, max_iter=probe.max_iter)
        logistic.coef_ = coef
        logistic.intercept_ = intercept
        logistic.classes_ = np.array([0, 1])
        logistic.n_features_in_ = logistic.coef_.shape[1]
        probe.pipeline_ = make_pipeline(scaler, logistic)
        probe.C_ = C
        probe.classes_ = logistic.classes_
        probe.n_features_in_ = len(mean)
        if threshold is not None:
            probe.threshold_ = threshold
        return probe


class SemanticEntropyProbe(_LogisticProbe):
    """SEP: predicts the probability that a prompt's semantic entropy is high.

    `fit` binarises SE with `binarize_threshold` (stored as ``threshold_``; high = se >=
    threshold) and fits the probe; `predict_risk` returns P(high SE).
    """

    def fit(self, H: np.ndarray, y: np.ndarray) -> SemanticEntropyProbe:
        """Fit on hidden states ``H (n, h)`` and their semantic entropies ``y (n,)``."""
        self._check_params()
        features = _check_features(H)
        values = _check_target(y, features.shape[0], "se").astype(np.float64)
        if len(values) < 4:
            raise ValueError(
                f"n_samples = {len(values)}: the probe needs at least 2 prompts of each SE class"
            )
        self.threshold_ = binarize_threshold(values)
        self._fit_binary(features, (values >= self.threshold_).astype(np.int64), "binarised se")
        return self


class CorrectnessProbe(ClassifierMixin, _LogisticProbe):
    """PCP / P(I know): predicts the probability that the default answer is incorrect."""

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def fit(self, H: np.ndarray, y: np.ndarray) -> CorrectnessProbe:
        """Fit on hidden states ``H (n, h)`` and labels ``y (n,)``: 1 where the default answer
        is incorrect, else 0."""
        self._check_params()
        features = _check_features(H)
        self._fit_binary(features, _check_binary(y, features.shape[0], "incorrect"), "incorrect")
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
    threshold = metadata.get("threshold")
    return kind.from_arrays(
        *(tensors[name].numpy() for name in ("mean", "scale", "coef", "intercept")),
        C=float(metadata["C"]),
        threshold=None if threshold is None else float(threshold),
    )
