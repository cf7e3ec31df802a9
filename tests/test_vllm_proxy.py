"""`serve --upstream`: the guarded endpoint with answers from a vLLM server passes the built-in
endpoint's checks; the same test functions run against the proxy (the openai and LangChain
clients, risk fields and headers, streaming, abstention, the API key, malformed requests).
The vLLM server (``vllm_url``, conftest.py) is started once per session from .venv-vllm;
these tests skip without it."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from fastapi import FastAPI

from semdistill.cli.serve import upstream_of
from semdistill.scoring.policy import Policy
from semdistill.serve import create_app
from serving import serving
from test_openai_api import (
    KEY,
    LIMITS,
    MODEL,
    risks,
    scorer,
    ssd_dir,
    test_a_completion_carries_the_scorers_risk_and_the_greedy_answer,
    test_a_risky_question_is_abstained_with_its_risk,
    test_a_streamed_completion_sends_risk_first_and_verification_last,
    test_a_wrong_or_missing_api_key_gets_401,
    test_invalid_json_gets_an_openai_error,
    test_langchain_reads_the_answer_and_its_risk,
    test_malformed_requests_get_openai_errors,
    test_models_lists_the_base_model,
    test_sampling_choices_seed_and_stop,
    test_standard_fields_at_neutral_values_are_accepted,
    threshold,
)

pytestmark = pytest.mark.slow
REUSED = (
    ssd_dir,
    scorer,
    risks,
    threshold,
    test_a_completion_carries_the_scorers_risk_and_the_greedy_answer,
    test_a_risky_question_is_abstained_with_its_risk,
    test_a_streamed_completion_sends_risk_first_and_verification_last,
    test_a_wrong_or_missing_api_key_gets_401,
    test_invalid_json_gets_an_openai_error,
    test_langchain_reads_the_answer_and_its_risk,
    test_malformed_requests_get_openai_errors,
    test_models_lists_the_base_model,
    test_sampling_choices_seed_and_stop,
    test_standard_fields_at_neutral_values_are_accepted,
)
"""Fixtures and tests of test_openai_api.py, collected here against the proxy: pytest
resolves their fixtures in this module (test_vllm_hostile.py does the same for
test_hostile.py)."""


@pytest.fixture(scope="module")
def server(scorer, threshold: float, vllm_url: str) -> Iterator[tuple[str, FastAPI]]:
    """The proxy to vLLM, abstaining above the median risk, with test_openai_api's key."""
    upstream = upstream_of(scorer, vllm_url, None)
    app = create_app(
        scorer,
        LIMITS,
        policy=Policy(abstain_above_entropy=threshold),
        api_key=KEY,
        upstream=upstream,
    )
    with serving(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server: tuple[str, FastAPI]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key=KEY, max_retries=0, timeout=120)


def test_the_proxy_answers_what_the_upstream_answers(
    client: openai.OpenAI, scorer, risks: dict[str, float], vllm_url: str
) -> None:
    question = min(risks, key=risks.__getitem__)  # answered under the policy
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=8, temperature=0
    )
    ids = scorer.teacher.prompt_token_ids(scorer.teacher.format_prompt(question))
    direct = httpx.post(
        f"{vllm_url}/v1/completions",
        json={"model": MODEL, "prompt": ids, "max_tokens": 8, "temperature": 0},
        timeout=120,
    )
    assert completion.choices[0].message.content == direct.json()["choices"][0]["text"]


def test_an_unreachable_upstream_is_a_502_not_a_crash(scorer) -> None:
    from semdistill.serve.upstream import Upstream

    app = create_app(scorer, LIMITS, upstream=Upstream("http://127.0.0.1:9", MODEL))
    with serving(app) as url:
        reply = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "Who?"}]},
            timeout=120,
        )
    assert reply.status_code == 502 and reply.json()["error"]["type"] == "server_error"


def test_relayed_requests_keep_their_place_in_the_queue(scorer, risks: dict[str, float]) -> None:
    from semdistill.serve.upstream import Upstream

    question = min(risks, key=risks.__getitem__)  # answered under any policy here
    body = {"model": MODEL, "messages": [{"role": "user", "content": question}], "stream": True}
    with socket.socket() as silent:  # an upstream that accepts and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        upstream = Upstream(f"http://127.0.0.1:{silent.getsockname()[1]}", MODEL)
        app = create_app(scorer, LIMITS.model_copy(update={"max_queue": 1}), upstream=upstream)
        with serving(app) as url, httpx.Client(base_url=url, timeout=60) as http:
            with http.stream("POST", "/v1/chat/completions", json=body) as first:
                assert first.status_code == 200  # the risk is out; the relay waits upstream
                busy = http.post("/v1/chat/completions", json={**body, "stream": False})
                assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            # the first client went away: its relay is cancelled and its place freed
            deadline = time.monotonic() + 30
            while http.get("/healthz").json()["load"]["queued"] and time.monotonic() < deadline:
                time.sleep(0.1)
            with http.stream("POST", "/v1/chat/completions", json=body) as again:
                assert again.status_code == 200
