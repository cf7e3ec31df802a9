"""How familiar a prompt is to a scorer: its distance to the training prompts, calibrated.

No labels are involved. A prompt is represented by its last-token states at a quarter, half,
three quarters and all of the model's depth (:data:`DEPTHS`; layers 7, 14, 21 and 28 of a
28-layer model), whatever layers the students read: model selection may put the risk student
at a shallow layer, where the last token has barely read the question and a narrower set's
prompts sit inside a broader set's cloud. Each feature is divided by its standard deviation
over the training prompts (not centred), and each layer's scaled state is set to unit length,
so every layer weighs alike and a prompt's direction counts, not its scale. The layers and
the scales are fixed when the familiarity is fitted and saved with it; the scorer prefills
them along with the students' layers.

A prompt's *distance* is the mean Euclidean distance of its vector to its ``k`` nearest
training prompts, divided by the square root of the number of layers (in [0, 2]: 0 = the same
direction as its neighbours at every layer). Its *familiarity* is the conformal p-value
``(1 + #{d_cal >= d}) / (1 + n_cal)`` of that distance among the calibration distances: the
validation prompts' and each training prompt's distance to the *other* training prompts
(leave one out), so that a set with few validation prompts still has a fine calibration. It
is about uniform on (0, 1] for prompts drawn like the training ones and near 0 for prompts
unlike all of them; a scorer whose risk is read on a prompt below a few percent extrapolates.

On disk: ``familiarity.safetensors`` (the training and validation prompts' vectors, the
calibration distances, the layers and the scales) and ``familiarity.json`` (``k``, layers,
counts, format), beside the scorer's other artifacts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from semdistill._validation import as_float_array
from semdistill.formats import FileFormat

FORMAT = FileFormat(
    "semdistill.familiarity", 2, "familiarity file", remedy="retrain with `semdistill train`"
)
TENSORS_FILE = "familiarity.safetensors"
JSON_FILE = "familiarity.json"
DEFAULT_K = 10
DEPTHS = (0.25, 0.5, 0.75, 1.0)
"""Fractions of the model's depth whose last-token states the familiarity reads."""
MAX_REFERENCE = 4000
STD_FLOOR = 0.1
"""Each feature's scale is at least this share of its layer's median standard deviation, so
a feature (nearly) constant on the training prompts cannot dominate a prompt's direction."""
_CHUNK = 1024
_TENSORS = ("reference", "holdout", "layers", "scale", "calibration")


def familiarity_layers(n_states: int, depths: Sequence[float] = DEPTHS) -> tuple[int, ...]:
    """The hidden-state indices read in a model with ``n_states`` of them (its layers + 1; 0 =
    the embedding output): ``round(depth * layers)`` for each of ``depths``, ascending."""
    n_layers = int(n_states) - 1
    if n_layers < 1:
        raise ValueError(f"states must hold the embedding output and >= 1 layer, got {n_states}")
    return tuple(sorted({min(n_layers, max(1, round(d * n_layers))) for d in depths}))


class Familiarity:
    """kNN distance of a prompt's vector (see the module docstring) to the training prompts',
    calibrated on the validation prompts and the training prompts left out one at a time.

    ``reference`` ``(n_ref, w)`` and ``holdout`` ``(n_val, w)`` are the training and
    validation prompts' vectors; ``layers`` the hidden-state indices read and ``scale``
    ``(len(layers), hidden)`` each feature's scale. ``calibration`` (the calibration
    distances) is computed unless given, as :meth:`load` does.
    """

    def __init__(
        self,
        reference: np.ndarray,
        holdout: np.ndarray,
        layers: Sequence[int],
        scale: np.ndarray,
        *,
        k: int = DEFAULT_K,
        calibration: np.ndarray | None = None,
    ) -> None:
        self.reference = _stored(as_float_array(reference, "reference", 2))
        self.holdout = _stored(as_float_array(holdout, "holdout", 2))
        self.layers = tuple(int(layer) for layer in np.asarray(layers).reshape(-1))
        self.scale = as_float_array(scale, "scale", 2).astype(np.float32)
        width = self.reference.shape[1]
        if (
            not self.layers
            or self.scale.shape[0] != len(self.layers)
            or self.holdout.shape[1] != width
            or self.scale.size != width
        ):
            raise ValueError(
                f"reference width {width}, holdout {self.holdout.shape[1]}, layers "
                f"{list(self.layers)} and scale {self.scale.shape} do not match"
            )
        if not 1 <= k < len(self.reference):
            raise ValueError(
                f"k must be in 1..{len(self.reference) - 1} (training prompts - 1), got {k}"
            )
        if len(self.holdout) < 1:
            raise ValueError("familiarity needs at least one validation prompt to calibrate on")
        if np.any(self.scale <= 0):
            raise ValueError("scale must be positive")
        self.k = int(k)
        self._reference_sq = np.einsum("ij,ij->i", self.reference, self.reference)
        if calibration is None:
            calibration = np.r_[
                self._distance(self.holdout), self._distance(self.reference, leave_out=True)
            ]
        self.calibration = np.sort(as_float_array(calibration, "calibration", 1))

    @classmethod
    def fit(
        cls,
        train: np.ndarray,
        validation: np.ndarray,
        *,
        layers: Sequence[int] | None = None,
        k: int = DEFAULT_K,
        max_reference: int = MAX_REFERENCE,
        seed: int = 0,
    ) -> Familiarity:
        """From the training and validation prompts' states at every hidden-state index,
        ``(n, n_layers + 1, hidden)`` (a collection's ``hidden``): reads ``layers`` (default
        :func:`familiarity_layers`), scaled on all training prompts, of which at most
        ``max_reference`` (seeded) are kept."""
        chosen = familiarity_layers(np.shape(train)[1]) if layers is None else tuple(layers)
        X = _pick(train, "train", chosen)
        std = X.std(axis=0)
        scale = np.maximum(std, np.maximum(STD_FLOOR * np.median(std, axis=1, keepdims=True), 1e-6))
        if len(X) > max_reference:
            X = X[np.sort(np.random.default_rng(seed).permutation(len(X))[:max_reference])]
        if len(X) < 2:
            raise ValueError(f"familiarity needs at least 2 training prompts, got {len(X)}")
        V = _pick(validation, "validation", chosen)
        return cls(_vectors(X, scale), _vectors(V, scale), chosen, scale, k=min(k, len(X) - 1))

    @property
    def width(self) -> int:
        """Features per prompt."""
        return self.reference.shape[1]

    def vectors(self, states: np.ndarray, layers: Sequence[int] | None = None) -> np.ndarray:
        """Vectors ``(n, w)`` of prompts whose states ``(n, len(layers), hidden)`` at the
        hidden-state indices ``layers`` are given (default: every index from 0, as in a
        collection's ``hidden``); they must include :attr:`layers`."""
        X = _pick(states, "states", self.layers, layers)
        if X.shape[2] != self.scale.shape[1]:
            raise ValueError(
                f"states have width {X.shape[2]}, the familiarity expects {self.scale.shape[1]}"
            )
        return _stored(_vectors(X, self.scale))

    def distance(self, states: np.ndarray, layers: Sequence[int] | None = None) -> np.ndarray:
        """Mean distance ``(n,)`` of each prompt to its ``k`` nearest training prompts;
        ``states`` and ``layers`` as for :meth:`vectors`."""
        return self._distance(self.vectors(states, layers))

    def score(self, states: np.ndarray, layers: Sequence[int] | None = None) -> np.ndarray:
        """Familiarity ``(n,)`` in (0, 1]: the share of calibration prompts at least as far
        from the training prompts (low = unlike the training set); ``states`` and ``layers``
        as for :meth:`vectors`."""
        return self.score_distance(self.distance(states, layers))

    def score_distance(self, distance: np.ndarray) -> np.ndarray:
        """Familiarity of prompts whose :meth:`distance` is known."""
        farther = len(self.calibration) - np.searchsorted(
            self.calibration, np.asarray(distance, dtype=np.float64), side="left"
        )
        return (1.0 + farther) / (1.0 + len(self.calibration))

    def extended(self, train: np.ndarray, validation: np.ndarray) -> Familiarity:
        """This familiarity with more training and validation prompts (states as for
        :meth:`fit`), in the same layers and scales: what a scorer fitted further on new
        prompts knows."""
        return Familiarity(
            np.vstack([self.reference, self.vectors(train)]),
            np.vstack([self.holdout, self.vectors(validation)]),
            self.layers,
            self.scale,
            k=self.k,
        )

    def _distance(self, Z: np.ndarray, *, leave_out: bool = False) -> np.ndarray:
        """kNN distance of vectors ``Z``; with ``leave_out``, ``Z`` is the reference and each
        row's own entry is left out."""
        k, out = self.k, []
        for start in range(0, len(Z), _CHUNK):
            chunk = Z[start : start + _CHUNK]
            sq = np.maximum(
                np.einsum("ij,ij->i", chunk, chunk)[:, None]
                + self._reference_sq[None]
                - 2.0 * chunk @ self.reference.T,
                0.0,
            )
            if leave_out:
                rows = np.arange(len(chunk))
                sq[rows, start + rows] = np.inf
            nearest = np.partition(sq, k - 1, axis=1)[:, :k]
            out.append(np.sqrt(nearest).mean(axis=1))
        distance = np.concatenate(out) if out else np.empty(0, dtype=np.float32)
        return distance.astype(np.float64) / np.sqrt(len(self.layers))

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``familiarity.safetensors`` and ``familiarity.json`` into ``directory``."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        tensors = {
            "reference": torch.as_tensor(self.reference.astype(np.float16)),
            "holdout": torch.as_tensor(self.holdout.astype(np.float16)),
            "layers": torch.tensor(self.layers, dtype=torch.int64),
            "scale": torch.as_tensor(np.ascontiguousarray(self.scale)),
            "calibration": torch.as_tensor(np.ascontiguousarray(self.calibration)),
        }
        save_file(tensors, str(root / TENSORS_FILE), metadata={"format": FORMAT.name})
        meta = {
            **FORMAT.header(),
            "k": self.k,
            "layers": list(self.layers),
            "n_reference": len(self.reference),
            "n_holdout": len(self.holdout),
            "n_calibration": len(self.calibration),
            "width": self.width,
            "space": "last-token states of the layers, each feature divided by its standard "
            "deviation over the training prompts (not centred), each layer set to unit length",
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
        FORMAT.check(meta, root / JSON_FILE)
        missing = set(_TENSORS) - set(tensors)
        if missing:
            raise ValueError(f"{root / TENSORS_FILE} lacks {sorted(missing)}")
        if tensors["layers"].tolist() != meta.get("layers"):
            raise ValueError(
                f"{root / TENSORS_FILE} reads layers {tensors['layers'].tolist()}, but "
                f"{root / JSON_FILE} records {meta.get('layers')}"
            )
        return cls(
            tensors["reference"].float().numpy(),
            tensors["holdout"].float().numpy(),
            tensors["layers"].tolist(),
            tensors["scale"].numpy(),
            k=int(meta["k"]),
            calibration=tensors["calibration"].numpy(),
        )


def _pick(
    states: np.ndarray, name: str, wanted: Sequence[int], given: Sequence[int] | None = None
) -> np.ndarray:
    """``states[:, columns of wanted]`` as float32, where ``states`` ``(n, len(given),
    hidden)`` hold the hidden-state indices ``given`` (default: every index from 0)."""
    array = np.asarray(states)
    if array.ndim != 3:
        raise ValueError(f"{name} must have shape (n, layers, hidden), got {array.shape}")
    held = tuple(range(array.shape[1])) if given is None else tuple(int(g) for g in given)
    if len(held) != array.shape[1]:
        raise ValueError(f"{name} hold {array.shape[1]} layers, but {len(held)} are named")
    missing = sorted(set(wanted) - set(held))
    if missing:
        raise ValueError(
            f"{name} hold layers {list(held)}; the familiarity reads {list(wanted)} "
            f"(missing {missing})"
        )
    columns = [held.index(layer) for layer in wanted]
    return as_float_array(array[:, columns], name, 3).astype(np.float32)


def _vectors(X: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(n, layers * hidden)``: each layer's scaled state ``X / scale`` at unit length."""
    Z = X / scale
    Z /= np.maximum(np.linalg.norm(Z, axis=2, keepdims=True), 1e-12)
    return Z.reshape(len(Z), -1)


def _stored(X: np.ndarray) -> np.ndarray:
    """Vectors as stored (float16 on disk), as contiguous float32."""
    return np.ascontiguousarray(X.astype(np.float16), dtype=np.float32)
