"""Scoring stage: trained artifacts, the Scorer, calibration, abstention policy, risk control.

``Scorer`` is imported from :mod:`semdistill.scoring.scorer` on first use, so importing one
of the stage's lighter modules (calibration, policy) does not load the teacher.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from semdistill.scoring.scorer import Scorer

__all__ = ["Scorer"]


def __getattr__(name: str) -> object:
    """The names of ``__all__``, each imported from its module on first use."""
    if name in __all__:
        return getattr(importlib.import_module("semdistill.scoring.scorer"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
