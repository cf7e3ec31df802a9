"""The llama.cpp teacher: answers sampled by llama.cpp, hidden states from transformers.

llama.cpp gives no all-layer hidden states, so this composite teacher keeps a
transformers copy of the same GGUF for the prefill and uses llama.cpp only to decode.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from semdistill.teacher.base import AnswerSet, check_sampling, clean_answer
from semdistill.teacher.decoder.jobs import TokenScores
from semdistill.teacher.hosted import HostedTeacher

if TYPE_CHECKING:
    from llama_cpp import Llama

    from semdistill.teacher.hf import HFTeacher

# llama.cpp's completion defaults (top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.1
# in some versions) are turned off, so temperature alone shapes the distribution.
PLAIN_SAMPLING = {
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "mirostat_mode": 0,
}


_PROBE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, verbose=False)
llm.eval(llm.tokenize(b"The capital of France is"))
print("ok")
"""
INSTALL_HINT = "the llama.cpp backend needs llama-cpp-python: pip install 'semdistill[llama]'"


def llama_cpp_available() -> bool:
    """Whether the optional llama-cpp-python package can be imported."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def probe_llama_cpp(path: Path, timeout: float = 600.0) -> None:
    """Evaluate a few tokens of the GGUF at ``path`` with llama.cpp in a child process.

    A llama.cpp build can crash natively on a CPU it was not built for (a segfault in
    ``llama_decode`` on AMX machines was seen), which would take this process down with it;
    the child takes the crash instead, and this raises an error that names the problem.
    """
    if not llama_cpp_available():
        raise ImportError(INSTALL_HINT)
    try:
        result = subprocess.run(
            [sys.executable, "-c", _PROBE, str(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(
            f"llama.cpp did not evaluate {path} within {timeout:.0f} s in a probe process; "
            "use --backend transformers"
        ) from err
    if result.returncode == 0:
        return
    if result.returncode < 0:
        cause = f"was killed by {signal.Signals(-result.returncode).name}"
    else:
        cause = f"failed (exit {result.returncode}): {result.stderr.strip()[-500:]}"
    raise RuntimeError(
        f"llama.cpp {cause} evaluating {path} in a probe process on this CPU, so it is not "
        "used: use --backend transformers (or rebuild llama-cpp-python for this CPU)"
    )


def _open_llama(path: Path, *, n_ctx: int, n_threads: int | None) -> Llama:
    """The llama.cpp model at ``path``; ``n_threads`` (default: half the cores) for every phase.

    llama.cpp threads wait on each other by spinning, so when other work holds the cores a
    descheduled thread stalls the rest (``benchmarks/bench_collect.py`` measures it). Prompt
    evaluation therefore gets the same thread count as decoding, not llama-cpp-python's
    default of every core. Set ``OMP_WAIT_POLICY=PASSIVE`` before torch loads (the
    ``semdistill`` command does) so torch's idle OpenMP threads do not spin against it.
    """
    threads = n_threads if n_threads is not None else max(1, (os.cpu_count() or 2) // 2)
    try:
        from llama_cpp import Llama
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )


class LlamaCppTeacher(HostedTeacher):
    """Samples and greedy answers from llama.cpp; prompt and hidden states from ``hf``.

    Prompts are tokenised by the transformers tokenizer and passed to llama.cpp as token
    ids, so both backends see identical inputs. Every answer to a prompt starts from the
    same KV cache, the prompt minus its last token evaluated in one pass from an empty
    cache, and evaluates that last token alone; so an answer depends only on the prompt
    and its seed, and consecutive calls for one prompt (greedy, then samples) evaluate the
    prompt once.
    """

    backend = "llamacpp"

    def __init__(
        self, hf: HFTeacher, gguf_path: Path, *, n_ctx: int = 2048, n_threads: int | None = None
    ) -> None:
        super().__init__(hf)
        self._llm = _open_llama(gguf_path, n_ctx=n_ctx, n_threads=n_threads)
        # Free the native model before interpreter teardown, not in a late __del__.
        weakref.finalize(self, self._llm.close)

    def answer_sets(
        self,
        prompts: list[str],
        *,
        n: int,
        temperature: float,
        seeds: Sequence[int],
        max_new_tokens: int,
    ) -> Iterator[tuple[int, AnswerSet]]:
        """Per prompt in order: all-layer states, the greedy answer and ``n`` samples."""
        check_sampling(
            prompts, n=n, temperature=temperature, seeds=seeds, max_new_tokens=max_new_tokens
        )
        states = self.hf.hidden_states(prompts)
        for index, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
            greedy = self.greedy([prompt], max_new_tokens=max_new_tokens)[0]
            samples = self.sample(
                [prompt], n=n, temperature=temperature, seeds=[seed], max_new_tokens=max_new_tokens
            )[0]
            yield index, AnswerSet(states[index].astype(np.float32), greedy, samples)

    def greedy_scores(
        self, prompts: list[str], answers: list[str], *, max_new_tokens: int
    ) -> list[TokenScores]:
        """Each greedy answer's token statistics, teacher-forced through the transformers
        model (llama.cpp's answer sets carry none)."""
        return self.hf.greedy_scores(prompts, answers, max_new_tokens=max_new_tokens)

    def _prime(self, tokens: list[int]) -> None:
        """Hold ``tokens[:-1]`` in the KV cache, evaluating it unless it is there already."""
        prefix = tokens[:-1]
        held = self._llm.n_tokens >= len(prefix) and (
            self._llm.input_ids[: len(prefix)].tolist() == prefix
        )
        if not held:
            self._llm.reset()
            self._llm.eval(prefix)

    def _complete(
        self, tokens: list[int], *, temperature: float, seed: int, max_tokens: int
    ) -> str:
        # create_completion keeps the cached common prefix and evaluates the rest, at
        # least the last prompt token, so after _prime it evaluates exactly that token.
        self._prime(tokens)
        # Only the first line is kept (clean_answer), so decoding stops at a newline.
        result = self._llm.create_completion(
            tokens,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            stop=["\n"],
            **PLAIN_SAMPLING,
        )
        return clean_answer(result["choices"][0]["text"])

    def sample(
        self,
        prompts: list[str],
        *,
        n: int,
        temperature: float,
        seeds: Sequence[int],
        max_new_tokens: int,
    ) -> list[list[str]]:
        """``n`` cleaned answers per prompt by plain sampling at ``temperature``.

        Answer ``j`` of a prompt uses the ``j``-th value of ``SeedSequence(seed)``.
        """
        check_sampling(
            prompts, n=n, temperature=temperature, seeds=seeds, max_new_tokens=max_new_tokens
        )
        answers = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            tokens = self.hf.prompt_token_ids(prompt)
            sample_seeds = np.random.SeedSequence(int(seed)).generate_state(n)
            answers.append(
                [
                    self._complete(
                        tokens, temperature=temperature, seed=int(s), max_tokens=max_new_tokens
                    )
                    for s in sample_seeds
                ]
            )
        return answers

    def greedy(self, prompts: list[str], *, max_new_tokens: int) -> list[str]:
        """One cleaned greedy answer per prompt."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        answers = []
        for prompt in prompts:
            answers.append(
                self._complete(
                    self.hf.prompt_token_ids(prompt),
                    temperature=0.0,
                    seed=0,
                    max_tokens=max_new_tokens,
                )
            )
        return answers
