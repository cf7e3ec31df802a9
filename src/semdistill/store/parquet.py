"""The collection store: Parquet shards plus a JSON manifest, the only hand-off after collection.

Layout: ``manifest.json`` and ``shards/part-00000.parquet``, ... with one row per question.
A question without reference answers has null ``default_correct`` and ``sample_correct``
(the columns were always nullable, so stores written before unlabelled rows read as they
did, every row labelled).
Shards and manifest are written atomically (temporary file, fsync, rename), the shard
first, so a crash loses at most the batch being written and a leftover ``*.tmp`` file
is never read.

The greedy answer's token statistics (:class:`~semdistill.store.collection.GreedyScores`) are
three more columns, ``greedy_logprob``, ``greedy_tokens`` and ``greedy_entropy``, in the
shards that have them; each such shard's manifest entry names the route that computed them
(``"greedy": "decoder"`` or ``"teacher-forced"``). Format 1 stores, written before these
columns, are read as they were (``Collection.greedy`` None); :meth:`Store.add_greedy`
rewrites a shard with them.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from semdistill.formats import HEADER_KEYS, FileFormat
from semdistill.store.collection import Collection, GreedyScores
from semdistill.store.columns import (
    GREEDY_COLUMNS,
    atomic_write,
    fixed,
    greedy_arrays,
    read_greedy,
    sample_labels,
    shard_schema,
    unfixed,
)
from semdistill.store.config import CollectConfig
from semdistill.teacher.registry import REGISTRY

FORMAT = FileFormat("semdistill-store", 2, "store manifest")
READABLE_VERSIONS = (1, 2)  # 1: before the greedy answer's columns
MANIFEST_NAME = "manifest.json"
SHARD_DIR = "shards"
SPLITS = ("train", "validation", "test")


class Store:
    """A collection store on disk; see the module docstring for the layout."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self._manifest = manifest
        self.config = CollectConfig.from_dict(manifest["config"])
        self._done: set[str] | None = None

    @property
    def n_layers(self) -> int:
        """Decoder layers of the teacher (hidden states hold n_layers + 1 entries)."""
        return self.config.n_layers

    @property
    def hidden_size(self) -> int:
        """Width of the teacher's hidden states."""
        return self.config.hidden_size

    @property
    def complete(self) -> bool:
        """Whether the collection that wrote the store finished every question it was given."""
        return bool(self._manifest["complete"])

    @property
    def manifest_path(self) -> Path:
        """The store's manifest file."""
        return self.path / MANIFEST_NAME

    @classmethod
    def create(cls, path: str | Path, config: CollectConfig) -> Store:
        """A new, empty store at ``path``; a ValueError if one is there already."""
        root = Path(path)
        if (root / MANIFEST_NAME).exists():
            raise ValueError(f"{root} already holds a store; open it instead")
        (root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        manifest = {
            **FORMAT.header(),
            "library_version": version("semdistill"),
            "config": config.to_dict(),
            "n_layers": config.n_layers,
            "hidden_size": config.hidden_size,
            "embedding_dim": config.embedding_dim,
            "n_samples": config.n_samples,
            "complete": False,
            "shards": [],
        }
        store = cls(root, manifest)
        store._write_manifest()
        return store

    @classmethod
    def open(cls, path: str | Path) -> Store:
        """The store at ``path``; a FileNotFoundError or ValueError naming what is unusable."""
        manifest_path = Path(path) / MANIFEST_NAME
        if not manifest_path.is_file():
            raise FileNotFoundError(f"no store manifest at {manifest_path}")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"store manifest {manifest_path} is not valid JSON: {err}") from err
        if isinstance(manifest, dict) and manifest.get("format_version") in READABLE_VERSIONS:
            manifest["format_version"] = FORMAT.version  # written back as such on any change
        FORMAT.check(manifest, manifest_path)
        try:
            return cls(Path(path), manifest)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"store manifest {manifest_path} is malformed: {err}") from err

    @classmethod
    def open_or_create(cls, path: str | Path, config: CollectConfig) -> Store:
        """The store at ``path`` if its config equals ``config``, else a new one.

        A ValueError lists every field whose stored value differs from ``config``.
        """
        if not (Path(path) / MANIFEST_NAME).exists():
            return cls.create(path, config)
        store = cls.open(path)
        differences = store.config.differences(config)
        if differences:
            raise ValueError(
                f"store {path} was collected with a different config (stored != requested): "
                + "; ".join(differences)
            )
        return store

    def _write_manifest(self) -> None:
        text = json.dumps(self._manifest, indent=2, sort_keys=False)
        atomic_write(self.manifest_path, text.encode("utf-8"))

    def _shard_paths(self) -> list[tuple[Path, int]]:
        return [
            (self.path / shard["file"], int(shard["rows"])) for shard in self._manifest["shards"]
        ]

    def _read_shard(self, path: Path, rows: int, columns: list[str] | None = None) -> pa.Table:
        if not path.is_file():
            raise FileNotFoundError(f"shard {path} listed in {self.manifest_path} is missing")
        try:
            table = pq.read_table(path, columns=columns)
        except (pa.ArrowException, OSError) as err:
            raise ValueError(f"shard {path} is corrupt or unreadable: {err}") from err
        if table.num_rows != rows:
            raise ValueError(
                f"shard {path} has {table.num_rows} rows, but {self.manifest_path} lists {rows}"
            )
        schemas = (shard_schema(self.config), shard_schema(self.config, greedy=False))
        if columns is None and table.schema not in schemas:
            raise ValueError(f"shard {path} does not have the store's schema")
        return table

    def done_ids(self) -> set[str]:
        """The ids of every question already in the store; a ValueError naming the shards if
        an id occurs twice (a shard listed twice, or copied over another)."""
        if self._done is None:
            seen: dict[str, Path] = {}
            for path, rows in self._shard_paths():
                table = self._read_shard(path, rows, ["question_id"])
                for question_id in table.column("question_id").to_pylist():
                    if question_id in seen:
                        raise ValueError(
                            f"question id {question_id!r} occurs in shard {seen[question_id]} "
                            f"and again in {path} (listed in {self.manifest_path}): the store "
                            "is corrupt; remove the repeated shard from the manifest"
                        )
                    seen[question_id] = path
            self._done = set(seen)
        return set(self._done)

    def append(self, rows: Collection) -> None:
        """Write ``rows`` as one new shard, then record it in the manifest."""
        table = self._to_table(rows)
        done = self.done_ids()
        repeated = sorted(set(rows.ids.tolist()) & done)
        if repeated:
            raise ValueError(f"question ids already in store {self.path}: {repeated[:5]}")
        index = len(self._manifest["shards"])
        name = f"{SHARD_DIR}/part-{index:05d}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        (self.path / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        atomic_write(self.path / name, sink.getvalue().to_pybytes())
        entry: dict[str, Any] = {"file": name, "rows": len(rows)}
        if rows.greedy is not None:
            entry["greedy"] = rows.greedy.route
        self._manifest["shards"].append(entry)
        self._manifest["complete"] = False
        self._write_manifest()
        self._done = done | set(rows.ids.tolist())

    @property
    def greedy_route(self) -> str | None:
        """How every row's greedy-answer scores were computed ("decoder", "teacher-forced" or
        "mixed"); None if some shard has none."""
        routes = {shard.get("greedy") for shard in self._manifest["shards"]}
        if None in routes:
            return None
        return routes.pop() if len(routes) == 1 else "mixed"

    def unscored_shards(self) -> list[int]:
        """The shards whose rows have no greedy-answer scores, by index."""
        return [i for i, shard in enumerate(self._manifest["shards"]) if "greedy" not in shard]

    def shard_answers(self, index: int) -> tuple[list[str], list[str]]:
        """The prompts and greedy answers of shard ``index``, in row order."""
        path, rows = self._shard_paths()[index]
        table = self._read_shard(path, rows, ["prompt", "default_answer"])
        return table.column("prompt").to_pylist(), table.column("default_answer").to_pylist()

    def add_greedy(self, index: int, scores: GreedyScores) -> None:
        """Rewrite shard ``index`` with ``scores`` for its rows (atomically), then record
        their route in the manifest."""
        path, rows = self._shard_paths()[index]
        if len(scores) != rows:
            raise ValueError(f"{len(scores)} greedy scores for the {rows} rows of shard {path}")
        table = self._read_shard(path, rows)
        table = table.drop_columns([n for n, _ in GREEDY_COLUMNS if n in table.column_names])
        for (name, kind), values in zip(GREEDY_COLUMNS, greedy_arrays(scores), strict=True):
            table = table.append_column(pa.field(name, kind), values)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        atomic_write(path, sink.getvalue().to_pybytes())
        self._manifest["shards"][index]["greedy"] = scores.route
        self._write_manifest()

    def collect_command(self) -> str:
        """The ``semdistill collect`` command line that resumes this store (the settings it
        was collected with)."""
        c = self.config
        model = c.model.name if c.model.name in REGISTRY else c.model.location
        limit = "" if c.limit is None else f" --limit {c.limit}"
        return (
            f"semdistill collect --model {model} --questions {c.questions}{limit} "
            f"--samples {c.n_samples} --temperature {c.temperature} --seed {c.seed} "
            f"--max-new-tokens {c.max_new_tokens} --backend {c.backend} --dtype {c.dtype} "
            f"--embedder {c.embedder} --judge {c.judge} --out {self.path}"
        )

    def record(self, key: str, value: dict[str, Any]) -> None:
        """Note ``value`` under ``key`` in the manifest: how the data was made, beyond the
        config (which forward decoded it, say); not compared when the store is reopened."""
        if key in (*HEADER_KEYS, "config", "shards", "complete"):
            raise ValueError(f"{key!r} is a manifest field of its own")
        self._manifest[key] = value
        self._write_manifest()

    def mark_complete(self) -> None:
        """Record that the collection finished every question it was given."""
        self._manifest["complete"] = True
        self._write_manifest()

    def _to_table(self, rows: Collection) -> pa.Table:
        config = self.config
        n, n_samples, dim = len(rows), config.n_samples, config.embedding_dim
        expected = {
            "hidden": (n, config.n_layers + 1, config.hidden_size),
            "default_embedding": (n, dim),
            "sample_embeddings": (n, n_samples, dim),
            "sample_correct": (n, n_samples),
        }
        for name, shape in expected.items():
            actual = getattr(rows, name).shape
            if actual != shape:
                raise ValueError(f"rows.{name} has shape {actual}, expected {shape}")
        if len(set(rows.ids.tolist())) != n:
            raise ValueError("rows.ids has repeated question ids")
        bad_splits = sorted(set(rows.splits.tolist()) - set(SPLITS))
        if bad_splits:
            raise ValueError(f"rows.splits has unknown splits {bad_splits}; use {SPLITS}")
        if any(len(samples) != n_samples for samples in rows.samples):
            raise ValueError(f"every row of rows.samples must hold {n_samples} answers")
        for qid, options, embedding in zip(
            rows.ids, rows.options, rows.option_embeddings, strict=True
        ):
            shape = None if options is None else (len(options), dim)
            if (None if embedding is None else embedding.shape) != shape:
                raise ValueError(f"option embeddings of {qid!r} do not match its options")
        option_embeddings = [
            None if embedding is None else np.asarray(embedding, dtype=np.float32).reshape(-1)
            for embedding in rows.option_embeddings
        ]
        columns = {
            "question_id": pa.array(rows.ids.tolist(), pa.string()),
            "split": pa.array(rows.splits.tolist(), pa.string()),
            "source": pa.array(rows.sources.tolist(), pa.string()),
            "question": pa.array(rows.questions.tolist(), pa.string()),
            "prompt": pa.array(rows.prompts.tolist(), pa.string()),
            "references": pa.array(rows.references, pa.list_(pa.string())),
            "options": pa.array(rows.options, pa.list_(pa.string())),
            "correct_option": pa.array(
                [None if c < 0 else int(c) for c in rows.correct_option], pa.int32()
            ),
            "hidden": fixed(rows.hidden, expected["hidden"][1] * config.hidden_size, np.float16),
            "default_answer": pa.array(rows.default_answer.tolist(), pa.string()),
            "samples": pa.array(rows.samples, pa.list_(pa.string())),
            "default_embedding": fixed(rows.default_embedding, dim, np.float32),
            "sample_embeddings": fixed(rows.sample_embeddings, n_samples * dim, np.float32),
            "option_embeddings": pa.array(option_embeddings, pa.list_(pa.float32())),
            "default_correct": pa.array(
                rows.default_correct.astype(bool), mask=~rows.labelled, type=pa.bool_()
            ),
            "sample_correct": pa.array(
                [
                    labels if labelled else None
                    for labels, labelled in zip(
                        rows.sample_correct.astype(bool).tolist(), rows.labelled, strict=True
                    )
                ],
                pa.list_(pa.bool_()),
            ),
            "judge": pa.array(rows.judges.tolist(), pa.string()),
        }
        if rows.greedy is None:
            greedy = [pa.nulls(n, kind) for _, kind in GREEDY_COLUMNS]
        else:
            greedy = greedy_arrays(rows.greedy)
        columns.update(zip([name for name, _ in GREEDY_COLUMNS], greedy, strict=True))
        return pa.table(columns, schema=shard_schema(config))

    def load(self, *, split: str | None = None, layer: int | None = None) -> Collection:
        """The stored rows, optionally only one split and only one hidden layer."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if layer is not None and not 0 <= layer <= self.n_layers:
            raise ValueError(f"layer must be in 0..{self.n_layers}, got {layer}")
        self.done_ids()  # refuses repeated ids
        tables = [
            (self._read_shard(path, rows), shard.get("greedy"))
            for (path, rows), shard in zip(
                self._shard_paths(), self._manifest["shards"], strict=True
            )
        ]
        if not tables:
            tables = [(shard_schema(self.config).empty_table(), None)]
        parts = []
        for table, route in tables:
            if split is not None:
                table = table.filter(pc.equal(table.column("split"), split))
            parts.append(self._from_table(table, layer, route))
        return Collection.concat(parts)

    def _from_table(self, table: pa.Table, layer: int | None, route: str | None) -> Collection:
        n, config = table.num_rows, self.config
        n_samples, dim = config.n_samples, config.embedding_dim
        hidden = unfixed(table.column("hidden"), (n, config.n_layers + 1, config.hidden_size))
        if layer is not None:
            hidden = np.ascontiguousarray(hidden[:, layer])
        options = table.column("options").to_pylist()
        option_column = table.column("option_embeddings").combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(option_column), 0).to_numpy()
        flat_options = option_column.flatten().to_numpy(zero_copy_only=False)
        option_rows = np.split(flat_options, np.cumsum(lengths)[:-1]) if n else []
        option_embeddings = [
            None if opts is None else values.reshape(len(opts), dim)
            for opts, values in zip(options, option_rows, strict=True)
        ]

        def strings(name: str) -> np.ndarray:
            return np.array(table.column(name).to_pylist(), dtype=object)

        return Collection(
            ids=strings("question_id"),
            splits=strings("split"),
            sources=strings("source"),
            questions=strings("question"),
            prompts=strings("prompt"),
            references=table.column("references").to_pylist(),
            options=options,
            correct_option=pc.fill_null(table.column("correct_option"), -1).to_numpy(),
            hidden=hidden,
            default_answer=strings("default_answer"),
            samples=table.column("samples").to_pylist(),
            default_embedding=unfixed(table.column("default_embedding"), (n, dim)),
            sample_embeddings=unfixed(table.column("sample_embeddings"), (n, n_samples, dim)),
            option_embeddings=option_embeddings,
            default_correct=pc.fill_null(table.column("default_correct"), False)
            .to_numpy()
            .astype(bool),
            sample_correct=sample_labels(table.column("sample_correct"), n_samples),
            judges=strings("judge"),
            labelled=pc.is_valid(table.column("default_correct")).to_numpy().astype(bool),
            greedy=None if route is None else read_greedy(table, route),
        )
