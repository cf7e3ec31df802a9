"""The OpenAI-compatible guarded endpoint: the real ``openai`` client against a real server."""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from fastapi import FastAPI

from semdistill.scoring.calibration import fit_calibration
from semdistill.scoring.policy import ABSTAIN_MESSAGE, Policy
from semdistill.serve import ServiceLimits, create_app, exposure_warning
from semdistill.teacher.base import clean_answer
from serving import free_port, serving, wait_healthy
from tiny_ssd import LAYER, QUESTIONS, Built, copy_of

KEY = "test-key"
MODEL = "smollm2-135m"
LIMITS = ServiceLimits(max_chars=200, max_new_tokens=16, max_choices=3, batch_window_ms=50)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ssd_dir(tmp_path_factory: pytest.TempPathFactory, tiny_ssd_built: Built) -> Path:
    return copy_of(tiny_ssd_built, tmp_path_factory.mktemp("ssd-openai")).directory


@pytest.fixture(scope="module")
def scorer(ssd_dir: Path):
    from semdistill import Scorer

    loaded = Scorer.load(ssd_dir)
    rng = np.random.default_rng(0)
    entropy = rng.normal(-4, 1.5, size=100)
    loaded.calibration = fit_calibration(entropy, entropy + rng.normal(size=100) > -4)
    return loaded


@pytest.fixture(scope="module")
def risks(scorer) -> dict[str, float]:
    """Each test question's risk, scored alone."""
    return {question: float(scorer.risk([question])[0]) for question in QUESTIONS}


@pytest.fixture(scope="module")
def threshold(risks: dict[str, float]) -> float:
    return float(np.median(list(risks.values())))


@pytest.fixture(scope="module")
def server(scorer, threshold: float) -> Iterator[tuple[str, FastAPI]]:
    """A guarded server that abstains above the median risk of the test questions."""
    policy = Policy(abstain_above_entropy=threshold)
    app = create_app(scorer, LIMITS, policy=policy, api_key=KEY)
    with serving(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server: tuple[str, FastAPI]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key=KEY, max_retries=0, timeout=120)


def _lowest(risks: dict[str, float]) -> str:
    return min(risks, key=risks.__getitem__)


def _highest(risks: dict[str, float]) -> str:
    return max(risks, key=risks.__getitem__)


def test_models_lists_the_base_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).owned_by == "semdistill"


def test_a_completion_carries_the_scorers_risk_and_the_greedy_answer(
    client: openai.OpenAI, scorer, risks: dict[str, float]
) -> None:
    question = _lowest(risks)
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "ignored: the SSD's prompt is used"},
            {"role": "user", "content": [{"type": "text", "text": question}]},
        ],
        temperature=0,
        max_tokens=16,
    )
    prompt = scorer.teacher.format_prompt(question)
    (choice,) = completion.choices
    assert (
        clean_answer(choice.message.content)
        == scorer.teacher.greedy([prompt], max_new_tokens=16)[0]
    )
    assert choice.finish_reason in ("stop", "length")
    ssd = completion.semdistill
    assert ssd["question"] == question and ssd["layer"] == LAYER
    assert abs(ssd["risk_entropy"] - scorer.risk([question])[0]) < 1e-3
    assert ssd["risk_probability"] == pytest.approx(
        scorer.calibration.probability([ssd["risk_entropy"]])[0]
    )
    assert ssd["verdict"] == "answered" and ssd["policy"]["rule"].startswith("risk_entropy >")
    (verification,) = ssd["verification"]
    answer = clean_answer(choice.message.content)
    assert verification["answer"] == answer
    assert verification["log_likelihood"] == pytest.approx(
        scorer.verify(question, [answer])[0], abs=5e-3
    )  # the same student on the same state, up to the rounding of two prefill paths
    assert completion.usage.prompt_tokens == len(scorer.teacher.prompt_token_ids(prompt))
    assert completion.model == MODEL and completion.object == "chat.completion"


def test_guarded_verification_is_the_scorers(scorer) -> None:
    """The answers of a completion score as the scorer's ``verify_many`` scores them, given
    the same prompt states: first lines only, None for an empty answer."""
    from semdistill.serve.guarded import GuardedModel

    questions = ["Who wrote Hamlet?", "What is two plus two?"]
    raw = [["Shakespeare\nand more", "  ", "a cheese"], ["4"]]
    states = scorer.states(questions)
    guarded = GuardedModel(scorer, Policy()).verify(list(zip(states, raw, strict=True)))
    cleaned = [["Shakespeare", "a cheese"], ["4"]]
    expected = scorer.verify_many(list(zip(questions, cleaned, strict=True)))
    assert guarded[0][1] is None
    assert [guarded[0][0], guarded[0][2]] == expected[0].tolist()
    assert guarded[1] == expected[1].tolist()


def test_a_streamed_completion_sends_risk_first_and_verification_last(
    client: openai.OpenAI, server: tuple[str, FastAPI], risks: dict[str, float]
) -> None:
    question = _lowest(risks)
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": 12,
    }
    whole = client.chat.completions.create(**request)
    chunks = list(
        client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
    )
    first, last = chunks[0], chunks[-1]
    assert first.semdistill["risk_entropy"] == pytest.approx(whole.semdistill["risk_entropy"])
    assert first.semdistill["verification"] is None
    assert first.choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == whole.choices[0].finish_reason and set(reasons[:-1]) == {None}
    assert (
        last.choices == [] and last.semdistill["verification"] == whole.semdistill["verification"]
    )
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    url = server[0]
    with httpx.stream(
        "POST",
        f"{url}/v1/chat/completions",
        json={**request, "stream": True},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=120,
    ) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in reply.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"


def test_a_risky_question_is_abstained_with_its_risk(
    client: openai.OpenAI, risks: dict[str, float], threshold: float
) -> None:
    question = _highest(risks)
    messages = [{"role": "user", "content": question}]
    completion = client.chat.completions.create(model=MODEL, messages=messages, n=2)
    assert [c.finish_reason for c in completion.choices] == ["abstained", "abstained"]
    assert completion.choices[0].message.content == ABSTAIN_MESSAGE
    ssd = completion.semdistill
    assert ssd["verdict"] == "abstained" and ssd["verification"] is None
    assert ssd["risk_entropy"] == pytest.approx(risks[question], abs=1e-3) and (
        ssd["risk_entropy"] > threshold
    )
    assert completion.usage.completion_tokens == 0
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True))
    assert chunks[0].semdistill["verdict"] == "abstained"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        ABSTAIN_MESSAGE
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "abstained"


def test_flag_only_answers_and_flags(scorer, risks: dict[str, float], threshold: float) -> None:
    policy = Policy(abstain_above_entropy=threshold, flag_only=True)
    with serving(create_app(scorer, LIMITS, policy=policy)) as url:
        flagged = openai.OpenAI(base_url=f"{url}/v1", api_key="unused").chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": _highest(risks)}],
            max_tokens=4,
            temperature=0,
        )
    assert flagged.semdistill["verdict"] == "flagged"
    assert flagged.choices[0].finish_reason in ("stop", "length")
    assert flagged.semdistill["policy"]["action"] == "flag"


def test_sampling_choices_seed_and_stop(client: openai.OpenAI, risks: dict[str, float]) -> None:
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": _lowest(risks)}],
        "n": 3,
        "seed": 7,
        "temperature": 1.0,
        "max_tokens": 8,
    }
    one = client.chat.completions.create(**request)
    again = client.chat.completions.create(**request)
    assert [c.message.content for c in one.choices] == [c.message.content for c in again.choices]
    assert [c.index for c in one.choices] == [0, 1, 2]
    assert len(one.semdistill["verification"]) == 3
    stopped = client.chat.completions.create(**{**request, "n": 1, "stop": [" "]})
    assert " " not in stopped.choices[0].message.content
    assert stopped.choices[0].finish_reason == "stop"


def test_a_wrong_or_missing_api_key_gets_401(server: tuple[str, FastAPI]) -> None:
    url = server[0]
    wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi?"}])
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"
    assert caught.value.body["type"] == "invalid_request_error"
    with httpx.Client(base_url=url, timeout=60) as http:
        missing = http.get("/v1/models")
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        assert missing.headers["www-authenticate"] == "Bearer"
        assert http.post("/v1/risk", json={"prompts": ["Hi?"]}).status_code == 401
        assert http.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("request_body", "error", "param", "message"),
    [
        ({"messages": []}, openai.BadRequestError, "messages", "at least 1"),
        ({"messages": [{"role": "system", "content": "x"}]}, openai.BadRequestError, "messages",
         "no non-empty user message"),
        ({"n": 4}, openai.BadRequestError, "n", "limit of 3"),
        ({"max_tokens": 17}, openai.BadRequestError, "max_tokens", "limit of 16"),
        ({"temperature": 3}, openai.BadRequestError, "temperature", "less than or equal"),
        ({"logprobs": True}, openai.BadRequestError, "logprobs", "not supported"),
        ({"frequency_penalty": 0.5}, openai.BadRequestError, "frequency_penalty",
         "not supported"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, openai.BadRequestError,
         "tools", "not supported"),
        ({"response_format": {"type": "json_object"}}, openai.BadRequestError,
         "response_format", "text response format"),
        ({"no_such_field": 1}, openai.BadRequestError, "no_such_field", "Extra inputs"),
        ({"model": "gpt-4o"}, openai.NotFoundError, "model", "does not exist"),
        ({"messages": [{"role": "user", "content": "x" * 201}]}, openai.BadRequestError,
         "messages", "max_chars"),
    ],
)  # fmt: skip
def test_malformed_requests_get_openai_errors(
    client: openai.OpenAI, request_body: dict, error: type, param: str, message: str
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi?"}], **request_body}
    extra = {key: body.pop(key) for key in ("logprobs", "no_such_field") if key in body}
    with pytest.raises(error) as caught:
        client.chat.completions.create(**body, extra_body=extra or None)
    assert caught.value.body["param"] == param
    assert message in caught.value.body["message"]


def test_invalid_json_gets_an_openai_error(server: tuple[str, FastAPI]) -> None:
    with httpx.Client(base_url=server[0], timeout=60) as http:
        reply = http.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"},
        )
        assert reply.status_code == 400
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
        # The older routes keep FastAPI's error shape.
        old = http.post(
            "/v1/risk", json={"prompts": []}, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert old.status_code == 422 and "detail" in old.json()


def test_concurrent_completions_keep_each_prompts_risk(
    server: tuple[str, FastAPI], risks: dict[str, float]
) -> None:
    questions = QUESTIONS[:6]

    async def together() -> list[float]:
        async with openai.AsyncOpenAI(
            base_url=f"{server[0]}/v1", api_key=KEY, max_retries=0, timeout=300
        ) as aclient:
            replies = await asyncio.gather(
                *(
                    aclient.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": q}], max_tokens=2
                    )
                    for q in questions
                )
            )
        return [reply.semdistill["risk_entropy"] for reply in replies]

    np.testing.assert_allclose(asyncio.run(together()), [risks[q] for q in questions], atol=0.01)


def test_policy_needs_what_it_reads(scorer) -> None:
    uncalibrated = copy.copy(scorer)
    uncalibrated.calibration = None
    with pytest.raises(ValueError, match="not calibrated"):
        Policy(abstain_above=0.5).check(uncalibrated)
    Policy(abstain_above=0.5).check(scorer)


def test_exposure_warning() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert exposure_warning(host, None) is None
    assert "without an API key" in exposure_warning("0.0.0.0", None)
    assert exposure_warning("0.0.0.0", "key") is None


# ---------------------------------------------------------------------- risk-controlled CLI
def _labelled_store(path: Path, scorer, risks: dict[str, float]) -> None:
    """A store of the test questions, 20 copies each, wrong exactly on the riskier half."""
    from semdistill.store import CollectConfig, Collection, Store
    from semdistill.teacher.prompt import PROMPT_TEMPLATE, PROMPT_VERSION

    teacher, artifacts = scorer.teacher, scorer.artifacts
    prompts = [teacher.format_prompt(q) for q in QUESTIONS]
    states = teacher.hidden_states(prompts, layers=[LAYER])[:, 0]
    riskier = np.array(list(risks.values())) > np.median(list(risks.values()))
    copies, n, dim = 20, 20 * len(QUESTIONS), artifacts.embedder_dim
    index = np.tile(np.arange(len(QUESTIONS)), copies)
    replica = np.repeat(np.arange(copies), len(QUESTIONS))  # a replica's rows share a split
    hidden = np.zeros((n, teacher.n_layers + 1, teacher.hidden_size), dtype=np.float16)
    hidden[:, LAYER] = states[index]
    config = CollectConfig(
        model=artifacts.teacher, backend="transformers", dtype=artifacts.dtype,
        prompt_template=PROMPT_TEMPLATE, prompt_version=PROMPT_VERSION, n_samples=1,
        temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=8, seed=0,
        embedder=artifacts.embedder, embedding_dim=dim, judge="match", questions="unit",
        limit=None, question_seed=0, split_seed=0, n_layers=teacher.n_layers,
        hidden_size=teacher.hidden_size,
    )  # fmt: skip
    text = np.array([f"q{i}" for i in range(n)], dtype=object)
    Store.create(path, config).append(
        Collection(
            ids=text,
            splits=np.array(["train", "validation", "test"], dtype=object)[replica % 3],
            sources=np.array(["unit"] * n, dtype=object),
            questions=np.array(QUESTIONS, dtype=object)[index],
            prompts=np.array(prompts, dtype=object)[index],
            references=[["a"]] * n,
            options=[None] * n,
            correct_option=np.full(n, -1, dtype=np.int32),
            hidden=hidden,
            default_answer=text,
            samples=[["a"]] * n,
            default_embedding=np.zeros((n, dim), np.float32),
            sample_embeddings=np.zeros((n, 1, dim), np.float32),
            option_embeddings=[None] * n,
            default_correct=~riskier[index],
            sample_correct=np.ones((n, 1), bool),
            judges=np.array(["match"] * n, dtype=object),
        )
    )


def test_serve_command_with_a_target_error(
    ssd_dir: Path, scorer, risks: dict[str, float], tmp_path: Path
) -> None:

    _labelled_store(tmp_path / "store", scorer, risks)
    port = free_port()
    command = [str(Path(sys.executable).with_name("semdistill")), "serve", str(ssd_dir)]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--target-error", "0.2", "--calibration-collection",
         str(tmp_path / "store"), "--risk-report", str(tmp_path / "rc.json")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "SEMDISTILL_API_KEY": KEY},
    )  # fmt: skip
    try:
        health = wait_healthy(port, process)
        assert health["policy"]["target_error"] == 0.2
        assert "guarantee: error among answered <= 0.2" in health["policy"]["guarantee"]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
        verdicts = {}
        for question in (_lowest(risks), _highest(risks)):
            reply = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=2
            )
            verdicts[question] = reply.semdistill["verdict"]
        assert verdicts == {_lowest(risks): "answered", _highest(risks): "abstained"}
        assert (tmp_path / "rc.json").is_file() and (tmp_path / "rc.png").is_file()
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert "risk control: answer when risk_entropy <=" in output


# ---------------------------------------------------------------------- clients and batching
def test_standard_fields_at_neutral_values_are_accepted(client: openai.OpenAI) -> None:
    reply = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Who wrote Hamlet?"}],
        max_tokens=4,
        temperature=0,
        frequency_penalty=0,
        presence_penalty=0,
        logprobs=False,
        response_format={"type": "text"},
        parallel_tool_calls=True,
        tool_choice="none",
        metadata={"team": "qa"},
        store=False,
        user="someone",
        service_tier="auto",
        stream_options=None,
    )
    assert reply.status_code == 200
    completion = reply.parse()
    assert float(reply.headers["x-semdistill-risk-entropy"]) == pytest.approx(
        completion.semdistill["risk_entropy"], rel=1e-5
    )
    assert reply.headers["x-semdistill-verdict"] == completion.semdistill["verdict"]
    assert float(reply.headers["x-semdistill-risk-probability"]) == pytest.approx(
        completion.semdistill["risk_probability"], rel=1e-5
    )


def test_langchain_reads_the_answer_and_its_risk(
    server: tuple[str, FastAPI], risks: dict[str, float]
) -> None:
    from langchain_openai import ChatOpenAI

    question = _lowest(risks)
    chat = ChatOpenAI(
        base_url=f"{server[0]}/v1",
        api_key=KEY,
        model=MODEL,
        temperature=0,
        max_tokens=8,
        include_response_headers=True,
        max_retries=0,
    )
    message = chat.invoke(question)
    headers = message.response_metadata["headers"]
    assert message.content.strip()
    assert float(headers["x-semdistill-risk-entropy"]) == pytest.approx(risks[question], abs=0.01)
    assert headers["x-semdistill-verdict"] == "answered"
    chunks = list(chat.stream(question))
    assert "".join(str(c.content) for c in chunks) == message.content
    streamed = [c.response_metadata["headers"] for c in chunks if "headers" in c.response_metadata]
    assert streamed and float(streamed[0]["x-semdistill-risk-entropy"]) == pytest.approx(
        risks[question], abs=0.01
    )


def _health(url: str) -> dict:
    return httpx.get(f"{url}/healthz", timeout=30).json()


def test_answers_do_not_depend_on_their_batch_mates(
    server: tuple[str, FastAPI], risks: dict[str, float]
) -> None:
    """Greedy and seeded sampled answers, and the risk, alone and among 15 other requests."""
    url = server[0]
    low = [q for q in risks if risks[q] <= np.median(list(risks.values()))]  # answered

    def request(question: str, **settings: object) -> dict:
        return {
            "model": MODEL,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 12,
            **settings,
        }

    greedy = request(low[0], temperature=0)
    seeded = request(low[1], temperature=1.0, seed=5, n=2)
    others = [request(q, temperature=1.0, n=1) for q in list(risks)[:14]]

    async def send(bodies: list[dict]) -> list[dict]:
        async with httpx.AsyncClient(
            base_url=url, timeout=300, headers={"Authorization": f"Bearer {KEY}"}
        ) as http:
            replies = await asyncio.gather(
                *(http.post("/v1/chat/completions", json=b) for b in bodies)
            )
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
        return [r.json() for r in replies]

    alone = asyncio.run(send([greedy])) + asyncio.run(send([seeded]))
    together = asyncio.run(send([greedy, *others, seeded]))
    for single, crowded in ((alone[0], together[0]), (alone[1], together[-1])):
        texts = [c["message"]["content"] for c in single["choices"]]
        assert texts == [c["message"]["content"] for c in crowded["choices"]]
        assert (
            abs(single["semdistill"]["risk_entropy"] - crowded["semdistill"]["risk_entropy"]) < 0.01
        )
    assert _health(url)["load"]["rows_in_flight"] == 0


def test_a_disconnected_stream_frees_its_rows(scorer) -> None:
    limits = ServiceLimits(max_new_tokens=200, max_choices=4, batch_window_ms=5)
    with serving(create_app(scorer, limits)) as url:
        before = _health(url)["load"]["decoded_tokens"]
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Tell me a long story about dragons."}],
            "max_tokens": 200,
            "n": 4,
            "temperature": 2.0,  # flat enough that no row stops early
            "seed": 1,
            "stream": True,
        }
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as reply:
            lines = reply.iter_lines()
            for _ in range(8):  # the start, then some text
                next(lines)
            assert _health(url)["load"]["rows_in_flight"] == 4
        deadline = time.monotonic() + 10
        while _health(url)["load"]["rows_in_flight"] and time.monotonic() < deadline:
            time.sleep(0.05)
        load = _health(url)["load"]
        assert load["rows_in_flight"] == 0 and load["requests_in_flight"] == 0
        assert load["decoded_tokens"] - before < 4 * 200 / 2  # stopped well before the end


def test_a_full_queue_gets_429_and_a_late_request_503(scorer) -> None:
    limits = ServiceLimits(max_new_tokens=64, max_rows=1, max_queue=1, request_timeout_s=30)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Who?"}], "max_tokens": 64}
    with serving(create_app(scorer, limits)) as url:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=120) as http:
                return await asyncio.gather(
                    *(http.post("/v1/chat/completions", json=body) for _ in range(6))
                )

        statuses = sorted(r.status_code for r in asyncio.run(burst()))
        assert 200 in statuses and 429 in statuses and set(statuses) <= {200, 429}, statuses
        refused = next(r for r in asyncio.run(burst()) if r.status_code == 429)
        assert refused.json()["error"]["code"] == "queue_full"
        assert refused.headers["retry-after"] == "1"
    # a microsecond: over before the decoder's first step, however fast the machine is
    quick = ServiceLimits(max_new_tokens=64, request_timeout_s=1e-6)
    with serving(create_app(scorer, quick)) as url:
        late = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert late.status_code == 503 and late.json()["error"]["code"] == "timeout"
        assert _health(url)["load"]["rows_in_flight"] == 0
