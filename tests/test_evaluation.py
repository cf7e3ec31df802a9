"""Experiments, results and report on a synthetic collection whose answers carry real signal."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from semdistill.evaluate.cascade import BUDGETS, cascade_scores
from semdistill.evaluate.combined import fit_combined
from semdistill.evaluate.evaluation import EvalSettings, evaluate_trained
from semdistill.evaluate.experiments import (
    COMBINED,
    METHODS,
    POST_SIGNALS,
    SSD_ROWS,
    mismatch_pairs,
)
from semdistill.evaluate.report import write_report
from semdistill.evaluate.results import RunResults
from semdistill.store import CollectConfig, Collection, GreedyScores
from semdistill.teacher.base import ModelSpec
from semdistill.training import StudentSettings, TrainSettings, prepare
from semdistill.training.selection import select_risk
from semdistill.training.trained import TrainedSet, train_question_set


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
    tokens = rng.integers(1, 6, size=n)
    greedy = GreedyScores(  # the greedy answer's tokens are less likely where the model hesitates
        logprob=-tokens * np.exp(0.5 * u + 0.3 * rng.normal(size=n)),
        tokens=tokens,
        entropy=np.exp(0.5 * u + 0.3 * rng.normal(size=n)),
        route="decoder",
    )
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
        greedy=greedy,
    )


SETTINGS = EvalSettings(
    train=TrainSettings(
        risk_dim=4,
        likelihood_dim=8,
        pca_dim=16,
        student=StudentSettings(
            n_components=2, hidden_dim=32, depth=2, max_epochs=40, patience=10, learning_rate=3e-3
        ),
        seeds=(0, 1),
        min_scales=(1e-3, 5e-2),
        layer_dim=6,
    ),
    n_boot=100,
    ablation_grid={"pca_dim": (4, 8), "n_components": (1, 2)},
    learning_sizes=(50,),
)


@pytest.fixture(scope="module")
def trained() -> TrainedSet:
    return train_question_set("synthetic", synthetic_collection(), SETTINGS.train)


@pytest.fixture(scope="module")
def results(trained: TrainedSet) -> RunResults:
    set_results = evaluate_trained(trained, SETTINGS)
    return RunResults({"model": "synthetic"}, {"synthetic": set_results}, None, {"train": 1.0})


def test_every_ssd_row_is_a_mean_over_the_training_seeds(results):
    s = results.sets["synthetic"]
    for method in ("SSD", "SSD (paper objective)", "SSD-multi"):
        r = s.hallucination[method]
        assert len(r.seed_auroc) == 2
        assert r.auroc.value == pytest.approx(np.mean(r.seed_auroc))
    assert s.hallucination["TD"].seed_auroc == ()


def test_model_selection_reads_no_labels_and_no_test_prompts(trained):
    """Shuffling every correctness label and replacing every test prompt's states and answers
    leaves the selection exactly as it was."""
    collection = synthetic_collection()
    rng = np.random.default_rng(5)
    test = np.flatnonzero(collection.splits == "test")
    collection.default_correct = rng.permutation(collection.default_correct)
    collection.hidden[test] = rng.normal(size=collection.hidden[test].shape)
    collection.sample_embeddings[test] = rng.normal(size=collection.sample_embeddings[test].shape)
    again = select_risk(prepare("synthetic", collection, SETTINGS.train), SETTINGS.train)
    first = trained.selection
    assert [c.setting for c in again.candidates] == [c.setting for c in first.candidates]
    np.testing.assert_allclose(
        [c.val_nll for c in again.candidates], [c.val_nll for c in first.candidates], rtol=1e-6
    )
    assert (again.ssd, again.multi, again.deployed) == (first.ssd, first.multi, first.deployed)


def test_selection_stages_follow_their_rules(trained):
    selection = trained.selection
    stages = {c.stage for c in selection.candidates}
    assert stages == {"objective", "floor", "layers"}
    objectives = [c for c in selection.candidates if c.stage == "objective"]
    assert selection.ssd.targets == max(objectives, key=lambda c: c.val_fidelity).setting.targets
    floors = [c for c in selection.candidates if c.stage == "floor"]
    assert selection.ssd == min(floors, key=lambda c: c.val_nll).setting
    multis = [c for c in selection.candidates if c.stage == "layers"]
    assert selection.multi == min(multis, key=lambda c: c.val_nll).setting
    assert all(len(c.setting.layers) >= 2 for c in multis)
    assert selection.paper.targets == "samples" and selection.paper.layers == (2,)


def test_learning_curve_has_every_size_seed_and_method(results):
    s = results.sets["synthetic"]
    sizes = sorted({p.n_train for p in s.learning_curve})
    assert sizes == [50, 100]
    for method in (*SSD_ROWS, "SEP", "PCP", "TD"):
        assert {(p.n_train, p.seed) for p in s.learning_curve if p.method == method} == {
            (n, seed) for n in sizes for seed in (0, 1)
        }
    full = [p.auroc for p in s.learning_curve if p.method == "SSD" and p.n_train == 100]
    np.testing.assert_allclose(full, s.hallucination["SSD"].seed_auroc)


def test_layer_selection_finds_the_informative_layer(results):
    assert results.sets["synthetic"].layer == 2


def test_signal_is_detected(results):
    s = results.sets["synthetic"]
    # SE and TD see the spread directly; the student must learn it from layer 2.
    assert s.hallucination["SE"].auroc.value > 0.7
    assert s.hallucination["SSD"].auroc.value > 0.65
    assert s.fidelity["SSD"] > 0.3  # chance level is 0 ± 0.16 for 40 test prompts
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
    for section in ("ood", "multiple_choice", "fidelity", "consensus", "latency", "selection"):
        assert section in metrics
    assert metrics["schema_version"] == 2
    assert metrics["learning_curve"]["synthetic"]["summary"]
    assert metrics["hallucination"]["synthetic"]["SSD"]["seed_auroc"]
    numbers = list(_numbers(metrics))
    assert numbers and all(math.isfinite(x) for x in numbers)
    report = (tmp_path / "report.md").read_text()
    assert "departs from the paper" in report and "| SSD |" in report
    assert "| SSD (paper objective) |" in report and "Model selection" in report
    assert (tmp_path / "report.html").read_text().startswith("<!doctype html>")
    for figure in ("auroc", "learning_curve", "training_synthetic"):
        assert (tmp_path / "figures" / f"{figure}.png").stat().st_size > 1000


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


def _synthetic_config() -> CollectConfig:
    """The config of a store holding :func:`synthetic_collection` rows (e=48)."""
    return CollectConfig(
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


def test_evaluate_command_end_to_end_on_a_parquet_store(tmp_path):
    """`semdistill evaluate` on a real store on disk: report, metrics and scorer artifacts."""
    from typer.testing import CliRunner

    from semdistill.cli import app
    from semdistill.scoring.artifacts import load_artifacts
    from semdistill.store import Store

    collection = synthetic_collection(e=48)  # wide enough for the d=32 likelihood student
    config = _synthetic_config()
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
    artifacts, pca, students, inputs, probes = load_artifacts(out / "ssd" / "store")
    assert artifacts.layer == metrics["layers"]["store"]["student"]
    assert {role: s.n_targets_ for role, s in students.items()} == {"risk": 16, "likelihood": 32}
    assert pca.n_components >= 32
    assert set(probes) == {"SEP", "PCP"} and set(inputs) == {"risk", "likelihood"}
    deployed = metrics["selection"]["store"]["deployed"]
    assert list(inputs["risk"].layers) == deployed["layers"]

    # The saved scorer, applied to its own test split, reproduces the deployed student's
    # first-seed AUROC and the probes' AUROC; TD is the same statistic.
    scored = tmp_path / "scored"
    args = ["evaluate", "--collection", str(tmp_path / "store"), "--out", str(scored)]
    result = CliRunner().invoke(
        app, [*args, "--scorer", str(out / "ssd" / "store"), "--n-boot", "50"]
    )
    assert result.exit_code == 0, result.output
    (row,) = json.loads((scored / "metrics.json").read_text())["transfer"]
    rows = metrics["selection"]["store"]
    name = "SSD-multi" if deployed == rows["multi"] and deployed != rows["ssd"] else "SSD"
    in_domain = metrics["hallucination"]["store"]
    assert row["hallucination"]["SSD"]["auroc"] == pytest.approx(in_domain[name]["seed_auroc"][0])
    for method in ("SEP", "PCP", "TD"):
        assert row["hallucination"][method]["auroc"] == pytest.approx(in_domain[method]["auroc"])
    assert row["diagnostics"]["pca_captured"] <= row["diagnostics"]["pca_captured_own"] + 1e-9
    assert "Transfer" in (scored / "report.md").read_text()

    other = tmp_path / "other"
    Store.create(other, dataclasses.replace(config, dtype="bfloat16"))
    result = CliRunner().invoke(
        app, ["evaluate", "--collection", str(other), "--out", str(tmp_path / "x"), "--scorer",
              str(out / "ssd" / "store")],
    )  # fmt: skip
    assert result.exit_code == 2 and "different dtype" in result.output


def _store(path, collection, config):
    from semdistill.store import Store

    store = Store.create(path, config)
    store.append(collection)
    store.mark_complete()
    return store


def _renamed(collection, prefix):
    """``collection`` with its question ids prefixed, so that it pools with another."""
    return dataclasses.replace(collection, ids=np.array([f"{prefix}{i}" for i in collection.ids]))


def test_pooling_refuses_shared_ids_and_other_configs(tmp_path):
    """One pooling rule for the main job and `semdistill train`: same model, dtype, prompt,
    embedder and N, and no question id in two sets; the error says which."""
    from semdistill.store.union import UNION, pool, union_of

    config = _synthetic_config()
    a, b = synthetic_collection(seed=1, e=48), synthetic_collection(seed=2, e=48)
    with pytest.raises(ValueError, match="question ids in more than one collection"):
        pool({"a": a, "b": b}, {"a": config, "b": config})
    other = dataclasses.replace(config, dtype="bfloat16")
    with pytest.raises(ValueError, match="collection b cannot be pooled with a"):
        pool({"a": a, "b": _renamed(b, "b")}, {"a": config, "b": other})
    rows = pool({"a": a, "b": _renamed(b, "b")}, {"a": config, "b": config})
    assert len(rows.ids) == len(a.ids) + len(b.ids)
    stores = {"a": _store(tmp_path / "a", a, config), "b": _store(tmp_path / "b", b, config)}
    with pytest.raises(ValueError, match="question ids in more than one collection"):
        union_of(stores)
    name, _rows, _config, where = union_of({"a": stores["a"]})
    assert name == "a" and where == str(stores["a"].path) and UNION == "union"


def test_two_sets_train_a_union_scorer_and_score_each_other(tmp_path):
    """evaluate_stores on two sets: each scorer, and the union's, scores both test splits."""
    from semdistill.pipeline.store_jobs import UNION, evaluate_stores

    config = _synthetic_config()
    stores = {
        "a": _store(tmp_path / "a", synthetic_collection(seed=1, e=48), config),
        "b": _store(tmp_path / "b", _renamed(synthetic_collection(seed=2, e=48), "b"), config),
    }
    settings = dataclasses.replace(SETTINGS, ablation_grid={})
    run = evaluate_stores(stores, settings, tmp_path / "out")
    assert "not_pooled" not in run.settings
    pairs = {(t.scorer, t.target) for t in run.transfer}
    assert pairs == {(s, t) for s in ("a", "b", UNION) for t in ("a", "b")}
    for t in run.transfer:
        assert t.n == 40 and t.hallucination["TD"] is not None
        if t.scorer == t.target:  # in-domain: the deployed student's own first-seed AUROC
            in_domain = run.sets[t.target].hallucination
            rows = [in_domain[m].seed_auroc[0] for m in ("SSD", "SSD-multi")]
            assert min(abs(t.hallucination["SSD"].auroc.value - r) for r in rows) < 1e-9
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(metrics["transfer"]) == 6
    assert (tmp_path / "out" / "ssd" / UNION / "ssd.json").is_file()


def test_leave_one_group_out_runs_in_the_evaluation_and_resumes(tmp_path):
    """With ``groups`` the evaluation holds out each question group: the folds (and, with
    trivia and MMLU, an MMLU-only scorer on trivia) land in metrics.json and the report, a
    fold's scorer never sees its group's prompts, a rerun reads the fold files back instead of
    recomputing them, a corrupt fold file is refused by name, and so is a rerun with other
    settings into the same folder."""
    from semdistill.evaluate.protocol import GroupProtocol, read_fold, run_protocol
    from semdistill.pipeline.store_jobs import evaluate_stores
    from semdistill.scoring.familiarity import Familiarity

    config = _synthetic_config()
    c = synthetic_collection(seed=1, e=48)
    c.ids = np.array([("trivia/a/" if i % 2 else "mmlu/law/") + str(i) for i in range(160)])
    protocol = GroupProtocol(min_group=40, min_class=3, n_boot=20, transfer_selection=False)
    train = dataclasses.replace(SETTINGS.train, seeds=(0,))
    settings = dataclasses.replace(
        SETTINGS, train=train, ablation_grid={}, learning_sizes=(), groups=protocol
    )
    out = tmp_path / "out"
    run = evaluate_stores({"s": _store(tmp_path / "s", c, config)}, settings, out)
    assert sorted(f.group for f in run.groups.folds) == ["a", "mmlu"]
    assert [f.group for f in run.groups.domain] == ["trivia"]
    for fold in run.groups.folds:
        assert fold.n == 80 and set(fold.auroc) == {"SSD", "TD", "SEP", "PCP"}
        assert fold.ssd_familiar is not None and fold.ssd_unfamiliar is not None
        others = ~np.char.startswith(c.ids.astype(str), "trivia/" if fold.group == "a" else "mmlu/")
        familiarity = Familiarity.load(out / "groups" / "ssd" / f"without-{fold.group}")
        assert len(familiarity.reference) == int(np.sum(others & (c.splits == "train")))
    metrics = json.loads((out / "metrics.json").read_text())
    summary = metrics["leave_one_group_out"]["summary_over_held_out_groups"]
    assert summary["n_groups"] == 2
    assert summary["SSD"]["low"] <= summary["SSD"]["mean"] <= summary["SSD"]["high"]
    report = (out / "report.md").read_text()
    assert "leave one group out" in report and "| mean over 2 groups |" in report
    assert "MMLU-trained, scoring" in report and "familiarity_a.png" in report

    fold_file = out / "groups" / "folds" / "a.json"
    fold_file.write_text(fold_file.read_text().replace('"n": 80', '"n": 81'))
    again = run_protocol(c, config, train, protocol, out / "groups")
    assert {f.group: f.n for f in again.folds} == {"a": 81, "mmlu": 80}  # read back
    fold_file.write_text('{"group": "a"}')
    with pytest.raises(ValueError, match=r"a\.json is not a fold"):
        read_fold(fold_file)
    other = dataclasses.replace(protocol, n_boot=21)
    with pytest.raises(ValueError, match=r"protocol\.json records other protocol than"):
        run_protocol(c, config, train, other, out / "groups")


def test_combined_scores_read_no_labels_and_no_test_prompts(trained):
    """Replacing every test prompt's states, SE, greedy-answer statistics and every label
    leaves what each combined score chose, and its weights, exactly as they were."""
    p = trained.prepared
    rng = np.random.default_rng(7)
    test = p.test
    collection = dataclasses.replace(p.collection, hidden=p.collection.hidden.copy())
    collection.hidden[test] = rng.normal(size=collection.hidden[test].shape)
    greedy = p.collection.greedy
    collection.greedy = GreedyScores(
        np.where(np.isin(np.arange(len(greedy)), test), -rng.random(len(greedy)), greedy.logprob),
        greedy.tokens,
        np.where(np.isin(np.arange(len(greedy)), test), rng.random(len(greedy)), greedy.entropy),
        greedy.route,
    )
    collection.default_correct = rng.permutation(collection.default_correct)
    se = p.se.copy()
    se[test] = rng.permutation(se[test]) + 1.0
    shuffled = dataclasses.replace(
        trained, prepared=dataclasses.replace(p, collection=collection, se=se)
    )
    first, again = fit_combined(trained, test), fit_combined(shuffled, test)
    assert set(first.choices) == set(COMBINED)
    assert again.choices == first.choices
    assert not np.allclose(again.test["combined-post"], first.test["combined-post"])


def test_combined_and_cascade_are_in_every_output(results, tmp_path):
    s = results.sets["synthetic"]
    for method in (*POST_SIGNALS, *COMBINED):
        assert s.hallucination[method] is not None, method
    c = s.cascade
    assert [p.budget for p in c.points] == list(BUDGETS)
    # every prompt sampled is SE itself; none sampled is the kept one-pass score
    assert c.points[-1].result.auroc.value == pytest.approx(s.hallucination["SE"].auroc.value)
    assert c.points[0].result.auroc.value == pytest.approx(s.hallucination[c.kept].auroc.value)
    reached = [p.budget for p in c.points if p.result.auroc.value >= c.se_auroc - 1e-12]
    assert c.budget_to_match_se == min(reached)
    write_report(results, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["cascade"]["synthetic"]["budget_to_match_se"] == c.budget_to_match_se
    assert set(metrics["combined"]["synthetic"]) == set(COMBINED)
    assert (tmp_path / "figures" / "cascade_synthetic.png").stat().st_size > 1000
    assert "sampling cascade" in (tmp_path / "report.md").read_text()


def test_cascade_samples_the_highest_ranked_prompts():
    ranking = np.array([[0.1, 0.9, 0.5, 0.3]])
    kept = np.array([[1.0, 2.0, 3.0, 4.0]])
    se = np.array([10.0, 20.0, 30.0, 40.0])
    np.testing.assert_array_equal(cascade_scores(ranking, kept, se, 0.0), kept)
    np.testing.assert_array_equal(cascade_scores(ranking, kept, se, 0.5), [[1.0, 20.0, 30.0, 4.0]])
    np.testing.assert_array_equal(cascade_scores(ranking, kept, se, 1.0), se[None])
