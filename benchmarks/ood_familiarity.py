"""How well a scorer's familiarity tells another set's prompts from held-out in-domain ones.

    python benchmarks/ood_familiarity.py --scorer runs/u/transfer-smollm2/ssd/without-mmlu \
        --in-domain runs/u/trivia --other runs/u/fandom [--other-split test]

In-domain prompts are the test split of ``--in-domain`` (held out from the scorer's training),
minus any question group the scorer was not trained on; "other" prompts are ``--other-split``
of ``--other``. Prints the OOD AUROC of ``-familiarity`` (other = positive) with a 95%
stratified bootstrap CI, the share of each side below familiarity 0.05, and each side's
mean familiarity. No labels are read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from semdistill.metrics import auroc, bootstrap_ci
from semdistill.scoring.artifacts import load_artifacts
from semdistill.scoring.familiarity import Familiarity
from semdistill.scoring.scorer import RISK
from semdistill.store import Store


def familiarity_of(scorer: Path, store: Path, split: str, exclude: str | None) -> np.ndarray:
    """Familiarity under ``scorer`` of ``store``'s ``split`` rows (all rows for ``all``),
    leaving out ids that contain ``exclude``."""
    rows = Store.open(store).load(split=None if split == "all" else split)
    if exclude:
        rows = rows.subset(np.array([exclude not in str(i) for i in rows.ids]))
    inputs = load_artifacts(scorer).inputs[RISK]
    X = inputs.transform(rows.hidden[:, list(inputs.layers)].astype(np.float32))
    return Familiarity.load(scorer).score(X)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scorer", type=Path, required=True)
    parser.add_argument("--in-domain", type=Path, required=True)
    parser.add_argument("--other", type=Path, required=True)
    parser.add_argument("--other-split", default="all")
    parser.add_argument("--exclude", default=None, help="leave in-domain ids containing this out")
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    inside = familiarity_of(args.scorer, args.in_domain, "test", args.exclude)
    other = familiarity_of(args.scorer, args.other, args.other_split, None)
    labels = np.r_[np.zeros(len(inside)), np.ones(len(other))].astype(int)
    scores = -np.r_[inside, other]
    ci = bootstrap_ci(auroc, labels, scores, n_boot=args.n_boot)
    print(f"scorer {args.scorer}: {len(inside)} in-domain test prompts, {len(other)} other")
    print(f"OOD AUROC {ci.value:.3f} [{ci.low:.3f}, {ci.high:.3f}]")
    for name, values in (("in-domain", inside), ("other", other)):
        print(
            f"{name}: familiarity < 0.05 for {100 * np.mean(values < 0.05):.1f}%, "
            f"mean familiarity {values.mean():.3f}"
        )


if __name__ == "__main__":
    main()
