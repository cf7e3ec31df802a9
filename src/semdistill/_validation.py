"""Input checks shared by the estimators: arrays of the right rank, size and finiteness."""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from scipy.sparse import issparse

ArrayLike = np.ndarray | torch.Tensor


def as_float_array(value: object, name: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    """``value`` as a finite, dense, real float array of the given rank(s), or a ValueError
    (a TypeError for elements that are not numbers at all) naming ``name``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if issparse(value):
        raise ValueError(f"{name} is sparse; sparse input is not supported, pass a dense array")
    if np.issubdtype(getattr(value, "dtype", np.float64), np.complexfloating):
        raise ValueError(f"{name}: Complex data not supported")
    try:
        array = np.asarray(value, dtype=np.float64)
    except TypeError as err:
        raise TypeError(f"{name} must be a numeric array: {err}") from err
    except ValueError as err:
        raise ValueError(f"{name} must be a numeric array: {err}") from err
    ranks = (ndim,) if isinstance(ndim, int) else ndim
    if array.ndim not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        hint = " (Reshape your data to add the missing axes)" if array.ndim < min(ranks) else ""
        raise ValueError(f"{name} must have rank {expected}, got shape {array.shape}{hint}")
    if array.size and not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def check_width(array: np.ndarray, expected: int, name: str, what: str) -> None:
    """Raise if the last axis of ``array`` is not ``expected`` long."""
    if array.shape[-1] != expected:
        raise ValueError(
            f"{name} has {what} {array.shape[-1]}, but the student was fitted with {expected}"
        )


def check_positive_int(value: object, name: str) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_not_empty(array: np.ndarray, name: str) -> None:
    """Raise a ValueError naming ``name`` if ``array`` has no rows or no features."""
    if array.shape[0] == 0:
        raise ValueError(
            f"{name} has 0 sample(s) (shape={array.shape}) while a minimum of 1 is required."
        )
    if array.shape[-1] == 0:
        raise ValueError(
            f"{name} has 0 feature(s) (shape={array.shape}) while a minimum of 1 is required."
        )
