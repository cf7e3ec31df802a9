"""Transfer protocol over question groups of stored collections, with no held-out choice.

Groups are read from question ids: ``trivia/<list>/<n>`` gives the trivia list,
``mmlu/<subject>/<n>`` the group ``mmlu`` (one group; its subjects are too small), anything
else its source. Each held-out group with at least ``min_group`` labelled rows is scored by a
scorer trained on the union of every other group (their train splits fit, their validation
splits select and early-stop, exactly as ``semdistill train`` does; the held-out group's rows
are never seen), on all its labelled rows: SSD, SEP, PCP and TD (the held-out samples'
spread in the scorer's PCA basis) with bootstrap CIs, and the familiarity of its prompts
against the other groups' test prompts (OOD AUROC: unfamiliar = held-out group).

With ``half=True`` each held-out group is also split by a seeded hash of its ids into an
unlabelled half and a labelled half: a second scorer is trained on the other groups plus the
unlabelled half (its labels hidden), and both scorers are scored on the labelled half.

:func:`familiarity_figure` draws one fold's familiarity histograms, for a report;
:mod:`semdistill.evaluate.protocol` plans and runs the folds of a whole protocol.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from semdistill.evaluate.transfer import TRANSFER_METHODS, transfer
from semdistill.metrics import auroc, auroc_or_none
from semdistill.scoring.artifacts import load_artifacts
from semdistill.scoring.export import save_trained
from semdistill.scoring.familiarity import Familiarity
from semdistill.scoring.scorer import RISK
from semdistill.semantics.dispersion import projected_dispersion
from semdistill.store import CollectConfig, Collection
from semdistill.training.prepare import TrainSettings
from semdistill.training.trained import train_question_set


@dataclass(frozen=True)
class Fold:
    """One held-out group: its scorer's AUROC per method with bootstrap resamples, the OOD
    AUROC of (un)familiarity, and the SSD AUROC on its more and less familiar halves;
    ``familiarity_held``/``familiarity_in_domain`` are the familiarity of the held-out group's
    prompts and of the training groups' test prompts (for :func:`familiarity_figure`)."""

    group: str
    n: int
    n_incorrect: int
    auroc: dict[str, float | None]
    boot: dict[str, list[float]] = field(repr=False)
    ood_auroc: float | None
    ood_boot: list[float] = field(repr=False)
    share_unfamiliar: float
    ssd_familiar: float | None
    ssd_unfamiliar: float | None
    half: dict[str, dict[str, float | None]] | None = None
    familiarity_held: list[float] = field(default_factory=list, repr=False)
    familiarity_in_domain: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form, without the bootstrap resamples and familiarity values."""
        out = asdict(self)
        for key in ("boot", "ood_boot", "familiarity_held", "familiarity_in_domain"):
            out.pop(key)
        return out


def _half_of(question_id: str, seed: int) -> bool:
    """True for the unlabelled half of a held-out group (a seeded hash of the id)."""
    return hashlib.sha256(f"{seed}\x00{question_id}".encode()).digest()[0] % 2 == 0


def _boot_auroc(labels: np.ndarray, scores: np.ndarray, idx: np.ndarray) -> list[float]:
    """AUROC on each row of stratified resample indices ``idx`` ``(n_boot, n)``."""
    return [auroc(labels[rows], scores[rows]) for rows in idx]


def _stratified(labels: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    return np.hstack([rng.choice(pos, (n_boot, len(pos))), rng.choice(neg, (n_boot, len(neg)))])


def run_fold(
    collection: Collection,
    groups: np.ndarray,
    group: str,
    config: CollectConfig,
    settings: TrainSettings,
    out: Path,
    *,
    half: bool = False,
    train_on: tuple[str, ...] = (),
    n_boot: int = 200,
    seed: int = 0,
    unfamiliar_below: float = 0.05,
) -> Fold:
    """Hold ``group`` out of ``collection`` (``groups`` names each row's group), train on the
    other groups (only those in ``train_on`` when given), score the group's labelled rows."""

    trained_on = np.isin(groups, train_on) if train_on else groups != group
    held, rest = (
        collection.subset(groups == group),
        collection.subset(trained_on & (groups != group)),
    )
    held = held.subset(held.labelled)
    name = f"{'+'.join(train_on)}-only" if train_on else f"without-{group}"
    directory = out / "ssd" / name
    if not (directory / "familiarity.json").is_file():
        save_trained(train_question_set(name, rest, settings), config, name, directory)
    labels = (~held.default_correct).astype(int)
    loaded = load_artifacts(directory)
    inputs, student = loaded.inputs[RISK], loaded.students[RISK]
    X = inputs.transform(held.hidden[:, list(inputs.layers)].astype(np.float32))
    d = loaded.artifacts.students[RISK]
    scores = {
        "SSD": student.renyi2_entropy(X),
        "TD": projected_dispersion(held.sample_embeddings, loaded.pca.components_[:d]),
    }
    for name in ("SEP", "PCP"):
        probe, layer = loaded.probes.get(name), loaded.artifacts.probes.get(name)
        scores[name] = None if probe is None else probe.predict_risk(held.hidden[:, layer])
    idx = _stratified(labels, n_boot, seed)
    boot = {m: _boot_auroc(labels, s, idx) for m, s in scores.items() if s is not None}
    familiarity = Familiarity.load(directory)
    distance = familiarity.distance(held.hidden)
    fam = familiarity.score_distance(distance)
    in_fam = familiarity.score(rest.hidden[np.asarray(rest.splits) == "test"])
    ood_labels = np.r_[np.ones(len(fam)), np.zeros(len(in_fam))].astype(int)
    ood_scores = -np.r_[fam, in_fam]
    ood_boot = _boot_auroc(ood_labels, ood_scores, _stratified(ood_labels, n_boot, seed))
    # halves by distance: familiarity ties at its floor when most prompts are unfamiliar
    familiar = distance <= np.median(distance)
    fold = Fold(
        group=group,
        n=len(held),
        n_incorrect=int(labels.sum()),
        auroc={m: None if s is None else auroc(labels, s) for m, s in scores.items()},
        boot=boot,
        ood_auroc=auroc(ood_labels, ood_scores),
        ood_boot=ood_boot,
        share_unfamiliar=float(np.mean(fam < unfamiliar_below)),
        ssd_familiar=auroc_or_none(labels[familiar], scores["SSD"][familiar]),
        ssd_unfamiliar=auroc_or_none(labels[~familiar], scores["SSD"][~familiar]),
        familiarity_held=[float(v) for v in fam],
        familiarity_in_domain=[float(v) for v in in_fam],
    )
    if half:
        fold = replace(
            fold, half=_half_study(collection, groups, group, config, settings, out, seed)
        )
    return fold


def _half_study(
    collection: Collection,
    groups: np.ndarray,
    group: str,
    config: CollectConfig,
    settings: TrainSettings,
    out: Path,
    seed: int,
) -> dict[str, dict[str, float | None]]:
    """SSD and TD AUROC on the labelled half of ``group`` for the scorer without the group
    and the one that also distilled its unlabelled half."""
    in_group = groups == group
    unlabelled = in_group & np.array([_half_of(i, seed) for i in collection.ids])
    labelled_half = collection.subset(in_group & ~unlabelled & collection.labelled)
    with_half = collection.subset(~in_group | unlabelled)
    mask = with_half.labelled.copy()
    mask[np.flatnonzero(np.isin(with_half.ids, collection.ids[unlabelled]))] = False
    with_half = replace(with_half, labelled=mask)
    directory = out / "ssd" / f"without-{group}+unlabelled-half"
    if not (directory / "familiarity.json").is_file():
        trained = train_question_set(f"without-{group}+half", with_half, settings)
        save_trained(trained, config, "rest+half", directory)
    out_scores: dict[str, dict[str, float | None]] = {}
    labels = (~labelled_half.default_correct).astype(int)
    for name, path in (
        ("without", out / "ssd" / f"without-{group}"),
        ("with_unlabelled_half", directory),
    ):
        result = transfer(load_artifacts(path), name, labelled_half, group, split="all", n_boot=2)
        out_scores[name] = {
            m: None if (r := result.hallucination.get(m)) is None else r.auroc.value
            for m in TRANSFER_METHODS
        }
    out_scores["n"] = {"labelled_half": len(labels), "incorrect": int(labels.sum())}
    return out_scores


def _risk_and_dispersion(directory: Path, rows: Collection) -> dict[str, np.ndarray]:
    """SSD (the saved scorer's risk entropy) and TD (in its PCA basis) of ``rows``."""

    loaded = load_artifacts(directory)
    inputs, student = loaded.inputs[RISK], loaded.students[RISK]
    X = inputs.transform(rows.hidden[:, list(inputs.layers)].astype(np.float32))
    d = loaded.artifacts.students[RISK]
    return {
        "SSD": student.renyi2_entropy(X),
        "TD": projected_dispersion(rows.sample_embeddings, loaded.pca.components_[:d]),
    }


def half_study_intervals(
    collection: Collection,
    groups: np.ndarray,
    group: str,
    out: Path,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """95% intervals for the unlabelled-half study of ``group`` from the scorers a protocol
    run saved under ``out/ssd``: SSD and TD AUROC on the group's labelled half for the scorer
    without the group and the one that also distilled its unlabelled half, and the paired
    difference (with - without) of each, over the same stratified resamples."""
    in_group = groups == group
    unlabelled = in_group & np.array([_half_of(i, seed) for i in collection.ids])
    half = collection.subset(in_group & ~unlabelled & collection.labelled)
    labels = (~half.default_correct).astype(int)
    idx = _stratified(labels, n_boot, seed)
    scores = {
        name: _risk_and_dispersion(out / "ssd" / directory, half)
        for name, directory in (
            ("without", f"without-{group}"),
            ("with_unlabelled_half", f"without-{group}+unlabelled-half"),
        )
    }
    result: dict[str, dict[str, float]] = {}

    def entry(value: float, resamples: list[float]) -> dict[str, float]:
        low, high = np.quantile(resamples, [0.025, 0.975])
        return {"value": float(value), "low": float(low), "high": float(high)}

    for method in ("SSD", "TD"):
        boots = {}
        for name, values in scores.items():
            boots[name] = _boot_auroc(labels, values[method], idx)
            result[f"{method} {name}"] = entry(auroc(labels, values[method]), boots[name])
        result[f"{method} with - without"] = entry(
            result[f"{method} with_unlabelled_half"]["value"]
            - result[f"{method} without"]["value"],
            list(np.subtract(boots["with_unlabelled_half"], boots["without"])),
        )
    result["n"] = {"labelled_half": float(len(labels)), "incorrect": float(labels.sum())}
    return result


def summarise(folds: list[Fold]) -> dict[str, object]:
    """Mean AUROC over the held-out groups per method with a 95% interval (each group's rows
    resampled, the groups' resample means averaged), and the mean differences SSD - TD and
    SSD - PCP with theirs (paired: the same resamples)."""

    def mean_ci(values: Callable[[Fold], list[float]]) -> dict[str, float]:
        table = np.array([values(f) for f in folds])  # (folds, n_boot)
        means = table.mean(axis=0)
        low, high = np.quantile(means, [0.025, 0.975])
        return {"low": float(low), "high": float(high)}

    usable = [f for f in folds if all(f.auroc.get(m) is not None for m in TRANSFER_METHODS)]
    summary: dict[str, object] = {"n_groups": len(usable), "groups": [f.group for f in usable]}
    if not usable:
        return summary
    for m in TRANSFER_METHODS:
        summary[m] = {
            "mean": float(np.mean([f.auroc[m] for f in usable])),
            **mean_ci(lambda f, m=m: f.boot[m]),
        }
    for other in ("TD", "PCP"):
        summary[f"SSD - {other}"] = {
            "mean": float(np.mean([f.auroc["SSD"] - f.auroc[other] for f in usable])),
            **mean_ci(lambda f, o=other: list(np.subtract(f.boot["SSD"], f.boot[o]))),
        }
    summary["OOD"] = {
        "mean": float(np.mean([f.ood_auroc for f in usable])),
        **mean_ci(lambda f: f.ood_boot),
    }
    return summary


def familiarity_figure(fold: Fold, path: Path, *, unfamiliar_below: float = 0.05) -> Path:
    """Histogram of familiarity for the training groups' held-out test prompts against the
    held-out group's prompts of one fold (PNG at ``path``), with the unfamiliar threshold and
    the OOD AUROC in the title. Uses matplotlib's object API, so no backend is set."""
    from matplotlib.figure import Figure

    if not fold.familiarity_held or not fold.familiarity_in_domain:
        raise ValueError(f"fold {fold.group!r} holds no familiarity values (rerun it)")
    fig = Figure(figsize=(6.0, 3.6))
    ax = fig.add_subplot()
    bins = np.linspace(0.0, 1.0, 21)
    ax.hist(fold.familiarity_in_domain, bins=bins, alpha=0.6, density=True,
            label=f"training groups' test prompts ({len(fold.familiarity_in_domain)})")  # fmt: skip
    ax.hist(fold.familiarity_held, bins=bins, alpha=0.6, density=True,
            label=f"{fold.group} prompts ({len(fold.familiarity_held)})")  # fmt: skip
    ax.axvline(unfamiliar_below, color="black", linestyle="--", linewidth=1)
    ood = "–" if fold.ood_auroc is None else f"{fold.ood_auroc:.3f}"
    ax.set_title(f"familiarity, {fold.group} held out (OOD AUROC {ood})")
    ax.set_xlabel("familiarity (share of validation prompts at least as far from training)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
