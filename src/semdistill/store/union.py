"""Several stores' rows pooled into one training set."""

from __future__ import annotations

import numpy as np

from semdistill.store.collection import Collection
from semdistill.store.config import CollectConfig
from semdistill.store.parquet import Store

UNION = "union"


def pool(collections: dict[str, Collection], configs: dict[str, CollectConfig]) -> Collection:
    """The named collections' rows as one training set; a ValueError names a collection whose
    model, dtype, prompt, embedder or N differs from the first's, or question ids held by two.
    """
    if not collections:
        raise ValueError("name at least one collection")
    names = list(collections)
    first = configs[names[0]]
    for name in names[1:]:
        if not first.pools_with(configs[name]):
            raise ValueError(
                f"collection {name} cannot be pooled with {names[0]}: a different model, dtype, "
                "prompt, embedder or number of samples"
            )
    rows = Collection.concat(list(collections.values()))
    ids, counts = np.unique(rows.ids.astype(str), return_counts=True)
    if np.any(counts > 1):
        raise ValueError(
            f"question ids in more than one collection: {ids[counts > 1][:5].tolist()}"
        )
    return rows


def union_of(stores: dict[str, Store]) -> tuple[str, Collection, CollectConfig, str]:
    """The rows of one or several stores as one training set (:func:`pool`): its name (the
    store's, or ``union``), the rows, the first store's config and the stores' paths
    (comma-separated)."""
    if not stores:
        raise ValueError("name at least one collection")
    configs = {name: store.config for name, store in stores.items()}
    rows = pool({name: store.load() for name, store in stores.items()}, configs)
    name = next(iter(stores)) if len(stores) == 1 else UNION
    return name, rows, next(iter(configs.values())), ", ".join(str(s.path) for s in stores.values())
