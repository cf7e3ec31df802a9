"""Collection stage: teacher answers, embeddings and labels into a store, locally or on Ray.

The names below are imported from their modules on first use, so importing one of the
stage's modules does not load the rest. Ray collection lives in
:mod:`semdistill.collect.distributed`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from semdistill.collect.local import collect, run_collection
    from semdistill.collect.progress import CollectStats
    from semdistill.collect.settings import (
        JUDGE_CACHE_NAME,
        JUDGES,
        SPLIT_SEED,
        CollectSettings,
        SamplingSettings,
    )

_HOMES = {
    "collect": "local",
    "run_collection": "local",
    "JUDGES": "settings",
    "JUDGE_CACHE_NAME": "settings",
    "SPLIT_SEED": "settings",
    "CollectSettings": "settings",
    "CollectStats": "progress",
    "SamplingSettings": "settings",
}
__all__ = [
    "JUDGES",
    "JUDGE_CACHE_NAME",
    "SPLIT_SEED",
    "CollectSettings",
    "CollectStats",
    "SamplingSettings",
    "collect",
    "run_collection",
]


def __getattr__(name: str) -> object:
    """The names of ``__all__``, each imported from its module on first use."""
    if name in _HOMES:
        return getattr(importlib.import_module(f"semdistill.collect.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
