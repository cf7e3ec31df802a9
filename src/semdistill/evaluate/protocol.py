"""The leave-one-group-out transfer protocol over a union of stored collections.

Every question group (see :func:`~semdistill.training.groups.question_group`) with enough labelled
rows of both classes is held out in turn and scored by a scorer trained on the other groups;
with both trivia and MMLU present, a scorer trained on MMLU alone also scores all of trivia.
Each fold is written to ``<out>/folds/<name>.json`` as it finishes and read back on a rerun,
so an interrupted protocol resumes; ``<out>/protocol.json`` records what the folds were
computed from, and a rerun on other rows or settings is refused. Which groups are held out
depends on counts of labelled rows and classes only, never on any score.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from semdistill.evaluate.document import Block, Bullets, Table
from semdistill.evaluate.folds import Fold, run_fold, summarise
from semdistill.evaluate.transfer import TRANSFER_METHODS
from semdistill.store import CollectConfig, Collection
from semdistill.training.groups import groups_of
from semdistill.training.prepare import TrainSettings

MMLU_TO_TRIVIA = "mmlu-to-trivia"


@dataclass(frozen=True)
class GroupProtocol:
    """Which groups a protocol holds out (at least ``min_group`` labelled rows, of which at
    least ``min_class`` answered correctly and as many incorrectly), the bootstrap size, the
    groups that also get the unlabelled-half study, whether each fold's scorer chooses its
    layer and risk student on its own training groups held out in turn
    (``TrainSettings.transfer_selection``), and the training seeds of each fold's scorer (these
    replace the evaluation's seeds: every fold trains a whole scorer)."""

    min_group: int = 40
    min_class: int = 5
    n_boot: int = 200
    transfer_selection: bool = True
    half_groups: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        if self.min_group < 2 or self.min_class < 1 or self.n_boot < 1 or not self.seeds:
            raise ValueError(
                "GroupProtocol needs min_group >= 2, min_class >= 1, n_boot >= 1 and a seed, "
                f"got {self.min_group}, {self.min_class}, {self.n_boot}, {self.seeds}"
            )


@dataclass(frozen=True)
class GroupTransfer:
    """A protocol's folds (one per held-out group), the MMLU-trained scorer on trivia (when
    both are present), the summary over the held-out groups and the groups not held out with
    their ``[labelled, correct]`` counts."""

    folds: list[Fold]
    domain: list[Fold]
    summary: dict[str, Any]
    not_held_out: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (no bootstrap resamples or familiarity values)."""
        return {
            "summary_over_held_out_groups": self.summary,
            "folds": [f.to_dict() for f in self.folds],
            "domain_transfer": [f.to_dict() for f in self.domain],
            "not_held_out": self.not_held_out,
        }


def held_out_groups(rows: Collection, protocol: GroupProtocol) -> tuple[list[str], dict]:
    """The groups to hold out, largest first, and the others with ``[labelled, correct]``."""
    groups = groups_of(rows.ids)
    names, counts = np.unique(groups[rows.labelled], return_counts=True)
    correct = [int(np.sum(rows.default_correct[rows.labelled & (groups == g)])) for g in names]
    held, skipped = [], {}
    for i in np.argsort(-counts, kind="stable"):
        n, k = int(counts[i]), correct[i]
        if n >= protocol.min_group and min(k, n - k) >= protocol.min_class:
            held.append(str(names[i]))
        else:
            skipped[str(names[i])] = [n, k]
    return held, skipped


def run_protocol(
    rows: Collection,
    config: CollectConfig,
    train: TrainSettings,
    protocol: GroupProtocol,
    out: Path,
    *,
    on_fold: Callable[[str, Fold], None] | None = None,
) -> GroupTransfer:
    """Run (or read back) every fold of ``protocol`` on ``rows`` into ``out``; ``on_fold`` is
    called with each fold's name as it is computed."""
    settings = replace(train, transfer_selection=protocol.transfer_selection, seeds=protocol.seeds)
    held, skipped = held_out_groups(rows, protocol)
    groups = groups_of(rows.ids)
    domains = np.array([str(i).split("/")[0] for i in rows.ids])
    plan = [(g, groups, g, (), g in protocol.half_groups) for g in held]
    if {"trivia", "mmlu"} <= set(domains[rows.labelled]):
        plan.append((MMLU_TO_TRIVIA, domains, "trivia", ("mmlu",), False))
    (out / "folds").mkdir(parents=True, exist_ok=True)
    _claim(out / "protocol.json", rows, config, settings, protocol)
    folds, domain = [], []
    for name, fold_groups, group, train_on, half in plan:
        path = out / "folds" / f"{name}.json"
        if path.is_file():
            fold = read_fold(path)
        else:
            fold = run_fold(
                rows, fold_groups, group, config, settings, out,
                half=half, train_on=train_on, n_boot=protocol.n_boot,
            )  # fmt: skip
            write_fold(fold, path)
            if on_fold is not None:
                on_fold(name, fold)
        (domain if train_on else folds).append(fold)
    return GroupTransfer(folds, domain, summarise(folds), skipped)


def _claim(
    path: Path,
    rows: Collection,
    config: CollectConfig,
    settings: TrainSettings,
    protocol: GroupProtocol,
) -> None:
    """Record what the folds under ``path``'s folder come from, or refuse (naming ``path``)
    when it records other rows or settings, whose stored folds and scorers would be reused."""
    digest = hashlib.sha256()
    for column in (rows.ids, rows.splits, rows.labelled):
        digest.update("\n".join(map(str, column)).encode())
    record = json.loads(json.dumps({
        "rows": digest.hexdigest(),
        "collection": config.to_dict(),
        "train": asdict(settings),
        "protocol": asdict(protocol),
    }))  # fmt: skip
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not a protocol record ({error})") from error
        if stored != record:
            changed = sorted(k for k in record if stored.get(k) != record[k])
            raise ValueError(
                f"{path} records other {', '.join(changed)} than this run; its folds and "
                "scorers would be reused: use another output folder or delete this one"
            )
    else:
        path.write_text(json.dumps(record, indent=2))


def write_fold(fold: Fold, path: Path) -> None:
    """One fold with its resamples and familiarity values, as JSON (written whole, then moved
    into place, so a crash leaves no partial file)."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(asdict(fold)))
    partial.replace(path)


def read_fold(path: Path) -> Fold:
    """A fold written by :func:`write_fold`; a file of another shape is refused by name."""
    try:
        return Fold(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as error:
        raise ValueError(f"{path} is not a fold of the transfer protocol ({error}); delete it "
                         "to recompute that fold") from error  # fmt: skip


def _with_interval(value: float | None, resamples: list[float] | None) -> str:
    """``0.612 [0.55, 0.67]`` (95% percentile interval of the resamples), or a dash."""
    if value is None:
        return "–"
    if not resamples:
        return f"{value:.3f}"
    low, high = np.quantile(resamples, [0.025, 0.975])
    return f"{value:.3f} [{low:.2f}, {high:.2f}]"


def fold_table(
    folds: list[Fold], summary: dict[str, Any] | None = None, *, title: str = "held out"
) -> list[Block]:
    """SSD, SEP, PCP and TD (each with its 95% bootstrap interval) per held-out group, the
    familiarity OOD AUROC, SSD on the group's more and less familiar halves, the mean over the
    groups with its interval (``summary`` as :func:`~semdistill.evaluate.folds.summarise`
    returns it; computed when None), and the paired differences SSD − TD and SSD − PCP."""
    methods = list(TRANSFER_METHODS)
    summary = summarise(folds) if summary is None else summary
    rows = []
    for f in folds:
        cells = [_with_interval(f.auroc.get(m), f.boot.get(m)) for m in methods]
        halves = " / ".join("–" if v is None else f"{v:.3f}"
                            for v in (f.ssd_familiar, f.ssd_unfamiliar))  # fmt: skip
        rows.append((f"{f.group} ({f.n}, {f.n_incorrect})", *cells,
                     _with_interval(f.ood_auroc, f.ood_boot), halves))  # fmt: skip
    blocks: list[Block] = []
    if summary.get("n_groups"):
        cells = [
            "–" if not isinstance(e := summary.get(key), dict)
            else f"{e['mean']:.3f} [{e['low']:.2f}, {e['high']:.2f}]"
            for key in [*methods, "OOD"]
        ]  # fmt: skip
        rows.append((f"mean over {summary['n_groups']} groups", *cells, ""))
        blocks.append(
            Bullets(
                tuple(
                    f"SSD − {other}: {e['mean']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}] "
                    "(paired resamples)"
                    for other in ("TD", "PCP")
                    if isinstance(e := summary.get(f"SSD - {other}"), dict)
                )
            )
        )
    header = (
        f"{title} (n, incorrect)", *methods, "familiarity OOD AUROC",
        "SSD on the more / less familiar half",
    )  # fmt: skip
    return [Table(header, tuple(rows)), *blocks]
