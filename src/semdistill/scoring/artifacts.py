"""What a training run leaves behind to rebuild a scorer: ``ssd.json`` + PCA + inputs + students.

A directory holds ``ssd.json`` (the recipe), ``pca.safetensors`` (the answer-embedding basis),
``students/<role>/`` (each student), ``inputs/<role>.safetensors`` (the layers each student
reads and how they are reduced) and, when training fitted them, ``probes/<name>.safetensors``
(the SEP and PCP baselines, so that a scorer trained on one set can be compared on another).
``checksums.json`` holds the sha256 of every one of these files, verified before any is read
(:mod:`semdistill.scoring.checksums`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from semdistill.formats import FileFormat
from semdistill.scoring.checksums import verify_checksums, write_checksums
from semdistill.scoring.familiarity import Familiarity
from semdistill.semantics.pca import PCAReducer
from semdistill.student import SSDStudent
from semdistill.student.inputs import LayerInputs
from semdistill.student.io import WEIGHTS_FILE
from semdistill.teacher.base import ModelSpec
from semdistill.training.probes import LinearProbe, load_probe

FORMAT = FileFormat("semdistill.ssd", 2, "SSD manifest", remedy="retrain with `semdistill train`")
MANIFEST = "ssd.json"
PCA_FILE = "pca.safetensors"
INPUTS_DIR = "inputs"
PROBES_DIR = "probes"


@dataclass(frozen=True)
class SSDArtifacts:
    """The recipe of a trained SSD scorer.

    ``teacher`` pins the base model (GGUF sha256 or hub revision), ``dtype`` the precision of
    its prefill, ``prompt_template``/``prompt_version`` the prompt, ``layer`` the hidden-state
    index selected for the paper's single-layer input (0 = embedding output),
    ``embedder``/``embedder_dim`` the answer embedder; ``students`` maps a role (``"risk"``,
    ``"likelihood"``) to its PCA dimension, ``inputs`` each role to the layers it reads and
    ``probes`` each saved baseline probe (``"SEP"``, ``"PCP"``) to its layer.
    """

    teacher: ModelSpec
    dtype: str
    prompt_template: str
    prompt_version: str
    layer: int
    embedder: str
    embedder_dim: int
    students: dict[str, int]
    inputs: dict[str, list[int]] = field(default_factory=dict)
    probes: dict[str, int] = field(default_factory=dict)
    collection: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with format tags."""
        data = asdict(self)
        data["teacher"] = self.teacher.to_dict()
        return {**FORMAT.header(), **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = MANIFEST) -> SSDArtifacts:
        """Parse :meth:`to_dict` output; refuses other formats and versions, naming ``source``."""
        body = FORMAT.check(data, source)
        try:
            _check_types(body)
            body["teacher"] = ModelSpec.from_dict(body["teacher"])
            return cls(**body)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{source}: invalid SSD manifest: {err}") from err


_TYPES: dict[str, type | tuple[type, ...]] = {
    "dtype": str,
    "prompt_template": str,
    "prompt_version": str,
    "layer": int,
    "embedder": str,
    "embedder_dim": int,
    "students": dict,
    "inputs": dict,
    "probes": dict,
    "collection": str,
    "extra": dict,
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_types(body: dict[str, Any]) -> None:
    """A TypeError naming the first field of a manifest body with the wrong JSON type."""
    teacher = body.get("teacher")
    if not isinstance(teacher, dict) or not all(
        isinstance(teacher.get(key), str) for key in ("name", "kind", "location")
    ):
        raise TypeError("'teacher' must be an object with string name, kind and location")
    for key in ("revision", "sha256"):
        if not isinstance(teacher.get(key), str | None):
            raise TypeError(f"'teacher.{key}' must be a string or null")
    for key, kind in _TYPES.items():
        value = body.get(key)
        if key in body and not (_is_int(value) if kind is int else isinstance(value, kind)):
            raise TypeError(f"'{key}' must be of type {getattr(kind, '__name__', kind)}")
    if not all(_is_int(d) for d in body.get("students", {}).values()):
        raise TypeError("'students' must map each role to an integer dimension")
    if not all(_is_int(d) for d in body.get("probes", {}).values()):
        raise TypeError("'probes' must map each probe to an integer layer")
    for layers in body.get("inputs", {}).values():
        if not isinstance(layers, list) or not all(_is_int(layer) for layer in layers):
            raise TypeError("'inputs' must map each role to a list of integer layers")


class LoadedSSD(NamedTuple):
    """Everything :func:`load_artifacts` read from one directory."""

    artifacts: SSDArtifacts
    pca: PCAReducer
    students: dict[str, SSDStudent]
    inputs: dict[str, LayerInputs]
    probes: dict[str, LinearProbe]


def save_artifacts(
    directory: str | os.PathLike,
    artifacts: SSDArtifacts,
    pca: PCAReducer,
    students: dict[str, SSDStudent],
    inputs: dict[str, LayerInputs] | None = None,
    probes: dict[str, tuple[LinearProbe, int]] | None = None,
    familiarity: Familiarity | None = None,
) -> SSDArtifacts:
    """Write a scorer's directory; returns the manifest as written.

    ``inputs`` gives each student's :class:`LayerInputs` (default: the raw state of
    ``artifacts.layer``); ``probes`` maps a baseline name to its fitted probe and layer;
    ``familiarity`` is the risk student's familiarity model, if any.
    """
    if set(students) != set(artifacts.students):
        raise ValueError(
            f"students {sorted(students)} do not match the manifest's {sorted(artifacts.students)}"
        )
    inputs = inputs or {role: LayerInputs.from_arrays([artifacts.layer]) for role in students}
    if set(inputs) != set(students):
        raise ValueError(f"inputs {sorted(inputs)} do not match the students {sorted(students)}")
    probes = probes or {}
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    pca.save(root / PCA_FILE)
    (root / INPUTS_DIR).mkdir(exist_ok=True)
    for role, student in students.items():
        if student.n_targets_ != artifacts.students[role]:
            raise ValueError(
                f"student '{role}' predicts d={student.n_targets_}, manifest says "
                f"{artifacts.students[role]}"
            )
        inputs[role].save(root / INPUTS_DIR / f"{role}.safetensors")
        student.save(
            root / "students" / role, metadata={"role": role, "layers": list(inputs[role].layers_)}
        )
    if probes:
        (root / PROBES_DIR).mkdir(exist_ok=True)
    for name, (probe, _layer) in probes.items():
        probe.save(root / PROBES_DIR / f"{name}.safetensors")
    if familiarity is not None:
        familiarity.save(root)
    written = SSDArtifacts(
        **{
            **asdict(artifacts),
            "teacher": artifacts.teacher,
            "inputs": {role: list(inputs[role].layers_) for role in students},
            "probes": {name: int(layer) for name, (_probe, layer) in probes.items()},
        }
    )
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(written.to_dict(), indent=2))
    os.replace(tmp, root / MANIFEST)
    write_checksums(root)
    return written


def load_artifacts(directory: str | os.PathLike) -> LoadedSSD:
    """Read what :func:`save_artifacts` wrote, checking the pieces fit together."""
    root = Path(directory)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no such file (is {root} a trained SSD directory?)")
    verify_checksums(root)
    try:
        data = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{manifest}: not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{manifest}: not a semdistill SSD manifest (expected a JSON object)")
    artifacts = SSDArtifacts.from_dict(data, source=str(manifest))
    pca = PCAReducer.load(root / PCA_FILE)
    if pca.n_features_in_ != artifacts.embedder_dim:
        raise ValueError(
            f"{root / PCA_FILE}: fitted on width {pca.n_features_in_}, but {manifest} records "
            f"embedder width {artifacts.embedder_dim}"
        )
    students = {role: SSDStudent.load(root / "students" / role) for role in artifacts.students}
    inputs = {
        role: LayerInputs.load(root / INPUTS_DIR / f"{role}.safetensors")
        for role in artifacts.students
    }
    for role, student in students.items():
        if student.n_targets_ != artifacts.students[role] or artifacts.students[role] > (
            pca.n_components
        ):
            raise ValueError(
                f"{root / 'students' / role}: predicts d={student.n_targets_}; {manifest} says "
                f"{artifacts.students[role]} (PCA has {pca.n_components})"
            )
        recorded = artifacts.inputs.get(role)
        if recorded is not None and list(inputs[role].layers_) != list(recorded):
            raise ValueError(
                f"{root / INPUTS_DIR / role}.safetensors reads layers {list(inputs[role].layers_)}"
                f", but {manifest} records {recorded}"
            )
        width = inputs[role].width
        if width is not None and width != student.n_features_in_:
            raise ValueError(
                f"{root / 'students' / role}: reads {student.n_features_in_} features, but its "
                f"inputs ({inputs[role].describe()}) give {width}"
            )
    probes = {
        name: load_probe(root / PROBES_DIR / f"{name}.safetensors") for name in artifacts.probes
    }
    return LoadedSSD(artifacts, pca, students, inputs, probes)


def artifacts_fingerprint(directory: Path, artifacts: SSDArtifacts) -> str:
    """sha256 over the manifest, PCA basis, students' inputs and weights of an SSD directory."""
    digest = hashlib.sha256()
    files = [MANIFEST, PCA_FILE] + [
        name
        for role in sorted(artifacts.students)
        for name in (f"students/{role}/{WEIGHTS_FILE}", f"{INPUTS_DIR}/{role}.safetensors")
    ]
    for name in files:
        digest.update(name.encode())
        digest.update((directory / name).read_bytes())
    return digest.hexdigest()
