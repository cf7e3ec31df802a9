"""Selection judged on unseen question groups (TrainSettings.transfer_selection) and the
transfer protocol's table and familiarity figure."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from semdistill.evaluate.document import to_markdown
from semdistill.evaluate.folds import Fold, familiarity_figure, summarise
from semdistill.evaluate.protocol import fold_table
from semdistill.store import Collection
from semdistill.training import prepare
from semdistill.training.groups import groups_of, question_group, selection_groups
from semdistill.training.layers import select_layer, select_layer_by_groups
from semdistill.training.selection import TRANSFER_RULE, select_risk
from test_evaluation import SETTINGS, synthetic_collection


def _group_specific_states(
    n_per_group: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layer 1 carries the label along a direction of its own per group (strong, does not
    transfer); layer 3 along one shared direction (weaker, transfers); layers 0, 2 noise."""
    groups = np.repeat(np.array(["a", "b", "c"]), n_per_group)
    y = rng.integers(0, 2, size=len(groups))
    H = rng.normal(size=(len(groups), 4, 30))
    for k, name in enumerate("abc"):
        rows = groups == name
        H[rows, 1, k] += 3.0 * (2 * y[rows] - 1)
    H[:, 3, 10] += 0.8 * (2 * y - 1)
    return H.astype(np.float32), y, groups


def test_select_layer_by_groups_prefers_the_layer_that_transfers() -> None:
    rng = np.random.default_rng(0)
    H, y, groups = _group_specific_states(120, rng)
    order = rng.permutation(len(y))
    train, val = order[:270], order[270:]
    within = select_layer(H[train], y[train], H[val], y[val])
    assert within.best_layer == 1  # a random split of the same groups rewards layer 1
    across = select_layer_by_groups(H, y, groups, ("a", "b", "c"))
    assert across.best_layer == 3
    assert across.val_auroc[1] < 0.65 < across.val_auroc[3]
    assert json.loads(json.dumps(across.to_dict()))["held_out_groups"] == ["a", "b", "c"]
    assert "held_out_groups" not in within.to_dict()  # the default output is unchanged
    with pytest.raises(ValueError, match="at least two groups"):
        select_layer_by_groups(H, y, groups, ("a",))
    with pytest.raises(ValueError, match="single class"):
        select_layer_by_groups(H, np.where(groups == "a", 0, y), groups, ("a", "b"))


def test_groups_from_ids_and_usable_groups() -> None:
    assert [question_group(i) for i in ("trivia/nba/3", "mmlu/law/2", "mine/7")] == [
        "nba", "mmlu", "mine",
    ]  # fmt: skip
    groups = groups_of(["trivia/a/1", "trivia/a/2", "trivia/b/1", "trivia/b/2", "x/1"])
    high = np.array([0, 1, 0, 1, 1])
    rows = np.arange(5)
    assert selection_groups(groups, rows, high, min_rows=2) == ("a", "b")
    assert selection_groups(groups, rows, high, min_rows=3) == ()  # fewer than two qualify
    assert selection_groups(groups, rows, np.array([0, 0, 0, 1, 1]), min_rows=2) == ()


def _grouped_collection() -> Collection:
    """The synthetic collection in three trivia lists; the deepest layer (3) also carries the
    uncertainty exactly, but along a coordinate of its own per list, and layer 2's shared copy
    is noisier, so a random validation split picks layer 3 and held-out lists pick layer 2."""
    c = synthetic_collection(n=300, e=24)
    c.splits = np.tile(np.array(["train"] * 6 + ["validation"] * 2 + ["test"] * 2), 30)
    c.ids = np.array([f"trivia/{'abc'[i % 3]}/{i}" for i in range(300)])
    hidden = c.hidden.astype(np.float32)
    u = hidden[:, 2, 0].copy()
    rng = np.random.default_rng(1)
    hidden[:, 2, 0] = u + 1.0 * rng.normal(size=len(u))
    hidden[:, 3, 7:10] = 0.0
    for k in range(3):
        hidden[k::3, 3, 7 + k] = 3.0 * u[k::3]
    return dataclasses.replace(c, hidden=hidden.astype(np.float16))


def test_transfer_selection_chooses_on_held_out_training_groups() -> None:
    c = _grouped_collection()
    settings = dataclasses.replace(SETTINGS.train, seeds=(0,))
    default = prepare("grouped", c, settings)
    assert default.layer == 3 and default.held_out_groups == () and default.groups is None
    chosen = prepare("grouped", c, dataclasses.replace(settings, transfer_selection=True))
    assert chosen.layer == 2
    assert chosen.held_out_groups == ("a", "b", "c")
    assert "held out in turn" in chosen.layer_note
    assert chosen.layer_selection.held_out_groups == ("a", "b", "c")
    selection = select_risk(chosen, dataclasses.replace(settings, transfer_selection=True))
    assert all(candidate.group_fidelity is not None for candidate in selection.candidates)
    assert 2 in selection.deployed.layers
    out = selection.to_dict()
    assert out["transfer_rule"] == TRANSFER_RULE and out["held_out_groups"] == ["a", "b", "c"]
    plain = select_risk(default, settings).to_dict()
    assert "transfer_rule" not in plain
    assert all("group_fidelity" not in candidate for candidate in plain["candidates"])


def test_transfer_selection_reads_no_labels_and_no_test_prompts() -> None:
    """Shuffling the correctness labels and replacing the test prompts' states and answers
    leaves the layer, the group-out fidelities and the chosen students as they were."""
    settings = dataclasses.replace(SETTINGS.train, seeds=(0,), transfer_selection=True)
    c = _grouped_collection()
    first = select_risk(p := prepare("grouped", c, settings), settings)
    rng = np.random.default_rng(5)
    test = np.flatnonzero(c.splits == "test")
    c.default_correct = rng.permutation(c.default_correct)
    c.hidden[test] = rng.normal(size=c.hidden[test].shape)
    c.sample_embeddings[test] = rng.normal(size=c.sample_embeddings[test].shape)
    again_p = prepare("grouped", c, settings)
    again = select_risk(again_p, settings)
    assert again_p.layer == p.layer
    np.testing.assert_allclose(again_p.layer_selection.val_auroc, p.layer_selection.val_auroc)
    np.testing.assert_allclose(
        [x.group_fidelity for x in again.candidates],
        [x.group_fidelity for x in first.candidates],
        rtol=1e-6,
    )
    assert (again.ssd, again.multi, again.deployed) == (first.ssd, first.multi, first.deployed)


def test_transfer_selection_needs_two_groups() -> None:
    c = _grouped_collection()
    c.ids = np.array([f"mine/{i}" for i in range(len(c))])  # one group: nothing to hold out
    settings = dataclasses.replace(SETTINGS.train, seeds=(0,))
    one = prepare("one", c, dataclasses.replace(settings, transfer_selection=True))
    assert one.layer == prepare("one", c, settings).layer == 3
    assert one.held_out_groups == () and "held_out_groups" not in one.layer_selection.to_dict()


def _fold(group: str, shift: float, rng: np.random.Generator) -> Fold:
    boot = {m: list(0.6 + shift + 0.02 * rng.normal(size=50)) for m in ("SSD", "SEP", "PCP", "TD")}
    return Fold(
        group=group,
        n=60,
        n_incorrect=40,
        auroc={m: float(np.mean(v)) for m, v in boot.items()},
        boot=boot,
        ood_auroc=0.9,
        ood_boot=list(0.9 + 0.01 * rng.normal(size=50)),
        share_unfamiliar=0.4,
        ssd_familiar=0.6,
        ssd_unfamiliar=0.55,
        familiarity_held=list(rng.uniform(0, 0.2, size=60)),
        familiarity_in_domain=list(rng.uniform(0, 1, size=40)),
    )


def test_transfer_table_and_familiarity_figure(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    folds = [_fold("mmlu", 0.0, rng), _fold("nba", 0.1, rng)]
    table = to_markdown(fold_table(folds))
    lines = table.splitlines()
    assert lines[0].startswith("| held out (n, incorrect) | SSD | SEP | PCP | TD |")
    assert lines[2].startswith("| mmlu (60, 40) | 0.6")
    assert "[" in lines[2] and lines[3].startswith("| nba (60, 40) |")
    assert lines[2].endswith("| 0.600 / 0.550 |")  # SSD on the more / less familiar half
    summary = summarise(folds)
    assert f"| mean over 2 groups | {summary['SSD']['mean']:.3f} [" in table
    assert "SSD − TD" in table and "SSD − PCP" in table
    assert "familiarity_held" not in folds[0].to_dict()
    path = familiarity_figure(folds[0], tmp_path / "figures" / "ood.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = dataclasses.replace(folds[0], familiarity_held=[])
    with pytest.raises(ValueError, match="no familiarity values"):
        familiarity_figure(empty, tmp_path / "x.png")
