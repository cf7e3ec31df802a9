"""``Scorer``: a trained SSD in front of its base LLM, scoring raw question text.

Everything is rebuilt from what training recorded (``ssd.json`` + PCA + students): the base
model (pinned by GGUF sha256 or hub revision), its dtype, the prompt template, the layer, the
answer embedder and the PCA basis. Each question costs one prefill, stopped at the recorded
layer; no answer is sampled.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semdistill.scoring.artifacts import (
    MANIFEST,
    LoadedSSD,
    artifacts_fingerprint,
    load_artifacts,
)
from semdistill.scoring.calibration import (
    CALIBRATION_FILE,
    CalibrationMethod,
    RiskCalibration,
    fit_calibration,
    load_calibration,
    save_calibration,
)
from semdistill.scoring.compatibility import check_embedder, check_prompt, check_teacher
from semdistill.scoring.familiarity import Familiarity
from semdistill.scoring.refine import RefinedRisk, RefineSettings
from semdistill.semantics.embed import Embedder, load_embedder
from semdistill.student import SSDStudent
from semdistill.teacher.base import Teacher, to_float16
from semdistill.teacher.loader import (
    check_registered_hash,
    check_registered_name,
    load_recorded_teacher,
)

RISK = "risk"
LIKELIHOOD = "likelihood"


@dataclass(frozen=True)
class Consensus:
    """The predicted semantic consensus of a question and how close each candidate is to it.

    ``mean`` is the likelihood student's mixture mean in its PCA space (``d`` coordinates);
    ``distances`` the Euclidean distance of each candidate's embedding to it there (lower is
    closer to consensus); ``nearest`` the closest candidate, or None without candidates.
    """

    mean: np.ndarray
    candidates: tuple[str, ...]
    distances: np.ndarray
    nearest: str | None


class Scorer:
    """SSD risk, answer verification and ranking over raw question text.

    All methods take questions as plain text; the recorded prompt template is applied.
    ``risk`` is the Rényi-2 entropy (nats, higher = riskier) of the risk student's predicted
    answer distribution; ``verify`` the log-density (higher = more plausible) of each answer
    under the likelihood student. Build one with :meth:`load`.
    """

    def __init__(
        self,
        loaded: LoadedSSD,
        teacher: Teacher,
        embedder: Embedder,
        *,
        directory: Path,
        fingerprint: str,
        calibration: RiskCalibration | None = None,
        familiarity: Familiarity | None = None,
    ) -> None:
        check_teacher(teacher, loaded.artifacts)
        check_registered_name(loaded.artifacts.teacher)
        check_embedder(embedder, loaded.artifacts)
        self.artifacts = loaded.artifacts
        self.pca = loaded.pca
        self.students = loaded.students
        self.inputs = loaded.inputs
        self.probes = loaded.probes
        self.teacher = teacher
        self.embedder = embedder
        self.directory = directory
        self.fingerprint = fingerprint
        self.calibration = calibration
        self.familiarity_model = familiarity

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        model: str | Teacher | None = None,
        embedder: str | Embedder | None = None,
        device: str = "auto",
    ) -> Scorer:
        """Rebuild the scorer trained into ``directory``.

        ``model`` (a registered name, GGUF path, model folder or hub id, or a loaded teacher)
        and ``embedder`` (a name or a loaded embedder) override where they come from, and are
        refused unless they are the ones recorded. ``device`` is where the base model runs
        (auto: CUDA if present). A ``calibration.json`` beside the artifacts is loaded when
        present, and so is the familiarity model (``familiarity.json``).
        """
        root = Path(directory)
        loaded = load_artifacts(root)
        artifacts = loaded.artifacts
        check_prompt(artifacts)
        check_registered_hash(artifacts.teacher)
        fingerprint = artifacts_fingerprint(root, artifacts)
        calibration = None
        if (root / CALIBRATION_FILE).is_file():
            calibration = load_calibration(root / CALIBRATION_FILE)
            if calibration.fingerprint != fingerprint:
                raise ValueError(
                    f"{root / CALIBRATION_FILE} was fitted for other SSD artifacts than those "
                    f"in {root}; delete it and calibrate again"
                )
        teacher = (
            model
            if model is not None and not isinstance(model, str)
            else load_recorded_teacher(artifacts.teacher, artifacts.dtype, model, device=device)
        )
        if embedder is None or isinstance(embedder, str):
            name = artifacts.embedder if embedder is None else embedder
            if name != artifacts.embedder:
                raise ValueError(
                    f"embedder {name!r} is not the one this SSD was trained with "
                    f"({artifacts.embedder!r}, recorded in {root / MANIFEST})"
                )
            embedder = load_embedder(name, truncate_dim=artifacts.embedder_dim)
        return cls(
            loaded,
            teacher,
            embedder,
            directory=root,
            fingerprint=fingerprint,
            calibration=calibration,
            familiarity=Familiarity.load(root),
        )

    # ------------------------------------------------------------------ prompt level
    @property
    def layers(self) -> tuple[int, ...]:
        """The hidden-state indices the students and the familiarity model read, ascending
        (0 = embedding output)."""
        layers = {layer for inputs in self.inputs.values() for layer in inputs.layers}
        if self.familiarity_model is not None:
            layers |= set(self.familiarity_model.layers)
        return tuple(sorted(layers))

    def states(self, prompts: Sequence[str]) -> np.ndarray:
        """Last-prompt-token states of :attr:`layers`, ``(n, len(layers), hidden)`` float16."""
        questions = check_texts(prompts, "prompts")
        formatted = [self.teacher.format_prompt(q) for q in questions]
        return self.teacher.hidden_states(formatted, layers=list(self.layers))

    def features(self, role: str, states: np.ndarray) -> np.ndarray:
        """The input of student ``role`` from states ``(n, len(layers), hidden)``.

        States are rounded to float16 first, as the stored training states were.
        """
        self._student(role)
        array = self._checked_states(states)
        inputs = self.inputs[role]
        columns = [self.layers.index(layer) for layer in inputs.layers]
        rounded = to_float16(array[:, columns], list(inputs.layers)).astype(np.float32)
        return inputs.transform(rounded)

    def risk_from_states(self, states: np.ndarray) -> np.ndarray:
        """:meth:`risk` of prompts whose states ``(n, len(layers), hidden)`` are known."""
        return self._student(RISK).renyi2_entropy(self.features(RISK, states))

    def log_likelihood_from_states(self, states: np.ndarray, coordinates: np.ndarray) -> np.ndarray:
        """Log-density ``(m,)`` of answer ``coordinates`` ``(m, d)`` (:meth:`answer_coordinates`)
        under the likelihood student, row ``i`` given prompt states ``states[i]``."""
        features = self.features(LIKELIHOOD, states)
        return self._student(LIKELIHOOD).log_prob(features, coordinates)

    def risk(self, prompts: Sequence[str]) -> np.ndarray:
        """Rényi-2 entropy (nats) of the predicted answer distribution per question, ``(n,)``.

        Higher means the model's answers are expected to disagree more in meaning: a
        pre-generation hallucination-risk score. One prefill per question, batched.
        """
        return self.risk_from_states(self.states(prompts))

    def familiarity_from_states(self, states: np.ndarray) -> np.ndarray:
        """:meth:`familiarity` of prompts whose states ``(n, len(layers), hidden)`` are known."""
        if self.familiarity_model is None:
            raise ValueError(
                f"{self.directory} has no familiarity model (familiarity.json); retrain, or "
                "update the scorer, with this version"
            )
        rounded = to_float16(self._checked_states(states), list(self.layers))
        return self.familiarity_model.score(rounded, self.layers)

    def familiarity(self, prompts: Sequence[str]) -> np.ndarray:
        """How familiar each question is to the scorer, ``(n,)`` in (0, 1]: the share of its
        calibration prompts that lie at least as far from its training prompts, in the space
        the familiarity model recorded (no labels; low = unlike anything it was trained on, so
        its risk is an extrapolation). See :mod:`semdistill.scoring.familiarity`."""
        return self.familiarity_from_states(self.states(prompts))

    def risk_probability(self, prompts: Sequence[str]) -> np.ndarray:
        """Calibrated probability of an incorrect answer per question, ``(n,)``.

        Needs a calibration (:meth:`calibrate`, or a ``calibration.json`` in the directory).
        """
        calibration = self._calibration()
        return calibration.probability(self.risk(prompts))

    def calibrate(
        self,
        prompts: Sequence[str],
        incorrect: Sequence[bool] | np.ndarray,
        method: CalibrationMethod = "isotonic",
    ) -> RiskCalibration:
        """Fit the map from risk to the calibrated probability of an incorrect answer.

        ``prompts`` are validation questions and ``incorrect`` whether the model's answer to
        each was judged wrong. The result is kept and written to ``calibration.json`` in the
        scorer's directory.
        """
        questions = check_texts(prompts, "prompts")
        labels = np.asarray(incorrect)
        if labels.shape != (len(questions),):
            raise ValueError(
                f"incorrect has shape {labels.shape}; one label per prompt "
                f"({len(questions)}) expected"
            )
        calibration = fit_calibration(
            self.risk(questions), labels, method, fingerprint=self.fingerprint
        )
        save_calibration(self.directory / CALIBRATION_FILE, calibration)
        self.calibration = calibration
        return calibration

    # ------------------------------------------------------------------ the cascade
    @property
    def refinement(self) -> RefineSettings:
        """How :meth:`refine` samples and judges, as recorded by training (a ValueError for a
        scorer trained before they were recorded)."""
        return RefineSettings.from_extra(self.artifacts.extra, str(self.directory / MANIFEST))

    def semantic_entropy(self, answer_sets: Sequence[Sequence[str]]) -> np.ndarray:
        """Semantic Entropy (nats) of each set of sampled answers, ``(n,)``, judged as the
        scorer's training judged its collection's samples."""
        return self.refinement.semantic_entropies(self.embedder, answer_sets)

    def refine(
        self,
        prompts: Sequence[str],
        *,
        above: float | None = None,
        budget: float | None = None,
        seed: int | None = None,
    ) -> list[RefinedRisk]:
        """Each question's risk and, where it is above the threshold, the Semantic Entropy of
        N answers sampled as the scorer's collection sampled them (a sampling cascade).

        Give exactly one of ``above`` (a risk in nats) and ``budget`` (the share of prompts to
        refine, turned into a threshold on the scorer's validation prompts' risk). With
        ``seed``, sample ``j`` of every refined question draws ``default_rng([seed, j])``.
        """
        settings = self.refinement
        threshold = settings.threshold(above=above, budget=budget)
        questions = check_texts(prompts, "prompts")
        risk = self.risk(questions)
        chosen = np.flatnonzero(risk > threshold)
        prompts_above = [self.teacher.format_prompt(questions[i]) for i in chosen]
        sampled = settings.sample(self.teacher, self.embedder, prompts_above, seed=seed)
        refined = dict(zip(chosen.tolist(), sampled, strict=True))
        return [
            RefinedRisk(float(r), i in refined, *refined.get(i, (None, ())))
            for i, r in enumerate(risk)
        ]

    # ------------------------------------------------------------------ answer level
    def answer_coordinates(self, answers: Sequence[str]) -> np.ndarray:
        """Embeddings of ``answers`` in the likelihood student's PCA space, ``(m, d)``."""
        texts = check_texts(answers, "answers")
        return self.pca.transform(self.embedder.encode(texts), self.artifacts.students[LIKELIHOOD])

    def verify_many(self, items: Sequence[tuple[str, Sequence[str]]]) -> list[np.ndarray]:
        """:meth:`verify` for several ``(prompt, answers)`` pairs, with one batched prefill."""
        self._student(LIKELIHOOD)
        pairs = list(items)
        if not pairs:
            raise ValueError("items must hold at least one (prompt, answers) pair")
        for i, pair in enumerate(pairs):
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise ValueError(f"items[{i}] must be a (prompt, answers) pair")
            check_texts(pair[1], f"items[{i}] answers")
        states = self.states([prompt for prompt, _ in pairs])
        return self.verify_from_states(states, [answers for _, answers in pairs])

    def verify_from_states(
        self, states: np.ndarray, answers: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        """:meth:`verify_many` of prompts whose states ``(n, len(layers), hidden)`` are known:
        per prompt, the log-likelihood of each of its ``answers`` (at least one answer in
        all)."""
        self._student(LIKELIHOOD)
        counts = [len(texts) for texts in answers]
        if len(counts) != len(states):
            raise ValueError(f"{len(counts)} lists of answers for {len(states)} prompts' states")
        coordinates = self.answer_coordinates([a for texts in answers for a in texts])
        scores = self.log_likelihood_from_states(np.repeat(states, counts, axis=0), coordinates)
        return np.split(scores, np.cumsum(counts)[:-1])

    def verify(self, prompt: str, answers: Sequence[str]) -> np.ndarray:
        """Log-likelihood of each candidate answer to ``prompt`` under the SSD, ``(m,)``.

        Higher means more compatible with what the model would say; very low values flag
        answers that do not belong to the question (post-generation verification).
        """
        return self.verify_many([(prompt, answers)])[0]

    def choose(self, prompt: str, options: Sequence[str]) -> list[tuple[str, float]]:
        """``options`` with their log-likelihoods, most likely first (ties keep input order)."""
        return rank(options, self.verify(prompt, options))

    def consensus(self, prompt: str, candidates: Sequence[str] | None = None) -> Consensus:
        """The mixture mean of the predicted answers and the candidate nearest to it."""
        features = self.features(LIKELIHOOD, self.states([prompt]))
        mean = self._student(LIKELIHOOD).mean(features)[0]
        if not candidates:
            return Consensus(mean, (), np.empty(0), None)
        texts = tuple(check_texts(candidates, "candidates"))
        distances = np.linalg.norm(self.answer_coordinates(texts) - mean, axis=1)
        return Consensus(mean, texts, distances, texts[int(np.argmin(distances))])

    # ------------------------------------------------------------------ helpers
    def _checked_states(self, states: np.ndarray) -> np.ndarray:
        array = np.asarray(states)
        if array.ndim != 3 or array.shape[1] != len(self.layers):
            raise ValueError(
                f"states must have shape (n, {len(self.layers)}, hidden) for layers "
                f"{list(self.layers)}, got {array.shape}"
            )
        return array

    def _student(self, role: str) -> SSDStudent:
        if role not in self.students:
            raise ValueError(
                f"{self.directory / MANIFEST} has no '{role}' student "
                f"(it has {sorted(self.students)}); retrain with both students"
            )
        return self.students[role]

    def _calibration(self) -> RiskCalibration:
        if self.calibration is None:
            raise ValueError(
                f"this Scorer is not calibrated ({self.directory / CALIBRATION_FILE} is "
                "missing): call calibrate(validation_prompts, incorrect) first"
            )
        return self.calibration


def rank(options: Sequence[str], scores: np.ndarray) -> list[tuple[str, float]]:
    """``options`` paired with ``scores``, highest score first (ties keep input order)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    return [(options[i], float(scores[i])) for i in order]


def check_texts(texts: Sequence[str], name: str) -> list[str]:
    """``texts`` as a non-empty list of non-blank, encodable strings, or a ValueError naming
    ``name``."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"{name} must be a list of strings, got {type(texts).__name__}")
    checked = list(texts)
    if not checked:
        raise ValueError(f"{name} must not be empty")
    for i, text in enumerate(checked):
        if not isinstance(text, str):
            raise ValueError(f"{name}[{i}] must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"{name}[{i}] is empty")
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"{name}[{i}] is not valid Unicode text (a lone surrogate)"
                ) from None
    return checked
