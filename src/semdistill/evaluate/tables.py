"""The report's tables, each built from a run's typed results."""

from __future__ import annotations

import math
from typing import Any

from semdistill.evaluate.document import Block, Paragraph, Table
from semdistill.evaluate.experiments import METHODS
from semdistill.evaluate.learning_curve import summarise
from semdistill.evaluate.results import RunResults, SetResults, familiarity_ood
from semdistill.evaluate.transfer import TRANSFER_METHODS, UNFAMILIAR_BELOW

# Macro-average AUROC over 7 models (paper, Table 1) and ranges over models (Tables 3, 4, A1),
# keyed by question source.
PAPER_AUROC = {
    "trivia": {
        "SE": 0.804,
        "SEP": 0.759,
        "PCP": 0.771,
        "TD": 0.699,
        "SSD (paper objective)": 0.708,
    },
    "mmlu": {"SE": 0.663, "SEP": 0.628, "PCP": 0.679, "TD": 0.647, "SSD (paper objective)": 0.623},
}
PAPER_MISMATCH = {"trivia": "0.895–0.989", "mmlu": "0.923–0.985"}
PAPER_LOGLIK = {"trivia": "0.557–0.616", "mmlu": "0.519–0.576"}
PAPER_MC = "top-1 0.292–0.363 (open-ended accuracy 0.358–0.545)"
PAPER_CONSENSUS = {"all": 58.3, "correct": 48.8, "incorrect": 76.5}


def fmt(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, or an en dash when missing or not finite."""
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def ci(score: Any) -> str:
    """``value [low, high]``."""
    return f"{score.value:.3f} [{score.low:.3f}, {score.high:.3f}]"


def _seeds(result: Any) -> str:
    values = result.seed_auroc
    return f"{min(values):.3f}–{max(values):.3f} ({len(values)})" if values else "–"


def hallucination_table(s: SetResults) -> list[Block]:
    """AUROC/AUPRC with CIs of every method on one set, the seeds' spread and the paper's."""
    paper = PAPER_AUROC.get(s.source, {})
    rows = []
    for method in METHODS:
        if method not in s.hallucination:
            continue
        r = s.hallucination[method]
        rows.append(
            (
                method,
                "undefined" if r is None else ci(r.auroc),
                "undefined" if r is None else ci(r.auprc),
                "–" if r is None else _seeds(r),
                fmt(paper.get(method)),
            )
        )
    n = next((r for r in s.hallucination.values() if r is not None), None)
    caption = f"{s.name}: accuracy of the default answer {s.accuracy:.3f}"
    n_labelled, n_all = (
        s.n_questions.get("labelled"),
        sum(s.n_questions[k] for k in ("train", "validation", "test")),
    )
    if n_labelled is not None and n_labelled < n_all:
        caption += (
            f" on its {n_labelled} labelled questions of {n_all} (the others, without reference "
            "answers, only trained the students and SEP)"
        )
    if n is not None:
        caption += f"; {n.n} test prompts, {n.n_pos} incorrect; SE judge {s.se_judge}"
    header = ("method", "AUROC", "AUPRC", "seed AUROC min–max (seeds)", "paper AUROC")
    return [Paragraph(caption), Table(header, tuple(rows))]


def selection_table(s: SetResults) -> Table:
    """Every candidate of the label-free model selection, with what was chosen."""
    chosen = {
        s.selection[key]["description"]: key
        for key in ("paper", "ssd", "multi", "deployed")
        if s.selection.get(key)
    }
    rows = []
    for c in s.selection.get("candidates", []):
        description = c["setting"]["description"]
        roles = [
            {"paper": "SSD (paper objective)", "ssd": "SSD", "multi": "SSD-multi"}.get(k, k)
            for k in ("paper", "ssd", "multi", "deployed")
            if s.selection.get(k) and s.selection[k]["description"] == description
        ]
        rows.append(
            (
                c["stage"],
                description,
                fmt(c["val_nll"]),
                fmt(c["val_fidelity"]),
                fmt(c["best_epoch"], 1),
                ", ".join(roles) if description in chosen else "",
            )
        )
    header = ("stage", "candidate", "val NLL", "val fidelity ρ", "epochs", "chosen as")
    return Table(header, tuple(rows))


def learning_table(s: SetResults) -> Table:
    """Mean ± standard deviation over seeds of AUROC (and SSD fidelity) per training size."""
    summary = summarise(s.learning_curve)
    sizes = sorted({r["n_train"] for r in summary})
    methods = list(dict.fromkeys(r["method"] for r in summary))

    def cell(method: str, size: int, key: str) -> str:
        row = next((r for r in summary if r["method"] == method and r["n_train"] == size), None)
        stats = None if row is None else row[key]
        return "–" if stats is None else f"{stats['mean']:.3f} ± {stats['std']:.3f}"

    rows = [(m, *(cell(m, n, "auroc") for n in sizes)) for m in methods]
    rows += [
        (f"{m} fidelity ρ", *(cell(m, n, "fidelity") for n in sizes))
        for m in methods
        if any(r["fidelity"] for r in summary if r["method"] == m)
    ]
    return Table(("AUROC / ρ", *(f"{n} prompts" for n in sizes)), tuple(rows))


def transfer_table(results: RunResults) -> Table:
    """Cross-set AUROC [CI] of each scorer on each set, with the shift diagnostics."""
    rows = []
    for t in results.transfer:
        cells = [
            "undefined" if t.hallucination.get(m) is None else ci(t.hallucination[m].auroc)
            for m in TRANSFER_METHODS
        ]
        d = t.diagnostics
        rows.append(
            (
                f"{t.scorer} → {t.target}",
                f"{t.n} ({t.n_labelled} labelled)",
                *cells,
                fmt(d.input_shift),
                f"{fmt(d.pca_captured, 2)} / {fmt(d.pca_captured_own, 2)}",
                f"{fmt(d.entropy_mean, 1)} ± {fmt(d.entropy_std, 1)}",
                "–" if d.unfamiliar is None else f"{100 * d.unfamiliar:.0f}%",
            )
        )
    header = (
        "scorer → set",
        "n (labelled: the AUROCs' rows)",
        *(f"{m} AUROC" for m in TRANSFER_METHODS),
        "input shift",
        "PCA variance (scorer / own)",
        "risk entropy",
        f"unfamiliar (familiarity < {UNFAMILIAR_BELOW:g})",
    )
    return Table(header, tuple(rows))


def familiarity_ood_table(results: RunResults) -> Table | None:
    """Per scorer and other set: the familiarity OOD AUROC [CI] of the other set's test
    prompts against the scorer's own set's (None when no scorer scored its own set)."""
    rows = tuple(
        (
            f"{scorer} → {target}",
            f"{r['auroc']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]",
            f"{r['n']} / {r['n_own']}",
        )
        for scorer, targets in familiarity_ood(results.transfer).items()
        for target, r in targets.items()
    )
    if not rows:
        return None
    return Table(("scorer → other set", "familiarity OOD AUROC", "n (other / own)"), rows)


def answer_level_table(results: RunResults) -> Table:
    """Table 3: mismatch detection and log-likelihood as a hallucination score."""
    rows = []
    for s in results.sets.values():
        a = s.answer_level
        rows.append(
            (
                s.name,
                ci(a.mismatch.auroc),
                PAPER_MISMATCH.get(s.source, "–"),
                "undefined" if a.hallucination is None else ci(a.hallucination.auroc),
                PAPER_LOGLIK.get(s.source, "–"),
                s.likelihood_setting.get("description", "–"),
            )
        )
    header = (
        "set",
        "mismatch AUROC",
        "paper",
        "log-lik hallucination AUROC",
        "paper",
        "likelihood student",
    )
    return Table(header, tuple(rows))


def mc_table(sets: list[SetResults]) -> Table:
    """Table 4: top-1 of the highest-likelihood option."""
    rows = tuple(
        (
            s.name,
            ci(s.multiple_choice.top1),
            f"{s.multiple_choice.chance:.2f}",
            ci(s.multiple_choice.open_ended_accuracy),
            str(s.multiple_choice.n),
            PAPER_MC,
        )
        for s in sets
        if s.multiple_choice is not None
    )
    return Table(("set", "SSD top-1", "chance", "open-ended accuracy", "n", "paper"), rows)


def fidelity_table(results: RunResults) -> Table:
    """Appendix B.1: Spearman ρ of each SSD row's entropy with TD on the test prompts."""
    rows = tuple(
        (s.name, *(f"{name} {rho:.3f}" for name, rho in s.fidelity.items()))
        for s in results.sets.values()
    )
    width = max((len(row) for row in rows), default=1)
    return Table(
        ("set", *("" for _ in range(width - 1))),
        tuple(row + ("",) * (width - len(row)) for row in rows),
    )


def consensus_table(results: RunResults) -> Table:
    """Appendix B.2: the mixture mean against the greedy answer as the samples' centroid."""
    rows = []
    for s in results.sets.values():
        for subset, c in s.consensus.items():
            rows.append(
                (
                    s.name,
                    subset,
                    str(c.n),
                    f"{c.default_msd:.4f}",
                    f"{c.ssd_msd:.4f}",
                    f"{c.improvement_pct:+.1f}",
                    f"{100 * c.ssd_win_rate:.1f}",
                    fmt(PAPER_CONSENSUS.get(subset), 1),
                )
            )
    return Table(
        ("set", "subset", "n", "default MSD", "SSD MSD", "imp. %", "SSD win %", "paper win %"),
        tuple(rows),
    )


def ablation_table(s: SetResults) -> Table:
    """Appendix C: the single-layer SSD student refitted along each axis."""
    rows = tuple(
        (
            p.axis,
            str(p.value),
            fmt(p.ssd_auroc),
            fmt(p.td_auroc),
            fmt(p.ood_auroc),
            fmt(p.fidelity),
        )
        for p in s.ablations
    )
    return Table(("axis", "value", "SSD AUROC", "TD AUROC", "OOD AUROC", "fidelity ρ"), rows)


def latency_table(results: RunResults) -> Table:
    """Per-prompt wall time of each method and its ratio to SSD."""
    lat = results.latency
    assert lat is not None
    base = lat.ms.get("SSD")
    rows = tuple(
        (method, f"{ms:.1f}", f"{ms / base:.1f}x" if base else "–", lat.notes.get(method, ""))
        for method, ms in lat.ms.items()
    )
    return Table(("method", "ms / prompt", "vs SSD", "what is timed"), rows)


def combined_table(s: SetResults) -> Table:
    """What each label-free combined score chose on validation, with its weights (first
    seed, on the transformed signals)."""
    rows = []
    for method, choice in s.combined.items():
        weights = ", ".join(
            f"{name} {w:+.3f}"
            for name, w in zip(choice["signals"], choice["weights"][0], strict=True)
        )
        rows.append(
            (method, choice["transform"], fmt(choice["alpha"], 1), fmt(choice["val_spearman"]),
             weights)
        )  # fmt: skip
    return Table(("method", "transform", "ridge α", "validation ρ with SE", "weights"), tuple(rows))


def cascade_table(s: SetResults) -> Table:
    """The sampling cascade's AUROC [95% CI] per budget, against SE's."""
    c = s.cascade
    assert c is not None
    rows = tuple(
        (f"{p.budget:.0%}", f"{p.samples_per_prompt:.1f}", ci(p.result.auroc),
         "yes" if p.result.auroc.value >= c.se_auroc - 1e-12 else "")
        for p in c.points
    )  # fmt: skip
    header = ("prompts sampled", "samples per prompt", "AUROC", f"≥ SE ({c.se_auroc:.3f})")
    return Table(header, rows)
