"""Semantic Self-Distillation: single-pass semantic uncertainty for language models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from semdistill.student import SSDStudent

if TYPE_CHECKING:
    from semdistill.scoring.scorer import Scorer

__version__ = "0.1.0"

__all__ = ["SSDStudent", "Scorer", "__version__"]


def __getattr__(name: str) -> object:
    """``Scorer`` is imported on first use, so ``import semdistill`` stays light."""
    if name == "Scorer":
        from semdistill.scoring.scorer import Scorer

        return Scorer
    raise AttributeError(f"module 'semdistill' has no attribute {name!r}")
