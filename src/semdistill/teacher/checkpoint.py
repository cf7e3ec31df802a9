"""A transformers model and tokenizer from their checkpoint: a GGUF file through its cached
safetensors copy, a local folder or a Hugging Face hub id, on the chosen device and dtype."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from semdistill.teacher.base import ModelSpec
from semdistill.teacher.device import resolve_device, torch_dtype
from semdistill.teacher.registry import cache_dir

_GGUF_LOGGER = "transformers.quantizers.quantizer_gguf"
_PACKED_DTYPE_ADVICE = "Loading a GGUF checkpoint with its weights packed is fastest in float32"
"""The start of transformers' advice to load a GGUF in float32 for its packed-weight kernels."""


def converted_dir(spec: ModelSpec, dtype: str) -> Path:
    """Where the safetensors copy of GGUF model ``spec`` in ``dtype`` is cached."""
    if spec.sha256 is None:
        raise ValueError(f"GGUF model {spec.name!r} has no sha256 to key its converted copy")
    return cache_dir() / "converted" / f"{spec.sha256}-{dtype}"


@contextmanager
def _without_packed_dtype_advice() -> Iterator[None]:
    """Within the block, transformers' advice to load a GGUF in float32 is not logged."""
    logger = logging.getLogger(_GGUF_LOGGER)

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_PACKED_DTYPE_ADVICE)

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _convert_gguf(spec: ModelSpec, dtype: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """De-quantise a GGUF file with transformers and cache a safetensors copy atomically."""
    path = Path(spec.location)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # The weights are de-quantised into the dtype the teacher runs in, on purpose: the advice
    # to keep them packed in float32 is about GGUF kernels this copy does not use.
    with _without_packed_dtype_advice():
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch_dtype(dtype)
        )
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target = converted_dir(spec, dtype)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model, tokenizer


def move_into_place(finished: Path, target: Path) -> None:
    """Rename the folder ``finished`` to ``target``, unless another process has put its own
    copy there first (two conversions of one model at once): then ``finished`` stays."""
    try:
        os.replace(finished, target)
    except OSError:
        if not target.is_dir():
            raise


def load_hf_model(
    spec: ModelSpec, dtype: str, device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ModelSpec]:
    """The model and tokenizer of ``spec`` in eval mode on ``device`` (see
    :func:`~semdistill.teacher.device.resolve_device`; ``"map"`` spreads it over the GPUs
    with accelerate's ``device_map="auto"``), and the spec with its revision filled.

    A GGUF model (whose hash the caller has verified) loads from its cached safetensors
    copy, converting once on first use. An image-text checkpoint loads whole; its text
    decoder is what runs.
    """
    torch_dtype(dtype)
    resolved = resolve_device(device)
    placement = {"device_map": "auto"} if device == "map" else {}
    if spec.kind == "gguf":
        cached = converted_dir(spec, dtype)
        if not cached.is_dir():
            model, tokenizer = _convert_gguf(spec, dtype)
            if not placement:
                return model.to(resolved).eval(), tokenizer, spec
            del model
        tokenizer = AutoTokenizer.from_pretrained(cached)
        model = _from_pretrained(str(cached), None, dtype, placement)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(spec.location, revision=spec.revision)
        except OSError as err:
            raise ValueError(f"could not load model {spec.location!r}: {err}") from err
        model = _from_pretrained(spec.location, spec.revision, dtype, placement)
        revision = spec.revision or getattr(model.config, "_commit_hash", None)
        spec = replace(spec, revision=revision)
    if not placement:
        model.to(resolved)
    return model.eval(), tokenizer, spec


def _from_pretrained(
    location: str, revision: str | None, dtype: str, placement: dict[str, str]
) -> PreTrainedModel:
    """A causal LM from ``location``, or an image-text model whose text decoder generates."""
    kwargs = {"revision": revision, "dtype": torch_dtype(dtype), **placement}
    try:
        return AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except (OSError, KeyError, RuntimeError, TypeError) as err:
        raise ValueError(f"could not load model {location!r}: {err}") from err
    except ValueError as err:
        try:
            return AutoModelForImageTextToText.from_pretrained(location, **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError):
            raise ValueError(
                f"could not load model {location!r} as a causal language model: {err}"
            ) from err
