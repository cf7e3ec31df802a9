"""Whether a teacher, embedder, prompt or collection is the one a trained SSD recorded."""

from __future__ import annotations

from semdistill.scoring.artifacts import SSDArtifacts
from semdistill.semantics.embed import Embedder
from semdistill.store import CollectConfig
from semdistill.teacher.base import Teacher
from semdistill.teacher.loader import describe_model, same_model
from semdistill.teacher.prompt import PROMPT_TEMPLATE, PROMPT_VERSION


def check_prompt(artifacts: SSDArtifacts) -> None:
    """Refuse artifacts trained with another prompt than this semdistill formats."""
    if artifacts.prompt_version != PROMPT_VERSION or artifacts.prompt_template != PROMPT_TEMPLATE:
        raise ValueError(
            f"the SSD was trained with prompt version {artifacts.prompt_version!r}, but this "
            f"semdistill formats prompts as {PROMPT_VERSION!r}; use the semdistill version "
            "that trained it, or retrain"
        )


def check_teacher(teacher: Teacher, artifacts: SSDArtifacts) -> None:
    """Refuse a teacher that is not the recorded base model, dtype or depth."""
    if not same_model(teacher.spec, artifacts.teacher):
        raise ValueError(
            f"model {describe_model(teacher.spec)} is not the base model this SSD was trained on: "
            f"{describe_model(artifacts.teacher)}"
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


def check_compatible(
    artifacts: SSDArtifacts, config: CollectConfig, where: str, *, embedder: bool = True
) -> None:
    """Refuse a collection (its ``config``, stored at ``where``) from another base model,
    dtype or prompt than the SSD's, with fewer layers than it reads, or (``embedder``) with
    other answer embeddings; the message names every difference."""
    layers = {artifacts.layer}.union(*map(set, artifacts.inputs.values()))
    checks = [
        ("base model", same_model(config.model, artifacts.teacher)),
        ("dtype", config.dtype == artifacts.dtype),
        ("prompt", config.prompt_version == artifacts.prompt_version),
        ("layer count", max(layers) <= config.n_layers),
    ]
    if embedder:
        checks.append(("embedder", config.embedder == artifacts.embedder))
    mismatched = [name for name, same in checks if not same]
    if mismatched:
        raise ValueError(
            f"collection {where} does not match the SSD trained on {artifacts.collection}: "
            f"different {', '.join(mismatched)}"
        )
