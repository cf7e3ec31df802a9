"""Calibrating the SSD risk score (Rényi-2 entropy) into a probability of an incorrect answer.

Two maps, both monotone non-decreasing in the entropy, fitted on validation prompts whose
answers were judged correct or incorrect:

* ``"isotonic"``: isotonic regression, stored as its breakpoints and evaluated by linear
  interpolation between them (constant beyond the ends).
* ``"platt"``: Platt scaling, a logistic regression on the entropy fitted to Platt's smoothed
  targets ``(n+ + 1) / (n+ + 2)`` and ``1 / (n- + 2)``, so separable data gives finite
  coefficients.

A calibration is stored as JSON (``calibration.json``), with the fingerprint of the SSD it was
fitted for, so it is never applied to a different student.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from semdistill._validation import as_float_array
from semdistill.formats import FileFormat

CalibrationMethod = Literal["isotonic", "platt"]
METHODS: tuple[CalibrationMethod, ...] = ("isotonic", "platt")
CALIBRATION_FILE = "calibration.json"
FORMAT = FileFormat("semdistill.calibration", 1, "calibration file")
MEANING = "calibrated probability of an incorrect answer"


@dataclass(frozen=True)
class RiskCalibration:
    """A fitted map from SSD entropy to the calibrated probability of an incorrect answer.

    For ``"isotonic"``, ``x``/``y`` are the breakpoints (entropy, probability); for
    ``"platt"``, the probability is ``sigmoid(slope * entropy + intercept)``. ``n_prompts``
    and ``incorrect_rate`` describe the validation prompts it was fitted on; ``fingerprint``
    identifies the SSD artifacts it belongs to.
    """

    method: CalibrationMethod
    n_prompts: int
    incorrect_rate: float
    fingerprint: str
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    slope: float = 0.0
    intercept: float = 0.0

    def probability(self, entropy: np.ndarray) -> np.ndarray:
        """The calibrated probability of an incorrect answer for each entropy, shape ``(n,)``."""
        values = as_float_array(entropy, "entropy", 1)
        if self.method == "isotonic":
            return np.interp(values, np.asarray(self.x), np.asarray(self.y))
        logits = self.slope * values + self.intercept
        return 1.0 / (1.0 + np.exp(-logits))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with format tags and what the probability means."""
        body: dict[str, Any] = {
            **FORMAT.header(),
            "meaning": MEANING,
            "method": self.method,
            "n_prompts": self.n_prompts,
            "incorrect_rate": self.incorrect_rate,
            "fingerprint": self.fingerprint,
        }
        if self.method == "isotonic":
            body["thresholds"] = {"entropy": list(self.x), "probability": list(self.y)}
        else:
            body["coefficients"] = {"slope": self.slope, "intercept": self.intercept}
        return body

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = CALIBRATION_FILE) -> RiskCalibration:
        """Parse :meth:`to_dict` output; a ValueError naming ``source`` if it is not one."""
        FORMAT.check(data, source)
        method = data.get("method")
        if method not in METHODS:
            raise ValueError(f"{source}: method must be one of {METHODS}, got {method!r}")
        try:
            common = {
                "method": method,
                "n_prompts": int(data["n_prompts"]),
                "incorrect_rate": float(data["incorrect_rate"]),
                "fingerprint": str(data["fingerprint"]),
            }
            if method == "isotonic":
                x = tuple(float(v) for v in data["thresholds"]["entropy"])
                y = tuple(float(v) for v in data["thresholds"]["probability"])
                if not x or len(x) != len(y) or any(b < a for a, b in pairwise(x)):
                    raise ValueError("thresholds must be non-empty, equally long, x sorted")
                return cls(**common, x=x, y=y)
            coefficients = data["coefficients"]
            return cls(
                **common,
                slope=float(coefficients["slope"]),
                intercept=float(coefficients["intercept"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: invalid calibration: {err}") from err


def fit_calibration(
    entropy: np.ndarray,
    incorrect: np.ndarray,
    method: CalibrationMethod = "isotonic",
    *,
    fingerprint: str = "",
) -> RiskCalibration:
    """Fit the map from entropy to the calibrated probability of an incorrect answer.

    ``entropy`` holds SSD risk scores of validation prompts and ``incorrect`` whether each
    prompt's answer was judged incorrect (bool or 0/1); both classes must occur.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x = as_float_array(entropy, "entropy", 1)
    labels = np.asarray(incorrect)
    if labels.shape != x.shape:
        raise ValueError(f"incorrect has shape {labels.shape}, entropy has {x.shape}")
    if labels.dtype != bool and not np.isin(labels, (0, 1)).all():
        raise ValueError("incorrect must hold booleans or 0/1 values")
    labels = labels.astype(bool)
    n_bad = int(labels.sum())
    if n_bad in (0, len(labels)):
        raise ValueError(
            "incorrect must contain both correct and incorrect prompts to fit a calibration, "
            f"got {n_bad} incorrect of {len(labels)}"
        )
    common = {
        "n_prompts": len(x),
        "incorrect_rate": n_bad / len(x),
        "fingerprint": fingerprint,
    }
    if method == "isotonic":
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(x, labels.astype(np.float64))
        return RiskCalibration(
            method="isotonic",
            x=tuple(float(v) for v in iso.X_thresholds_),
            y=tuple(float(v) for v in iso.y_thresholds_),
            **common,
        )
    n_good = len(labels) - n_bad
    target = np.where(labels, (n_bad + 1) / (n_bad + 2), 1 / (n_good + 2))
    features = np.concatenate([x, x])[:, None]
    classes = np.concatenate([np.ones_like(x), np.zeros_like(x)])
    weights = np.concatenate([target, 1.0 - target])
    model = LogisticRegression(C=np.inf).fit(features, classes, sample_weight=weights)
    return RiskCalibration(
        method="platt",
        slope=float(model.coef_[0, 0]),
        intercept=float(model.intercept_[0]),
        **common,
    )


def _digest(data: dict[str, Any]) -> str:
    """sha256 of a calibration's fields (all but ``sha256``) in canonical JSON."""
    body = {key: value for key, value in data.items() if key != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def save_calibration(path: str | os.PathLike, calibration: RiskCalibration) -> None:
    """Write ``calibration`` as JSON to ``path`` atomically, with the sha256 of its fields."""
    target = Path(path)
    data = calibration.to_dict()
    data["sha256"] = _digest(data)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, target)


def load_calibration(path: str | os.PathLike) -> RiskCalibration:
    """Read a calibration written by :func:`save_calibration`."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such calibration file")
    try:
        data = json.loads(source.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{source}: not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object")
    calibration = RiskCalibration.from_dict(
        {k: v for k, v in data.items() if k != "sha256"}, source=str(source)
    )
    if data.get("sha256") != _digest(data):
        raise ValueError(
            f"{source}: contents do not match the sha256 it records (edited, or written by an "
            "older semdistill): calibrate again"
        )
    return calibration
