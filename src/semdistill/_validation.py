"""Input checks shared by the estimators: arrays of the right rank, size and finiteness."""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def as_float_array(value: object, name: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    """``value`` as a finite float array of the given rank(s), or a ValueError naming ``name``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array: {err}") from err
    ranks = (ndim,) if isinstance(ndim, int) else ndim
    if array.ndim not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        raise ValueError(f"{name} must have rank {expected}, got shape {array.shape}")
    if array.size and not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def check_width(array: np.ndarray, expected: int, name: str, what: str) -> None:
    """Raise if the last axis of ``array`` is not ``expected`` long."""
    if array.shape[-1] != expected:
        raise ValueError(
            f"{name} has {what} {array.shape[-1]}, but the student was fitted with {expected}"
        )
