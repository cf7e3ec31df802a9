"""Turning a model name, path or hub id into a ready teacher on the chosen backend."""

from __future__ import annotations

import re
from pathlib import Path

from semdistill.teacher.base import ModelSpec, Teacher
from semdistill.teacher.hf import (
    HFTeacher,
    auto_dtype,
    load_hf_model,
    resolve_device,
    torch_dtype,
)
from semdistill.teacher.llamacpp import LlamaCppTeacher, probe_llama_cpp
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
    model: str,
    *,
    backend: str = "auto",
    dtype: str = "auto",
    device: str = "auto",
    decode_rows: int = 128,
    decoder: str = "auto",
) -> Teacher:
    """A teacher for ``model`` (see :func:`resolve_model`).

    ``backend="auto"`` and ``"transformers"`` run the answer-set engine in transformers;
    ``"llamacpp"`` decodes with llama.cpp (optional, probed in a subprocess first, since
    a native crash would take the process down), hidden states still from transformers.
    ``dtype="auto"`` takes bfloat16 where the device computes it natively, else float32
    (:func:`~semdistill.teacher.hf.auto_dtype`); ``device="auto"`` takes CUDA if present.
    ``"map"`` spreads the model over the GPUs (accelerate); ``decode_rows`` bounds the
    answers the engine decodes together; ``decoder`` picks the forward (auto: the lean one
    where it is verified, see :func:`~semdistill.teacher.decoder.backends.choose_forward`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    torch_device = resolve_device(device)
    dtype = auto_dtype(torch_device) if dtype == "auto" else dtype
    torch_dtype(dtype)
    spec = resolve_model(model)
    if backend == "llamacpp":
        if spec.kind != "gguf":
            raise ValueError(
                f"backend 'llamacpp' needs a GGUF model; {model!r} is a {spec.kind} model"
            )
        probe_llama_cpp(Path(spec.location))
    placement = device if device == "map" else str(torch_device)
    hf_model, tokenizer, spec = load_hf_model(spec, dtype, placement)
    try:
        teacher = HFTeacher(
            hf_model, tokenizer, spec, dtype=dtype, decode_rows=decode_rows, decoder=decoder
        )
    except (AttributeError, TypeError, KeyError, IndexError, RuntimeError) as err:
        raise ValueError(
            f"model {model!r} ({type(hf_model).__name__}) cannot run as a text decoder here: "
            f"{type(err).__name__}: {err}"
        ) from err
    if backend == "llamacpp":
        return LlamaCppTeacher(teacher, Path(spec.location))
    return teacher
