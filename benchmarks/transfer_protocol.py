"""Leave-one-group-out transfer of SSD, SEP, PCP and TD on stored collections (issue 22).

    python benchmarks/transfer_protocol.py --collection runs/u/trivia --collection runs/u/mmlu \
        --out runs/u/transfer

Every trivia list (and MMLU) with at least ``--min-group`` labelled rows, of which at least
``--min-class`` were answered correctly and as many incorrectly, is held out in turn;
a scorer trained on the union of the other groups (their train/validation splits, selection as
``semdistill train`` does it, ``--seeds`` training seeds) scores all its labelled rows. Then
trivia -> MMLU is the MMLU fold, and MMLU -> trivia a scorer trained on MMLU alone scoring all
trivia. With ``--half-groups`` those groups also get the unlabelled-half study. Each fold is
written to ``OUT/folds/<name>.json`` as it finishes and skipped when the script is rerun, so
an interrupted run resumes (``OUT/protocol.json`` refuses a rerun on other stores or
settings); ``OUT/transfer.json`` and ``OUT/transfer.md`` hold the summary
(``OUT/table.md`` the table with intervals, ``OUT/figures/familiarity-<fold>.png`` the
familiarity histograms). ``--transfer-selection`` trains every scorer with
``TrainSettings.transfer_selection`` (layer and risk student judged on training groups held
out in turn; no effect where the training set has fewer than two groups).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from semdistill.evaluate.document import to_markdown
from semdistill.evaluate.folds import Fold, familiarity_figure
from semdistill.evaluate.protocol import MMLU_TO_TRIVIA, GroupProtocol, fold_table, run_protocol
from semdistill.evaluate.transfer import TRANSFER_METHODS
from semdistill.store import Store
from semdistill.store.union import union_of
from semdistill.training import TrainSettings


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _markdown(folds: list[Fold], domain: list[Fold], summary: dict) -> str:
    head = (
        "| held out | n (incorrect) | " + " | ".join(TRANSFER_METHODS) + " | OOD AUROC | "
        "unfamiliar | SSD on more / less familiar half |"
    )
    lines = [head, "|" + "---|" * (len(TRANSFER_METHODS) + 5)]
    for f in [*folds, *domain]:
        name = f"{f.group} (MMLU-trained)" if f in domain else f.group
        cells = " | ".join(_cell(f.auroc.get(m)) for m in TRANSFER_METHODS)
        lines.append(
            f"| {name} | {f.n} ({f.n_incorrect}) | {cells} | {_cell(f.ood_auroc)} | "
            f"{100 * f.share_unfamiliar:.0f}% | {_cell(f.ssd_familiar)} / "
            f"{_cell(f.ssd_unfamiliar)} |"
        )
    lines.append("")
    for key, value in summary.items():
        if isinstance(value, dict):
            lines.append(f"- {key}: {value['mean']:.3f} [{value['low']:.3f}, {value['high']:.3f}]")
    halves = [f for f in folds if f.half]
    if halves:
        lines += ["", "| group (labelled half n, incorrect) | SSD without | SSD with unlabelled "
                  "half | TD without | TD with |", "|---|---|---|---|---|"]  # fmt: skip
        for f in halves:
            h = f.half
            lines.append(
                f"| {f.group} ({h['n']['labelled_half']}, {h['n']['incorrect']}) | "
                f"{_cell(h['without']['SSD'])} | {_cell(h['with_unlabelled_half']['SSD'])} | "
                f"{_cell(h['without']['TD'])} | {_cell(h['with_unlabelled_half']['TD'])} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--collection", action="append", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--min-group", type=int, default=40)
    parser.add_argument("--min-class", type=int, default=5, help="fewest correct/incorrect")
    parser.add_argument("--half-groups", nargs="*", default=[])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument(
        "--transfer-selection",
        action="store_true",
        help="choose the layer and risk student on training groups held out in turn",
    )
    args = parser.parse_args()
    stores = {path.name: Store.open(path) for path in args.collection}
    _name, rows, config, _where = union_of(stores)
    protocol = GroupProtocol(
        min_group=args.min_group,
        min_class=args.min_class,
        n_boot=args.n_boot,
        transfer_selection=args.transfer_selection,
        half_groups=tuple(args.half_groups),
        seeds=tuple(range(args.seeds)),
    )
    started = time.perf_counter()

    def report_fold(name: str, fold: Fold) -> None:
        print(f"{name}: {time.perf_counter() - started:.0f} s {fold.to_dict()}", flush=True)

    result = run_protocol(
        rows, config, TrainSettings(), protocol,
        args.out, on_fold=report_fold,
    )  # fmt: skip
    report = {
        **result.to_dict(),
        "settings": {**asdict(protocol),
                     "collections": [str(p) for p in args.collection]},
    }  # fmt: skip
    (args.out / "transfer.json").write_text(json.dumps(report, indent=2))
    (args.out / "transfer.md").write_text(_markdown(result.folds, result.domain, result.summary))
    blocks = fold_table(result.folds, result.summary)
    if result.domain:
        blocks += fold_table(result.domain, {"n_groups": 0}, title="MMLU-trained, scoring")
    (args.out / "table.md").write_text(to_markdown(blocks))
    named = [(f, f.group) for f in result.folds] + [(f, MMLU_TO_TRIVIA) for f in result.domain]
    for fold, name in named:
        if fold.familiarity_held:
            familiarity_figure(fold, args.out / "figures" / f"familiarity-{name}.png")
    print((args.out / "transfer.md").read_text())


if __name__ == "__main__":
    main()
