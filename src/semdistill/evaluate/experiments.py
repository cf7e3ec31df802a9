"""The paper's experiments (section 4, appendices B and C), each on one prepared question set.

Every score is oriented so that higher means "more likely positive": the positive class is an
incorrect default answer (hallucination) or a mismatched answer (OOD).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy.stats import spearmanr

from semdistill.baselines.dispersion import teacher_dispersion
from semdistill.baselines.layers import select_layer
from semdistill.baselines.probes import CorrectnessProbe, SemanticEntropyProbe
from semdistill.evaluate.metrics import DetectionResult, ScoreWithCI, auroc, evaluate_scores
from semdistill.student import SSDStudent
from semdistill.training.prepare import PreparedSet, StudentSettings, fit_student

METHODS = ("SSD", "TD", "SE", "SEP", "PCP")


def detect(labels: np.ndarray, scores: np.ndarray, *, n_boot: int, seed: int) -> DetectionResult:
    """AUROC/AUPRC/PRR with bootstrap CIs; a ValueError if the labels hold a single class."""
    return evaluate_scores(np.asarray(labels, dtype=int), scores, n_boot=n_boot, seed=seed)


def mean_with_ci(values: np.ndarray, *, n_boot: int, seed: int) -> ScoreWithCI:
    """Mean with a 95% percentile-bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    boot = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    low, high = np.quantile(boot, [0.025, 0.975])
    return ScoreWithCI(float(values.mean()), float(low), float(high))


@dataclass(frozen=True)
class ProbeLayers:
    """Layers the probes read: SEP shares the student's (SE-selected) layer, PCP has its own."""

    sep: int
    pcp: int
    pcp_note: str


def probe_layers(p: PreparedSet) -> ProbeLayers:
    """Select PCP's layer by validation AUROC of a correctness probe per layer."""
    try:
        selection = select_layer(
            p.collection.hidden[p.train],
            p.incorrect[p.train],
            p.collection.hidden[p.validation],
            p.incorrect[p.validation],
        )
        return ProbeLayers(p.layer, selection.best_layer, "best validation AUROC of correctness")
    except ValueError as err:
        return ProbeLayers(p.layer, p.layer, f"student's layer ({err})")


def fit_probes(
    p: PreparedSet, layers: ProbeLayers
) -> dict[str, SemanticEntropyProbe | CorrectnessProbe | None]:
    """SEP and PCP fitted on the train split; None where the targets hold too few of a class."""
    hidden, train = p.collection.hidden, p.train
    probes: dict[str, SemanticEntropyProbe | CorrectnessProbe | None] = {}
    for name, make in (
        ("SEP", lambda: SemanticEntropyProbe().fit(hidden[train, layers.sep], p.se[train])),
        ("PCP", lambda: CorrectnessProbe().fit(hidden[train, layers.pcp], p.incorrect[train])),
    ):
        try:
            probes[name] = make()
        except ValueError:
            probes[name] = None
    return probes


def hallucination_scores(
    p: PreparedSet, risk: SSDStudent, layers: ProbeLayers
) -> dict[str, np.ndarray | None]:
    """Test-split risk scores of SSD, TD, SE, SEP and PCP (None: a probe could not be fitted)."""
    test, hidden = p.test, p.collection.hidden
    probes = fit_probes(p, layers)
    scores: dict[str, np.ndarray | None] = {
        "SSD": risk.entropy(p.H[test]),
        "TD": teacher_dispersion(p.targets(risk.n_targets_)[test]),
        "SE": p.se[test],
    }
    for name, layer in (("SEP", layers.sep), ("PCP", layers.pcp)):
        probe = probes[name]
        scores[name] = (
            None if probe is None else probe.predict_risk(hidden[test, layer].astype(np.float64))
        )
    return scores


@dataclass(frozen=True)
class AnswerLevel:
    """Table 3: matched-vs-mismatched answer detection and log-likelihood as a risk score."""

    mismatch: DetectionResult
    hallucination: DetectionResult | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def mismatch_pairs(n: int, seed: int) -> np.ndarray:
    """For each of ``n`` prompts, the index of another prompt (a random derangement)."""
    rng = np.random.default_rng(seed)
    return (np.arange(n) + rng.integers(1, n, size=n)) % n


def mismatch_scores(
    p: PreparedSet, likelihood: SSDStudent, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (1 = another prompt's answer) and ``-log p`` scores of matched/mismatched pairs."""
    d = likelihood.n_targets_
    H = p.H[p.test]
    answers = p.default_targets(d)[p.test]
    other = answers[mismatch_pairs(len(p.test), seed)]
    scores = -np.r_[likelihood.log_prob(H, answers), likelihood.log_prob(H, other)]
    return np.r_[np.zeros(len(H)), np.ones(len(H))], scores


def answer_level(p: PreparedSet, likelihood: SSDStudent, *, n_boot: int, seed: int) -> AnswerLevel:
    """Score each test prompt's default answer and another prompt's default answer."""
    labels, scores = mismatch_scores(p, likelihood, seed)
    mismatch = detect(labels, scores, n_boot=n_boot, seed=seed)
    try:  # -log p of the default answer itself, against its correctness
        hallucination = detect(p.incorrect[p.test], scores[: len(p.test)], n_boot=n_boot, seed=seed)
    except ValueError:
        hallucination = None
    return AnswerLevel(mismatch, hallucination)


@dataclass(frozen=True)
class MultipleChoice:
    """Table 4: options ranked by student likelihood vs chance and open-ended accuracy."""

    top1: ScoreWithCI
    chance: float
    open_ended_accuracy: ScoreWithCI
    n: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def multiple_choice(
    p: PreparedSet, likelihood: SSDStudent, *, n_boot: int, seed: int
) -> MultipleChoice | None:
    """Top-1 accuracy of the highest-likelihood option on test questions that have options."""
    c = p.collection
    rows = [i for i in p.test if c.option_embeddings[i] is not None and c.correct_option[i] >= 0]
    if not rows:
        return None
    d = likelihood.n_targets_
    hits, chance = [], []
    for i in rows:
        options = p.pca.transform(np.asarray(c.option_embeddings[i]), d)[None]
        scores = likelihood.log_prob(p.H[i : i + 1], options)[0]
        hits.append(float(np.argmax(scores) == c.correct_option[i]))
        chance.append(1.0 / len(scores))
    rows_arr = np.asarray(rows)
    return MultipleChoice(
        top1=mean_with_ci(np.asarray(hits), n_boot=n_boot, seed=seed),
        chance=float(np.mean(chance)),
        open_ended_accuracy=mean_with_ci(1.0 - p.incorrect[rows_arr], n_boot=n_boot, seed=seed),
        n=len(rows),
    )


def fidelity(p: PreparedSet, risk: SSDStudent) -> float:
    """Appendix B.1: Spearman ρ between student entropy and TD over test prompts."""
    td = teacher_dispersion(p.targets(risk.n_targets_)[p.test])
    return float(spearmanr(risk.entropy(p.H[p.test]), td).statistic)


@dataclass(frozen=True)
class ConsensusSubset:
    """Appendix B.2 for one subset: MSD to the sampled centroid, default vs mixture mean."""

    n: int
    default_msd: float
    ssd_msd: float
    improvement_pct: float
    ssd_win_rate: float


def consensus(p: PreparedSet, likelihood: SSDStudent) -> dict[str, ConsensusSubset]:
    """Squared distance of the greedy answer and of the mixture mean to the sample centroid."""
    d = likelihood.n_targets_
    test = p.test
    centroid = p.targets(d)[test].mean(axis=1)
    default_sq = ((p.default_targets(d)[test] - centroid) ** 2).sum(axis=1)
    ssd_sq = ((likelihood.mean(p.H[test]) - centroid) ** 2).sum(axis=1)
    incorrect = p.incorrect[test]
    out = {}
    for name, mask in (
        ("all", np.ones_like(incorrect)),
        ("correct", ~incorrect),
        ("incorrect", incorrect),
    ):
        if mask.sum() == 0:
            continue
        default_msd, ssd_msd = float(default_sq[mask].mean()), float(ssd_sq[mask].mean())
        out[name] = ConsensusSubset(
            n=int(mask.sum()),
            default_msd=default_msd,
            ssd_msd=ssd_msd,
            improvement_pct=100.0 * (default_msd - ssd_msd) / default_msd if default_msd else 0.0,
            ssd_win_rate=float(np.mean(ssd_sq[mask] < default_sq[mask])),
        )
    return out


@dataclass(frozen=True)
class AblationPoint:
    """One student setting of Appendix C: its detection quality and fidelity."""

    axis: str
    value: int
    ssd_auroc: float
    td_auroc: float | None
    ood_auroc: float | None
    fidelity: float


ABLATION_GRID: dict[str, tuple[int, ...]] = {
    "pca_dim": (16, 32, 64, 128),
    "n_components": (1, 2, 5, 10),
    "hidden_dim": (128, 256, 512, 1024),
    "depth": (2, 3, 4, 6),
}


def ablations(
    p: PreparedSet,
    base: StudentSettings,
    risk_dim: int,
    *,
    grid: dict[str, tuple[int, ...]] = ABLATION_GRID,
    seed: int = 0,
) -> list[AblationPoint]:
    """Refit the student along each axis of ``grid`` (others at ``base``/``risk_dim``)."""
    labels = p.incorrect[p.test]
    points = []
    cache: dict[tuple[int, StudentSettings], SSDStudent] = {}
    for axis, values in grid.items():
        for value in values:
            if axis == "pca_dim" and value > p.pca.n_components:
                continue
            d = value if axis == "pca_dim" else risk_dim
            settings = base if axis == "pca_dim" else replace(base, **{axis: value})
            key = (d, settings)
            if key not in cache:
                cache[key] = fit_student(p, d, settings)
            student = cache[key]
            ssd = _auroc_or_none(labels, student.entropy(p.H[p.test]))
            td = _auroc_or_none(labels, teacher_dispersion(p.targets(d)[p.test]))
            ood = None
            if axis == "pca_dim":
                ood = _auroc_or_none(*mismatch_scores(p, student, seed))
            points.append(
                AblationPoint(
                    axis, value, ssd, td if axis == "pca_dim" else None, ood, fidelity(p, student)
                )
            )
    return points


def _auroc_or_none(labels: np.ndarray, scores: np.ndarray) -> float | None:
    labels = np.asarray(labels, dtype=int)
    return auroc(labels, scores) if 0 < labels.sum() < len(labels) else None
