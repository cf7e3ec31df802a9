"""The decoder: many prompts' answer rows in one continuously refilled batch.

Collection and the guarded endpoint both run on it. Per step it

- drops the rows of jobs that were cancelled or ran out of time;
- when enough rows are free, prefills the next pack of waiting prompts (packed after the
  cached template prefix, attention kept within each prompt), hands each job its prompt's
  states (the risk comes from that same forward) and starts the rows the job asks for from
  the prefill's logits and keys and values;
- feeds every running row its next token in one forward pass, each row with its own
  temperature, nucleus, uniforms, token budget and stops, and retires the rows that ended.

Rows are independent: a row's tokens depend on its prompt, its settings and its uniforms, not
on other jobs' rows (bit for bit in float32 on the lean forward, see
:mod:`~semdistill.teacher.decoder.lean`; the generic forward decodes each job in a batch of its own,
see :mod:`~semdistill.teacher.decoder.generic`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from semdistill.teacher.decoder.jobs import (
    Completion,
    FinishReason,
    Job,
    RowSpec,
    RowText,
    TokenScores,
)
from semdistill.teacher.decoder.prefill import Prefiller
from semdistill.teacher.decoder.sampling import choose, row_uniforms, token_scores
from semdistill.teacher.decoder.stopping import StopTables

_log = logging.getLogger(__name__)


@dataclass
class EngineClock:
    """Seconds and tokens the engine spent, accumulated over its calls.

    ``prefill_seconds`` covers the packed prefills and starting their rows;
    ``decoded_tokens`` counts row-steps, one per answer token decoded.
    """

    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    prompt_tokens: int = 0
    decoded_tokens: int = 0


@dataclass
class _Ready:
    """A prefilled job waiting for rows."""

    job: Job
    specs: Sequence[RowSpec]
    kv: Any
    logits: torch.Tensor


class _Row:
    """One answer being decoded."""

    def __init__(self, job: Job, index: int, spec: RowSpec) -> None:
        self.job, self.index, self.spec = job, index, spec
        self.steps = 0
        self.text = RowText(spec.stop)
        self.incremental = spec.stream or bool(spec.stop)
        self.uniforms = (
            row_uniforms(spec.seed, spec.max_new_tokens) if spec.temperature > 0 else None
        )
        self.logprob = self.entropy = 0.0  # sums over the tokens of a scored row

    def scores(self) -> TokenScores | None:
        """The statistics of a scored row's tokens so far."""
        if not self.spec.score:
            return None
        return TokenScores(self.logprob, self.steps, self.entropy / max(self.steps, 1))


class Engine:
    """Decodes jobs (:class:`~semdistill.teacher.decoder.jobs.Job`) with a prefiller's model.

    ``max_rows`` bounds the rows decoded together (a job wider than that runs alone),
    ``pack_tokens`` the tokens of one packed
    prefill. Not thread-safe: one thread submits and steps (see
    :class:`~semdistill.teacher.decoder.worker.EngineWorker` for a server).
    """

    def __init__(
        self,
        prefiller: Prefiller,
        tokenizer: PreTrainedTokenizerBase,
        eos_ids: Sequence[int],
        *,
        max_rows: int = 128,
        pack_tokens: int = 1024,
    ) -> None:
        if max_rows < 1 or pack_tokens < 1:
            raise ValueError(
                f"max_rows and pack_tokens must be positive, got {max_rows} and {pack_tokens}"
            )
        self.prefiller = prefiller
        self.forward = prefiller.forward
        self.tokenizer = tokenizer
        self.max_rows = max_rows
        self.pack_tokens = pack_tokens
        self.device = self.forward.device
        self.stops = StopTables.build(tokenizer, eos_ids, self.forward.vocab).to(self.device)
        self.clock = EngineClock()
        self.pending: deque[Job] = deque()
        self._ready: deque[_Ready] = deque()
        self._rows: list[_Row] = []
        self._reset_rows()

    # ------------------------------------------------------------------ state
    def _reset_rows(self) -> None:
        self._rows = []
        self._cache = self.forward.new_cache(self.max_rows)
        empty = torch.empty(0, device=self.device)
        self._token = empty.long()
        self._has_text = empty.bool()
        self._temperature = empty.float()
        self._top_p = empty.double()

    @property
    def rows_in_flight(self) -> int:
        """Answer rows being decoded now."""
        return len(self._rows)

    @property
    def jobs_in_flight(self) -> int:
        """Jobs prefilled and waiting for rows, or decoding."""
        rows, ready = list(self._rows), list(self._ready)  # may be read from other threads
        return len({id(row.job) for row in rows} | {id(r.job) for r in ready})

    @property
    def waiting(self) -> int:
        """Jobs not yet prefilled."""
        return len(self.pending)

    @property
    def busy(self) -> bool:
        """Whether any job is waiting, prefilled or decoding."""
        return bool(self.pending or self._ready or self._rows)

    def submit(self, job: Job) -> None:
        """Queue ``job`` to be prefilled when rows allow."""
        self.pending.append(job)

    # ------------------------------------------------------------------ the loop
    @torch.inference_mode()
    def step(self) -> None:
        """Drop stopped jobs, admit a pack of waiting ones if rows allow, decode one token."""
        self.drop_stopped()
        free = self.max_rows - len(self._rows)
        if self.pending and not self._ready:
            need = max(self.pending[0].width, self.max_rows // 8)
            if not self._rows or free >= min(need, self.max_rows):
                self._prefill_pack()
        while self._ready and (
            not self._rows or len(self._ready[0].specs) <= self.max_rows - len(self._rows)
        ):
            ready = self._ready.popleft()
            try:
                self._admit(ready)
            except Exception as err:  # the batch may be half-changed: start it afresh
                self.fail_all(err)
                _end(ready.job, err)
        if self._rows:
            self._decode()

    @torch.inference_mode()
    def fail_all(self, error: BaseException) -> None:
        """End every prefilled and decoding job with ``error`` (the decode state is reset)."""
        jobs = {id(r.job): r.job for r in self._rows} | {id(r.job): r.job for r in self._ready}
        self._ready.clear()
        self._reset_rows()
        for job in jobs.values():
            _end(job, error)

    @torch.inference_mode()
    def drop_stopped(self) -> None:
        """End the jobs that were cancelled or ran past their deadline, freeing their rows."""
        now = time.monotonic()
        for queue in (self.pending, self._ready):
            kept = []
            for item in queue:
                job = item if isinstance(item, Job) else item.job
                reason = job.stopped(now)
                if reason is None:
                    kept.append(item)
                else:
                    _end(job, reason)
            queue.clear()
            queue.extend(kept)
        reasons = {id(r.job): r.job.stopped(now) for r in self._rows}
        drop = [i for i, r in enumerate(self._rows) if reasons[id(r.job)] is not None]
        if drop:
            ended = {id(self._rows[i].job): self._rows[i].job for i in drop}
            self._remove(drop)
            for key, job in ended.items():
                _end(job, reasons[key])

    # ------------------------------------------------------------------ prefill
    def _prefill_pack(self) -> None:
        """Prefill the next pack of waiting jobs; each says which rows it wants."""
        start = time.perf_counter()
        pack = self.prefiller.next_pack(
            self.pending, lambda job: job.prompt_ids, self.pack_tokens, group=lambda job: job.layers
        )
        ids = [job.prompt_ids for job in pack]
        try:
            prefilled = self.prefiller.run(ids, pack[0].layers, keep_cache=True)
        except Exception as err:
            for job in pack:
                _end(job, err)
            return
        assert prefilled.logits is not None and prefilled.kv is not None
        self.clock.prompt_tokens += sum(len(i) for i in ids) - len(pack) * prefilled.prefix_length
        states = prefilled.states.cpu().numpy()
        for slot, job in enumerate(pack):
            try:
                specs = list(job.prefilled(states[slot]))
            except Exception as err:
                _end(job, err)
                continue
            if specs:
                self._ready.append(_Ready(job, specs, prefilled.kv[slot], prefilled.logits[slot]))
            else:
                _end(job, None)
        self.clock.prefill_seconds += time.perf_counter() - start

    def _admit(self, ready: _Ready) -> None:
        """Start the rows of a prefilled job with their first tokens."""
        start = time.perf_counter()
        count, first = len(ready.specs), len(self._rows)
        self._cache.add(ready.kv, count)
        rows = [_Row(ready.job, i, spec) for i, spec in enumerate(ready.specs)]
        self._rows.extend(rows)
        self._has_text = torch.cat([self._has_text, self._has_text.new_zeros(count)])
        self._temperature = torch.cat(
            [self._temperature, self._temperature.new_tensor([s.temperature for s in ready.specs])]
        )
        self._top_p = torch.cat(
            [self._top_p, self._top_p.new_tensor([s.top_p for s in ready.specs])]
        )
        self._token = torch.cat([self._token, self._token.new_zeros(count)])
        logits = ready.logits.expand(count, -1)
        tokens = self._choose(logits, first)
        self._score(logits, tokens, first)
        self._advance(tokens, first)
        self.clock.prefill_seconds += time.perf_counter() - start

    # ------------------------------------------------------------------ decoding
    def _decode(self) -> None:
        start = time.perf_counter()
        try:
            logits = self.forward.decode(self._token, self._cache)
        except Exception as err:
            self.fail_all(err)
            return
        self.clock.decoded_tokens += len(self._rows)
        tokens = self._choose(logits, 0)
        self._score(logits, tokens, 0)
        self._advance(tokens, 0)
        self.clock.decode_seconds += time.perf_counter() - start

    def _choose(self, logits: torch.Tensor, first: int) -> torch.Tensor:
        """The next token of rows ``first:`` from their ``logits``."""
        rows = self._rows[first:]
        uniforms = torch.tensor(
            [0.0 if r.uniforms is None else r.uniforms[r.steps] for r in rows],
            dtype=torch.float64,
            device=self.device,
        )
        return choose(logits, self._temperature[first:], self._top_p[first:], uniforms)

    def _score(self, logits: torch.Tensor, tokens: torch.Tensor, first: int) -> None:
        """Add the chosen ``tokens``' statistics to the scored rows among rows ``first:``."""
        scored = [i for i, row in enumerate(self._rows[first:]) if row.spec.score]
        if not scored:
            return
        index = torch.tensor(scored, device=logits.device)
        logprob, entropy = token_scores(logits[index], tokens[index])
        for i, lp, h in zip(scored, logprob.tolist(), entropy.tolist(), strict=True):
            row = self._rows[first + i]
            row.logprob += lp
            row.entropy += h

    def _advance(self, tokens: torch.Tensor, first: int) -> None:
        """Rows ``first:`` emit ``tokens``; retire those that ended."""
        self._token[first:] = tokens
        line_over, self._has_text[first:] = self.stops.advance(tokens, self._has_text[first:])
        eos = self.stops.eos[tokens].tolist()
        line_over = line_over.tolist()
        ended: list[tuple[int, FinishReason]] = []
        for offset, token in enumerate(tokens.tolist()):
            i = first + offset
            row = self._rows[i]
            row.steps += 1
            reason: FinishReason | None = "stop" if eos[offset] else None
            if reason is None:
                if row.incremental:
                    if row.text.push(token, self._decode_text):
                        reason = "stop"
                else:
                    row.text.tokens.append(token)
                if row.spec.first_line and line_over[offset]:
                    reason = "stop"
            if reason is None and row.steps >= row.spec.max_new_tokens:
                reason = "length"
            if row.spec.stream:
                piece = row.text.ready(final=reason is not None)
                if piece:
                    _call(row.job, row.job.text, row.index, piece)
            if reason is not None:
                ended.append((i, reason))
        if ended:
            self._retire(ended)

    def _decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _retire(self, ended: list[tuple[int, FinishReason]]) -> None:
        for i, reason in ended:
            row = self._rows[i]
            text = row.text.text if row.incremental else self._decode_text(row.text.tokens)
            completion = Completion(text, reason, row.steps, row.scores())
            _call(row.job, row.job.finished, row.index, completion)
        jobs = {id(self._rows[i].job): self._rows[i].job for i, _ in ended}
        self._remove([i for i, _ in ended])
        still = {id(r.job) for r in self._rows}
        for key, job in jobs.items():
            if key not in still:
                _end(job, None)

    def _remove(self, drop: list[int]) -> None:
        order = self._cache.remove(drop)
        self._rows = [self._rows[i] for i in order.tolist()]
        self._token = self._token[order]
        self._has_text = self._has_text[order]
        self._temperature = self._temperature[order]
        self._top_p = self._top_p[order]
        if not self._rows:
            self._cache.shrink(0)


def _call(job: Job, hook: Callable[..., None], *args: object) -> None:
    """Run a job's hook; if it fails, the job is cancelled (the rest of the batch goes on)."""
    try:
        hook(*args)
    except Exception:
        _log.exception("a job's hook failed; the job is cancelled")
        job.cancel()


def _end(job: Job, error: BaseException | None) -> None:
    """Tell ``job`` it is over; a failure of its hook is logged and goes no further."""
    try:
        job.ended(error)
    except Exception:
        _log.exception("a job's end hook failed")
