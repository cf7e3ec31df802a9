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
an interrupted run resumes; ``OUT/transfer.json`` and ``OUT/transfer.md`` hold the summary
(``OUT/table.md`` the table with intervals, ``OUT/figures/familiarity-<fold>.png`` the
familiarity histograms). ``--transfer-selection`` trains every scorer with
``TrainSettings.transfer_selection`` (layer and risk student judged on training groups held
out in turn; no effect where the training set has fewer than two groups).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from semdistill.evaluate.groups import (
    Fold,
    familiarity_figure,
    group_of,
    run_fold,
    summarise,
    transfer_table,
)
from semdistill.evaluate.transfer import TRANSFER_METHODS
from semdistill.store import Store
from semdistill.store.union import union_of
from semdistill.training import TrainSettings


def _fold_from(data: dict) -> Fold:
    return Fold(**data)


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
        "--summarise-only", action="store_true", help="summarise the folds already written"
    )
    parser.add_argument(
        "--transfer-selection",
        action="store_true",
        help="choose the layer and risk student on training groups held out in turn",
    )
    args = parser.parse_args()
    stores = {path.name: Store.open(path) for path in args.collection}
    _name, rows, config, _where = union_of(stores)
    settings = replace(
        TrainSettings(),
        seeds=tuple(range(args.seeds)),
        transfer_selection=args.transfer_selection,
    )
    lists = np.array([group_of(i) for i in rows.ids])
    domains = np.array([str(i).split("/")[0] for i in rows.ids])
    names, counts = np.unique(lists[rows.labelled], return_counts=True)
    correct = np.array([np.sum(rows.default_correct[rows.labelled & (lists == g)]) for g in names])
    order = np.argsort(-counts, kind="stable")
    held_out = [
        str(names[i])
        for i in order
        if counts[i] >= args.min_group and min(correct[i], counts[i] - correct[i]) >= args.min_class
    ]
    skipped = {str(g): [int(n), int(k)] for g, n, k in zip(names, counts, correct, strict=True)
               if str(g) not in held_out}  # fmt: skip
    (args.out / "folds").mkdir(parents=True, exist_ok=True)
    plan = [(g, lists, g, (), g in args.half_groups) for g in held_out]
    if {"trivia", "mmlu"} <= set(domains):
        plan.append(("mmlu-to-trivia", domains, "trivia", ("mmlu",), False))
    folds, domain = [], []
    for name, groups, group, train_on, half in plan:
        path = args.out / "folds" / f"{name}.json"
        if path.is_file():
            fold = _fold_from(json.loads(path.read_text()))
        elif args.summarise_only:
            continue
        else:
            start = time.perf_counter()
            fold = run_fold(
                rows, groups, group, config, settings, args.out, half=half, train_on=train_on,
                n_boot=args.n_boot,
            )  # fmt: skip
            data = {
                **fold.to_dict(),
                "boot": fold.boot,
                "ood_boot": fold.ood_boot,
                "familiarity_held": fold.familiarity_held,
                "familiarity_in_domain": fold.familiarity_in_domain,
            }
            path.write_text(json.dumps(data))
            print(f"{name}: {time.perf_counter() - start:.0f} s {fold.to_dict()}", flush=True)
        (domain if train_on else folds).append(fold)
    summary = summarise(folds)
    report = {
        "summary_over_held_out_groups": summary,
        "folds": [f.to_dict() for f in folds],
        "domain_transfer": [f.to_dict() for f in domain],
        "settings": {"min_group": args.min_group, "min_class": args.min_class,
                     "seeds": args.seeds, "n_boot": args.n_boot,
                     "transfer_selection": args.transfer_selection,
                     "collections": [str(p) for p in args.collection]},
        "not_held_out": {"groups [labelled, correct]": skipped},
    }  # fmt: skip
    (args.out / "transfer.json").write_text(json.dumps(report, indent=2))
    (args.out / "transfer.md").write_text(_markdown(folds, domain, summary))
    table = transfer_table(folds, summary)
    if domain:
        table += "\n" + transfer_table(domain, {"n_groups": 0}, title="MMLU-trained, scoring")
    (args.out / "table.md").write_text(table)
    for fold, name in [(f, f.group) for f in folds] + [(f, "mmlu-to-trivia") for f in domain]:
        if fold.familiarity_held:
            familiarity_figure(fold, args.out / "figures" / f"familiarity-{name}.png")
    print((args.out / "transfer.md").read_text())


if __name__ == "__main__":
    main()
