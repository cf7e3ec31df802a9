"""The recorded parts of a trained SSD: checks that a model, embedder or prompt is the one
training recorded, loading the recorded base model, and the fingerprint of the artifacts."""

from __future__ import annotations

import hashlib
from pathlib import Path

from semdistill.scoring.artifacts import INPUTS_DIR, MANIFEST, PCA_FILE, SSDArtifacts
from semdistill.semantics.embed import Embedder
from semdistill.student.io import WEIGHTS_FILE
from semdistill.teacher.base import ModelSpec, Teacher
from semdistill.teacher.hf import HFTeacher, load_hf_model
from semdistill.teacher.loader import resolve_model
from semdistill.teacher.prompt import PROMPT_TEMPLATE, PROMPT_VERSION
from semdistill.teacher.registry import REGISTRY, registered_gguf, verify_sha256


def check_prompt(artifacts: SSDArtifacts) -> None:
    """Refuse artifacts trained with another prompt than this semdistill formats."""
    if artifacts.prompt_version != PROMPT_VERSION or artifacts.prompt_template != PROMPT_TEMPLATE:
        raise ValueError(
            f"the SSD was trained with prompt version {artifacts.prompt_version!r}, but this "
            f"semdistill formats prompts as {PROMPT_VERSION!r}; use the semdistill version "
            "that trained it, or retrain"
        )


def check_registered_name(spec: ModelSpec) -> None:
    """Refuse a recorded GGUF model under a registered name with another sha256."""
    registered = REGISTRY.get(spec.name)
    if spec.kind == "gguf" and registered is not None and registered.sha256 != spec.sha256:
        raise ValueError(
            f"the SSD names model {spec.name!r}, whose GGUF has sha256 {registered.sha256}, "
            f"but records sha256 {spec.sha256}"
        )


def check_registered_hash(spec: ModelSpec) -> None:
    """Refuse a recorded GGUF model whose sha256 is a registered model's, under another
    name (checked before loading anything)."""
    for name, other in REGISTRY.items():
        if spec.kind == "gguf" and other.sha256 == spec.sha256 and name != spec.name:
            raise ValueError(
                f"the SSD names model {spec.name!r}, but its recorded sha256 {spec.sha256} is "
                f"that of {name!r}"
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
    layers = {artifacts.layer}.union(*map(set, artifacts.inputs.values()))
    outside = sorted(layer for layer in layers if not 0 <= layer <= teacher.n_layers)
    if outside:
        raise ValueError(
            f"recorded layers {outside} are outside 0..{teacher.n_layers} of {teacher.spec.name!r}"
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
