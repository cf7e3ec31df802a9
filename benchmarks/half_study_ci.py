"""Intervals for the unlabelled-half study of a transfer protocol run (issue 22).

    python benchmarks/half_study_ci.py --collection runs/u/qwen-trivia \
        --collection runs/u/qwen-mmlu --out runs/transfer-qwen-ts --group mmlu --group disney

Reads the scorers that ``benchmarks/transfer_protocol.py --half-groups`` saved under
``OUT/ssd`` (nothing is trained) and prints, per group, SSD and TD AUROC on the group's
labelled half without and with its unlabelled half distilled, with 95% stratified bootstrap
intervals and the paired difference; writes ``--json`` (default ``OUT/half_study_ci.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from semdistill.evaluate.folds import half_study_intervals
from semdistill.store import Store
from semdistill.store.union import union_of
from semdistill.training.groups import groups_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--collection", action="append", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--group", action="append", required=True)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=None, help="where to write the intervals")
    args = parser.parse_args()
    _name, rows, _config, _where = union_of({p.name: Store.open(p) for p in args.collection})
    groups = groups_of(rows.ids)
    report = {}
    for group in args.group:
        result = half_study_intervals(rows, groups, group, args.out, n_boot=args.n_boot)
        report[group] = result
        n = result["n"]
        cells = [
            f"{key} {v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"
            for key, v in result.items()
            if key != "n"
        ]
        print(
            f"{group} ({n['labelled_half']:.0f}, {n['incorrect']:.0f} incorrect): "
            + "; ".join(cells)
        )
    (args.json or args.out / "half_study_ci.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
