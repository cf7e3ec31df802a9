"""Collection stage: teacher answers, embeddings and labels into a store, locally or on Ray.

The names below are imported from :mod:`semdistill.collect.collection` on first use, so
importing one of the stage's modules (the embedder, the judges) does not load the rest.
Ray collection lives in :mod:`semdistill.collect.distributed`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from semdistill.collect.collection import (
        JUDGE_CACHE_NAME,
        JUDGES,
        SPLIT_SEED,
        CollectStats,
        check_settings,
        collect,
        collect_config,
        finish_collection,
        make_judge,
        run_collection,
    )

__all__ = [
    "JUDGES",
    "JUDGE_CACHE_NAME",
    "SPLIT_SEED",
    "CollectStats",
    "check_settings",
    "collect",
    "collect_config",
    "finish_collection",
    "make_judge",
    "run_collection",
]


def __getattr__(name: str) -> object:
    """The names of ``__all__``, each imported from its module on first use."""
    if name in __all__:
        return getattr(importlib.import_module("semdistill.collect.collection"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
