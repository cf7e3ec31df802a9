"""The collection store: round trip, config checks, and refusal of damaged files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from semdistill.store import MANIFEST_NAME, CollectConfig, Collection, Store
from semdistill.teacher.base import ModelSpec

N_LAYERS, HIDDEN, DIM, N_SAMPLES = 3, 8, 5, 4


def make_config(**changes: object) -> CollectConfig:
    config = CollectConfig(
        model=ModelSpec("tiny", "gguf", "/models/tiny.gguf", None, "ab" * 32),
        backend="llamacpp",
        dtype="bfloat16",
        prompt_template="Q: {question}",
        prompt_version="v1",
        n_samples=N_SAMPLES,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=24,
        seed=0,
        embedder="mini",
        embedding_dim=DIM,
        judge="match-v1",
        questions="trivia",
        limit=10,
        question_seed=0,
        split_seed=0,
        n_layers=N_LAYERS,
        hidden_size=HIDDEN,
    )
    return replace(config, **changes)


def make_rows(ids: list[str], *, with_options: bool, seed: int = 0) -> Collection:
    rng = np.random.default_rng(seed)
    n = len(ids)
    options = [["red", "green", "blue"][: 2 + i % 2] if with_options else None for i in range(n)]
    return Collection(
        ids=np.array(ids, dtype=object),
        splits=np.array(["train", "validation", "test"] * n, dtype=object)[:n],
        sources=np.array(["unit"] * n, dtype=object),
        questions=np.array([f"question {i}?" for i in ids], dtype=object),
        prompts=np.array([f"prompt {i}" for i in ids], dtype=object),
        references=[[f"answer {i}", "alias"] for i in ids],
        options=options,
        correct_option=np.array([1 if with_options else -1] * n, dtype=np.int32),
        hidden=rng.normal(size=(n, N_LAYERS + 1, HIDDEN)).astype(np.float16),
        default_answer=np.array([f"default {i}" for i in ids], dtype=object),
        samples=[[f"s{j} of {i}" for j in range(N_SAMPLES)] for i in ids],
        default_embedding=rng.normal(size=(n, DIM)).astype(np.float32),
        sample_embeddings=rng.normal(size=(n, N_SAMPLES, DIM)).astype(np.float32),
        option_embeddings=[
            None if opts is None else rng.normal(size=(len(opts), DIM)).astype(np.float32)
            for opts in options
        ],
        default_correct=rng.random(n) < 0.5,
        sample_correct=rng.random((n, N_SAMPLES)) < 0.5,
        judges=np.array(["match-v1"] * n, dtype=object),
    )


def assert_same(a: Collection, b: Collection) -> None:
    for name in ("ids", "splits", "sources", "questions", "prompts", "default_answer", "judges"):
        assert getattr(a, name).tolist() == getattr(b, name).tolist(), name
    for name in ("correct_option", "hidden", "default_embedding", "sample_embeddings"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.default_correct, b.default_correct)
    np.testing.assert_array_equal(a.sample_correct, b.sample_correct)
    assert a.references == b.references
    assert a.options == b.options
    assert a.samples == b.samples
    for x, y in zip(a.option_embeddings, b.option_embeddings, strict=True):
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_array_equal(x, y)


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Store, Collection]:
    store = Store.create(tmp_path / "store", make_config())
    first = make_rows(["a", "b", "c"], with_options=True, seed=1)
    second = make_rows(["d", "e"], with_options=False, seed=2)
    store.append(first)
    store.append(second)
    return store, Collection.concat([first, second])


def test_round_trip_keeps_every_array(filled: tuple[Store, Collection]) -> None:
    store, written = filled
    reopened = Store.open(store.path)
    loaded = reopened.load()
    assert_same(loaded, written)
    assert loaded.hidden.dtype == np.float16 and loaded.hidden.shape == (5, N_LAYERS + 1, HIDDEN)
    assert loaded.sample_embeddings.dtype == np.float32
    assert loaded.option_embeddings[1].shape == (3, DIM)
    assert reopened.done_ids() == {"a", "b", "c", "d", "e"}
    assert (reopened.n_layers, reopened.hidden_size) == (N_LAYERS, HIDDEN)
    assert reopened.config == make_config()
    shards = sorted(p.name for p in (store.path / "shards").iterdir())
    assert shards == ["part-00000.parquet", "part-00001.parquet"]


def test_load_one_split_and_one_layer(filled: tuple[Store, Collection]) -> None:
    store, written = filled
    train = store.load(split="train")
    expected = written.subset(written.splits == "train")
    assert train.ids.tolist() == expected.ids.tolist() == ["a", "d"]
    assert_same(train, expected)
    layer = store.load(layer=2)
    assert layer.hidden.shape == (5, HIDDEN)
    np.testing.assert_array_equal(layer.hidden, written.hidden[:, 2])
    with pytest.raises(ValueError, match=r"layer must be in 0\.\.3"):
        store.load(layer=4)
    with pytest.raises(ValueError, match="split must be one of"):
        store.load(split="dev")


def test_subset_by_indices_and_empty_store(tmp_path: Path) -> None:
    rows = make_rows(["a", "b", "c"], with_options=True)
    picked = rows.subset([2, 0])
    assert picked.ids.tolist() == ["c", "a"]
    assert picked.samples == [rows.samples[2], rows.samples[0]]
    np.testing.assert_array_equal(picked.hidden, rows.hidden[[2, 0]])
    empty = Store.create(tmp_path / "empty", make_config()).load()
    assert len(empty) == 0
    assert empty.hidden.shape == (0, N_LAYERS + 1, HIDDEN)
    assert empty.sample_embeddings.shape == (0, N_SAMPLES, DIM)


def test_config_dict_round_trip_through_json() -> None:
    config = make_config()
    assert CollectConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match=r"missing keys \['seed'\]"):
        CollectConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "seed"})


def test_open_or_create_refuses_a_different_config(filled: tuple[Store, Collection]) -> None:
    store, _ = filled
    other_model = ModelSpec("tiny", "gguf", "/models/tiny.gguf", None, "cd" * 32)
    changed = make_config(n_samples=6, model=other_model)
    with pytest.raises(ValueError) as err:
        Store.open_or_create(store.path, changed)
    message = str(err.value)
    assert "n_samples: 4 != 6" in message
    assert "model.sha256" in message
    assert "seed" not in message.replace("question_seed", "").replace("split_seed", "")


def test_same_gguf_at_another_path_is_the_same_config(filled: tuple[Store, Collection]) -> None:
    store, _ = filled
    moved = replace(make_config().model, location="/elsewhere/tiny.gguf")
    reopened = Store.open_or_create(store.path, make_config(model=moved))
    assert reopened.done_ids() == {"a", "b", "c", "d", "e"}
    hf = make_config(model=ModelSpec("m", "hf", "/a", None, None))
    assert hf.differences(make_config(model=ModelSpec("m", "hf", "/b", None, None))) == [
        "model.location: '/a' != '/b'"
    ]


def test_append_refuses_bad_rows(filled: tuple[Store, Collection]) -> None:
    store, _ = filled
    with pytest.raises(ValueError, match=r"already in store .*\['a'\]"):
        store.append(make_rows(["a", "z"], with_options=False))
    wrong = make_rows(["y"], with_options=False)
    wrong.hidden = wrong.hidden[:, :2]
    with pytest.raises(
        ValueError, match=r"rows.hidden has shape \(1, 2, 8\), expected \(1, 4, 8\)"
    ):
        store.append(wrong)
    few = make_rows(["x"], with_options=False)
    few.samples = [few.samples[0][:2]]
    with pytest.raises(ValueError, match="must hold 4 answers"):
        store.append(few)
    with pytest.raises(ValueError, match="already holds a store"):
        Store.create(store.path, make_config())
    assert Store.open(store.path).done_ids() == {"a", "b", "c", "d", "e"}


def test_collection_refuses_ragged_fields() -> None:
    rows = make_rows(["a", "b"], with_options=False)
    with pytest.raises(ValueError, match=r"\['samples'\] do not have one entry per id"):
        replace(rows, samples=rows.samples[:1])


def test_corrupt_shard_is_refused_by_name(filled: tuple[Store, Collection]) -> None:
    store, _ = filled
    shard = store.path / "shards" / "part-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"shard .*part-00001\.parquet is corrupt"):
        Store.open(store.path).load()


def test_missing_shard_is_refused_by_name(filled: tuple[Store, Collection]) -> None:
    store, _ = filled
    (store.path / "shards" / "part-00000.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"part-00000\.parquet listed in .*manifest"):
        Store.open(store.path).done_ids()


def test_other_format_version_and_bad_manifest_are_refused(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "s", make_config())
    manifest = json.loads(store.manifest_path.read_text())
    manifest["format_version"] = 99
    store.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"manifest\.json: store manifest has format version 99"):
        Store.open(store.path)
    store.manifest_path.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        Store.open(store.path)
    with pytest.raises(FileNotFoundError, match="no store manifest"):
        Store.open(tmp_path / "nowhere")


def test_leftover_tmp_files_are_ignored(filled: tuple[Store, Collection]) -> None:
    store, written = filled
    (store.path / "shards" / "part-00002.parquet.tmp").write_bytes(b"half a shard")
    (store.path / f"{MANIFEST_NAME}.tmp").write_text("{half")
    reopened = Store.open(store.path)
    assert_same(reopened.load(), written)
    reopened.append(make_rows(["f"], with_options=False))
    assert len(Store.open(store.path).load()) == 6
    assert not (store.path / "shards" / "part-00002.parquet.tmp").exists()


def test_complete_flag_follows_appends(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "s", make_config())
    assert not store.complete
    store.append(make_rows(["a"], with_options=False))
    store.mark_complete()
    assert Store.open(store.path).complete
    store.append(make_rows(["b"], with_options=False))
    assert not Store.open(store.path).complete
