"""A tiny trained SSD directory on real SmolLM2-135M states, for the scorer and service tests."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

LAYER = 12
RISK_DIM, LIKELIHOOD_DIM = 4, 8
# Questions with a few hand-written answers each, some agreeing and some not: enough for a
# student whose quality does not matter, only that every number can be checked.
QA: dict[str, list[str]] = {
    "What is the capital of France?": ["Paris", "Paris", "Paris, France"],
    "Who wrote Hamlet?": ["William Shakespeare", "Shakespeare", "Christopher Marlowe"],
    "What is two plus two?": ["4", "four", "4"],
    "What colour is a clear daytime sky?": ["blue", "light blue", "grey"],
    "Which planet is known as the red planet?": ["Mars", "Mars", "Jupiter"],
    "What is the largest ocean on Earth?": ["the Pacific Ocean", "Pacific", "the Atlantic"],
    "Who painted the Mona Lisa?": ["Leonardo da Vinci", "Michelangelo", "Raphael"],
    "What gas do plants absorb from the air?": ["carbon dioxide", "CO2", "oxygen"],
    "In which year did the first man land on the Moon?": ["1969", "1968", "1972"],
    "What is the chemical symbol for gold?": ["Au", "Au", "Ag"],
    "What is the tallest mountain in the world?": ["Mount Everest", "Everest", "K2"],
    "Which composer wrote the Moonlight Sonata?": ["Beethoven", "Mozart", "Chopin"],
}
QUESTIONS = list(QA)


@dataclass
class Built:
    """A trained SSD directory and the teacher/embedder used to build it."""

    directory: Path
    teacher: object
    embedder: object


def build_ssd_dir(directory: Path) -> Built:
    """Train tiny risk and likelihood students on real smollm2-135m states into ``directory``."""
    from semdistill.scoring.artifacts import SSDArtifacts, save_artifacts
    from semdistill.scoring.familiarity import Familiarity
    from semdistill.semantics.embed import load_embedder
    from semdistill.semantics.pca import PCAReducer
    from semdistill.student import SSDStudent
    from semdistill.teacher import load_teacher
    from semdistill.teacher.prompt import PROMPT_TEMPLATE, PROMPT_VERSION

    teacher = load_teacher("smollm2-135m", backend="transformers", dtype="float32")
    embedder = load_embedder()
    every = teacher.hidden_states([teacher.format_prompt(q) for q in QUESTIONS])
    H = every[:, [LAYER]]
    E = embedder.encode([a for q in QUESTIONS for a in QA[q]]).reshape(len(QUESTIONS), 3, -1)
    pca = PCAReducer(LIKELIHOOD_DIM).fit(E)
    students = {}
    for role, d in (("risk", RISK_DIM), ("likelihood", LIKELIHOOD_DIM)):
        student = SSDStudent(
            n_components=2, hidden_dim=16, depth=1, max_epochs=40, validation_fraction=0.0,
            verbose=False,
        )  # fmt: skip
        students[role] = student.fit(H[:, 0].astype(np.float32), pca.transform(E, d))
    artifacts = SSDArtifacts(
        teacher=teacher.spec,
        dtype=teacher.dtype,
        prompt_template=PROMPT_TEMPLATE,
        prompt_version=PROMPT_VERSION,
        layer=LAYER,
        embedder=embedder.name,
        embedder_dim=embedder.dim,
        students={"risk": RISK_DIM, "likelihood": LIKELIHOOD_DIM},
    )
    # the familiarity reads the students' layer, so the scorer prefills LAYER alone
    familiarity = Familiarity.fit(every[:8], every[8:], layers=[LAYER], k=3)
    save_artifacts(directory, artifacts, pca, students, familiarity=familiarity)
    return Built(directory, teacher, embedder)


def copy_of(built: Built, directory: Path) -> Built:
    """``built`` with its directory copied into ``directory``: a module's own scorer files,
    without training again (conftest.py builds one per session)."""
    shutil.copytree(built.directory, directory, dirs_exist_ok=True)
    return replace(built, directory=directory)
