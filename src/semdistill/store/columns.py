"""A shard's Arrow schema, its columns to arrays and back, and atomic file writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from semdistill.store.collection import GreedyScores
from semdistill.store.config import CollectConfig

GREEDY_COLUMNS = (
    ("greedy_logprob", pa.float64()),
    ("greedy_tokens", pa.int32()),
    ("greedy_entropy", pa.float64()),
)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced temporary file and a rename."""
    tmp = path.with_name(f"{path.name}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def shard_schema(config: CollectConfig, *, greedy: bool = True) -> pa.Schema:
    """The columns of a shard of a store with ``config`` (``greedy``: with the greedy
    answer's scores, as every shard written since format 2)."""
    layers_size = (config.n_layers + 1) * config.hidden_size
    dim = config.embedding_dim
    return pa.schema(
        [
            ("question_id", pa.string()),
            ("split", pa.string()),
            ("source", pa.string()),
            ("question", pa.string()),
            ("prompt", pa.string()),
            ("references", pa.list_(pa.string())),
            ("options", pa.list_(pa.string())),
            ("correct_option", pa.int32()),
            ("hidden", pa.list_(pa.float16(), layers_size)),
            ("default_answer", pa.string()),
            ("samples", pa.list_(pa.string())),
            ("default_embedding", pa.list_(pa.float32(), dim)),
            ("sample_embeddings", pa.list_(pa.float32(), config.n_samples * dim)),
            ("option_embeddings", pa.list_(pa.float32())),
            ("default_correct", pa.bool_()),
            ("sample_correct", pa.list_(pa.bool_())),
            ("judge", pa.string()),
            *(GREEDY_COLUMNS if greedy else ()),
        ]
    )


def greedy_arrays(scores: GreedyScores) -> list[pa.Array]:
    """The columns of :data:`GREEDY_COLUMNS` holding ``scores``."""
    return [
        pa.array(np.asarray(scores.logprob, dtype=np.float64), pa.float64()),
        pa.array(np.asarray(scores.tokens, dtype=np.int32), pa.int32()),
        pa.array(np.asarray(scores.entropy, dtype=np.float64), pa.float64()),
    ]


def fixed(values: np.ndarray, width: int, dtype: type) -> pa.FixedSizeListArray:
    """``values`` ``(n, ...)`` as a column of fixed-width lists of ``width`` ``dtype``."""
    flat = pa.array(np.ascontiguousarray(values, dtype=dtype).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, width)


def unfixed(column: pa.ChunkedArray, shape: tuple[int, ...]) -> np.ndarray:
    """A fixed-width list column as an array of ``shape``."""
    values = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return values.reshape(shape)


def sample_labels(column: pa.ChunkedArray, n_samples: int) -> np.ndarray:
    """Per-sample labels ``(n, N)``; an unlabelled row's null list reads as False."""
    rows = [[False] * n_samples if labels is None else labels for labels in column.to_pylist()]
    return np.array(rows, dtype=bool).reshape(len(rows), n_samples)


def read_greedy(table: pa.Table, route: str) -> GreedyScores:
    """The greedy answers' scores held by a shard's ``table``, computed by ``route``."""
    logprob, tokens, entropy = (table.column(name) for name, _ in GREEDY_COLUMNS)
    return GreedyScores(
        logprob.to_numpy().astype(np.float64),
        tokens.to_numpy().astype(np.int64),
        entropy.to_numpy().astype(np.float64),
        route,
    )
