"""The transformers teacher: model loading, packed prefill for hidden states, answer sets."""

from __future__ import annotations

import os
import shutil
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from semdistill.teacher.answer_sets import answer_sets
from semdistill.teacher.base import (
    AnswerSet,
    ModelSpec,
    check_layers,
    check_sampling,
    to_float16,
)
from semdistill.teacher.decoder.backends import choose_forward
from semdistill.teacher.decoder.engine import Engine
from semdistill.teacher.decoder.prefill import Prefiller
from semdistill.teacher.literal import literal_ids
from semdistill.teacher.prompt import chat_prompt, format_prompt, message_span
from semdistill.teacher.registry import cache_dir

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}


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
    spec: ModelSpec, dtype: str, device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ModelSpec]:
    """The model and tokenizer of ``spec`` in eval mode on ``device`` (see
    :func:`resolve_device`; ``"map"`` spreads it over the GPUs with accelerate's
    ``device_map="auto"``), and the spec with its revision filled.

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


def auto_dtype(device: torch.device) -> str:
    """The fastest dtype whose scores we trust on ``device``.

    bfloat16 on CUDA and on CPUs with native bf16 matrix units (AMX or AVX-512 BF16);
    float32 elsewhere, where bf16 matmuls are emulated (``benchmarks/bench_matmul.py``
    measures both).
    """
    if device.type == "cuda":
        return "bfloat16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "bfloat16" if ("amx_bf16" in flags or "avx512_bf16" in flags) else "float32"


def resolve_device(device: str) -> torch.device:
    """``device`` (auto, cpu, cuda, cuda:N, map) as a torch device; auto takes CUDA where
    present, map (a model spread over the GPUs) the first GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device("cuda" if device == "map" else device)
    except RuntimeError as err:
        raise ValueError(f"device must be auto, cpu, cuda[:N] or map, got {device!r}") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device here")
    if chosen.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda[:N] or map, got {device!r}")
    return chosen


_PROBE_QUESTION = (
    "In which year did the city that hosted the first modern Olympic Games also host the "
    "Summer Olympics for the second time, and which country topped the medal table then, "
    "counting gold medals first, then silver, then bronze?"
)
"""A question whose prompt runs well past the template, to check a forward on (backends)."""


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The token ids of a formatted prompt: its special tokens come from the template only,
    the user's message is text even where it spells one (see :mod:`semdistill.teacher.
    literal`), and a tokenizer that starts every text with BOS gets it where the template
    leaves it out (a base model's plain prompt)."""
    ids = literal_ids(tokenizer, prompt, message_span(tokenizer, prompt))
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos) and tokenizer("a")["input_ids"][0] == bos:
        ids = [bos, *ids]
    return ids


def template_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The token ids every short-answer prompt starts with (its chat template and instruction)."""
    probes = ["Who?", "7 + 8", "(x) Zebra", "«Éire»"]
    ids = [encode_prompt(tokenizer, format_prompt(tokenizer, q)) for q in probes]
    common = 0
    while all(len(i) > common and i[common] == ids[0][common] for i in ids):
        common += 1
    return ids[0][:common]


class HFTeacher:
    """A teacher running entirely in transformers, on the answer-set engine.

    The model runs on the lean forward where that is verified to compute it, else on its own
    forward (:func:`~semdistill.teacher.decoder.backends.choose_forward`; ``decoder`` ``"lean"`` or
    ``"generic"`` forces one, and :attr:`decoder` says which was taken and why). The teacher
    takes over ``model``: on the lean path its linear layers are packed in place.
    Prefill packs prompts after the cached template prefix, so a prompt's states are a
    function of that prompt alone (up to float rounding); answers come from
    :class:`~semdistill.teacher.decoder.engine.Engine`, each prompt's samples fixed by its
    seed. ``pack_tokens`` bounds the tokens of one prefill, ``decode_rows`` the answers
    decoded together.
    """

    backend = "transformers"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        spec: ModelSpec,
        *,
        dtype: str,
        pack_tokens: int = 1024,
        decode_rows: int = 128,
        decoder: str = "auto",
    ) -> None:
        if pack_tokens < 1 or decode_rows < 1:
            raise ValueError(
                f"pack_tokens and decode_rows must be positive, got {pack_tokens}, {decode_rows}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.dtype = dtype
        self.pack_tokens = pack_tokens
        self.decode_rows = decode_rows
        text_config = model.config.get_text_config()
        self.n_layers = int(text_config.num_hidden_layers)
        self.hidden_size = int(text_config.hidden_size)
        eos = model.generation_config.eos_token_id
        eos_ids = {*(eos if isinstance(eos, list) else [eos])}
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        eos_ids.discard(None)
        self.eos_ids = sorted(eos_ids)
        prefix = template_prefix(tokenizer)
        probe = self.prompt_token_ids(self.format_prompt(_PROBE_QUESTION))
        forward, self.decoder = choose_forward(model, probe, decoder)
        self.prefiller = Prefiller(forward, prefix)
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        """The decoder collection uses (its per-token stop tables are built on first use)."""
        if self._engine is None:
            self._engine = self.new_engine(max_rows=self.decode_rows)
        return self._engine

    def new_engine(self, *, max_rows: int) -> Engine:
        """A decoder of its own on this teacher's model, decoding up to ``max_rows`` rows."""
        return Engine(
            self.prefiller,
            self.tokenizer,
            self.eos_ids,
            max_rows=max_rows,
            pack_tokens=self.pack_tokens,
        )

    def format_prompt(self, question: str) -> str:
        """The chat-formatted short-answer prompt for ``question``."""
        return format_prompt(self.tokenizer, question)

    def chat_prompt(self, message: str) -> str:
        """``message`` as one user turn in the chat template, ready for generation."""
        return chat_prompt(self.tokenizer, message)

    def prompt_token_ids(self, prompt: str) -> list[int]:
        """The token ids of a formatted prompt (see :func:`encode_prompt`)."""
        return encode_prompt(self.tokenizer, prompt)

    def hidden_states(
        self, prompts: list[str], *, layers: Sequence[int] | None = None
    ) -> np.ndarray:
        """Float16 last-prompt-token states, (n, n_layers + 1 or len(layers), hidden_size).

        Index 0 is the embedding output, index ``i`` decoder layer ``i``'s output, the
        last after the final norm (as ``output_hidden_states`` reports them). The forward
        stops after the deepest requested layer.
        """
        chosen = check_layers(layers, self.n_layers)
        wanted = sorted(set(chosen))
        columns = [wanted.index(layer) for layer in chosen]
        ids = [self.prompt_token_ids(p) for p in prompts]
        result = np.empty((len(prompts), len(chosen), self.hidden_size), dtype=np.float16)
        pending = deque(range(len(ids)))
        while pending:
            group = self.prefiller.next_pack(ids, pending, self.pack_tokens)
            prefilled = self.prefiller.run([ids[i] for i in group], wanted, keep_cache=False)
            states = prefilled.states.cpu().numpy()[:, columns]
            result[group] = to_float16(states, chosen)
        return result

    def answer_sets(
        self,
        prompts: list[str],
        *,
        n: int,
        temperature: float,
        seeds: Sequence[int],
        max_new_tokens: int,
    ) -> Iterator[tuple[int, AnswerSet]]:
        """Per prompt, all-layer states, the greedy answer and ``n`` samples, as they complete.

        Yields ``(index, AnswerSet)`` with float32 states ``(n_layers + 1, hidden_size)``;
        prompt ``i``'s samples depend only on ``seeds[i]``.
        """
        check_sampling(
            prompts, n=n, temperature=temperature, seeds=seeds, max_new_tokens=max_new_tokens
        )
        yield from answer_sets(
            self.engine,
            [self.prompt_token_ids(p) for p in prompts],
            n=n,
            greedy=True,
            temperature=temperature,
            seeds=seeds,
            max_new_tokens=max_new_tokens,
            layers=range(self.n_layers + 1),
        )

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
        return [
            done.samples
            for done in self._in_order(
                prompts,
                n=n,
                greedy=False,
                temperature=temperature,
                seeds=seeds,
                max_new_tokens=max_new_tokens,
            )
        ]

    def greedy(self, prompts: list[str], *, max_new_tokens: int) -> list[str]:
        """One cleaned greedy answer per prompt."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        return [
            str(done.greedy)
            for done in self._in_order(
                prompts,
                n=0,
                greedy=True,
                temperature=1.0,
                seeds=[0] * len(prompts),
                max_new_tokens=max_new_tokens,
            )
        ]

    def _in_order(self, prompts: list[str], **settings: object) -> list[AnswerSet]:
        if not prompts:
            return []
        done = dict(
            answer_sets(
                self.engine,
                [self.prompt_token_ids(p) for p in prompts],
                layers=[self.n_layers],
                **settings,
            )
        )
        return [done[i] for i in range(len(prompts))]
