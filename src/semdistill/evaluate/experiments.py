"""The paper's experiments (section 4, appendices B and C), each on one trained question set.

Every score is oriented so that higher means "more likely positive": the positive class is an
incorrect default answer (hallucination) or a mismatched answer (OOD).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy.stats import spearmanr

from semdistill.metrics import DetectionResult, ScoreWithCI, auroc_or_none, evaluate_seeds
from semdistill.training.prepare import PreparedSet, StudentSettings
from semdistill.training.probes import LinearProbe
from semdistill.training.selection import RiskSelection
from semdistill.training.students import FittedStudent, Setting, fit_setting
from semdistill.training.trained import ProbeLayers

SSD_ROWS = ("SSD", "SSD (paper objective)", "SSD-multi")
POST_SIGNALS = ("MSP", "perplexity", "token entropy", "greedy NLL")
"""The greedy answer's one-pass signals: ``-log p`` of its tokens (maximum sequence
probability), their log perplexity and mean entropy, the likelihood student's ``-log p`` of
its embedding."""
COMBINED = ("combined-pre", "combined-post")
METHODS = (*SSD_ROWS, "TD", "SE", "SEP", "PCP", *POST_SIGNALS, *COMBINED)


def detect(labels: np.ndarray, scores: np.ndarray, *, n_boot: int, seed: int) -> DetectionResult:
    """AUROC/AUPRC/PRR with bootstrap CIs of ``scores`` ``(n,)``, or of the mean over seeds of
    ``scores`` ``(seeds, n)``; a ValueError if the labels hold a single class."""
    table = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=int)
    return evaluate_seeds(
        labels, table if table.ndim == 2 else table[None], n_boot=n_boot, seed=seed
    )


def mean_with_ci(values: np.ndarray, *, n_boot: int, seed: int) -> ScoreWithCI:
    """Mean with a 95% percentile-bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    boot = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    low, high = np.quantile(boot, [0.025, 0.975])
    return ScoreWithCI(float(values.mean()), float(low), float(high))


def probe_scores(
    p: PreparedSet, probes: dict[str, LinearProbe | None], layers: ProbeLayers
) -> dict[str, np.ndarray | None]:
    """Test-split risk of each probe (None where it could not be fitted)."""
    hidden = p.collection.hidden[p.test]
    layer_of = {"SEP": layers.sep, "PCP": layers.pcp}
    return {
        name: None if probe is None else probe.predict_risk(hidden[:, layer_of[name]])
        for name, probe in probes.items()
    }


def ssd_rows(selection: RiskSelection) -> dict[str, list[FittedStudent]]:
    """The fitted students (one per seed) behind each SSD row that the selection has."""
    rows = {"SSD": selection.ssd, "SSD (paper objective)": selection.paper}
    if selection.multi is not None:
        rows["SSD-multi"] = selection.multi
    return {name: selection.fitted[setting] for name, setting in rows.items()}


def hallucination_scores(
    p: PreparedSet,
    selection: RiskSelection,
    probes: dict[str, LinearProbe | None],
    layers: ProbeLayers,
) -> dict[str, np.ndarray | None]:
    """Test-split risk of every method: SSD rows ``(seeds, n)``, the others ``(n,)``."""
    hidden = p.collection.hidden[p.test]
    rows = ssd_rows(selection)
    scores: dict[str, np.ndarray | None] = {
        name: np.stack([student.renyi2_entropy(hidden) for student in students])
        for name, students in rows.items()
    }
    d = rows["SSD"][0].student.n_targets_
    scores["TD"] = p.dispersion(d)[p.test]
    scores["SE"] = p.se[p.test]
    return scores | probe_scores(p, probes, layers)


def fidelity(p: PreparedSet, students: list[FittedStudent]) -> float:
    """Appendix B.1: Spearman ρ between student entropy and TD over test prompts (mean over
    the seeds' students)."""
    d = students[0].student.n_targets_
    td = p.dispersion(d)[p.test]
    hidden = p.collection.hidden[p.test]
    return float(np.mean([spearmanr(s.renyi2_entropy(hidden), td).statistic for s in students]))


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
    p: PreparedSet, likelihood: FittedStudent, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (1 = another prompt's answer) and ``-log p`` scores of matched/mismatched pairs."""
    d = likelihood.student.n_targets_
    X = likelihood.features(p.collection.hidden[p.test])
    answers = p.default_targets(d)[p.test]
    other = answers[mismatch_pairs(len(p.test), seed)]
    student = likelihood.student
    scores = -np.r_[student.log_prob(X, answers), student.log_prob(X, other)]
    return np.r_[np.zeros(len(X)), np.ones(len(X))], scores


def answer_level(
    p: PreparedSet, likelihood: FittedStudent, *, n_boot: int, seed: int
) -> AnswerLevel:
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
    p: PreparedSet, likelihood: FittedStudent, *, n_boot: int, seed: int
) -> MultipleChoice | None:
    """Top-1 accuracy of the highest-likelihood option on test questions that have options."""
    c = p.collection
    rows = np.array(
        [i for i in p.test if c.option_embeddings[i] is not None and c.correct_option[i] >= 0],
        dtype=np.int64,
    )
    if not len(rows):
        return None
    d = likelihood.student.n_targets_
    X = likelihood.features(c.hidden[rows])
    hits, chance = [], []
    for x, i in zip(X, rows, strict=True):
        options = p.pca.transform(np.asarray(c.option_embeddings[i]), d)[None]
        scores = likelihood.student.log_prob(x[None], options)[0]
        hits.append(float(np.argmax(scores) == c.correct_option[i]))
        chance.append(1.0 / len(scores))
    return MultipleChoice(
        top1=mean_with_ci(np.asarray(hits), n_boot=n_boot, seed=seed),
        chance=float(np.mean(chance)),
        open_ended_accuracy=mean_with_ci(1.0 - p.incorrect[rows], n_boot=n_boot, seed=seed),
        n=len(rows),
    )


@dataclass(frozen=True)
class ConsensusSubset:
    """Appendix B.2 for one subset: MSD to the sampled centroid, default vs mixture mean."""

    n: int
    default_msd: float
    ssd_msd: float
    improvement_pct: float
    ssd_win_rate: float


def consensus(p: PreparedSet, likelihood: FittedStudent) -> dict[str, ConsensusSubset]:
    """Squared distance of the greedy answer and of the mixture mean to the sample centroid."""
    d = likelihood.student.n_targets_
    test = p.test
    centroid = p.targets(d)[test].mean(axis=1)
    default_sq = ((p.default_targets(d)[test] - centroid) ** 2).sum(axis=1)
    mean = likelihood.student.mean(likelihood.features(p.collection.hidden[test]))
    ssd_sq = ((mean - centroid) ** 2).sum(axis=1)
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
    ssd_auroc: float | None
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
    setting: Setting,
    risk_dim: int,
    *,
    grid: dict[str, tuple[int, ...]] = ABLATION_GRID,
    seed: int = 0,
) -> list[AblationPoint]:
    """Refit the single-layer SSD student (``setting``) along each axis of ``grid``, the others
    at ``base``/``risk_dim``; OOD uses the paper's objective at each PCA dimension."""
    labels = p.incorrect[p.test]
    hidden = p.collection.hidden[p.test]
    points = []
    cache: dict[tuple[Setting, int, StudentSettings], FittedStudent] = {}

    def fitted(s: Setting, d: int, settings: StudentSettings) -> FittedStudent:
        key = (s, d, settings)
        if key not in cache:
            cache[key] = fit_setting(p, s, d, settings, seed=seed)
        return cache[key]

    for axis, values in grid.items():
        for value in values:
            if axis == "pca_dim" and value > p.pca.n_components:
                continue
            d = value if axis == "pca_dim" else risk_dim
            settings = base if axis == "pca_dim" else replace(base, **{axis: value})
            student = fitted(setting, d, settings)
            ssd = auroc_or_none(labels, student.renyi2_entropy(hidden))
            td = ood = None
            if axis == "pca_dim":
                td = auroc_or_none(labels, p.dispersion(d)[p.test])
                paper = replace(setting, targets="samples")
                ood = auroc_or_none(*mismatch_scores(p, fitted(paper, d, settings), seed))
            points.append(AblationPoint(axis, value, ssd, td, ood, fidelity(p, [student])))
    return points
