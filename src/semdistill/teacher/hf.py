"""The transformers teacher: batched prefill for hidden states, sampling and greedy decoding."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from semdistill.teacher.base import (
    ModelSpec,
    check_layers,
    check_sampling,
    clean_answer,
)
from semdistill.teacher.prompt import chat_prompt, format_prompt
from semdistill.teacher.registry import cache_dir

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}


class _StopForward(Exception):
    """Raised by a hook once the deepest requested layer has run."""


def torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype named ``dtype``, or a ValueError listing the accepted names."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def converted_dir(spec: ModelSpec, dtype: str) -> Path:
    """Where the safetensors copy of GGUF model ``spec`` in ``dtype`` is cached."""
    if spec.sha256 is None:
        raise ValueError(f"GGUF model {spec.name!r} has no sha256 to key its converted copy")
    return cache_dir() / "converted" / f"{spec.sha256}-{dtype}"


def _convert_gguf(spec: ModelSpec, dtype: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """De-quantise a GGUF file with transformers and cache a safetensors copy atomically."""
    path = Path(spec.location)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
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
        if not target.exists():
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model, tokenizer


def load_hf_model(
    spec: ModelSpec, dtype: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ModelSpec]:
    """The model and tokenizer of ``spec`` in eval mode, and the spec with its revision filled.

    A GGUF model (whose hash the caller has verified) loads from its cached safetensors
    copy, converting once on first use.
    """
    torch_dtype(dtype)
    if spec.kind == "gguf":
        cached = converted_dir(spec, dtype)
        if cached.is_dir():
            tokenizer = AutoTokenizer.from_pretrained(cached)
            model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch_dtype(dtype))
        else:
            model, tokenizer = _convert_gguf(spec, dtype)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(spec.location, revision=spec.revision)
            model = AutoModelForCausalLM.from_pretrained(
                spec.location, revision=spec.revision, dtype=torch_dtype(dtype)
            )
        except OSError as err:
            raise ValueError(f"could not load model {spec.location!r}: {err}") from err
        revision = spec.revision or getattr(model.config, "_commit_hash", None)
        spec = replace(spec, revision=revision)
    model.eval()
    return model, tokenizer, spec


@contextmanager
def _hooks(handles: list[torch.utils.hooks.RemovableHandle]) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class HFTeacher:
    """A teacher running entirely in transformers.

    Prefill is batched with left padding; sampling runs one ``generate`` call per prompt
    with ``num_return_sequences=n`` under the prompt's own seed, so answers do not depend
    on which other prompts share the batch; greedy decoding is batched.
    """

    backend = "transformers"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        spec: ModelSpec,
        *,
        dtype: str,
        batch_size: int = 8,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.dtype = dtype
        self.batch_size = batch_size
        self.n_layers = int(model.config.num_hidden_layers)
        self.hidden_size = int(model.config.hidden_size)
        layers = getattr(model.base_model, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList):
            raise ValueError(
                f"model {spec.name!r} ({type(model).__name__}) has no decoder `layers` list; "
                "only decoder-only architectures laid out like Llama are supported"
            )
        self._layers = layers
        eos = model.generation_config.eos_token_id
        eos_ids = {*(eos if isinstance(eos, list) else [eos])}
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        eos_ids.discard(None)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        # A clean generation config, so no model default (top_k, top_p, repetition
        # penalty...) changes the sampling distribution.
        model.generation_config = GenerationConfig(
            bos_token_id=model.generation_config.bos_token_id,
            eos_token_id=sorted(eos_ids),
            pad_token_id=tokenizer.pad_token_id,
        )

    def format_prompt(self, question: str) -> str:
        """The chat-formatted short-answer prompt for ``question``."""
        return format_prompt(self.tokenizer, question)

    def chat_prompt(self, message: str) -> str:
        """``message`` as one user turn in the chat template, ready for generation."""
        return chat_prompt(self.tokenizer, message)

    def prompt_token_ids(self, prompt: str) -> list[int]:
        """The token ids of a formatted prompt (its special tokens come from the template)."""
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            prompts,
            add_special_tokens=False,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def _batches(self, prompts: list[str]) -> Iterator[list[int]]:
        """Indices of ``prompts`` in batches of similar length, to keep padding small."""
        order = sorted(range(len(prompts)), key=lambda i: len(self.prompt_token_ids(prompts[i])))
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]

    def hidden_states(
        self, prompts: list[str], *, layers: Sequence[int] | None = None
    ) -> np.ndarray:
        """Float16 last-prompt-token states, (n, n_layers + 1 or len(layers), hidden_size).

        Index 0 is the embedding output, index ``i`` decoder layer ``i``'s output, the
        last after the final norm (as ``output_hidden_states`` reports them). The forward
        stops after the deepest requested layer.
        """
        chosen = check_layers(layers, self.n_layers)
        result = np.empty((len(prompts), len(chosen), self.hidden_size), dtype=np.float16)
        for batch in self._batches(prompts):
            states = self._prefill([prompts[i] for i in batch], sorted(set(chosen)))
            for column, layer in enumerate(chosen):
                result[batch, column] = states[layer]
        return result

    def _prefill(self, prompts: list[str], layers: list[int]) -> dict[int, np.ndarray]:
        """The last-token state of each layer in ``layers`` (sorted) for one padded batch."""
        encoded = self._encode(prompts)
        mask = encoded["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        captured: dict[int, torch.Tensor] = {}
        deepest = layers[-1]

        def keep_input(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            captured[0] = hidden[:, -1, :].float()
            if deepest == 0:
                raise _StopForward

        def keep_output(layer: int):
            def hook(_module: torch.nn.Module, _args: tuple, output: object) -> None:
                hidden = output[0] if isinstance(output, tuple) else output
                captured[layer] = hidden[:, -1, :].float()
                if layer == deepest:
                    raise _StopForward

            return hook

        handles = []
        if 0 in layers:
            handles.append(self._layers[0].register_forward_pre_hook(keep_input, with_kwargs=True))
        for layer in layers:
            if 0 < layer < self.n_layers:
                handles.append(self._layers[layer - 1].register_forward_hook(keep_output(layer)))
        with _hooks(handles), torch.inference_mode():
            try:
                output = self.model.base_model(
                    input_ids=encoded["input_ids"],
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=False,
                )
                captured[self.n_layers] = output.last_hidden_state[:, -1, :].float()
            except _StopForward:
                pass
        states = {layer: captured[layer].numpy() for layer in layers}
        too_large = [layer for layer, state in states.items() if np.abs(state).max() > 65504]
        if too_large:
            raise ValueError(f"hidden states of layers {too_large} overflow float16")
        return states

    def sample(
        self,
        prompts: list[str],
        *,
        n: int,
        temperature: float,
        seeds: Sequence[int],
        max_new_tokens: int,
    ) -> list[list[str]]:
        """``n`` cleaned answers per prompt by plain sampling at ``temperature``."""
        check_sampling(
            prompts, n=n, temperature=temperature, seeds=seeds, max_new_tokens=max_new_tokens
        )
        answers = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            encoded = self._encode([prompt])
            with torch.random.fork_rng(devices=[]), torch.inference_mode():
                torch.manual_seed(int(seed))
                output = self.model.generate(
                    **encoded,
                    do_sample=True,
                    temperature=temperature,
                    top_k=0,
                    top_p=1.0,
                    num_return_sequences=n,
                    max_new_tokens=max_new_tokens,
                )
            answers.append(self._decode(output, encoded["input_ids"].shape[1]))
        return answers

    def greedy(self, prompts: list[str], *, max_new_tokens: int) -> list[str]:
        """One cleaned greedy answer per prompt, decoded in left-padded batches."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        answers = [""] * len(prompts)
        for batch in self._batches(prompts):
            encoded = self._encode([prompts[i] for i in batch])
            with torch.inference_mode():
                output = self.model.generate(
                    **encoded, do_sample=False, max_new_tokens=max_new_tokens
                )
            for i, answer in zip(
                batch, self._decode(output, encoded["input_ids"].shape[1]), strict=True
            ):
                answers[i] = answer
        return answers

    def _decode(self, output: torch.Tensor, prompt_length: int) -> list[str]:
        texts = self.tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
        return [clean_answer(text) for text in texts]
