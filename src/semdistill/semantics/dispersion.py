"""Teacher dispersion (TD): spread of the sampled answers' embeddings around their mean."""

from __future__ import annotations

import numpy as np


def teacher_dispersion(Y: np.ndarray) -> np.ndarray:
    """Teacher dispersion per prompt; higher = more semantically dispersed answers.

    For the N sample embeddings ``y_1..y_N`` of one prompt (in the PCA space the student
    uses), TD = sqrt( (1/N) * sum_i ||y_i - mean(y)||^2 ), i.e. the square root of the trace
    of the biased (1/N) sample covariance: the root-mean-square distance of the samples to
    their centroid. It is 0 when all N samples embed to the same point.

    Args:
        Y: ``(n, N, d)`` embeddings, n prompts, N >= 2 samples each, d dimensions.

    Returns:
        ``(n,)`` float64 dispersions.
    """
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 3:
        raise ValueError(f"Y must have shape (n, N, d), got shape {Y.shape}")
    if Y.shape[1] < 2:
        raise ValueError(f"Y needs at least 2 samples per prompt (axis 1), got {Y.shape[1]}")
    if Y.shape[0] == 0 or Y.shape[2] == 0:
        raise ValueError(f"Y is empty: shape {Y.shape}")
    if not np.all(np.isfinite(Y)):
        raise ValueError("Y contains NaN or infinite values")
    centred = Y - Y.mean(axis=1, keepdims=True)
    return np.sqrt(np.mean(np.sum(centred**2, axis=2), axis=1))


def projected_dispersion(E: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Teacher dispersion of raw answer embeddings ``E (n, N, e)`` within the span of the
    orthonormal ``components (d, e)`` (a PCA basis): the same value as
    ``teacher_dispersion`` of the projected samples, but centred in the embedding space first,
    so a prompt whose N answers embed identically gets exactly 0 whatever rows it is computed
    with."""
    E = np.asarray(E, dtype=np.float64)
    if E.ndim != 3:
        raise ValueError(f"E must have shape (n, N, e), got shape {E.shape}")
    centred = E - E.mean(axis=1, keepdims=True)
    return teacher_dispersion(centred @ np.asarray(components, dtype=np.float64).T)
