"""The report's figures (PNG), each from a run's results.

Figures are drawn on :class:`matplotlib.figure.Figure` objects, without pyplot, so no
backend is chosen and no global state changes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from semdistill.evaluate.experiments import METHODS, SSD_ROWS
from semdistill.evaluate.folds import familiarity_figure
from semdistill.evaluate.learning_curve import summarise
from semdistill.evaluate.protocol import MMLU_TO_TRIVIA
from semdistill.evaluate.results import RunResults, SetResults


def write_figures(results: RunResults, directory: Path) -> dict[str, str]:
    """Every figure the results allow, as ``{key: path relative to the report}``."""
    figures: dict[str, str] = {}
    sets = list(results.sets.values())
    if sets:
        figures["auroc"] = _auroc_bars(sets, directory / "auroc.png")
    for s in sets:
        if s.cascade is not None:
            figures[f"cascade_{s.name}"] = _cascade(s, directory / f"cascade_{s.name}.png")
    if any(s.learning_curve for s in sets):
        figures["learning_curve"] = _learning_curves(sets, directory / "learning_curve.png")
    for s in sets:
        if s.training_curves:
            figures[f"training_{s.name}"] = _training_curves(
                s, directory / f"training_{s.name}.png"
            )
    points = [
        (p.fidelity, p.ssd_auroc)
        for s in sets
        for p in s.ablations
        if p.ssd_auroc is not None and math.isfinite(p.fidelity)
    ]
    if points:
        fig, ax = _subplots(figsize=(4.5, 3.5))
        ax.scatter(*zip(*points, strict=True), color="#4878a8")
        ax.set_xlabel("fidelity ρ (student entropy vs TD)")
        ax.set_ylabel("SSD AUROC")
        figures["fidelity"] = _save(fig, directory / "fidelity.png")
    for s in sets:
        if s.ablations:
            figures[f"ablation_{s.name}"] = _ablations(s, directory / f"ablation_{s.name}.png")
        if s.layer_selection is not None:
            fig, ax = _subplots(figsize=(5, 3))
            ax.plot(s.layer_selection.layers, s.layer_selection.val_auroc, "o-")
            ax.axvline(s.layer, color="red", lw=0.8)
            ax.set_xlabel("layer (0 = embeddings)")
            ax.set_ylabel("validation AUROC")
            figures[f"layers_{s.name}"] = _save(fig, directory / f"layers_{s.name}.png")
    if results.groups is not None:
        named = [(f, f.group) for f in results.groups.folds]
        named += [(f, MMLU_TO_TRIVIA) for f in results.groups.domain]
        for fold, name in named:
            if fold.familiarity_held and fold.familiarity_in_domain:
                path = familiarity_figure(fold, directory / f"familiarity_{name}.png")
                figures[f"familiarity_{name}"] = f"figures/{path.name}"
    return figures


def _auroc_bars(sets: list[SetResults], path: Path) -> str:
    fig, axes = _subplots(1, len(sets), figsize=(6 * len(sets), 3.8), squeeze=False)
    for ax, s in zip(axes[0], sets, strict=True):
        names = [m for m in METHODS if s.hallucination.get(m) is not None]
        values = [s.hallucination[m].auroc for m in names]
        ax.bar(
            range(len(names)),
            [v.value for v in values],
            yerr=[[v.value - v.low for v in values], [v.high - v.value for v in values]],
            capsize=4,
            color=["#4878a8" if m in SSD_ROWS else "#9a9a9a" for m in names],
        )
        ax.set_xticks(range(len(names)), [m.replace(" (", "\n(") for m in names], fontsize=8)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_ylim(0.0, 1.0)
        ax.set_title(f"{s.name}: hallucination AUROC (95% CI)")
    return _save(fig, path)


def _cascade(s: SetResults, path: Path) -> str:
    c = s.cascade
    assert c is not None
    fig, ax = _subplots(figsize=(5, 3.5))
    x = [p.samples_per_prompt for p in c.points]
    auroc = [p.result.auroc for p in c.points]
    ax.plot(x, [a.value for a in auroc], "o-", color="#4878a8", label="cascade")
    ax.fill_between(x, [a.low for a in auroc], [a.high for a in auroc], color="#4878a8", alpha=0.2)
    ax.axhline(c.se_auroc, color="grey", ls="--", lw=0.8, label=f"SE, N={c.n_samples}")
    ax.set_xlabel("mean samples per prompt")
    ax.set_ylabel("test AUROC (95% CI)")
    ax.set_title(f"{s.name}: sampling cascade ({c.ranked_by} ranks, {c.kept} elsewhere)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _learning_curves(sets: list[SetResults], path: Path) -> str:
    fig, axes = _subplots(2, len(sets), figsize=(5.5 * len(sets), 6.5), squeeze=False)
    for column, s in enumerate(sets):
        rows = summarise(s.learning_curve)
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == method and r["auroc"] is not None]
            sizes = [r["n_train"] for r in mine]
            for row, key in ((0, "auroc"), (1, "fidelity")):
                stats = [r[key] for r in mine]
                if not stats or any(v is None for v in stats):
                    continue
                axes[row][column].errorbar(
                    sizes,
                    [v["mean"] for v in stats],
                    yerr=[v["std"] for v in stats],
                    marker="o",
                    capsize=3,
                    ls="-" if method in SSD_ROWS else "--",
                    label=method,
                )
        axes[0][column].set_title(f"{s.name}: test AUROC vs training prompts")
        axes[1][column].set_title(f"{s.name}: SSD fidelity ρ vs training prompts")
        for row in (0, 1):
            axes[row][column].set_xscale("log")
            axes[row][column].set_xlabel("training prompts")
        axes[0][column].legend(fontsize=7)
    return _save(fig, path)


def _training_curves(s: SetResults, path: Path) -> str:
    fig, axes = _subplots(1, 2, figsize=(10, 3.5))
    for name, records in s.training_curves.items():
        epochs = [r["epoch"] for r in records]
        (line,) = axes[0].plot(epochs, [r["val_nll"] for r in records], label=f"{name} val")
        axes[0].plot(epochs, [r["train_nll"] for r in records], ls=":", color=line.get_color())
        axes[1].plot(epochs, [_nan(r["val_fidelity"]) for r in records], label=name)
    axes[0].set_title(f"{s.name}: NLL per epoch (dotted: train)")
    axes[0].set_ylabel("nats per sample (own targets)")
    axes[1].set_title("validation fidelity ρ per epoch")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    return _save(fig, path)


def _ablations(s: SetResults, path: Path) -> str:
    names = list(dict.fromkeys(p.axis for p in s.ablations))
    fig, axs = _subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    for ax, axis in zip(axs[0], names, strict=True):
        pts = [p for p in s.ablations if p.axis == axis]
        ax.plot([p.value for p in pts], [_nan(p.ssd_auroc) for p in pts], "o-", label="SSD")
        if axis == "pca_dim":
            ax.plot([p.value for p in pts], [_nan(p.td_auroc) for p in pts], "s--", label="TD")
            ax.legend()
        ax.set_xscale("log", base=2)
        ax.set_title(axis)
    return _save(fig, path)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _subplots(nrows: int = 1, ncols: int = 1, **options: Any) -> tuple[Figure, Any]:
    """A new figure and its axes, as ``pyplot.subplots`` gives them."""
    squeeze = options.pop("squeeze", True)
    fig = Figure(**options)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def _save(fig: Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"figures/{path.name}"
