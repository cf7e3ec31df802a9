"""Turning a model name, path or hub id into a ready teacher on the chosen backend."""

from __future__ import annotations

import re
from pathlib import Path

from semdistill.teacher.base import ModelSpec, Teacher
from semdistill.teacher.hf import HFTeacher, load_hf_model, torch_dtype
from semdistill.teacher.llamacpp import LlamaCppTeacher, llama_cpp_available
from semdistill.teacher.registry import REGISTRY, registered_gguf, sha256_file

BACKENDS = ("auto", "transformers", "llamacpp")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def resolve_model(model: str) -> ModelSpec:
    """The spec of ``model``: a registered name, a ``.gguf`` file, a local folder or a hub id.

    GGUF files are hashed (registered ones verified against their pinned hash).
    """
    if model in REGISTRY:
        path = registered_gguf(model)
        return ModelSpec(model, "gguf", str(path), None, REGISTRY[model].sha256)
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        return ModelSpec(path.stem, "gguf", str(path.resolve()), None, sha256_file(path))
    if path.is_dir():
        return ModelSpec(path.name, "hf", str(path.resolve()), None, None)
    if _HUB_ID.match(model):
        return ModelSpec(model, "hf", model, None, None)
    raise ValueError(
        f"unknown model {model!r}: not a registered name ({', '.join(REGISTRY)}), "
        "a .gguf file, a local model folder or a Hugging Face id (org/name)"
    )


def load_teacher(
    model: str, *, backend: str = "auto", dtype: str = "bfloat16", batch_size: int = 8
) -> Teacher:
    """A teacher for ``model`` (see :func:`resolve_model`).

    ``backend="auto"`` decodes with llama.cpp when it is installed and the model is a
    GGUF file, else with transformers; hidden states always come from transformers in
    ``dtype``. ``batch_size`` bounds the prompts per transformers forward pass.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    torch_dtype(dtype)
    spec = resolve_model(model)
    if backend == "llamacpp" and spec.kind != "gguf":
        raise ValueError(f"backend 'llamacpp' needs a GGUF model; {model!r} is a {spec.kind} model")
    use_llama = backend == "llamacpp" or (
        backend == "auto" and spec.kind == "gguf" and llama_cpp_available()
    )
    hf_model, tokenizer, spec = load_hf_model(spec, dtype)
    teacher = HFTeacher(hf_model, tokenizer, spec, dtype=dtype, batch_size=batch_size)
    if use_llama:
        return LlamaCppTeacher(teacher, Path(spec.location))
    return teacher
