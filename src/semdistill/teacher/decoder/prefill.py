"""Packed prefill: several prompts in one forward pass, without padding, after a cached prefix.

The prompts' tokens go through the model's matmuls together, but each prompt's attention
sees only the shared prefix and its own tokens, so a prompt's states do not depend on its
pack-mates (bit for bit in float32 on the lean forward, see :mod:`~semdistill.teacher.decoder.lean`;
the generic forward runs each prompt alone, see :mod:`~semdistill.teacher.decoder.generic`). Every
short-answer prompt starts with the same chat-template tokens; their keys and values are
computed once and every prompt attends to them, which removes most of the prefill's work.
The captured states follow ``output_hidden_states``: index 0 is the embedding output, ``i``
the output of decoder layer ``i`` and the last index the output after the final norm.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from semdistill.teacher.decoder.backends import Forward

_Item = TypeVar("_Item")


@dataclass(frozen=True)
class Prefilled:
    """What one packed forward gave, per prompt: states ``(prompts, layers, hidden)``
    float32, and with the cache kept, next-token logits ``(prompts, vocab)`` and keys and
    values (the prefix's included)."""

    states: torch.Tensor
    logits: torch.Tensor | None
    kv: list[Any] | None
    prefix_length: int


class Prefiller:
    """Runs packed prefills on ``forward`` after the cached ``prefix`` shared by its prompts."""

    def __init__(self, forward: Forward, prefix: Sequence[int] = ()) -> None:
        self.prefix = list(prefix)
        self.forward = forward
        self.n_layers = forward.n_layers
        self._prefix_kv: Any = None

    def prefix_length(self, prompt_ids: Sequence[int]) -> int:
        """How many leading tokens of ``prompt_ids`` the cached prefix gives (0 or all of it)."""
        p = len(self.prefix)
        return p if p and len(prompt_ids) > p and list(prompt_ids[:p]) == self.prefix else 0

    def next_pack(
        self,
        pending: deque[_Item],
        prompt_ids: Callable[[_Item], Sequence[int]],
        max_tokens: int,
        *,
        group: Callable[[_Item], object] = lambda _: None,
    ) -> list[_Item]:
        """Take the next pack off ``pending``: the first item and those after it with its
        prefix length and ``group``, while the pack holds at most ``max_tokens`` tokens past
        the prefix (the first always goes, however long); ``prompt_ids`` gives an item's ids."""
        first = pending.popleft()
        prefix = self.prefix_length(prompt_ids(first))
        key = (prefix, group(first))
        pack, size = [first], len(prompt_ids(first)) - prefix
        while pending:
            ids = prompt_ids(pending[0])
            if (self.prefix_length(ids), group(pending[0])) != key:
                break
            size += len(ids) - prefix
            if size > max_tokens:
                break
            pack.append(pending.popleft())
        return pack

    def run(
        self, prompt_ids: Sequence[Sequence[int]], layers: Sequence[int], *, keep_cache: bool
    ) -> Prefilled:
        """One packed forward of ``prompt_ids`` (all with the same prefix length).

        With ``keep_cache`` the whole model runs, giving next-token logits and each prompt's
        keys and values; without, the forward stops after the deepest layer in ``layers``.
        """
        prefixes = {self.prefix_length(ids) for ids in prompt_ids}
        if len(prefixes) != 1:
            raise ValueError("a pack must hold prompts that all share the prefix, or none")
        p = prefixes.pop()
        out = self.forward.prefill(
            [ids[p:] for ids in prompt_ids],
            self._cached_prefix() if p else None,
            layers,
            full=keep_cache,
        )
        return Prefilled(out.states, out.logits, out.kv, p)

    def _cached_prefix(self) -> Any:
        """The keys and values of the shared prefix, computed on first use."""
        if self._prefix_kv is None:
            out = self.forward.prefill([self.prefix], None, [0], full=True)
            assert out.kv is not None
            self._prefix_kv = out.kv[0]
        return self._prefix_kv
