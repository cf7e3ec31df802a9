"""Experiments, results and report on a synthetic collection whose answers carry real signal."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from semdistill.evaluate.evaluation import (
    EvalSettings,
    evaluate_trained,
    train_set,
)
from semdistill.evaluate.experiments import METHODS, mismatch_pairs
from semdistill.evaluate.report import write_report
from semdistill.evaluate.results import RunResults
from semdistill.store import Collection
from semdistill.training import StudentSettings, TrainSettings


def synthetic_collection(n: int = 160, seed: int = 0, e: int = 24) -> Collection:
    """Prompts whose hidden state (layer 2) sets how many distinct answers they sample.

    The answers' centre is a linear function of the same layer. Uncertain prompts (u > 0)
    spread their samples over several answers and their greedy answer is usually wrong;
    certain prompts repeat one answer and are usually right.
    """
    rng = np.random.default_rng(seed)
    n_layers, h, N = 3, 12, 6
    u = rng.normal(size=n)
    hidden = rng.normal(size=(n, n_layers + 1, h))
    hidden[:, 2, 0] = u  # only layer 2 carries the signal
    anchors = hidden[:, 2, 1:7] @ rng.normal(size=(6, e)) / 3  # predictable from layer 2
    samples, sample_emb = [], np.empty((n, N, e))
    for i in range(n):
        k = 1 + int(u[i] > 0) * 3
        choice = rng.integers(0, k, size=N)
        words = [f"answer {i}-{c}" for c in choice]
        samples.append(words)
        sample_emb[i] = anchors[i] + 0.8 * rng.normal(size=(k, e))[choice] * (k > 1)
    sample_emb /= np.linalg.norm(sample_emb, axis=-1, keepdims=True)
    default_emb = sample_emb[:, 0]
    correct = rng.random(n) > 1 / (1 + np.exp(-2 * u))
    splits = np.array(["train"] * 100 + ["validation"] * 20 + ["test"] * (n - 120))
    options = [[f"opt {j}" for j in range(4)] for _ in range(n)]
    option_emb = [np.vstack([default_emb[i], rng.normal(size=(3, e)) / 5]) for i in range(n)]
    return Collection(
        ids=np.array([f"q{i}" for i in range(n)]),
        splits=splits,
        sources=np.array(["synthetic"] * n),
        questions=np.array([f"question {i}?" for i in range(n)]),
        prompts=np.array([f"prompt {i}" for i in range(n)]),
        references=[[f"answer {i}-0"] for i in range(n)],
        options=options,
        correct_option=np.zeros(n, dtype=np.int32),
        hidden=hidden.astype(np.float16),
        default_answer=np.array([s[0] for s in samples]),
        samples=samples,
        default_embedding=default_emb.astype(np.float32),
        sample_embeddings=sample_emb.astype(np.float32),
        option_embeddings=option_emb,
        default_correct=correct,
        sample_correct=np.repeat(correct[:, None], N, axis=1),
        judges=np.array(["match-v1"] * n),
    )


SETTINGS = EvalSettings(
    train=TrainSettings(
        risk_dim=4,
        likelihood_dim=8,
        pca_dim=16,
        student=StudentSettings(
            n_components=2, hidden_dim=32, depth=2, max_epochs=40, patience=10, learning_rate=3e-3
        ),
    ),
    n_boot=100,
    ablation_grid={"pca_dim": (4, 8), "n_components": (1, 2)},
)


@pytest.fixture(scope="module")
def results() -> RunResults:
    trained = train_set("synthetic", synthetic_collection(), SETTINGS.train)
    set_results = evaluate_trained(trained, SETTINGS)
    return RunResults({"model": "synthetic"}, {"synthetic": set_results}, None, {"train": 1.0})


def test_layer_selection_finds_the_informative_layer(results):
    assert results.sets["synthetic"].layer == 2


def test_signal_is_detected(results):
    s = results.sets["synthetic"]
    # SE and TD see the spread directly; the student must learn it from layer 2.
    assert s.hallucination["SE"].auroc.value > 0.7
    assert s.hallucination["SSD"].auroc.value > 0.65
    assert s.fidelity > 0.3  # chance level is 0 ± 0.16 for 40 test prompts
    assert s.answer_level.mismatch.auroc.value > 0.9
    assert s.multiple_choice is not None and s.multiple_choice.top1.value > 0.5


def test_metrics_json_has_the_contract_keys(results, tmp_path):
    write_report(results, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for method in METHODS:
        entry = metrics["hallucination"]["synthetic"][method]
        assert {"auroc", "auroc_ci", "auprc"} <= entry.keys()
        low, high = entry["auroc_ci"]
        assert low <= entry["auroc"] <= high
    for section in ("ood", "multiple_choice", "fidelity", "consensus", "latency"):
        assert section in metrics
    numbers = list(_numbers(metrics))
    assert numbers and all(math.isfinite(x) for x in numbers)
    report = (tmp_path / "report.md").read_text()
    assert "departs from the paper" in report and "| SSD |" in report
    assert (tmp_path / "report.html").read_text().startswith("<!doctype html>")
    assert (tmp_path / "figures" / "auroc.png").stat().st_size > 1000


def test_mismatch_pairs_is_a_derangement():
    pairs = mismatch_pairs(50, seed=3)
    assert not np.any(pairs == np.arange(50))
    assert pairs.min() >= 0 and pairs.max() < 50


def _numbers(value):
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield float(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)


def test_evaluate_command_end_to_end_on_a_parquet_store(tmp_path):
    """`semdistill evaluate` on a real store on disk: report, metrics and scorer artifacts."""
    from typer.testing import CliRunner

    from semdistill.cli import app
    from semdistill.scoring.artifacts import load_artifacts
    from semdistill.store import CollectConfig, Store
    from semdistill.teacher.base import ModelSpec

    collection = synthetic_collection(e=48)  # wide enough for the d=32 likelihood student
    config = CollectConfig(
        model=ModelSpec("synthetic", "hf", "synthetic/model", None, None),
        backend="transformers",
        dtype="float32",
        prompt_template="{question}",
        prompt_version="test",
        n_samples=6,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=8,
        seed=0,
        embedder="synthetic",
        embedding_dim=48,
        judge="match-v1",
        questions="synthetic",
        limit=None,
        question_seed=0,
        split_seed=0,
        n_layers=3,
        hidden_size=12,
    )
    store = Store.create(tmp_path / "store", config)
    for start in range(0, len(collection), 64):
        store.append(collection.subset(np.arange(start, min(start + 64, len(collection)))))
    store.mark_complete()

    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--collection",
            str(tmp_path / "store"),
            "--out",
            str(out),
            "--n-boot",
            "50",
            "--no-ablations",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["hallucination"]["store"]) == set(METHODS)
    assert all(math.isfinite(x) for x in _numbers(metrics))
    assert metrics["settings"]["collections"]["store"]["model"]["name"] == "synthetic"
    artifacts, pca, students, _inputs, _probes = load_artifacts(out / "ssd" / "store")
    assert artifacts.layer == metrics["layers"]["store"]["student"]
    assert {role: s.n_targets_ for role, s in students.items()} == {"risk": 16, "likelihood": 32}
    assert pca.n_components >= 32
