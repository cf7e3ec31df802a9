"""The answer-set engine: per prompt one prefill, then greedy and N sampled answers from its cache.

For a stream of prompts it does exactly the work an answer set needs:

- **one prefill per prompt**, several prompts packed into one sequence whose block-diagonal
  causal mask keeps each prompt to itself (no padding, so a prompt's states do not depend
  on its pack-mates beyond floating-point rounding); it yields the last-token state of every
  layer, the logits of the first answer token and the prompt's KV cache;
- **N + 1 continuations from that cache**, decoded in one batch with the rows of other
  prompts. A row leaves the batch as soon as its answer is over (end of sequence, or the
  newline that ends a short answer's first line) and new prompts are admitted as room frees
  up, so the batch stays full.

A sampled row draws token ``t`` by inverting the CDF of ``softmax(logits / T)`` at a uniform
number fixed by (prompt seed, row, ``t``): exact ancestral sampling with no top-k, top-p or
penalties, and an answer that depends on its prompt and seed alone, not on its batch-mates.
The greedy row takes the argmax, as ``generate(do_sample=False)`` does.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from semdistill.teacher.base import AnswerSet, clean_answer
from semdistill.teacher.prefill import Prefiller
from semdistill.teacher.stopping import StopTables


@dataclass
class EngineClock:
    """Seconds and tokens the engine spent, accumulated over its calls.

    ``prefill_seconds`` covers the packed prefills and starting their rows in the batch;
    ``decoded_tokens`` counts row-steps, one per answer token decoded.
    """

    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    prompt_tokens: int = 0
    decoded_tokens: int = 0


@dataclass
class _Rows:
    """The decode batch: one row per answer being generated, and their KV cache."""

    cache: DynamicCache  # per layer (rows, kv_heads, length, head_dim), left-padded
    mask: torch.Tensor  # (rows, length) bool, False on padding
    token: torch.Tensor  # (rows,) the next token to feed
    position: torch.Tensor  # (rows,) its position id
    prompt: torch.Tensor  # (rows,) which prompt the row answers
    column: torch.Tensor  # (rows,) 0 = greedy, j >= 1 = sample j
    step: torch.Tensor  # (rows,) tokens emitted so far
    has_text: torch.Tensor  # (rows,) whether non-blank text was emitted
    uniforms: torch.Tensor  # (rows, max_new_tokens) float64, the sampling draws
    emitted: torch.Tensor  # (rows, max_new_tokens) token ids

    def __len__(self) -> int:
        return int(self.token.shape[0])

    def select(self, index: torch.Tensor) -> _Rows:
        """The rows at ``index`` (the cache is narrowed in place)."""
        self.cache.batch_select_indices(index)
        return _Rows(
            cache=self.cache,
            mask=self.mask[index],
            **{name: getattr(self, name)[index] for name in _ROW_FIELDS},
        )


_ROW_FIELDS = ("token", "position", "prompt", "column", "step", "has_text", "uniforms", "emitted")


def _concat(parts: list[_Rows]) -> _Rows:
    """One batch of the rows of ``parts``, left-padded to the longest cache that a row needs."""
    starts = [int(p.mask.any(0).to(torch.int8).argmax()) for p in parts]
    length = max(p.mask.shape[1] - start for p, start in zip(parts, starts, strict=True))

    def joined(tensors: list[torch.Tensor], dim: int, value: float | bool = 0) -> torch.Tensor:
        """Each tensor trimmed and left-padded along ``dim`` to ``length``, stacked on rows."""
        out = []
        for tensor, start in zip(tensors, starts, strict=True):
            kept = tensor.narrow(dim, start, tensor.shape[dim] - start)
            widths = [0, 0] * (tensor.dim() - 1 - dim) + [length - kept.shape[dim], 0]
            out.append(F.pad(kept, widths, value=value))
        return torch.cat(out, dim=0)

    layers = range(len(parts[0].cache.layers))
    cache = DynamicCache(  # a generator, so each joined layer is freed once copied
        ddp_cache_data=(
            (
                joined([p.cache.layers[i].keys for p in parts], dim=2),
                joined([p.cache.layers[i].values for p in parts], dim=2),
            )
            for i in layers
        )
    )
    return _Rows(
        cache=cache,
        mask=joined([p.mask for p in parts], dim=1, value=False),
        **{name: torch.cat([getattr(p, name) for p in parts]) for name in _ROW_FIELDS},
    )


@dataclass(frozen=True)
class _Ready:
    """A prefilled prompt waiting for decode rows: its cache and next-token logits."""

    index: int
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    logits: torch.Tensor


@dataclass(frozen=True)
class _Request:
    """What one call asks for, shared by all its rows."""

    prompt_ids: Sequence[Sequence[int]]
    columns: list[int]
    seeds: Sequence[int]
    temperature: float
    max_new_tokens: int
    layers: Sequence[int]


class AnswerEngine:
    """Generates answer sets for a stream of prompts with a model and its tokenizer.

    ``max_rows`` bounds the decode batch (answers in flight) and ``pack_tokens`` the tokens
    of one packed prefill. ``clock`` accumulates where the time went.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        eos_ids: Sequence[int],
        prefiller: Prefiller,
        *,
        max_rows: int = 128,
        pack_tokens: int = 1024,
    ) -> None:
        if max_rows < 1 or pack_tokens < 1:
            raise ValueError(
                f"max_rows and pack_tokens must be positive, got {max_rows} and {pack_tokens}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.prefiller = prefiller
        self.device = model.device
        self.max_rows = max_rows
        self.pack_tokens = pack_tokens
        vocab = int(model.get_output_embeddings().weight.shape[0])
        self.stops = StopTables.build(tokenizer, eos_ids, vocab).to(self.device)
        self.clock = EngineClock()

    def answer_sets(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        n: int,
        greedy: bool,
        temperature: float,
        seeds: Sequence[int],
        max_new_tokens: int,
        layers: Sequence[int],
    ) -> Iterator[tuple[int, AnswerSet]]:
        """``(index, AnswerSet)`` for every prompt, in the order they complete.

        Each set holds the states of ``layers`` (indices into the ``output_hidden_states``
        tuple), the greedy answer if ``greedy`` and ``n`` answers sampled at ``temperature``,
        sample ``j`` of prompt ``i`` drawn with the uniforms of ``(seeds[i], j)``.
        """
        request = _Request(
            prompt_ids=prompt_ids,
            columns=([0] if greedy else []) + list(range(1, n + 1)),
            seeds=seeds,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            layers=layers,
        )
        width = len(request.columns)
        if not width:
            raise ValueError("ask for a greedy answer, samples, or both")
        pending = deque(range(len(prompt_ids)))
        ready: deque[_Ready] = deque()
        states: dict[int, np.ndarray] = {}
        answers: dict[int, dict[int, str]] = {}
        rows: _Rows | None = None
        admit_at = max(width, self.max_rows // 8)
        while pending or ready or rows is not None:
            free = self.max_rows - (0 if rows is None else len(rows))
            if (pending or ready) and (rows is None or free >= admit_at):
                if not ready:
                    ready.extend(self._prefill(pending, request, states))
                count = min(max(1, free // width), len(ready))
                admitted = [ready.popleft() for _ in range(count)]
                rows, finished = self._admit(rows, admitted, request)
            else:
                assert rows is not None
                rows, finished = self._step(rows, request)
            for prompt, column, text in finished:
                answers.setdefault(prompt, {})[column] = text
                if len(answers[prompt]) == width:
                    done = answers.pop(prompt)
                    yield (
                        prompt,
                        AnswerSet(
                            hidden=states.pop(prompt),
                            greedy=done.get(0),
                            samples=[done[j] for j in range(1, n + 1)],
                        ),
                    )

    @torch.inference_mode()
    def _prefill(
        self, pending: deque[int], request: _Request, states: dict[int, np.ndarray]
    ) -> list[_Ready]:
        """Prefill the next pack of ``pending`` prompts (:meth:`Prefiller.next_pack`), keeping
        their states; they wait for rows as :class:`_Ready`."""
        start = time.perf_counter()
        ids = request.prompt_ids
        group = self.prefiller.next_pack(ids, pending, self.pack_tokens)
        prefilled = self.prefiller.run([ids[i] for i in group], request.layers, keep_cache=True)
        assert prefilled.logits is not None
        self.clock.prompt_tokens += int(prefilled.packed.input_ids.shape[1])
        ready = []
        for slot, index in enumerate(group):
            states[index] = prefilled.states[slot].cpu().numpy()
            ready.append(_Ready(index, prefilled.kv(slot), prefilled.logits[slot]))
        self.clock.prefill_seconds += time.perf_counter() - start
        return ready

    @torch.inference_mode()
    def _admit(
        self, rows: _Rows | None, admitted: list[_Ready], request: _Request
    ) -> tuple[_Rows | None, list[tuple[int, int, str]]]:
        """Start the rows of ``admitted`` prompts with their first tokens, join them to ``rows``."""
        start = time.perf_counter()
        width = len(request.columns)
        parts = []
        for prompt in admitted:
            cache = DynamicCache(
                ddp_cache_data=[
                    (k.expand(width, -1, -1, -1), v.expand(width, -1, -1, -1)) for k, v in prompt.kv
                ]
            )
            new = self._new_rows(cache, prompt.index, request, prompt.kv[0][0].shape[2])
            new.token = self._choose(prompt.logits.expand(width, -1), new, request)
            parts.append(new)
        first = _concat(parts)
        new_rows, finished = self._emit(first, first.token, request)
        joined = [part for part in (rows, new_rows) if part is not None]
        self.clock.prefill_seconds += time.perf_counter() - start
        return (_concat(joined) if joined else None), finished

    def _new_rows(self, cache: DynamicCache, prompt: int, request: _Request, length: int) -> _Rows:
        """The rows of one prompt whose cache holds its ``length`` tokens."""
        width, steps = len(request.columns), request.max_new_tokens
        seed = int(request.seeds[prompt])
        uniforms = np.stack(
            [
                np.random.default_rng([seed, j]).random(steps) if j else np.zeros(steps)
                for j in request.columns
            ]
        )

        def filled(value: int) -> torch.Tensor:
            return torch.full((width,), value, dtype=torch.long, device=self.device)

        return _Rows(
            cache=cache,
            mask=torch.ones(width, length, dtype=torch.bool, device=self.device),
            token=filled(0),
            position=filled(length),
            prompt=filled(prompt),
            column=torch.tensor(request.columns, dtype=torch.long, device=self.device),
            step=filled(0),
            has_text=torch.zeros(width, dtype=torch.bool, device=self.device),
            uniforms=torch.from_numpy(uniforms).to(self.device),
            emitted=torch.zeros(width, steps, dtype=torch.long, device=self.device),
        )

    @torch.inference_mode()
    def _step(
        self, rows: _Rows, request: _Request
    ) -> tuple[_Rows | None, list[tuple[int, int, str]]]:
        """Feed every row its next token and emit the token that follows."""
        start = time.perf_counter()
        attention = torch.cat([rows.mask, rows.mask.new_ones(len(rows), 1)], dim=1)
        out = self.model(
            input_ids=rows.token[:, None],
            attention_mask=attention,
            position_ids=rows.position[:, None],
            cache=rows.cache,
            use_cache=True,
        )
        rows.mask = attention
        rows.position = rows.position + 1
        tokens = self._choose(out.logits[:, -1], rows, request)
        self.clock.decoded_tokens += len(rows)
        self.clock.decode_seconds += time.perf_counter() - start
        return self._emit(rows, tokens, request)

    def _choose(self, logits: torch.Tensor, rows: _Rows, request: _Request) -> torch.Tensor:
        """Each row's next token: the argmax for the greedy row, an inverse-CDF draw for samples."""
        chosen = logits.argmax(-1)
        sampled = (rows.column > 0).nonzero().squeeze(1)
        if len(sampled):
            scaled = logits[sampled] / request.temperature
            cdf = torch.softmax(scaled, dim=-1, dtype=torch.float64).cumsum_(-1)
            draw = rows.uniforms[sampled].gather(1, rows.step[sampled, None]) * cdf[:, -1:]
            picks = torch.searchsorted(cdf, draw, right=True).squeeze(1)
            chosen[sampled] = picks.clamp_(max=logits.shape[-1] - 1)
        return chosen

    def _emit(
        self, rows: _Rows, tokens: torch.Tensor, request: _Request
    ) -> tuple[_Rows | None, list[tuple[int, int, str]]]:
        """Record ``tokens``; the rows still going, and ``(prompt, column, answer)`` of the rest."""
        index = torch.arange(len(rows), device=self.device)
        rows.emitted[index, rows.step] = tokens
        over, rows.has_text = self.stops.advance(tokens, rows.has_text)
        rows.step = rows.step + 1
        rows.token = tokens
        over |= rows.step >= request.max_new_tokens
        finished = []
        for r in over.nonzero().squeeze(1).tolist():
            ids = rows.emitted[r, : int(rows.step[r])].tolist()
            text = clean_answer(self.tokenizer.decode(ids, skip_special_tokens=True))
            finished.append((int(rows.prompt[r]), int(rows.column[r]), text))
        if not finished:
            return rows, finished
        kept = (~over).nonzero().squeeze(1)
        return (rows.select(kept) if len(kept) else None), finished
