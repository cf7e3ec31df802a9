"""The vLLM teacher: answers from a vLLM server, hidden states from vLLM's own forward where it
reproduces the model's, else from semdistill's prefill; the route is checked and recorded.

Prompts are formatted and tokenised by the transformers teacher and sent as token ids, so
both backends see identical prompts. Before use, the server is compared with the model's own
transformers forward on a few prompts, within the tolerance of the dtype
(:data:`~semdistill.teacher.decoder.backends.TOLERANCE`): a server with the states route must
give every layer's last-token state, one without it the first token's log-probabilities; a
server computing another model is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from typing import Literal

import httpx
import numpy as np
import torch

from semdistill.teacher.base import AnswerSet, check_sampling, clean_answer
from semdistill.teacher.decoder.backends import TOLERANCE, relative_difference
from semdistill.teacher.hf import HFTeacher
from semdistill.teacher.hosted import HostedTeacher
from semdistill.teacher.vllm_client import VLLMServer

CHECK_QUESTIONS = (
    "What is the capital of France?",
    "Who wrote the play Hamlet?",
    "In which year did the city that hosted the first modern Olympic Games also host the "
    "Summer Olympics for the second time?",
)
_TOP_K = 5


@dataclass(frozen=True)
class StatesRoute:
    """Where a vLLM teacher's hidden states come from (``"vllm"``: vLLM's own forward through
    the capture extension; ``"prefill"``: semdistill's transformers prefill), the server, its
    vLLM version, and how far the server was from the model's own forward when checked."""

    states: Literal["vllm", "prefill"]
    url: str
    vllm_version: str | None
    checked: str
    difference: float
    tolerance: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return asdict(self)


def check_server(hf: HFTeacher, server: VLLMServer) -> StatesRoute:
    """The states route of ``server`` after comparing it with ``hf``'s own forward (see the
    module); a ValueError in one line if it computes something else."""
    dtype = hf.model.dtype
    tolerance = TOLERANCE.get(dtype, TOLERANCE[torch.bfloat16])
    ids = [hf.prompt_token_ids(hf.format_prompt(q)) for q in CHECK_QUESTIONS]
    worst = 0.0
    try:
        served = server.states(ids) if server.has_states else None
    except httpx.HTTPError as err:
        raise ValueError(
            f"the vLLM server at {server.url} has the states route but it failed ({err}): "
            "serve the model with plain `vllm serve` to take the states from the prefill"
        ) from err
    with torch.inference_mode():
        for i, prompt in enumerate(ids):
            own = hf.model(
                input_ids=torch.tensor([prompt], device=hf.model.device), output_hidden_states=True
            )
            if served is not None:
                expected = torch.stack([h[0, -1] for h in own.hidden_states]).float().cpu()
                got = torch.from_numpy(served[i])
            else:
                logprobs = server.first_logprobs(prompt, _TOP_K)
                own_logprobs = torch.log_softmax(own.logits[0, -1].double(), -1).cpu()
                got = torch.tensor(list(logprobs.values()))
                expected = own_logprobs[list(logprobs)]
            if got.shape != expected.shape:
                worst = float("inf")
                break
            worst = max(worst, relative_difference(got, expected))
    checked = "every layer's last-token state" if served is not None else "first-token logprobs"
    if not worst <= tolerance:
        raise ValueError(
            f"the vLLM server at {server.url} ({server.model}) differs from {hf.spec.name}'s own "
            f"forward by {worst:.2g} in {checked} (tolerance {tolerance:g} in "
            f"{str(dtype)[6:]}): it serves another model or dtype, so it is not used"
        )
    return StatesRoute(
        "vllm" if served is not None else "prefill",
        server.url,
        server.version,
        checked,
        worst,
        tolerance,
    )


class VLLMTeacher(HostedTeacher):
    """Samples and greedy answers from a vLLM server; prompts, and hidden states where vLLM
    cannot give them, from ``hf``. :attr:`route` says where the states come from.

    Prompt ``i``'s samples are one request of ``n`` choices seeded from ``seeds[i]``;
    ``concurrency`` prompts are in flight at once (vLLM batches them). Answers run to the end
    of sequence or ``max_new_tokens``; only the first non-empty line is kept, as on the engine.
    """

    backend = "vllm"

    def __init__(self, hf: HFTeacher, server: VLLMServer, *, concurrency: int = 32) -> None:
        super().__init__(hf)  # its decoder is the forward of the "prefill" route and of scoring
        self.server = server
        self.concurrency = concurrency
        self.route = check_server(hf, server)

    def _states(self, ids: list[int], prompt: str) -> np.ndarray:
        if self.route.states == "vllm":
            return self.server.states([ids])[0]
        return self.hf.hidden_states([prompt])[0].astype(np.float32)

    def _answer_set(
        self, prompt: str, *, n: int, temperature: float, seed: int, max_new_tokens: int
    ) -> AnswerSet:
        ids = self.hf.prompt_token_ids(prompt)
        (greedy,) = self.server.complete(
            ids, n=1, temperature=0.0, seed=0, max_tokens=max_new_tokens
        )
        samples = self.server.complete(
            ids, n=n, temperature=temperature, seed=_request_seed(seed), max_tokens=max_new_tokens
        )
        states = self._states(ids, prompt)
        return AnswerSet(states, clean_answer(greedy), [clean_answer(s) for s in samples])

    def answer_sets(
        self,
        prompts: list[str],
        *,
        n: int,
        temperature: float,
        seeds: Sequence[int],
        max_new_tokens: int,
    ) -> Iterator[tuple[int, AnswerSet]]:
        """``(index, AnswerSet)`` per prompt as each completes: all-layer float32 states, the
        greedy answer and ``n`` samples fixed by ``seeds[i]``."""
        check_sampling(
            prompts, n=n, temperature=temperature, seeds=seeds, max_new_tokens=max_new_tokens
        )
        settings = {"n": n, "temperature": temperature, "max_new_tokens": max_new_tokens}
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="semdistill-vllm") as pool:
            pending = {
                pool.submit(self._answer_set, prompt, seed=int(seed), **settings): i
                for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True))
            }
            try:
                for done in as_completed(pending):
                    try:
                        answers = done.result()
                    except httpx.HTTPError as err:
                        raise RuntimeError(
                            f"the vLLM server at {self.server.url} failed a request: {err}"
                        ) from err
                    yield pending[done], answers
            finally:
                for future in pending:
                    future.cancel()

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
            [
                clean_answer(text)
                for text in self.server.complete(
                    self.hf.prompt_token_ids(prompt),
                    n=n,
                    temperature=temperature,
                    seed=_request_seed(int(seed)),
                    max_tokens=max_new_tokens,
                )
            ]
            for prompt, seed in zip(prompts, seeds, strict=True)
        ]

    def greedy(self, prompts: list[str], *, max_new_tokens: int) -> list[str]:
        """One cleaned greedy answer per prompt."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        return [
            clean_answer(
                self.server.complete(
                    self.hf.prompt_token_ids(prompt),
                    n=1,
                    temperature=0.0,
                    seed=0,
                    max_tokens=max_new_tokens,
                )[0]
            )
            for prompt in prompts
        ]


def _request_seed(seed: int) -> int:
    """A request's seed from a prompt's: vLLM seeds choice ``j`` with ``seed + j``, so prompts
    with neighbouring seeds get unrelated 32-bit ones."""
    return int(np.random.SeedSequence(seed).generate_state(1)[0])
