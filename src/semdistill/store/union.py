"""Several stores' rows pooled into one training set."""

from __future__ import annotations

import numpy as np

from semdistill.store.collection import Collection
from semdistill.store.config import CollectConfig
from semdistill.store.parquet import Store

UNION = "union"


def union_of(stores: dict[str, Store]) -> tuple[str, Collection, CollectConfig, str]:
    """The rows of one or several stores as one training set: its name (the store's, or
    ``union``), the rows, the first store's config and the stores' paths (comma-separated).

    A ValueError names a store whose model, dtype, prompt, embedder or N differs from the
    first's, or a question id held by two stores.
    """
    if not stores:
        raise ValueError("name at least one collection")
    names, configs = list(stores), [store.config for store in stores.values()]
    for name, config in zip(names[1:], configs[1:], strict=True):
        if not configs[0].pools_with(config):
            raise ValueError(
                f"collection {name} cannot be pooled with {names[0]}: a different model, dtype, "
                "prompt, embedder or number of samples"
            )
    rows = Collection.concat([store.load() for store in stores.values()])
    ids, counts = np.unique(rows.ids.astype(str), return_counts=True)
    if np.any(counts > 1):
        raise ValueError(
            f"question ids in more than one collection: {ids[counts > 1][:5].tolist()}"
        )
    name = names[0] if len(stores) == 1 else UNION
    return name, rows, configs[0], ", ".join(str(store.path) for store in stores.values())
