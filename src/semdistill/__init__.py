"""Semantic Self-Distillation: single-pass semantic uncertainty for language models."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# torch and llama.cpp share one OpenMP runtime (libgomp.so.1); with its default busy-wait
# policy their idle threads spin and starve each other on a small CPU (a SmolLM2 prefill
# took 10 s instead of 1 s once llama.cpp was loaded). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
