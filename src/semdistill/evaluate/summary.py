"""The summary table printed at the end of `semdistill run` / `semdistill evaluate`."""

from __future__ import annotations

import os

from rich.console import Console
from rich.table import Table

from semdistill.evaluate.experiments import METHODS
from semdistill.evaluate.results import RunResults
from semdistill.evaluate.transfer import TRANSFER_METHODS


def print_summary(
    results: RunResults, out: str | os.PathLike, console: Console | None = None
) -> None:
    """Hallucination AUROC [CI] per method and set, OOD, MC top-1, SSD fidelity, transfer
    AUROC, stage times."""
    console = console or Console()
    if not console.is_terminal:  # a log file: rich would assume 80 columns and elide numbers
        console = Console(file=console.file, width=200)
    if results.sets:
        console.print(_set_table(results))
    if results.transfer:
        console.print(_transfer_table(results))
    times = Table(title="wall time per stage")
    times.add_column("stage")
    times.add_column("seconds", justify="right")
    for stage, seconds in results.timings.items():
        times.add_row(stage, f"{seconds:.1f}")
    console.print(times)
    console.print(f"wrote {out}/metrics.json, report.md, report.html, figures/")


def _set_table(results: RunResults) -> Table:
    table = Table(title="SSD vs baselines: hallucination AUROC [95% CI] on the test split")
    table.add_column("set")
    for method in METHODS:
        table.add_column(method)
    table.add_column("OOD AUROC")
    table.add_column("MC top-1")
    table.add_column("SSD fidelity ρ")
    for s in results.sets.values():
        cells = []
        for method in METHODS:
            r = s.hallucination.get(method)
            cells.append(
                "–" if r is None else f"{r.auroc.value:.3f} [{r.auroc.low:.2f}, {r.auroc.high:.2f}]"
            )
        mc = s.multiple_choice
        table.add_row(
            s.name,
            *cells,
            f"{s.answer_level.mismatch.auroc.value:.3f}",
            "–" if mc is None else f"{mc.top1.value:.3f} (chance {mc.chance:.2f})",
            f"{s.fidelity.get('SSD', float('nan')):.3f}",
        )
    return table


def _transfer_table(results: RunResults) -> Table:
    table = Table(title="scorers on other sets: hallucination AUROC [95% CI]")
    table.add_column("scorer → set")
    for method in TRANSFER_METHODS:
        table.add_column(method)
    for t in results.transfer:
        table.add_row(
            f"{t.scorer} → {t.target}",
            *(
                "–"
                if (r := t.hallucination.get(m)) is None
                else f"{r.auroc.value:.3f} [{r.auroc.low:.2f}, {r.auroc.high:.2f}]"
                for m in TRANSFER_METHODS
            ),
        )
    return table
