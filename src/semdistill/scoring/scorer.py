"""``Scorer``: a trained SSD in front of its base LLM, scoring raw question text.

Everything is rebuilt from what training recorded (``ssd.json`` + PCA + students): the base
model (pinned by GGUF sha256 or hub revision), its dtype, the prompt template, the layer, the
answer embedder and the PCA basis. Each question costs one prefill, stopped at the recorded
layer; no answer is sampled.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semdistill.collect.embed import Embedder, load_embedder
from semdistill.scoring.artifacts import MANIFEST, PCA_FILE, SSDArtifacts, load_artifacts
from semdistill.scoring.calibration import (
    CALIBRATION_FILE,
    CalibrationMethod,
    RiskCalibration,
    fit_calibration,
    load_calibration,
    save_calibration,
)
from semdistill.student import SSDStudent
from semdistill.student.io import WEIGHTS_FILE
from semdistill.teacher.base import ModelSpec, Teacher
from semdistill.teacher.hf import HFTeacher, load_hf_model
from semdistill.teacher.loader import resolve_model
from semdistill.teacher.prompt import PROMPT_TEMPLATE, PROMPT_VERSION
from semdistill.teacher.registry import REGISTRY, registered_gguf, verify_sha256
from semdistill.training.pca import PCAReducer

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
        artifacts: SSDArtifacts,
        pca: PCAReducer,
        students: dict[str, SSDStudent],
        teacher: Teacher,
        embedder: Embedder,
        *,
        directory: Path,
        fingerprint: str,
        calibration: RiskCalibration | None = None,
    ) -> None:
        check_teacher(teacher, artifacts)
        check_embedder(embedder, artifacts)
        self.artifacts = artifacts
        self.pca = pca
        self.students = students
        self.teacher = teacher
        self.embedder = embedder
        self.directory = directory
        self.fingerprint = fingerprint
        self.calibration = calibration

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
        present.
        """
        root = Path(directory)
        artifacts, pca, students = load_artifacts(root)
        check_prompt(artifacts)
        fingerprint = artifacts_fingerprint(root, artifacts)
        teacher = (
            model
            if model is not None and not isinstance(model, str)
            else load_recorded_teacher(artifacts, model, device=device)
        )
        if embedder is None or isinstance(embedder, str):
            name = artifacts.embedder if embedder is None else embedder
            if name != artifacts.embedder:
                raise ValueError(
                    f"embedder {name!r} is not the one this SSD was trained with "
                    f"({artifacts.embedder!r}, recorded in {root / MANIFEST})"
                )
            embedder = load_embedder(name, truncate_dim=artifacts.embedder_dim)
        calibration = None
        if (root / CALIBRATION_FILE).is_file():
            calibration = load_calibration(root / CALIBRATION_FILE)
            if calibration.fingerprint != fingerprint:
                raise ValueError(
                    f"{root / CALIBRATION_FILE} was fitted for other SSD artifacts than those "
                    f"in {root}; delete it and calibrate again"
                )
        return cls(
            artifacts,
            pca,
            students,
            teacher,
            embedder,
            directory=root,
            fingerprint=fingerprint,
            calibration=calibration,
        )

    # ------------------------------------------------------------------ prompt level
    def representations(self, prompts: Sequence[str]) -> np.ndarray:
        """Last-prompt-token states at the recorded layer, ``(n, hidden)`` float32."""
        questions = check_texts(prompts, "prompts")
        formatted = [self.teacher.format_prompt(q) for q in questions]
        states = self.teacher.hidden_states(formatted, layers=[self.artifacts.layer])
        return states[:, 0, :].astype(np.float32)

    def risk(self, prompts: Sequence[str]) -> np.ndarray:
        """Rényi-2 entropy (nats) of the predicted answer distribution per question, ``(n,)``.

        Higher means the model's answers are expected to disagree more in meaning: a
        pre-generation hallucination-risk score. One prefill per question, batched.
        """
        return self._student(RISK).entropy(self.representations(prompts))

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

    # ------------------------------------------------------------------ answer level
    def answer_coordinates(self, answers: Sequence[str]) -> np.ndarray:
        """Embeddings of ``answers`` in the likelihood student's PCA space, ``(m, d)``."""
        texts = check_texts(answers, "answers")
        return self.pca.transform(self.embedder.encode(texts), self.artifacts.students[LIKELIHOOD])

    def verify_many(self, items: Sequence[tuple[str, Sequence[str]]]) -> list[np.ndarray]:
        """:meth:`verify` for several ``(prompt, answers)`` pairs, with one batched prefill."""
        student = self._student(LIKELIHOOD)
        pairs = list(items)
        if not pairs:
            raise ValueError("items must hold at least one (prompt, answers) pair")
        for i, pair in enumerate(pairs):
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise ValueError(f"items[{i}] must be a (prompt, answers) pair")
            check_texts(pair[1], f"items[{i}] answers")
        H = self.representations([prompt for prompt, _ in pairs])
        counts = [len(answers) for _, answers in pairs]
        Y = self.answer_coordinates([a for _, answers in pairs for a in answers])
        scores = student.log_prob(np.repeat(H, counts, axis=0), Y)
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
        mean = self._student(LIKELIHOOD).mean(self.representations([prompt]))[0]
        if not candidates:
            return Consensus(mean, (), np.empty(0), None)
        texts = tuple(check_texts(candidates, "candidates"))
        distances = np.linalg.norm(self.answer_coordinates(texts) - mean, axis=1)
        return Consensus(mean, texts, distances, texts[int(np.argmin(distances))])

    # ------------------------------------------------------------------ helpers
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
    """``texts`` as a non-empty list of non-blank strings, or a ValueError naming ``name``."""
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
    return checked


def check_prompt(artifacts: SSDArtifacts) -> None:
    """Refuse artifacts trained with another prompt than this semdistill formats."""
    if artifacts.prompt_version != PROMPT_VERSION or artifacts.prompt_template != PROMPT_TEMPLATE:
        raise ValueError(
            f"the SSD was trained with prompt version {artifacts.prompt_version!r}, but this "
            f"semdistill formats prompts as {PROMPT_VERSION!r}; use the semdistill version "
            "that trained it, or retrain"
        )


def same_model(given: ModelSpec, recorded: ModelSpec) -> bool:
    """Whether ``given`` is the recorded base model: same GGUF hash, or same HF model+revision."""
    if given.kind != recorded.kind:
        return False
    if recorded.kind == "gguf":
        return given.sha256 == recorded.sha256
    if given.location != recorded.location and given.name != recorded.name:
        return False
    return None in (given.revision, recorded.revision) or given.revision == recorded.revision


def _describe(spec: ModelSpec) -> str:
    pin = f"sha256 {spec.sha256}" if spec.kind == "gguf" else f"revision {spec.revision}"
    return f"{spec.name!r} ({spec.kind}, {pin})"


def check_teacher(teacher: Teacher, artifacts: SSDArtifacts) -> None:
    """Refuse a teacher that is not the recorded base model, dtype or depth."""
    if not same_model(teacher.spec, artifacts.teacher):
        raise ValueError(
            f"model {_describe(teacher.spec)} is not the base model this SSD was trained on: "
            f"{_describe(artifacts.teacher)}"
        )
    if teacher.dtype != artifacts.dtype:
        raise ValueError(
            f"the teacher runs in {teacher.dtype}, but the SSD was trained on {artifacts.dtype} "
            "hidden states"
        )
    if not 0 <= artifacts.layer <= teacher.n_layers:
        raise ValueError(
            f"recorded layer {artifacts.layer} is outside 0..{teacher.n_layers} of "
            f"{teacher.spec.name!r}"
        )


def check_embedder(embedder: Embedder, artifacts: SSDArtifacts) -> None:
    """Refuse an embedder with another name or width than the recorded one."""
    if embedder.name != artifacts.embedder or embedder.dim != artifacts.embedder_dim:
        raise ValueError(
            f"embedder {embedder.name!r} (dim {embedder.dim}) is not the one this SSD was "
            f"trained with: {artifacts.embedder!r} (dim {artifacts.embedder_dim})"
        )


def load_recorded_teacher(
    artifacts: SSDArtifacts, model: str | None = None, *, device: str = "auto"
) -> HFTeacher:
    """The recorded base model in the recorded dtype, for prefill only.

    ``model`` names another place to load it from (checked to be the same model). A GGUF
    file's sha256 is verified before use.
    """
    recorded = artifacts.teacher
    if model is not None:
        given = resolve_model(model)
        if not same_model(given, recorded):
            raise ValueError(
                f"model {model!r} = {_describe(given)} is not the base model this SSD was "
                f"trained on: {_describe(recorded)}"
            )
        spec = ModelSpec(recorded.name, given.kind, given.location, recorded.revision, given.sha256)
    else:
        spec = recorded
    if spec.kind == "gguf":
        spec = ModelSpec(spec.name, "gguf", str(_gguf_path(spec)), spec.revision, spec.sha256)
    hf_model, tokenizer, spec = load_hf_model(spec, artifacts.dtype, device)
    return HFTeacher(hf_model, tokenizer, spec, dtype=artifacts.dtype)


def _gguf_path(spec: ModelSpec) -> Path:
    """The verified GGUF file of ``spec``: a registered model, or the recorded file."""
    if spec.sha256 is None:
        raise ValueError(f"GGUF model {spec.name!r} has no recorded sha256 to verify it by")
    registered = REGISTRY.get(spec.name)
    if registered is not None and registered.sha256 == spec.sha256:
        return registered_gguf(spec.name)
    path = Path(spec.location)
    if not path.is_file():
        raise FileNotFoundError(
            f"base model GGUF {path} recorded for {spec.name!r} does not exist; pass "
            "model=<path to a copy> to Scorer.load"
        )
    verify_sha256(path, spec.sha256)
    return path


def artifacts_fingerprint(directory: Path, artifacts: SSDArtifacts) -> str:
    """sha256 over the manifest, PCA basis and student weights of an SSD directory."""
    digest = hashlib.sha256()
    files = [MANIFEST, PCA_FILE] + [
        f"students/{role}/{WEIGHTS_FILE}" for role in sorted(artifacts.students)
    ]
    for name in files:
        digest.update(name.encode())
        digest.update((directory / name).read_bytes())
    return digest.hexdigest()
