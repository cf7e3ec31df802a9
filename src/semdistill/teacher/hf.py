"""The transformers teacher: hidden states from packed prefill, answer sets from the engine."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

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
from semdistill.teacher.decoder.jobs import TokenScores
from semdistill.teacher.decoder.prefill import Prefiller
from semdistill.teacher.encoding import encode_prompt, template_prefix
from semdistill.teacher.forced import forced_scores
from semdistill.teacher.prompt import chat_prompt, format_prompt

_PROBE_QUESTION = (
    "In which year did the city that hosted the first modern Olympic Games also host the "
    "Summer Olympics for the second time, and which country topped the medal table then, "
    "counting gold medals first, then silver, then bronze?"
)
"""A question whose prompt runs well past the template, to check a forward on (backends)."""


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
        """The token ids of a formatted prompt (see
        :func:`~semdistill.teacher.encoding.encode_prompt`)."""
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
            pack = self.prefiller.next_pack(pending, ids.__getitem__, self.pack_tokens)
            prefilled = self.prefiller.run([ids[i] for i in pack], wanted, keep_cache=False)
            states = prefilled.states.cpu().numpy()[:, columns]
            result[pack] = to_float16(states, chosen)
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

    def greedy_scores(
        self, prompts: list[str], answers: list[str], *, max_new_tokens: int
    ) -> list[TokenScores]:
        """Each greedy answer's token statistics by a teacher-forced forward over its prompt's
        token ids and the answer text's tokens, counted as the decoder counts them
        (:mod:`~semdistill.teacher.forced`)."""
        if len(answers) != len(prompts):
            raise ValueError(f"{len(answers)} answers for {len(prompts)} prompts")
        stops = self.engine.stops
        return [
            forced_scores(
                self.model,
                stops,
                self.prompt_token_ids(prompt),
                self.tokenizer(answer, add_special_tokens=False).input_ids,
                max_new_tokens=max_new_tokens,
                device=self.prefiller.forward.device,
            )
            for prompt, answer in zip(prompts, answers, strict=True)
        ]

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
