"""When a short answer is over: per-token tables for end-of-sequence and the first line's end.

Only the first non-empty line of an answer is kept (:func:`~semdistill.teacher.base.clean_answer`),
so decoding a row can stop at the first newline that follows some non-blank text, or at an
end-of-sequence token. Stopping there changes no kept answer: what would follow is discarded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class StopTables:
    """Boolean facts about every token id, as tensors indexed by token id.

    ``eos``: ends the sequence. ``newline``: its text holds a newline. ``text_before_newline``:
    non-blank text precedes its first newline. ``text``: it holds non-blank text anywhere.
    """

    eos: torch.Tensor
    newline: torch.Tensor
    text_before_newline: torch.Tensor
    text: torch.Tensor

    @classmethod
    def build(
        cls, tokenizer: PreTrainedTokenizerBase, eos_ids: Iterable[int], vocab_size: int
    ) -> StopTables:
        """The tables for ``tokenizer``'s ids below ``vocab_size`` (the model's logit width)."""
        # Special tokens decode to nothing, as they do in the kept answer.
        pieces = tokenizer.batch_decode(
            [[i] for i in range(len(tokenizer))], skip_special_tokens=True
        )
        pieces += [""] * max(0, vocab_size - len(pieces))
        pieces = pieces[:vocab_size]
        eos = torch.zeros(vocab_size, dtype=torch.bool)
        eos[[i for i in eos_ids if 0 <= i < vocab_size]] = True
        newline = torch.tensor(["\n" in p for p in pieces])
        before = torch.tensor([bool(p.split("\n", 1)[0].strip()) and "\n" in p for p in pieces])
        text = torch.tensor([bool(p.strip()) for p in pieces])
        return cls(eos=eos, newline=newline, text_before_newline=before, text=text)

    def to(self, device: torch.device) -> StopTables:
        """The same tables on ``device``."""
        return StopTables(
            eos=self.eos.to(device),
            newline=self.newline.to(device),
            text_before_newline=self.text_before_newline.to(device),
            text=self.text.to(device),
        )

    def advance(
        self, tokens: torch.Tensor, has_text: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whether each row is over after emitting ``tokens``, and its updated ``has_text``."""
        over = self.eos[tokens] | (
            self.newline[tokens] & (has_text | self.text_before_newline[tokens])
        )
        return over, has_text | self.text[tokens]
