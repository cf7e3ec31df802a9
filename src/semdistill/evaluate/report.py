"""``metrics.json``, ``report.md``, ``report.html`` and ``figures/*.png`` from a run's results."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from semdistill.evaluate.document import (
    Block,
    Bullets,
    Figure,
    Heading,
    Paragraph,
    Table,
    to_html,
    to_markdown,
)
from semdistill.evaluate.experiments import METHODS
from semdistill.evaluate.results import RunResults, SetResults

# Macro-average AUROC over 7 models (paper, Table 1) and ranges over models (Tables 3, 4, A1).
PAPER_AUROC = {
    "trivia": {"SE": 0.804, "SEP": 0.759, "PCP": 0.771, "TD": 0.699, "SSD": 0.708},
    "mmlu": {"SE": 0.663, "SEP": 0.628, "PCP": 0.679, "TD": 0.647, "SSD": 0.623},
}
PAPER_MISMATCH = {"trivia": "0.895–0.989", "mmlu": "0.923–0.985"}
PAPER_LOGLIK = {"trivia": "0.557–0.616", "mmlu": "0.519–0.576"}
PAPER_MC = "top-1 0.292–0.363 (open-ended accuracy 0.358–0.545)"
PAPER_CONSENSUS = {"all": 58.3, "correct": 48.8, "incorrect": 76.5}

DEPARTURES = (
    "Base model: a 1.5B (default) or 135M (quick) instruct model, quantised GGUF, instead of the "
    "paper's 3B–8B models; answers sampled with llama.cpp where available.",
    "Open questions come from the trivia lists of red-discordbot (general-knowledge lists), "
    "not TriviaQA; MMLU is filtered to open-style questions by a documented rule, not by the "
    "LLM-based filter of Myrzakhan et al.",
    "Correctness is judged by TriviaQA-style normalised match / containment / token-F1 against "
    "the reference aliases, not by a Qwen3-8B LLM judge.",
    "Semantic Entropy clusters answers with a rule equivalence judge (normalised string match "
    "or MiniLM cosine >= threshold), not an NLI model: no NLI checkpoint installs offline. "
    "SEP inherits the same SE targets.",
    "Answers are embedded with all-MiniLM-L6-v2 (384-d) instead of EmbeddingGemma (768-d).",
    "Far fewer prompts than the paper's thousands: CIs are correspondingly wide.",
)


def write_report(results: RunResults, out_dir: str | os.PathLike) -> None:
    """Write every output of a run into ``out_dir``."""
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    metrics = results.to_metrics()
    _atomic_text(out / "metrics.json", json.dumps(_finite_or_null(metrics), indent=2))
    blocks = report_blocks(results, _figures(results, out / "figures"))
    _atomic_text(out / "report.md", to_markdown(blocks))
    _atomic_text(out / "report.html", to_html(blocks, "semdistill report"))


def report_blocks(results: RunResults, figures: dict[str, str]) -> list[Block]:
    """The report as a list of blocks (shared by the Markdown and HTML renderings)."""
    settings = results.settings
    blocks: list[Block] = [
        Heading("Semantic Self-Distillation: evaluation report", 1),
        Paragraph(
            f"Model {settings.get('model', '?')}; question sets "
            f"{', '.join(results.sets)}; N={settings.get('n_samples', '?')} samples per "
            f"question at T={settings.get('temperature', '?')}. Every number below is in "
            "metrics.json and was produced by the command recorded there."
        ),
        Heading("Where this setup departs from the paper"),
        Bullets(DEPARTURES),
        Heading("Prompt-level hallucination prediction (Tables 1, 2, A5, A6)"),
        Paragraph(
            "AUROC / AUPRC [95% bootstrap CI] of each risk score against 'default answer "
            "incorrect' on the test split; paper = macro-average AUROC over its 7 models."
        ),
    ]
    for s in results.sets.values():
        blocks += _hallucination_table(s)
    if "auroc" in figures:
        blocks.append(Figure(figures["auroc"], "Test AUROC with 95% CIs per method"))
    blocks += [Heading("Answer-level evaluation (Table 3)"), _answer_level_table(results)]
    mc = [s for s in results.sets.values() if s.multiple_choice is not None]
    if mc:
        blocks += [Heading("Multiple-choice selection (Table 4)"), _mc_table(mc)]
    blocks += [
        Heading("Distillation fidelity (Appendix B.1)"),
        Paragraph(
            "Spearman ρ between student entropy and teacher dispersion on test prompts: "
            + "; ".join(f"{s.name} {s.fidelity:.3f}" for s in results.sets.values())
        ),
    ]
    if "fidelity" in figures:
        blocks.append(Figure(figures["fidelity"], "AUROC vs fidelity across student settings"))
    blocks += [Heading("Semantic consensus (Appendix B.2)"), _consensus_table(results)]
    for s in results.sets.values():
        if s.ablations:
            blocks += [Heading(f"Ablations on {s.name} (Appendix C)"), _ablation_table(s)]
            if f"ablation_{s.name}" in figures:
                blocks.append(Figure(figures[f"ablation_{s.name}"], f"Ablations on {s.name}"))
    blocks.append(Heading("Layer selection (Appendix D.1)"))
    for s in results.sets.values():
        blocks.append(
            Paragraph(
                f"{s.name}: student/SEP layer {s.layer} ({s.layer_note}); PCP layer "
                f"{s.probe_layers.pcp} ({s.probe_layers.pcp_note})."
            )
        )
        if f"layers_{s.name}" in figures:
            blocks.append(
                Figure(figures[f"layers_{s.name}"], f"Per-layer SE-probe AUROC, {s.name}")
            )
    if results.latency is not None:
        blocks += [Heading("Latency (Table 1, Appendix E)"), _latency_table(results)]
    blocks += [
        Heading("Wall time per stage"),
        Table(("stage", "seconds"), tuple((k, f"{v:.1f}") for k, v in results.timings.items())),
    ]
    return blocks


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _ci(score: Any) -> str:
    return f"{score.value:.3f} [{score.low:.3f}, {score.high:.3f}]"


def _hallucination_table(s: SetResults) -> list[Block]:
    paper = PAPER_AUROC.get(s.name, {})
    rows = []
    for method in METHODS:
        r = s.hallucination.get(method)
        rows.append(
            (
                method,
                "undefined" if r is None else _ci(r.auroc),
                "undefined" if r is None else _ci(r.auprc),
                _fmt(paper.get(method)),
            )
        )
    n = next((r for r in s.hallucination.values() if r is not None), None)
    caption = f"{s.name}: accuracy of the default answer {s.accuracy:.3f}"
    if n is not None:
        caption += f"; {n.n} test prompts, {n.n_pos} incorrect; SE judge {s.se_judge}"
    return [Paragraph(caption), Table(("method", "AUROC", "AUPRC", "paper AUROC"), tuple(rows))]


def _answer_level_table(results: RunResults) -> Table:
    rows = []
    for s in results.sets.values():
        a = s.answer_level
        rows.append(
            (
                s.name,
                _ci(a.mismatch.auroc),
                PAPER_MISMATCH.get(s.name, "–"),
                "undefined" if a.hallucination is None else _ci(a.hallucination.auroc),
                PAPER_LOGLIK.get(s.name, "–"),
            )
        )
    return Table(
        ("set", "mismatch AUROC", "paper", "log-lik hallucination AUROC", "paper"), tuple(rows)
    )


def _mc_table(sets: list[SetResults]) -> Table:
    rows = tuple(
        (
            s.name,
            _ci(s.multiple_choice.top1),
            f"{s.multiple_choice.chance:.2f}",
            _ci(s.multiple_choice.open_ended_accuracy),
            str(s.multiple_choice.n),
            PAPER_MC,
        )
        for s in sets
        if s.multiple_choice is not None
    )
    return Table(("set", "SSD top-1", "chance", "open-ended accuracy", "n", "paper"), rows)


def _consensus_table(results: RunResults) -> Table:
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
                    _fmt(PAPER_CONSENSUS.get(subset), 1),
                )
            )
    return Table(
        ("set", "subset", "n", "default MSD", "SSD MSD", "imp. %", "SSD win %", "paper win %"),
        tuple(rows),
    )


def _ablation_table(s: SetResults) -> Table:
    rows = tuple(
        (
            p.axis,
            str(p.value),
            _fmt(p.ssd_auroc),
            _fmt(p.td_auroc),
            _fmt(p.ood_auroc),
            _fmt(p.fidelity),
        )
        for p in s.ablations
    )
    return Table(("axis", "value", "SSD AUROC", "TD AUROC", "OOD AUROC", "fidelity ρ"), rows)


def _latency_table(results: RunResults) -> Table:
    lat = results.latency
    assert lat is not None
    base = lat.ms.get("SSD")
    rows = tuple(
        (method, f"{ms:.1f}", f"{ms / base:.1f}x" if base else "–", lat.notes.get(method, ""))
        for method, ms in lat.ms.items()
    )
    return Table(("method", "ms / prompt", "vs SSD", "what is timed"), rows)


def _figures(results: RunResults, directory: Path) -> dict[str, str]:
    figures: dict[str, str] = {}
    sets = list(results.sets.values())
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.5), squeeze=False)
    for ax, s in zip(axes[0], sets, strict=True):
        names = [m for m in METHODS if s.hallucination.get(m) is not None]
        values = [s.hallucination[m].auroc for m in names]
        ax.bar(
            names,
            [v.value for v in values],
            yerr=[[v.value - v.low for v in values], [v.high - v.value for v in values]],
            capsize=4,
            color="#4878a8",
        )
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_ylim(0.3, 1.0)
        ax.set_title(f"{s.name}: hallucination AUROC")
    figures["auroc"] = _save(fig, directory / "auroc.png")

    points = [
        (p.fidelity, p.ssd_auroc)
        for s in sets
        for p in s.ablations
        if p.ssd_auroc is not None and math.isfinite(p.fidelity)
    ]
    if points:
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        ax.scatter(*zip(*points, strict=True), color="#4878a8")
        ax.set_xlabel("fidelity ρ (student entropy vs TD)")
        ax.set_ylabel("SSD AUROC")
        figures["fidelity"] = _save(fig, directory / "fidelity.png")

    for s in sets:
        if s.ablations:
            axes_names = list(dict.fromkeys(p.axis for p in s.ablations))
            fig, axs = plt.subplots(
                1, len(axes_names), figsize=(3.2 * len(axes_names), 3), squeeze=False
            )
            for ax, axis in zip(axs[0], axes_names, strict=True):
                pts = [p for p in s.ablations if p.axis == axis]
                ax.plot([p.value for p in pts], [_nan(p.ssd_auroc) for p in pts], "o-", label="SSD")
                if axis == "pca_dim":
                    ax.plot(
                        [p.value for p in pts], [_nan(p.td_auroc) for p in pts], "s--", label="TD"
                    )
                    ax.legend()
                ax.set_xscale("log", base=2)
                ax.set_title(axis)
            figures[f"ablation_{s.name}"] = _save(fig, directory / f"ablation_{s.name}.png")
        if s.layer_selection is not None:
            fig, ax = plt.subplots(figsize=(5, 3))
            ax.plot(s.layer_selection.layers, s.layer_selection.val_auroc, "o-")
            ax.axvline(s.layer, color="red", lw=0.8)
            ax.set_xlabel("layer (0 = embeddings)")
            ax.set_ylabel("validation AUROC")
            figures[f"layers_{s.name}"] = _save(fig, directory / f"layers_{s.name}.png")
    return figures


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"figures/{path.name}"


def _finite_or_null(value: Any) -> Any:
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(v) for v in value]
    return value


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
