"""How familiar a prompt is to a scorer: its distance to the training prompts, calibrated.

No labels are involved. A prompt is represented as the risk student reads it (the inputs of
``inputs/risk.safetensors``), standardised with the student's own training statistics. Its
*distance* is the mean Euclidean distance to its ``k`` nearest training prompts, divided by
the square root of the width, so it is in training standard deviations per feature (root mean
square). Its *familiarity* is the share of held-out validation prompts that lie at least as
far from the training prompts, ``(1 + #{d_val >= d}) / (1 + n_val)``: about uniform on
(0, 1] for prompts drawn like the training ones, near 0 for prompts unlike all of them (a
conformal p-value of "this prompt is like the training set"). A scorer whose risk is read on
a prompt with familiarity below a few percent is extrapolating.

On disk: ``familiarity.safetensors`` (the training prompts' and validation prompts'
standardised inputs, and the standardisation) and ``familiarity.json`` (``k``, counts,
format), beside the scorer's other artifacts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from semdistill._validation import as_float_array
from semdistill.student import SSDStudent

FORMAT = "semdistill.familiarity"
FORMAT_VERSION = 1
TENSORS_FILE = "familiarity.safetensors"
JSON_FILE = "familiarity.json"
DEFAULT_K = 10
MAX_REFERENCE = 4000
_CHUNK = 1024


class Familiarity:
    """kNN distance of a prompt's standardised input to the training prompts, and its
    calibration on validation prompts (see the module docstring).

    ``reference`` ``(n_ref, w)`` and ``holdout`` ``(n_val, w)`` are standardised inputs of the
    training and validation prompts; ``mean``/``std`` ``(w,)`` the standardisation.
    """

    def __init__(
        self,
        reference: np.ndarray,
        holdout: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        *,
        k: int = DEFAULT_K,
    ) -> None:
        self.reference = np.ascontiguousarray(as_float_array(reference, "reference", 2), np.float32)
        self.holdout = np.ascontiguousarray(as_float_array(holdout, "holdout", 2), np.float32)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1)
        width = self.reference.shape[1]
        if (
            self.holdout.shape[1] != width
            or self.mean.shape != (width,)
            or self.std.shape != (width,)
        ):
            raise ValueError(
                f"reference width {width}, holdout {self.holdout.shape[1]}, mean "
                f"{self.mean.shape} and std {self.std.shape} do not match"
            )
        if not 1 <= k <= len(self.reference):
            raise ValueError(f"k must be in 1..{len(self.reference)} (training prompts), got {k}")
        if len(self.holdout) < 1:
            raise ValueError("familiarity needs at least one validation prompt to calibrate on")
        if np.any(self.std <= 0):
            raise ValueError("std must be positive")
        self.k = int(k)
        self._reference_sq = np.einsum("ij,ij->i", self.reference, self.reference)
        self.holdout_distance = np.sort(self._standard_distance(self.holdout))

    @classmethod
    def fit(
        cls,
        train: np.ndarray,
        validation: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        *,
        k: int = DEFAULT_K,
        max_reference: int = MAX_REFERENCE,
        seed: int = 0,
    ) -> Familiarity:
        """From the student inputs of training and validation prompts ``(n, w)`` and the
        student's standardisation; at most ``max_reference`` training prompts (seeded) are kept."""
        X = as_float_array(train, "train", 2)
        if len(X) > max_reference:
            X = X[np.sort(np.random.default_rng(seed).permutation(len(X))[:max_reference])]
        scale = np.asarray(std, dtype=np.float64)
        return cls(
            (X - mean) / scale,
            (as_float_array(validation, "validation", 2) - mean) / scale,
            mean,
            std,
            k=min(k, len(X)),
        )

    @classmethod
    def for_student(
        cls, student: SSDStudent, train: np.ndarray, validation: np.ndarray, **kwargs: int
    ) -> Familiarity:
        """:meth:`fit` in ``student``'s own input standardisation (its training statistics)."""
        model = student.model_
        if model is None:
            raise ValueError("the student is not fitted; fit it before its familiarity")
        mean, std = model.input_mean.numpy(), model.input_std.numpy()
        return cls.fit(train, validation, mean, std, **kwargs)

    @property
    def width(self) -> int:
        """Features per prompt."""
        return self.reference.shape[1]

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mean distance ``(n,)`` of each prompt's student input ``(n, w)`` to its ``k`` nearest
        training prompts, in training standard deviations per feature (RMS)."""
        X = as_float_array(features, "features", 2)
        if X.shape[1] != self.width:
            raise ValueError(f"features have width {X.shape[1]}, familiarity expects {self.width}")
        return self._standard_distance(((X - self.mean) / self.std).astype(np.float32))

    def score(self, features: np.ndarray) -> np.ndarray:
        """Familiarity ``(n,)`` in (0, 1]: the share of validation prompts at least as far from
        the training prompts (low = unlike the training set)."""
        return self.score_distance(self.distance(features))

    def score_distance(self, distance: np.ndarray) -> np.ndarray:
        """Familiarity of prompts whose :meth:`distance` is known."""
        farther = len(self.holdout_distance) - np.searchsorted(
            self.holdout_distance, np.asarray(distance, dtype=np.float64), side="left"
        )
        return (1.0 + farther) / (1.0 + len(self.holdout_distance))

    def extended(self, train: np.ndarray, validation: np.ndarray) -> Familiarity:
        """This familiarity with more training and validation prompts (student inputs ``(n, w)``),
        in the same standardisation: what a scorer fitted further on new prompts knows."""
        scale = self.std.astype(np.float64)
        return Familiarity(
            np.vstack([self.reference, (as_float_array(train, "train", 2) - self.mean) / scale]),
            np.vstack(
                [self.holdout, (as_float_array(validation, "validation", 2) - self.mean) / scale]
            ),
            self.mean,
            self.std,
            k=self.k,
        )

    def _standard_distance(self, Z: np.ndarray) -> np.ndarray:
        k, out = self.k, []
        for start in range(0, len(Z), _CHUNK):
            chunk = Z[start : start + _CHUNK]
            sq = (
                np.einsum("ij,ij->i", chunk, chunk)[:, None]
                + self._reference_sq[None]
                - 2.0 * chunk @ self.reference.T
            )
            nearest = np.partition(np.maximum(sq, 0.0), k - 1, axis=1)[:, :k]
            out.append(np.sqrt(nearest).mean(axis=1))
        distance = np.concatenate(out) if out else np.empty(0, dtype=np.float32)
        return distance.astype(np.float64) / np.sqrt(self.width)

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``familiarity.safetensors`` and ``familiarity.json`` into ``directory``."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        tensors = {
            name: torch.as_tensor(np.ascontiguousarray(value, dtype=np.float32))
            for name, value in (
                ("reference", self.reference),
                ("holdout", self.holdout),
                ("mean", self.mean),
                ("std", self.std),
            )
        }
        save_file(tensors, str(root / TENSORS_FILE), metadata={"format": FORMAT})
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "k": self.k,
            "n_reference": len(self.reference),
            "n_holdout": len(self.holdout),
            "width": self.width,
            "space": "risk student's input, standardised with its training statistics",
        }
        (root / JSON_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Familiarity | None:
        """The familiarity saved in ``directory``, or None if it has none; a ValueError naming
        the file for anything unreadable."""
        root = Path(directory)
        if not (root / JSON_FILE).is_file():
            return None
        try:
            meta = json.loads((root / JSON_FILE).read_text(encoding="utf-8"))
            tensors = load_file(str(root / TENSORS_FILE))
        except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError) as err:
            raise ValueError(f"{root / JSON_FILE}: unreadable familiarity files: {err}") from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{root / JSON_FILE} is not a semdistill familiarity file")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{root / JSON_FILE} has format version {meta.get('format_version')!r}; this "
                f"library reads version {FORMAT_VERSION}"
            )
        missing = {"reference", "holdout", "mean", "std"} - set(tensors)
        if missing:
            raise ValueError(f"{root / TENSORS_FILE} lacks {sorted(missing)}")
        return cls(
            tensors["reference"].numpy(),
            tensors["holdout"].numpy(),
            tensors["mean"].numpy(),
            tensors["std"].numpy(),
            k=int(meta["k"]),
        )
