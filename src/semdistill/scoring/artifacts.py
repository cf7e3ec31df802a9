"""What a training run leaves behind to rebuild a scorer: ``ssd.json`` + PCA + students."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from semdistill.student import SSDStudent
from semdistill.teacher.base import ModelSpec
from semdistill.training.pca import PCAReducer

FORMAT = "semdistill.ssd"
FORMAT_VERSION = 1
MANIFEST = "ssd.json"
PCA_FILE = "pca.safetensors"


@dataclass(frozen=True)
class SSDArtifacts:
    """The recipe of a trained SSD scorer.

    ``teacher`` pins the base model (GGUF sha256 or hub revision), ``dtype`` the precision of
    its prefill, ``prompt_template``/``prompt_version`` the prompt, ``layer`` the hidden-state
    index the students read (0 = embedding output), ``embedder``/``embedder_dim`` the answer
    embedder; ``students`` maps a role (``"risk"``, ``"likelihood"``) to its PCA dimension.
    """

    teacher: ModelSpec
    dtype: str
    prompt_template: str
    prompt_version: str
    layer: int
    embedder: str
    embedder_dim: int
    students: dict[str, int]
    collection: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with format tags."""
        data = asdict(self)
        data["teacher"] = self.teacher.to_dict()
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = MANIFEST) -> SSDArtifacts:
        """Parse :meth:`to_dict` output; refuses other formats and versions, naming ``source``."""
        if data.get("format") != FORMAT:
            raise ValueError(f"{source}: not a semdistill SSD manifest (format != {FORMAT!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{source}: written with SSD format version {data.get('format_version')!r}; "
                f"this semdistill reads version {FORMAT_VERSION}"
            )
        body = {k: v for k, v in data.items() if k not in ("format", "format_version")}
        try:
            body["teacher"] = ModelSpec.from_dict(body["teacher"])
            return cls(**body)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: invalid SSD manifest: {err}") from err


def save_artifacts(
    directory: str | os.PathLike,
    artifacts: SSDArtifacts,
    pca: PCAReducer,
    students: dict[str, SSDStudent],
) -> None:
    """Write ``ssd.json``, ``pca.safetensors`` and ``students/<role>/`` into ``directory``."""
    if set(students) != set(artifacts.students):
        raise ValueError(
            f"students {sorted(students)} do not match the manifest's {sorted(artifacts.students)}"
        )
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    pca.save(root / PCA_FILE)
    for role, student in students.items():
        if student.n_targets_ != artifacts.students[role]:
            raise ValueError(
                f"student '{role}' predicts d={student.n_targets_}, manifest says "
                f"{artifacts.students[role]}"
            )
        student.save(root / "students" / role, metadata={"role": role, "layer": artifacts.layer})
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(artifacts.to_dict(), indent=2))
    os.replace(tmp, root / MANIFEST)


def load_artifacts(
    directory: str | os.PathLike,
) -> tuple[SSDArtifacts, PCAReducer, dict[str, SSDStudent]]:
    """Read what :func:`save_artifacts` wrote, checking the pieces fit together."""
    root = Path(directory)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no such file (is {root} a trained SSD directory?)")
    try:
        data = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{manifest}: not valid JSON: {err}") from err
    artifacts = SSDArtifacts.from_dict(data, source=str(manifest))
    pca = PCAReducer.load(root / PCA_FILE)
    if pca.mean_ is not None and pca.mean_.shape[0] != artifacts.embedder_dim:
        raise ValueError(
            f"{root / PCA_FILE}: fitted on width {pca.mean_.shape[0]}, but {manifest} records "
            f"embedder width {artifacts.embedder_dim}"
        )
    students = {role: SSDStudent.load(root / "students" / role) for role in artifacts.students}
    for role, student in students.items():
        if student.n_targets_ != artifacts.students[role] or artifacts.students[role] > (
            pca.n_components
        ):
            raise ValueError(
                f"{root / 'students' / role}: predicts d={student.n_targets_}; {manifest} says "
                f"{artifacts.students[role]} (PCA has {pca.n_components})"
            )
    return artifacts, pca, students
