"""The generic forward: any causal LM transformers loads, run through its own forward pass.

It serves the engine like the lean forward (:mod:`~semdistill.teacher.decoder.lean`) does, for
models the lean forward is not verified to compute (sliding windows, layers without rotary
positions, soft-caps, multipliers, other layouts, image-text checkpoints' text decoders) and
for models spread over devices with a ``device_map``:

- **prefill** runs each prompt alone, after a copy of the shared prefix's cache, through the
  model's own forward with ``output_hidden_states``, so its states are what the model computes
  (its own masks, positions, windows and caches);
- **decoding** keeps one transformers cache per job: a job's rows start from copies of its
  prompt's cache and all stand at the same position, so each decode step runs one forward of
  the model per job, with no padding and no mask of ours. A row's tokens depend on its own
  job's rows only, never on other jobs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel

from semdistill.teacher.decoder.kvcache import compaction
from semdistill.teacher.decoder.lean import PrefillOutput


@dataclass
class _Group:
    """One job's rows: their cache (batch ``len(rows)``) and the engine's indices of them."""

    cache: DynamicCache
    rows: list[int] = field(default_factory=list)


class GroupCache:
    """The decode batch's caches for the generic forward: one transformers cache per job."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rows = 0
        self.groups: list[_Group] = []

    def add(self, kv: DynamicCache, copies: int) -> None:
        """Append ``copies`` rows continuing the prompt whose cache is ``kv`` (taken over)."""
        if copies > 1:
            kv.batch_repeat_interleave(copies)
        self.groups.append(_Group(kv, list(range(self.rows, self.rows + copies))))
        self.rows += copies

    def remove(self, drop: list[int]) -> torch.Tensor:
        """Remove the rows ``drop``; the new order of the rest, as
        :meth:`~semdistill.teacher.decoder.kvcache.SlotCache.remove` gives it."""
        order, _ = compaction(self.rows, drop)
        new_index = {old: new for new, old in enumerate(order)}
        kept_groups = []
        for group in self.groups:
            keep = [i for i, row in enumerate(group.rows) if row in new_index]
            if not keep:
                continue
            if len(keep) < len(group.rows):
                device = group.cache.layers[0].keys.device
                group.cache.batch_select_indices(torch.tensor(keep, device=device))
            group.rows = [new_index[group.rows[i]] for i in keep]
            kept_groups.append(group)
        self.groups = kept_groups
        self.rows = len(order)
        return torch.tensor(order, dtype=torch.long, device=self.device)

    def shrink(self, length: int) -> None:
        """Nothing to give back: each job's cache is freed with its last row."""


class GenericForward:
    """Prefill and decoding of any causal LM through its own forward (see the module)."""

    def __init__(self, model: PreTrainedModel) -> None:
        config = model.config.get_text_config()
        self.model = model
        self.device = model.get_input_embeddings().weight.device
        self.dtype = model.dtype
        self.n_layers = int(config.num_hidden_layers)
        self.hidden_size = int(config.hidden_size)
        self.vocab = int(model.get_output_embeddings().out_features)

    def new_cache(self, max_rows: int | None = None) -> GroupCache:
        """An empty cache for the decode batch (each job's cache is as large as it needs)."""
        return GroupCache(self.device)

    def _run(self, ids: torch.Tensor, cache: DynamicCache, *, states: bool) -> object:
        return self.model(
            input_ids=ids.to(self.device),
            cache=cache,
            use_cache=True,
            output_hidden_states=states,
            logits_to_keep=1,
        )

    @torch.inference_mode()
    def prefill(
        self,
        suffixes: Sequence[Sequence[int]],
        prefix: DynamicCache | None,
        layers: Sequence[int],
        *,
        full: bool,
    ) -> PrefillOutput:
        """Each of ``suffixes`` after a copy of the ``prefix`` cache, one forward each.

        States ``(prompts, len(layers), hidden)`` float32 as ``output_hidden_states`` gives
        them; with ``full`` also next-token logits and each prompt's cache.
        """
        if not suffixes or min(len(s) for s in suffixes) < 1:
            raise ValueError("every prompt must have at least one token after the shared prefix")
        states, logits, caches = [], [], []
        for suffix in suffixes:
            cache = DynamicCache() if prefix is None else copy.deepcopy(prefix)
            out = self._run(torch.tensor([list(suffix)]), cache, states=True)
            hidden = out.hidden_states
            if len(hidden) != self.n_layers + 1:
                raise ValueError(
                    f"{type(self.model).__name__} reports {len(hidden)} hidden states, "
                    f"not {self.n_layers + 1} (embedding output and one per layer)"
                )
            states.append(torch.stack([hidden[i][0, -1].float().cpu() for i in layers]))
            logits.append(out.logits[0, -1].float().to(self.device))
            caches.append(out.cache)
        return PrefillOutput(
            torch.stack(states).to(self.device),
            torch.stack(logits) if full else None,
            caches if full else None,
        )

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, cache: GroupCache) -> torch.Tensor:
        """Feed each row its next token, one forward per job; ``(rows, vocab)`` float32."""
        logits = torch.empty(cache.rows, self.vocab, dtype=torch.float32, device=self.device)
        for group in cache.groups:
            rows = torch.tensor(group.rows, device=tokens.device)
            out = self._run(tokens[rows][:, None], group.cache, states=False)
            logits[rows.to(self.device)] = out.logits[:, -1].float().to(self.device)
        return logits
