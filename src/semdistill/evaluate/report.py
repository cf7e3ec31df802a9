"""``metrics.json``, ``report.md``, ``report.html`` and ``figures/*.png`` from a run's results."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

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
from semdistill.evaluate.figures import write_figures
from semdistill.evaluate.protocol import GroupTransfer, fold_table
from semdistill.evaluate.results import RunResults
from semdistill.evaluate.tables import (
    ablation_table,
    answer_level_table,
    cascade_table,
    combined_table,
    consensus_table,
    familiarity_ood_table,
    fidelity_table,
    hallucination_table,
    latency_table,
    learning_table,
    mc_table,
    selection_table,
    transfer_table,
)

DEPARTURES = (
    "Base model: Qwen2.5-Coder-1.5B-Instruct (both presets), a quantised GGUF de-quantised to "
    "transformers, instead of the paper's 3B–8B models; prefill and answers run in transformers "
    "(bfloat16 where the CPU computes it natively, else float32).",
    "Open questions come from the trivia lists of red-discordbot (general-knowledge lists), "
    "not TriviaQA; MMLU is filtered to open-style questions by a documented rule, not by the "
    "LLM-based filter of Myrzakhan et al.",
    "Correctness is judged by TriviaQA-style normalised match / containment / token-F1 against "
    "the reference aliases, not by a Qwen3-8B LLM judge.",
    "Semantic Entropy clusters answers with a rule equivalence judge (normalised string match "
    "or MiniLM cosine >= threshold), not an NLI model: no NLI checkpoint installs offline. "
    "SEP inherits the same SE targets.",
    "Answers are embedded with all-MiniLM-L6-v2 (384-d) instead of EmbeddingGemma (768-d).",
    "The risk student's objective, scale floor and input layers are chosen on the validation "
    "split without labels (see Model selection); 'SSD (paper objective)' keeps the paper's "
    "objective at its single layer. SSD rows are means over several training seeds.",
)

OBJECTIVE_ARGUMENT = (
    "The paper fits the mixture to the sampled embeddings as they are. Its predicted scales "
    "must then cover two things: how much the samples disagree, and how far the student's "
    "predicted location is from where the answers actually fall. On unseen prompts the second "
    "is large, and it tracks how hard an answer is to place, not how much the model hesitates; "
    "with more data it dominates (in the learning curve, the paper objective's AUROC does not "
    "rise with training prompts). Rényi-2 entropy is translation invariant, so the location is "
    "a nuisance for the risk: the location-free student fits each prompt's samples minus their "
    "own mean and keeps only the spread. The likelihood student (verification, OOD, multiple "
    "choice, consensus) needs the location and keeps the paper's objective."
)


def write_report(results: RunResults, out_dir: str | os.PathLike) -> None:
    """Write every output of a run into ``out_dir``."""
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    metrics = results.to_metrics()
    _atomic_text(out / "metrics.json", json.dumps(_finite_or_null(metrics), indent=2))
    blocks = report_blocks(results, write_figures(results, out / "figures"))
    _atomic_text(out / "report.md", to_markdown(blocks))
    _atomic_text(out / "report.html", to_html(blocks, "semdistill report"))


def report_blocks(results: RunResults, figures: dict[str, str]) -> list[Block]:
    """The report as a list of blocks (shared by the Markdown and HTML renderings)."""
    settings = results.settings
    sets = list(results.sets.values())
    names = ", ".join(results.sets) or ", ".join(dict.fromkeys(t.target for t in results.transfer))
    blocks: list[Block] = [
        Heading("Semantic Self-Distillation: evaluation report", 1),
        Paragraph(
            f"Model {settings.get('model', '?')}; question sets {names}; "
            f"N={settings.get('n_samples', '?')} samples per question at "
            f"T={settings.get('temperature', '?')}. Every number below is in metrics.json and "
            f"was produced by the command recorded there: {settings.get('command', '?')}"
        ),
        Heading("Where this setup departs from the paper"),
        Bullets(DEPARTURES),
    ]
    if settings.get("not_pooled"):
        blocks.append(Paragraph(f"The sets were not pooled: {settings['not_pooled']}"))
    if sets:
        blocks += [
            Heading("Prompt-level hallucination prediction (Tables 1, 2, A5, A6)"),
            Paragraph(
                "AUROC / AUPRC [95% bootstrap CI] of each risk score against 'default answer "
                "incorrect' on the test split. The SSD rows are means over training seeds (their "
                "CI is the bootstrap interval of that mean); paper = macro-average AUROC over "
                "its 7 models, where SSD is the paper's objective."
            ),
        ]
        for s in sets:
            blocks += hallucination_table(s)
        if "auroc" in figures:
            blocks.append(Figure(figures["auroc"], "Test AUROC with 95% CIs per method"))
        blocks += _one_pass_blocks(results, figures)
        blocks += _student_blocks(results, figures)
        blocks += [Heading("Answer-level evaluation (Table 3)"), answer_level_table(results)]
        mc = [s for s in sets if s.multiple_choice is not None]
        if mc:
            blocks += [Heading("Multiple-choice selection (Table 4)"), mc_table(mc)]
        blocks += [
            Heading("Distillation fidelity (Appendix B.1)"),
            Paragraph("Spearman ρ between student entropy and teacher dispersion, test prompts."),
            fidelity_table(results),
        ]
        if "fidelity" in figures:
            blocks.append(Figure(figures["fidelity"], "AUROC vs fidelity across ablations"))
        blocks += [Heading("Semantic consensus (Appendix B.2)"), consensus_table(results)]
        for s in sets:
            if s.ablations:
                blocks += [Heading(f"Ablations on {s.name} (Appendix C)"), ablation_table(s)]
                if f"ablation_{s.name}" in figures:
                    blocks.append(Figure(figures[f"ablation_{s.name}"], f"Ablations, {s.name}"))
        blocks.append(Heading("Layer selection (Appendix D.1)"))
        for s in sets:
            blocks.append(
                Paragraph(
                    f"{s.name}: single-layer input and SEP layer {s.layer} ({s.layer_note}); PCP "
                    f"layer {s.probe_layers.pcp} ({s.probe_layers.pcp_note})."
                )
            )
            if f"layers_{s.name}" in figures:
                blocks.append(Figure(figures[f"layers_{s.name}"], f"SE-probe AUROC, {s.name}"))
    if results.transfer:
        blocks += [
            Heading("Transfer: scorers on other sets"),
            Paragraph(
                "Each scorer (its saved directory: risk student, SEP and PCP probes, PCA basis) "
                "scores each set's test split; 'A → A' rows are the in-domain reference of the "
                "deployed student (first seed). TD is the target's own sample spread. Input "
                "shift: root-mean-square over the risk student's input features of the target "
                "prompts' mean, in the training prompts' standard deviations. PCA variance: "
                "share of the target answers' embedding variance inside the scorer's basis, and "
                "inside a basis fitted on the target itself."
            ),
            transfer_table(results),
        ]
        ood = familiarity_ood_table(results)
        if ood is not None:
            blocks += [
                Paragraph(
                    "Familiarity as an out-of-domain flag: AUROC [95% bootstrap CI] of "
                    "unfamiliarity (minus the familiarity) at telling another set's test prompts "
                    "(positive) from the scorer's own set's test prompts. No labels are read."
                ),
                ood,
            ]
    if results.groups is not None:
        blocks += _group_blocks(results.groups, figures)
    if results.latency is not None:
        blocks += [Heading("Latency (Table 1, Appendix E)"), latency_table(results)]
    blocks += [
        Heading("Wall time per stage"),
        Table(("stage", "seconds"), tuple((k, f"{v:.1f}") for k, v in results.timings.items())),
    ]
    return blocks


def _group_blocks(groups: GroupTransfer, figures: dict[str, str]) -> list[Block]:
    skipped = ", ".join(f"{g} ({n} labelled, {k} correct)" for g, (n, k) in
                        groups.not_held_out.items()) or "none"  # fmt: skip
    blocks: list[Block] = [
        Heading("Transfer to held-out question groups (leave one group out)"),
        Paragraph(
            "Each question group (a trivia list, MMLU) is held out in turn; a scorer trained "
            "on the other groups (their train and validation splits, chosen on those groups "
            "alone) scores all of its labelled rows. TD is the held-out samples' spread in "
            "that scorer's PCA basis. Familiarity OOD AUROC: the held-out group's prompts "
            "against the training groups' test prompts, unfamiliar = held out. Intervals: "
            f"95% bootstrap. Not held out (too few rows or one class): {skipped}."
        ),
        *fold_table(groups.folds, groups.summary),
    ]
    if groups.domain:
        blocks += fold_table(groups.domain, {"n_groups": 0}, title="MMLU-trained, scoring")
    for key, path in figures.items():
        if key.startswith("familiarity_"):
            name = key.removeprefix("familiarity_")
            blocks.append(Figure(path, f"Familiarity of the prompts, {name} held out"))
    return blocks


def _one_pass_blocks(results: RunResults, figures: dict[str, str]) -> list[Block]:
    sets = [s for s in results.sets.values() if s.combined]
    if not sets:
        return []
    blocks: list[Block] = [
        Heading("One pass against N samples: combined scores and the sampling cascade"),
        Paragraph(
            "MSP, perplexity and token entropy are the greedy answer's own token statistics "
            "(from the decoder's logits at collection, or one teacher-forced pass); greedy NLL "
            "is the likelihood student's -log p of its embedding. combined-pre (SSD, "
            "SSD-multi, SEP) and combined-post (those and the greedy answer's) are ridge "
            "regressions of the training prompts' SE on these signals (SEP out of fold), "
            "transform and penalty chosen by validation Spearman ρ with SE: no label is read. "
            "The cascade samples the prompts whose combined-pre risk is highest and keeps the "
            "one-pass score (on SE's scale) for the others."
        ),
    ]
    for s in sets:
        blocks += [Paragraph(f"{s.name}: what each combined score chose."), combined_table(s)]
        if s.cascade is not None:
            c = s.cascade
            blocks += [
                Paragraph(
                    f"{s.name}: the cascade reaches SE's AUROC at {c.budget_to_match_se:.0%} of "
                    f"the prompts sampled ({c.budget_to_match_se * c.n_samples:.1f} samples per "
                    f"prompt against SE's {c.n_samples})."
                ),
                cascade_table(s),
            ]
            if f"cascade_{s.name}" in figures:
                blocks.append(Figure(figures[f"cascade_{s.name}"], f"Sampling cascade, {s.name}"))
    return blocks


def _student_blocks(results: RunResults, figures: dict[str, str]) -> list[Block]:
    blocks: list[Block] = [
        Heading("The risk objective: location-free targets"),
        Paragraph(OBJECTIVE_ARGUMENT),
    ]
    if "learning_curve" in figures:
        blocks.append(
            Figure(figures["learning_curve"], "Test AUROC and fidelity vs training prompts")
        )
    for s in results.sets.values():
        if s.learning_curve:
            blocks += [
                Paragraph(
                    f"{s.name}: learning curve, mean ± standard deviation over training seeds "
                    "(seeded subsets of the train split; layer and answer PCA from the full "
                    "split)."
                ),
                learning_table(s),
            ]
    blocks.append(Heading("Model selection (validation split, no labels)"))
    for s in results.sets.values():
        if not s.selection:
            continue
        blocks += [
            Paragraph(f"{s.name}: {s.selection['rule']}"),
            selection_table(s),
        ]
        if f"training_{s.name}" in figures:
            blocks.append(
                Figure(figures[f"training_{s.name}"], f"Training curves of the SSD rows, {s.name}")
            )
    return blocks


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
