"""Does each set's scorer flag the other sets' prompts? Familiarity OOD AUROC, both ways,
in the familiarity's space before (format 1) and after (format 2) it read its own layers.

    python benchmarks/ood_familiarity.py \
        --set trivia runs/q/ssd/trivia runs/q/collections/trivia more/trivia \
        --set mmlu runs/q/ssd/mmlu runs/q/collections/mmlu more/mmlu [--n-boot 1000]

Each ``--set NAME SCORER TRAIN_STORE TEST_STORE`` names a scorer, the store it was trained on
(its train and validation rows are the familiarity's training and calibration prompts) and a
store whose test split holds that set's held-out prompts (the training store itself, or a
larger collection of the same questions: splits are fixed by question id, so its test rows
are never a scorer's training rows; any that are, by id, are left out). For every scorer A
and other set B it prints the AUROC of ``-familiarity`` at telling B's test prompts
(positive) from A's own test prompts, with a 95% stratified bootstrap CI, and the share of
each side below familiarity 0.05:

* before: the risk student's input, standardised with the student's training statistics,
  calibrated on the validation prompts (format 1, rebuilt here from the training store);
* after: :class:`~semdistill.scoring.familiarity.Familiarity` as the scorer saved it
  (format 2), or as training now fits it when the scorer's file is older.

No labels are read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from semdistill.metrics import auroc, bootstrap_ci
from semdistill.scoring.artifacts import load_artifacts
from semdistill.scoring.familiarity import FORMAT, JSON_FILE, Familiarity
from semdistill.scoring.scorer import RISK
from semdistill.store import Collection, Store


class RiskInputFamiliarity:
    """Format 1: kNN distance in the risk student's standardised input, p-value among the
    validation prompts' distances."""

    def __init__(self, scorer: Path, train: Collection, validation: Collection, k: int = 10):
        loaded = load_artifacts(scorer)
        self.inputs, model = loaded.inputs[RISK], loaded.students[RISK].model_
        self.mean, self.std = model.input_mean.numpy(), model.input_std.numpy()
        self.reference = self._standard(train.hidden)
        self.k = min(k, len(self.reference))
        self.calibration = np.sort(self._distance(self._standard(validation.hidden)))

    def _standard(self, hidden: np.ndarray) -> np.ndarray:
        X = self.inputs.transform(hidden[:, list(self.inputs.layers)].astype(np.float32))
        return ((X - self.mean) / self.std).astype(np.float32)

    def _distance(self, Z: np.ndarray) -> np.ndarray:
        sq = (Z**2).sum(1)[:, None] + (self.reference**2).sum(1)[None] - 2 * Z @ self.reference.T
        nearest = np.partition(np.maximum(sq, 0), self.k - 1, axis=1)[:, : self.k]
        return np.sqrt(nearest).mean(1) / np.sqrt(Z.shape[1])

    def score(self, hidden: np.ndarray) -> np.ndarray:
        d = self._distance(self._standard(hidden))
        farther = len(self.calibration) - np.searchsorted(self.calibration, d, side="left")
        return (1.0 + farther) / (1.0 + len(self.calibration))


def split_of(store: Path, name: str, leave_out: set[str] = frozenset()) -> Collection:
    """``store``'s rows of split ``name``, without the ids in ``leave_out``."""
    rows = Store.open(store).load(split=name)
    return rows.subset(np.array([str(i) not in leave_out for i in rows.ids], dtype=bool))


def familiarities(scorer: Path, train_store: Path) -> dict[str, object]:
    """The scorer's familiarity before and after, from its training store's rows."""
    train, validation = split_of(train_store, "train"), split_of(train_store, "validation")
    meta = json.loads((scorer / JSON_FILE).read_text())
    after = (
        Familiarity.load(scorer)
        if meta.get("format_version") == FORMAT.version
        else Familiarity.fit(train.hidden, validation.hidden)
    )
    return {"before": RiskInputFamiliarity(scorer, train, validation), "after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--set", nargs=4, action="append", required=True,
        metavar=("NAME", "SCORER", "TRAIN_STORE", "TEST_STORE"),
    )  # fmt: skip
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    sets = {name: (Path(s), Path(tr), Path(te)) for name, s, tr, te in args.set}
    seen = {
        name: {str(i) for i in Store.open(tr).load().ids}
        - {str(i) for i in split_of(tr, "test").ids}
        for name, (_s, tr, _te) in sets.items()
    }
    tests = {name: split_of(te, "test", seen[name]).hidden for name, (_s, _tr, te) in sets.items()}
    for name, (scorer, train_store, _test) in sets.items():
        models = familiarities(scorer, train_store)
        after = models["after"]
        print(f"scorer {name} ({scorer}): {len(after.reference)} training prompts; after: layers "
              f"{list(after.layers)}, {len(after.calibration)} calibration distances")  # fmt: skip
        for other, hidden in tests.items():
            if other == name:
                continue
            for when, model in models.items():
                inside, outside = model.score(tests[name]), model.score(hidden)
                labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))].astype(int)
                ci = bootstrap_ci(auroc, labels, -np.r_[inside, outside], n_boot=args.n_boot)
                print(
                    f"  {name} -> {other} {when:6s} OOD AUROC {ci.value:.3f} "
                    f"[{ci.low:.3f}, {ci.high:.3f}]  (n {len(outside)} vs own {len(inside)}; "
                    f"familiarity < 0.05: other {100 * np.mean(outside < 0.05):.0f}%, own "
                    f"{100 * np.mean(inside < 0.05):.0f}%)"
                )


if __name__ == "__main__":
    main()
