"""A teacher whose answers come from another decoder (llama.cpp, a vLLM server) while its
prompts and hidden states come from the model's transformers copy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from semdistill.teacher.hf import HFTeacher


class HostedTeacher:
    """The part of a teacher that the transformers copy ``hf`` gives: the model's spec and
    shape, the prompt format and the last-prompt-token states. Subclasses add the answers."""

    def __init__(self, hf: HFTeacher) -> None:
        self.hf = hf
        self.spec = hf.spec
        self.dtype = hf.dtype
        self.n_layers = hf.n_layers
        self.hidden_size = hf.hidden_size
        self.decoder = hf.decoder  # the forward of the hidden states

    def format_prompt(self, question: str) -> str:
        """The chat-formatted short-answer prompt for ``question``."""
        return self.hf.format_prompt(question)

    def chat_prompt(self, message: str) -> str:
        """``message`` as one user turn in the chat template, ready for generation."""
        return self.hf.chat_prompt(message)

    def hidden_states(
        self, prompts: list[str], *, layers: Sequence[int] | None = None
    ) -> np.ndarray:
        """Float16 last-prompt-token states from the transformers model (see HFTeacher)."""
        return self.hf.hidden_states(prompts, layers=layers)
