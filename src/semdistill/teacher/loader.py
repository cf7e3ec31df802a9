"""Turning a model name, path, hub id or recorded spec into a ready teacher on the chosen
backend, and telling whether two specs name the same model."""

from __future__ import annotations

import re
from pathlib import Path

from semdistill.teacher.base import ModelSpec, Teacher
from semdistill.teacher.checkpoint import converted_dir, load_hf_model
from semdistill.teacher.device import auto_dtype, resolve_device, torch_dtype
from semdistill.teacher.hf import HFTeacher
from semdistill.teacher.llamacpp import LlamaCppTeacher, probe_llama_cpp
from semdistill.teacher.registry import REGISTRY, registered_gguf, sha256_file, verify_sha256
from semdistill.teacher.vllm_client import VLLMServer, start_vllm_server
from semdistill.teacher.vllm_teacher import VLLMTeacher

BACKENDS = ("auto", "transformers", "llamacpp", "vllm")
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
    vllm_url: str | None = None,
    vllm_python: str | None = None,
    vllm_port: int = 8731,
) -> Teacher:
    """A teacher for ``model`` (see :func:`resolve_model`).

    ``backend="auto"`` and ``"transformers"`` run the answer-set engine in transformers;
    ``"llamacpp"`` decodes with llama.cpp (optional, probed in a subprocess first, since
    a native crash would take the process down), hidden states still from transformers.
    ``dtype="auto"`` takes bfloat16 where the device computes it natively, else float32
    (:func:`~semdistill.teacher.device.auto_dtype`); ``device="auto"`` takes CUDA if present.
    ``"map"`` spreads the model over the GPUs (accelerate); ``decode_rows`` bounds the
    answers the engine decodes together; ``decoder`` picks the forward (auto: the lean one
    where it is verified, see :func:`~semdistill.teacher.decoder.backends.choose_forward`).
    ``"vllm"`` answers on the vLLM server at ``vllm_url``, or on one started on the loopback
    ``vllm_port`` with the Python ``vllm_python`` (a venv with vLLM), checked against the
    transformers model (:class:`~semdistill.teacher.vllm_teacher.VLLMTeacher`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "vllm" and (vllm_url is None) == (vllm_python is None):
        raise ValueError("backend 'vllm' needs exactly one of vllm_url and vllm_python")
    if backend != "vllm" and (vllm_url, vllm_python) != (None, None):
        raise ValueError(f"vllm_url and vllm_python need backend 'vllm', got {backend!r}")
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
    if backend == "vllm":
        if vllm_url is not None:
            server = VLLMServer(vllm_url)
        else:
            folder = str(converted_dir(spec, dtype)) if spec.kind == "gguf" else spec.location
            server = start_vllm_server(
                str(vllm_python), folder, dtype=dtype, served_name=spec.name, port=vllm_port
            )
        return VLLMTeacher(teacher, server)
    return teacher


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


def describe_model(spec: ModelSpec) -> str:
    """A model's name, kind and pin (sha256 or revision), for messages."""
    pin = f"sha256 {spec.sha256}" if spec.kind == "gguf" else f"revision {spec.revision}"
    return f"{spec.name!r} ({spec.kind}, {pin})"


def load_recorded_teacher(
    recorded: ModelSpec, dtype: str, model: str | None = None, *, device: str = "auto"
) -> Teacher:
    """The ``recorded`` base model in ``dtype`` on the transformers backend, as a trained
    scorer or a store names it.

    ``model`` names another place to load it from (checked to be the same model). A GGUF
    file's sha256 is verified before use.
    """
    if model is not None:
        given = resolve_model(model)
        if not same_model(given, recorded):
            raise ValueError(
                f"model {model!r} = {describe_model(given)} is not the base model this SSD was "
                f"trained on: {describe_model(recorded)}"
            )
        spec = ModelSpec(recorded.name, given.kind, given.location, recorded.revision, given.sha256)
    else:
        spec = recorded
    if spec.kind == "gguf":
        spec = ModelSpec(spec.name, "gguf", str(_gguf_path(spec)), spec.revision, spec.sha256)
    hf_model, tokenizer, spec = load_hf_model(spec, dtype, device)
    return HFTeacher(hf_model, tokenizer, spec, dtype=dtype)


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
