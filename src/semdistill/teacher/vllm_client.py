"""A vLLM server over HTTP: one the user runs (``vllm serve``), or one started here from the
Python of a venv that has vLLM (``states_server.py``: ``vllm serve`` plus a states route).

Prompts go to vLLM as token ids, so vLLM sees exactly the ids the transformers teacher would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import numpy as np

SERVER_SCRIPT = Path(__file__).resolve().parent / "vllm_server" / "states_server.py"
STATES_ROUTE = "/semdistill/states"
PLAIN_SAMPLING = {
    "top_p": 1.0,
    "top_k": -1,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}
"""Sampling settings that leave the model's distribution as it is (vLLM otherwise takes a
model's generation_config defaults), so temperature alone shapes it."""


class VLLMServer:
    """A running vLLM OpenAI server at ``url``: the model it serves, its version, completions
    of token-id prompts, and every layer's last-prompt-token states where it has the route."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout_s: float = 600.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, timeout=timeout_s, headers=headers)
        try:
            models = self.http.get("/v1/models")
            models.raise_for_status()
            self.model = str(models.json()["data"][0]["id"])
            version = self.http.get("/version")
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as err:
            raise ValueError(f"no vLLM server answers at {self.url}: {err}") from err
        self.version = version.json().get("version") if version.is_success else None
        probe = self.http.post(STATES_ROUTE, json={"prompts": []})
        self.has_states = probe.status_code != 404
        self._stop: Callable[[], object] | None = None

    def close(self) -> None:
        """Close the connections, and stop the server if it was started here."""
        self.http.close()
        if self._stop is not None:
            self._stop()

    def complete(
        self, ids: Sequence[int], *, n: int, temperature: float, seed: int, max_tokens: int
    ) -> list[str]:
        """``n`` completions of the prompt ``ids`` (greedy at temperature 0), seeded."""
        reply = self.http.post(
            "/v1/completions",
            json={
                "model": self.model,
                "prompt": list(ids),
                "n": n,
                "temperature": temperature,
                "seed": seed,
                "max_tokens": max_tokens,
                **PLAIN_SAMPLING,
            },
        )
        reply.raise_for_status()
        choices = sorted(reply.json()["choices"], key=lambda choice: choice["index"])
        return [choice["text"] for choice in choices]

    def first_logprobs(self, ids: Sequence[int], k: int) -> dict[int, float]:
        """The log-probabilities of the ``k`` likeliest first tokens after the prompt ``ids``."""
        reply = self.http.post(
            "/v1/completions",
            json={
                "model": self.model,
                "prompt": list(ids),
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": k,
                "return_tokens_as_token_ids": True,
            },
        )
        reply.raise_for_status()
        (top,) = reply.json()["choices"][0]["logprobs"]["top_logprobs"]
        return {int(token.removeprefix("token_id:")): float(lp) for token, lp in top.items()}

    def states(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        """Every layer's last-token state of each prompt, ``(n, layers + 1, hidden)`` float32,
        from vLLM's own forward (only where :attr:`has_states`)."""
        reply = self.http.post(STATES_ROUTE, json={"prompts": [list(p) for p in prompts]})
        reply.raise_for_status()
        return np.asarray(reply.json()["states"], dtype=np.float32)


def start_vllm_server(
    python: str | os.PathLike,
    model_dir: str,
    *,
    dtype: str,
    served_name: str,
    port: int,
    max_model_len: int = 4096,
    timeout_s: float = 900.0,
) -> VLLMServer:
    """``states_server.py`` started with ``python`` on ``model_dir`` on a loopback ``port``
    for prompts and answers of up to ``max_model_len`` tokens, once it answers; it is stopped
    by :meth:`VLLMServer.close`, or at exit.

    Raises a ValueError naming ``python`` if it cannot run vLLM, with the server log's tail.
    """
    executable = Path(python)
    if not executable.is_file():
        raise FileNotFoundError(f"--vllm-python {executable} does not exist")
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"semdistill-vllm-{port}.log"
    env = {"VLLM_CPU_KVCACHE_SPACE": "2", **os.environ}
    args = [str(executable), str(SERVER_SCRIPT), "--model", model_dir, "--dtype", dtype]
    args += ["--host", "127.0.0.1", "--port", str(port), "--served-model-name", served_name]
    # Eager: the capture's hooks run in vLLM's own forward. No chunked prefill: vLLM 0.32 on
    # CPU fails a seeded request whose prefill is split ("CPU Generator does not use offset").
    args += ["--seed", "0", "--enforce-eager", "--enable-prefix-caching"]
    args += ["--no-enable-chunked-prefill", "--max-model-len", str(max_model_len)]
    with log.open("w") as sink:
        process = subprocess.Popen(
            args, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    stop = weakref.finalize(process, _stop, process)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise ValueError(
                f"--vllm-python {executable} could not start vLLM (exit {process.returncode}): "
                + " | ".join(tail)
            )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).is_success:
                server = VLLMServer(f"http://127.0.0.1:{port}")
                server._stop = stop
                return server
        except httpx.TransportError:
            pass
        time.sleep(1.0)
    stop()
    raise ValueError(
        f"vLLM started by {executable} did not answer within {timeout_s:.0f} s ({log})"
    )


def _stop(process: subprocess.Popen) -> None:
    """End the server and the engine processes it started (its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
