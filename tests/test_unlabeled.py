"""Questions without reference answers: collected, stored, trained on, and kept out of every
label-based number."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from semdistill.cli import app
from semdistill.collect.rows import UNJUDGED
from semdistill.data import Question, load_questions
from semdistill.evaluate.evaluation import evaluate_trained
from semdistill.semantics.judge import MatchJudge
from semdistill.store import Collection, Store
from semdistill.training.trained import train_question_set
from test_collect import QUESTIONS, FakeTeacher, run_fake
from test_evaluation import SETTINGS, _synthetic_config, synthetic_collection


def unlabelled(collection: Collection, rows: np.ndarray) -> Collection:
    """``collection`` with ``rows`` turned into questions without reference answers, their
    labels scrambled (placeholders that nothing may read)."""
    out = dataclasses.replace(collection)
    labelled = np.ones(len(out), dtype=bool)
    labelled[rows] = False
    out.labelled = labelled
    out.default_correct = out.default_correct.copy()
    out.default_correct[rows] = np.random.default_rng(9).random(len(rows)) < 0.5
    out.references = [
        [] if not ok else refs for refs, ok in zip(out.references, labelled, strict=True)
    ]
    return out


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_question_file_without_answers_loads_unlabelled(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"traffic{suffix}"
    if suffix == ".jsonl":
        rows = [{"id": "a", "question": "Who are you?"}, {"question": "Why?", "answers": ["x"]}]
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        path.write_text("id,question,answers\na,Who are you?,\n,Why?,x\n")
    first, second = load_questions(str(path))
    assert (first.id, first.answers, first.labelled) == ("a", (), False)
    assert (second.answers, second.labelled) == (("x",), True)


def test_unlabelled_rows_are_collected_unjudged_and_stored_as_nulls(tmp_path: Path) -> None:
    """The judge sees only labelled questions; the store keeps nulls and reads them back."""

    class CountingJudge(MatchJudge):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def judge(self, answers, references, *, questions=None):
            self.seen.extend(questions or [])
            return super().judge(answers, references, questions=questions)

    from semdistill.collect import collect
    from test_collect import FakeEmbedder, fake_config, fake_settings

    questions = [*QUESTIONS[:3], Question("u/0", "What is the capital of France?", (), "mine")]
    store = Store.create(tmp_path / "s", fake_config())
    judge = CountingJudge()
    stats = collect(
        questions, FakeTeacher(), FakeEmbedder(), judge, store, fake_settings(4), progress=False
    )
    assert stats.n_labelled == 3 and stats.default_accuracy == pytest.approx(1 / 3)
    assert "What is the capital of France?" in judge.seen and len(judge.seen) == 3 * (1 + 3)
    rows = Store.open(store.path).load()
    assert rows.labelled.tolist() == [True, True, True, False]
    assert rows.judges.tolist()[-1] == UNJUDGED
    # the unlabelled "France" question got the right greedy answer, but no label says so
    assert rows.default_answer[-1] == "Paris" and not rows.default_correct[-1]
    table = pq.read_table(next((store.path / "shards").glob("*.parquet")))
    assert table.column("default_correct").null_count == 1
    assert table.column("sample_correct").null_count == 1
    # an older store (every row labelled, no nulls) reads as all labelled
    old = Store.create(tmp_path / "old", fake_config())
    run_fake(old, QUESTIONS, batch_size=2)
    assert Store.open(old.path).load().labelled.all()


def test_collection_subset_and_concat_keep_the_labelled_mask() -> None:
    c = unlabelled(synthetic_collection(n=130), np.arange(0, 130, 2))
    assert c.n_labelled == 65
    both = Collection.concat([c.subset(np.arange(10)), c.subset(np.arange(10, 20))])
    assert both.labelled.tolist() == c.labelled[:20].tolist()


def test_labels_of_unlabelled_rows_change_nothing() -> None:
    """Scrambling the placeholder labels of unlabelled rows leaves the probes and every AUROC
    unchanged, and the AUROCs count only the labelled test rows."""
    base = synthetic_collection()
    hidden_rows = np.flatnonzero(np.isin(base.splits, ["train", "test"]))[::3]
    a = unlabelled(base, hidden_rows)
    b = dataclasses.replace(a, default_correct=a.default_correct.copy())
    b.default_correct[hidden_rows] = ~b.default_correct[hidden_rows]
    settings = dataclasses.replace(SETTINGS, ablation_grid={}, learning_sizes=())
    train = dataclasses.replace(settings.train, seeds=(0,))
    settings = dataclasses.replace(settings, train=train)
    results = [evaluate_trained(train_question_set("s", c, train), settings) for c in (a, b)]
    test = np.flatnonzero(base.splits == "test")
    n_labelled_test = int(a.labelled[test].sum())
    assert n_labelled_test < len(test)
    for method in ("SSD", "TD", "SEP", "PCP"):
        first, second = (r.hallucination[method] for r in results)
        assert first.n == n_labelled_test
        assert first.auroc.value == pytest.approx(second.auroc.value)
    assert results[0].n_questions["labelled_test"] == n_labelled_test
    assert results[0].accuracy == pytest.approx(results[1].accuracy)


@pytest.fixture
def small_training(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`semdistill train` with the tests' small settings (one seed, few epochs); the extra
    arguments to give it."""
    import semdistill.training as training

    def small(**changes: object) -> training.TrainSettings:
        changes.pop("student")
        return dataclasses.replace(SETTINGS.train, seeds=(0,), **changes)

    monkeypatch.setattr(training, "TrainSettings", small)
    return ["--risk-dim", "4", "--likelihood-dim", "8"]


def _store(path: Path, collection: Collection) -> Path:
    store = Store.create(path, _synthetic_config())
    store.append(collection)
    store.mark_complete()
    return path


def test_train_on_a_labelled_and_an_unlabelled_store(
    tmp_path: Path, small_training: list[str]
) -> None:
    """`semdistill train` on the union of a labelled set and a user's unlabelled traffic;
    the scorer then scores the traffic's labelled half and reports how many rows had labels."""
    labelled = synthetic_collection(n=160, seed=1, e=48)
    traffic = synthetic_collection(n=160, seed=2, e=48)
    traffic.ids = np.array([f"t{i}" for i in range(160)])
    traffic = unlabelled(traffic, np.arange(0, 160, 2))
    a, t = _store(tmp_path / "a", labelled), _store(tmp_path / "t", traffic)
    out = tmp_path / "ssd"
    args = ["train", "--collection", str(a), "--collection", str(t), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, *small_training])
    assert result.exit_code == 0, result.output
    n_train = int(np.sum(labelled.splits == "train") + np.sum(traffic.splits == "train"))
    assert f"trained on {n_train} prompts" in result.output
    assert f"({int(np.sum(labelled.splits == 'train')) + 50} labelled" in result.output
    scored = tmp_path / "scored"
    args = ["evaluate", "--collection", str(t), "--scorer", str(out), "--split", "all"]
    result = CliRunner().invoke(app, [*args, "--out", str(scored), "--n-boot", "20"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads((scored / "metrics.json").read_text())["transfer"]
    assert (row["n"], row["n_labelled"]) == (160, 80)
    assert row["hallucination"]["SSD"]["n"] == 80
    assert 0 <= row["diagnostics"]["unfamiliar"] < 0.2  # traffic states are drawn like a's
    assert "(80 labelled)" in (scored / "report.md").read_text()


def test_an_unlabelled_store_trains_but_does_not_evaluate(
    tmp_path: Path, small_training: list[str]
) -> None:
    from semdistill.scoring.artifacts import load_artifacts

    c = synthetic_collection(n=150, e=48)
    path = _store(tmp_path / "u", unlabelled(c, np.arange(150)))
    out = tmp_path / "ssd"
    args = ["train", "--collection", str(path), "--out", str(out), *small_training]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "(0 labelled" in result.output
    assert set(load_artifacts(out).probes) == {"SEP"}  # no labels, no correctness probe
    result = CliRunner().invoke(
        app, ["evaluate", "--collection", str(path), "--out", str(tmp_path / "r"), "--no-ablations"]
    )
    assert result.exit_code == 2 and "0 labelled test questions" in result.output


def test_train_refuses_stores_that_cannot_be_pooled(tmp_path: Path) -> None:
    a = _store(tmp_path / "a", synthetic_collection(n=130, e=48))
    other = Store.create(tmp_path / "b", dataclasses.replace(_synthetic_config(), n_samples=3))
    result = CliRunner().invoke(
        app, ["train", "--collection", str(a), "--collection", str(other.path), "--out",
              str(tmp_path / "o")],
    )  # fmt: skip
    assert result.exit_code == 2 and "cannot be pooled" in result.output


def test_updating_a_scorer_on_new_unlabelled_prompts_keeps_the_old_sets_auroc(
    tmp_path: Path,
) -> None:
    """Fit a scorer further on an unlabelled set of another style (shifted states): the old
    set's SSD AUROC stays where it was, the new set's prompts become familiar, and the new
    set's own AUROC (labels held back from the update) does not fall."""
    from semdistill.evaluate.transfer import transfer
    from semdistill.scoring.artifacts import load_artifacts
    from semdistill.scoring.export import save_trained
    from semdistill.scoring.familiarity import Familiarity
    from semdistill.scoring.update import update_scorer

    config = _synthetic_config()
    old = synthetic_collection(n=200, seed=1, e=48)
    train = dataclasses.replace(SETTINGS.train, seeds=(0,), risk_dim=4, likelihood_dim=8)
    save_trained(train_question_set("old", old, train), config, "old", tmp_path / "a")
    new = synthetic_collection(n=300, seed=2, e=48)
    new.ids = np.array([f"n{i}" for i in range(300)])
    new.splits = np.array(["train"] * 200 + ["validation"] * 40 + ["test"] * 60)
    new.hidden = (new.hidden.astype(np.float32) + 1.5).astype(np.float16)  # another style
    new_unlabelled = unlabelled(new, np.arange(240))

    def ssd_auroc(directory: Path, collection: Collection) -> float:
        result = transfer(load_artifacts(directory), "s", collection, "t", n_boot=10)
        return result.hallucination["SSD"].auroc.value

    def familiar(directory: Path) -> float:
        return float(np.mean(Familiarity.load(directory).score(new.hidden[240:])))

    updates = update_scorer(tmp_path / "a", new_unlabelled, config, "new", tmp_path / "b")
    assert {u.role for u in updates} == {"risk", "likelihood"}
    risk = next(u for u in updates if u.role == "risk")
    assert risk.best_epoch > 0 and risk.val_nll_after < risk.val_nll_before
    before, after = ssd_auroc(tmp_path / "a", old), ssd_auroc(tmp_path / "b", old)
    assert before > 0.75 and after > before - 0.05, (before, after)
    assert ssd_auroc(tmp_path / "b", new) >= ssd_auroc(tmp_path / "a", new) - 0.02
    # the familiarity holds the new training prompts; it reads directions, which an offset of
    # isotropic synthetic states barely turns (tests/test_familiarity.py sizes the effect)
    grown = len(Familiarity.load(tmp_path / "b").reference)
    assert grown == len(Familiarity.load(tmp_path / "a").reference) + 200
    assert familiar(tmp_path / "b") > familiar(tmp_path / "a")
    manifest = json.loads((tmp_path / "b" / "ssd.json").read_text())
    assert manifest["extra"]["updates"][0]["collection"] == "new"
    # the refine budget reads the updated risk student's risk of the new validation prompts
    updated = load_artifacts(tmp_path / "b")
    inputs = updated.inputs["risk"]
    X = inputs.transform(new.hidden[200:240][:, list(inputs.layers)].astype(np.float32))
    want = np.sort(updated.students["risk"].renyi2_entropy(X))
    np.testing.assert_allclose(manifest["extra"]["refine"]["validation_risk"], want, rtol=1e-6)
    with pytest.raises(ValueError, match="new directory"):
        update_scorer(tmp_path / "b", new_unlabelled, config, "new", tmp_path / "b")


def test_leave_one_group_out_never_trains_on_the_held_out_group(tmp_path: Path) -> None:
    """The transfer protocol: groups from ids, a fold's scorer is trained without its group
    (its familiarity holds exactly the other groups' training prompts), the unlabelled-half
    scorer holds half of the group more, and the summary's interval brackets its mean."""
    from semdistill.evaluate.folds import _half_of, run_fold, summarise
    from semdistill.scoring.familiarity import Familiarity
    from semdistill.training.groups import groups_of, question_group

    assert [question_group(i) for i in ("trivia/disney/3", "mmlu/law/2", "mine/7")] == [
        "disney", "mmlu", "mine",
    ]  # fmt: skip
    c = synthetic_collection(n=240, e=48)
    c.splits = np.tile(np.array(["train"] * 6 + ["validation"] * 2 + ["test"] * 2), 24)
    c.ids = np.array([f"trivia/{'abc'[i % 3]}/{i}" for i in range(240)])
    groups = groups_of(c.ids)
    train = dataclasses.replace(SETTINGS.train, seeds=(0,), risk_dim=4, likelihood_dim=8)
    folds = [
        run_fold(c, groups, g, _synthetic_config(), train, tmp_path, half=g == "a", n_boot=20)
        for g in ("a", "b", "c")
    ]
    n_other_train = int(np.sum((groups != "a") & (c.splits == "train")))
    assert len(Familiarity.load(tmp_path / "ssd" / "without-a").reference) == n_other_train
    hidden_half = np.array([_half_of(i, 0) for i in c.ids]) & (groups == "a")
    half = Familiarity.load(tmp_path / "ssd" / "without-a+unlabelled-half")
    assert len(half.reference) == n_other_train + int(np.sum(hidden_half & (c.splits == "train")))
    a = folds[0]
    assert a.n == 80 and set(a.auroc) == {"SSD", "TD", "SEP", "PCP"}
    assert a.half["n"]["labelled_half"] == 80 - hidden_half.sum()  # the halves partition a
    summary = summarise(folds)
    assert summary["n_groups"] == 3
    for key in ("SSD", "PCP", "SSD - PCP", "OOD"):
        assert summary[key]["low"] <= summary[key]["mean"] <= summary[key]["high"]
