"""What every teacher backend provides: the model's identity and the Teacher protocol."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np

from semdistill.teacher.decoder.jobs import TokenScores

if TYPE_CHECKING:
    from semdistill.teacher.decoder.backends import DecoderPath
    from semdistill.teacher.decoder.engine import Engine

ModelKind = Literal["gguf", "hf"]
MAX_ANSWER_CHARS = 300


@dataclass(frozen=True)
class ModelSpec:
    """Identifies a base model: a GGUF file pinned by its sha256, or a Hugging Face model.

    ``location`` is the GGUF path, the local model folder or the hub id; ``revision`` is
    the hub commit where known; ``sha256`` is the GGUF file's hash (None for HF models).
    """

    name: str
    kind: ModelKind
    location: str
    revision: str | None
    sha256: str | None

    def to_dict(self) -> dict[str, str | None]:
        """The spec as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, str | None]) -> ModelSpec:
        """The spec stored by :meth:`to_dict`."""
        kind = data["kind"]
        if kind not in ("gguf", "hf"):
            raise ValueError(f"model kind must be 'gguf' or 'hf', got {kind!r}")
        return cls(
            name=str(data["name"]),
            kind=kind,
            location=str(data["location"]),
            revision=data["revision"],
            sha256=data["sha256"],
        )


@dataclass(frozen=True)
class AnswerSet:
    """One prompt's hidden states ``(layers, hidden)`` float32, greedy answer and samples.

    ``greedy_scores`` are the greedy answer's token statistics from the logits it was decoded
    from (None where the backend gives no logits, or no greedy answer was asked for).
    """

    hidden: np.ndarray
    greedy: str | None
    samples: list[str]
    greedy_scores: TokenScores | None = None


class Teacher(Protocol):
    """A base LLM that gives last-prompt-token hidden states, sampled and greedy answers.

    ``backend`` names what generates the answers ("transformers", "llamacpp" or "vllm") and
    ``dtype`` the precision of the hidden states' forward pass.
    """

    spec: ModelSpec
    backend: str
    dtype: str
    n_layers: int
    hidden_size: int
    decoder: DecoderPath

    def format_prompt(self, question: str) -> str:
        """The chat-formatted short-answer prompt for ``question``."""
        ...

    def chat_prompt(self, message: str) -> str:
        """``message`` as one user turn in the chat template, ready for generation."""
        ...

    def hidden_states(
        self, prompts: list[str], *, layers: Sequence[int] | None = None
    ) -> np.ndarray:
        """Float16 states of each prompt's last token: (n, n_layers + 1, hidden_size).

        Index 0 is the embedding output, index ``i`` the output of decoder layer ``i``
        (the last one after the final norm, as Hugging Face reports it). ``layers``
        selects a subset, giving (n, len(layers), hidden_size) in the order asked.
        """
        ...

    def sample(
        self,
        prompts: list[str],
        *,
        n: int,
        temperature: float,
        seeds: Sequence[int],
        max_new_tokens: int,
    ) -> list[list[str]]:
        """``n`` cleaned answers per prompt by plain sampling; ``seeds[i]`` fixes prompt i's."""
        ...

    def greedy(self, prompts: list[str], *, max_new_tokens: int) -> list[str]:
        """One cleaned greedy answer per prompt."""
        ...

    def answer_sets(
        self,
        prompts: list[str],
        *,
        n: int,
        temperature: float,
        seeds: Sequence[int],
        max_new_tokens: int,
    ) -> Iterator[tuple[int, AnswerSet]]:
        """``(index, AnswerSet)`` per prompt as each completes: float32 states of every
        layer ``(n_layers + 1, hidden_size)``, the greedy answer and ``n`` samples, prompt
        ``i``'s samples fixed by ``seeds[i]``."""
        ...


@runtime_checkable
class DecodingTeacher(Teacher, Protocol):
    """A teacher that hands out decoders of its own: what the server and guarded generation
    run on. Each engine shares the teacher's model and decodes up to ``max_rows`` rows."""

    def new_engine(self, *, max_rows: int) -> Engine:
        """A decoder of its own on this teacher's model."""
        ...

    def prompt_token_ids(self, prompt: str) -> list[int]:
        """The token ids of a formatted prompt."""
        ...


@runtime_checkable
class ScoringTeacher(Teacher, Protocol):
    """A teacher that can score given greedy answers by a teacher-forced forward: what adds
    the greedy answer's token statistics to a store collected without them."""

    def greedy_scores(
        self, prompts: list[str], answers: list[str], *, max_new_tokens: int
    ) -> list[TokenScores]:
        """Each answer's token statistics after its prompt, counted as the decoder counts."""
        ...


class ChatGreedy:
    """Greedy replies of a teacher to plain user messages, each wrapped in its chat template.

    Lets a teacher serve as the model of an LLM judge, which sends bare messages.
    """

    def __init__(self, teacher: Teacher) -> None:
        self.teacher = teacher

    def greedy(self, prompts: list[str], *, max_new_tokens: int) -> list[str]:
        """One cleaned greedy reply per message."""
        formatted = [self.teacher.chat_prompt(message) for message in prompts]
        return self.teacher.greedy(formatted, max_new_tokens=max_new_tokens)


def clean_answer(text: str) -> str:
    """The first non-empty line of a generated answer, trimmed and capped in length."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped:
            return stripped[:MAX_ANSWER_CHARS]
    return ""


def to_float16(states: np.ndarray, layers: Sequence[int] | None = None) -> np.ndarray:
    """Hidden states ``(..., layers, hidden)`` as float16, refusing values it cannot hold.

    ``layers`` names the layer of each column in the error (default: the column index).
    """
    peak = np.abs(states).reshape(-1, *states.shape[-2:]).max(axis=(0, 2))
    bad = np.flatnonzero(peak > np.finfo(np.float16).max).tolist()
    if bad:
        names = bad if layers is None else [layers[i] for i in bad]
        raise ValueError(f"hidden states of layers {names} overflow float16")
    return states.astype(np.float16)


def check_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    """The requested layer indices (all of 0..n_layers when None), each checked in range."""
    if layers is None:
        return list(range(n_layers + 1))
    chosen = [int(layer) for layer in layers]
    if not chosen:
        raise ValueError("layers must name at least one layer")
    bad = [layer for layer in chosen if not 0 <= layer <= n_layers]
    if bad:
        raise ValueError(f"layers {bad} are outside 0..{n_layers} (0 is the embedding output)")
    return chosen


def check_sampling(
    prompts: Sequence[str], *, n: int, temperature: float, seeds: Sequence[int], max_new_tokens: int
) -> None:
    """Raise a ValueError naming the argument if the sampling arguments are unusable."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive for sampling, got {temperature}")
    if len(seeds) != len(prompts):
        raise ValueError(f"seeds has {len(seeds)} entries for {len(prompts)} prompts")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
