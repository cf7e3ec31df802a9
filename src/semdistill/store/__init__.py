"""Store stage: the collection config, collected rows, and the Parquet store they are written to."""

from semdistill.store.collection import Collection, GreedyScores
from semdistill.store.config import CollectConfig
from semdistill.store.parquet import (
    FORMAT,
    MANIFEST_NAME,
    SHARD_DIR,
    SPLITS,
    Store,
)

__all__ = [
    "FORMAT",
    "MANIFEST_NAME",
    "SHARD_DIR",
    "SPLITS",
    "CollectConfig",
    "Collection",
    "GreedyScores",
    "Store",
]
