"""Packed prefill: several prompts in one forward pass, without padding, after a cached prefix.

Prompts are concatenated into one sequence whose block-diagonal causal mask keeps each prompt
to itself, so a prompt's states do not depend on its pack-mates (beyond floating-point
rounding). Every short-answer prompt starts with the same chat-template tokens; their keys
and values are computed once and every prompt attends to them, which removes most of the
prefill's work. The last-token state of each requested layer is captured by hooks: index 0
is the embedding output, ``i`` the output of decoder layer ``i`` and the last index the
output after the final norm, as ``output_hidden_states`` reports them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel


class _StopForward(Exception):
    """Raised by a hook once the deepest requested layer has run."""


@dataclass(frozen=True)
class Packed:
    """Prompts (after the shared prefix) packed into one sequence, ready for a forward pass.

    ``starts`` and ``ends`` index each prompt's first and last token in the packed sequence.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    starts: torch.Tensor
    ends: torch.Tensor


def pack(suffixes: Sequence[Sequence[int]], prefix_length: int, device: torch.device) -> Packed:
    """``suffixes`` as one sequence after ``prefix_length`` cached tokens every one attends to."""
    lengths = torch.tensor([len(ids) for ids in suffixes])
    if len(lengths) == 0 or (lengths < 1).any():
        raise ValueError("every prompt must have at least one token after the shared prefix")
    segment = torch.repeat_interleave(torch.arange(len(suffixes)), lengths)
    total = int(lengths.sum())
    starts = torch.cumsum(lengths, 0) - lengths
    own = (segment[:, None] == segment[None, :]) & torch.ones(total, total, dtype=torch.bool).tril()
    mask = torch.cat([torch.ones(total, prefix_length, dtype=torch.bool), own], dim=1)
    return Packed(
        input_ids=torch.tensor([[t for ids in suffixes for t in ids]], device=device),
        position_ids=(prefix_length + torch.arange(total) - starts[segment])[None].to(device),
        attention_mask=mask[None, None].to(device),
        starts=starts,
        ends=(starts + lengths - 1).to(device),
    )


@dataclass(frozen=True)
class Prefilled:
    """What one packed forward gave: per prompt, states, next-token logits and KV cache.

    ``states`` is ``(prompts, layers, hidden)``; ``logits`` ``(prompts, vocab)`` or None;
    ``cache`` holds the prefix then the pack (or is None), sliced per prompt by :meth:`kv`.
    """

    states: torch.Tensor
    logits: torch.Tensor | None
    cache: DynamicCache | None
    packed: Packed
    prefix_length: int

    def kv(self, slot: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the keys and values of prompt ``slot`` alone, ``(1, heads, length, dim)``."""
        if self.cache is None:
            raise ValueError("this prefill kept no cache")
        p = self.prefix_length
        begin, end = p + int(self.packed.starts[slot]), p + int(self.packed.ends[slot]) + 1

        def own(tensor: torch.Tensor) -> torch.Tensor:
            return torch.cat([tensor[:, :, :p], tensor[:, :, begin:end]], dim=2)

        return [(own(layer.keys), own(layer.values)) for layer in self.cache.layers]


@contextmanager
def _hooks(handles: list[torch.utils.hooks.RemovableHandle]) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class Prefiller:
    """Runs packed prefills of ``model`` after the cached ``prefix`` shared by its prompts."""

    def __init__(self, model: PreTrainedModel, prefix: Sequence[int] = ()) -> None:
        base = model.base_model
        layers = getattr(base, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList) or not hasattr(base, "norm"):
            raise ValueError(
                f"{type(model).__name__} has no decoder `layers` list and final `norm`; "
                "only decoder-only architectures laid out like Llama are supported"
            )
        self.model = model
        self.n_layers = len(layers)
        self._base = base
        self._layers = layers
        self.prefix = list(prefix)
        self._prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def prefix_length(self, prompt_ids: Sequence[int]) -> int:
        """How many leading tokens of ``prompt_ids`` the cached prefix gives (0 or all of it)."""
        p = len(self.prefix)
        return p if p and len(prompt_ids) > p and list(prompt_ids[:p]) == self.prefix else 0

    def next_pack(
        self, prompt_ids: Sequence[Sequence[int]], pending: deque[int], max_tokens: int
    ) -> list[int]:
        """Take the next pack off ``pending``: the first index and those after it that share
        its prefix length, while the pack holds at most ``max_tokens`` tokens (the first
        always goes, however long)."""
        first = pending.popleft()
        prefix = self.prefix_length(prompt_ids[first])
        group, size = [first], len(prompt_ids[first]) - prefix
        while pending and self.prefix_length(prompt_ids[pending[0]]) == prefix:
            length = len(prompt_ids[pending[0]]) - prefix
            if size + length > max_tokens:
                break
            group.append(pending.popleft())
            size += length
        return group

    @torch.inference_mode()
    def run(
        self, prompt_ids: Sequence[Sequence[int]], layers: Sequence[int], *, keep_cache: bool
    ) -> Prefilled:
        """One packed forward of ``prompt_ids`` (all with the same prefix length).

        With ``keep_cache`` the whole model runs, giving next-token logits and the cache;
        without, the forward stops after the deepest layer in ``layers``.
        """
        prefixes = {self.prefix_length(ids) for ids in prompt_ids}
        if len(prefixes) != 1:
            raise ValueError("a pack must hold prompts that all share the prefix, or none")
        p = prefixes.pop()
        device = self.model.device
        packed = pack([ids[p:] for ids in prompt_ids], p, device)
        cache = DynamicCache(ddp_cache_data=self._cached_prefix()) if p else None
        captured: dict[int, torch.Tensor] = {}
        deepest = max(layers)
        stop = not keep_cache

        def keep(layer: int, hidden: torch.Tensor) -> None:
            captured[layer] = hidden[0, packed.ends].float()
            if stop and layer == deepest:
                raise _StopForward

        def before_first(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            keep(0, args[0] if args else kwargs["hidden_states"])

        def after(layer: int):
            def hook(_module: torch.nn.Module, _args: tuple, output: object) -> None:
                keep(layer, output[0] if isinstance(output, tuple) else output)

            return hook

        wanted = set(layers)
        handles = []
        if 0 in wanted:
            handles.append(
                self._layers[0].register_forward_pre_hook(before_first, with_kwargs=True)
            )
        for layer in wanted - {0, self.n_layers}:
            handles.append(self._layers[layer - 1].register_forward_hook(after(layer)))
        if self.n_layers in wanted:
            handles.append(self._base.norm.register_forward_hook(after(self.n_layers)))
        if keep_cache and cache is None:
            cache = DynamicCache()
        inputs = {
            "input_ids": packed.input_ids,
            "attention_mask": packed.attention_mask,
            "position_ids": packed.position_ids,
            "cache": cache,
            "use_cache": cache is not None,
        }
        logits = None
        with _hooks(handles):
            if keep_cache:
                output = self.model(**inputs, logits_to_keep=packed.ends)
                logits, cache = output.logits[0].float(), output.cache
            else:
                with suppress(_StopForward):
                    self._base(**inputs)
        states = torch.stack([captured[layer] for layer in layers], dim=1)
        return Prefilled(states, logits, cache if keep_cache else None, packed, p)

    def _cached_prefix(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The keys and values of the shared prefix, computed on first use."""
        if self._prefix_kv is None:
            ids = torch.tensor([self.prefix], device=self.model.device)
            output = self._base(input_ids=ids, use_cache=True)
            self._prefix_kv = [(layer.keys, layer.values) for layer in output.cache.layers]
        return self._prefix_kv
