"""The HTTP scoring service: a real uvicorn server on loopback, called with httpx."""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from semdistill.scoring.calibration import CALIBRATION_FILE, fit_calibration, save_calibration
from semdistill.serve import ServiceLimits, create_app
from semdistill.serve.batching import MicroBatcher
from serving import free_port, serving, wait_healthy
from tiny_ssd import QUESTIONS, Built, copy_of

LIMITS = ServiceLimits(max_prompts=4, max_answers=3, max_chars=200, batch_window_ms=50)


# ---------------------------------------------------------------------- micro-batcher unit
def test_micro_batcher_gathers_concurrent_items_and_isolates_failures() -> None:
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(items)
        if -1 in items:
            raise ValueError("negative item")
        return [item * 10 for item in items]

    async def scenario() -> list[int | str]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = MicroBatcher(run, executor, window_s=0.05, max_size=100, size=lambda _: 1)
            batcher.start()

            async def one(item: int) -> int | str:
                try:
                    return await batcher.submit(item)
                except ValueError as err:
                    return str(err)

            results = await asyncio.gather(*(one(i) for i in [1, 2, -1, 3, 4]))
            await batcher.close()
            return list(results)

    results = asyncio.run(scenario())
    assert results == [10, 20, "negative item", 30, 40]
    assert sorted(calls[0]) == [-1, 1, 2, 3, 4]  # one batch for all five
    assert sorted(len(c) for c in calls[1:]) == [1] * 5  # then each retried alone


def test_micro_batcher_closes_a_batch_at_max_size() -> None:
    sizes: list[int] = []

    def run(items: list[list[str]]) -> list[int]:
        sizes.append(sum(len(i) for i in items))
        return [len(i) for i in items]

    async def scenario() -> list[int]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = MicroBatcher(run, executor, window_s=1.0, max_size=4, size=len)
            batcher.start()
            start = time.monotonic()
            results = await asyncio.gather(*(batcher.submit(["a", "b"]) for _ in range(4)))
            assert time.monotonic() - start < 0.9  # full batches do not wait for the window
            await batcher.close()
            return list(results)

    assert asyncio.run(scenario()) == [2, 2, 2, 2]
    assert sizes == [4, 4]


# ---------------------------------------------------------------------- real server
@pytest.fixture(scope="module")
def ssd_dir(tmp_path_factory: pytest.TempPathFactory, tiny_ssd_built: Built) -> Path:
    return copy_of(tiny_ssd_built, tmp_path_factory.mktemp("ssd-serve")).directory


@pytest.fixture(scope="module")
def server(ssd_dir: Path) -> Iterator[tuple[str, FastAPI]]:
    """A server that loads the SSD directory itself, with a calibration beside it."""
    from semdistill.scoring.artifacts import artifacts_fingerprint, load_artifacts

    artifacts = load_artifacts(ssd_dir)[0]
    rng = np.random.default_rng(0)
    entropy = rng.normal(-4, 1.5, size=100)
    fingerprint = artifacts_fingerprint(ssd_dir, artifacts)
    calibration = fit_calibration(
        entropy, entropy + rng.normal(size=100) > -4, fingerprint=fingerprint
    )
    save_calibration(ssd_dir / CALIBRATION_FILE, calibration)
    app = create_app(ssd_dir, LIMITS)
    with serving(app) as url:
        yield url, app


@pytest.mark.slow
def test_health_and_docs(server: tuple[str, FastAPI]) -> None:
    url, _ = server
    with httpx.Client(base_url=url, timeout=60) as client:
        health = client.get("/healthz").json()
        assert health["status"] == "ok"
        assert health["model"] == "smollm2-135m"
        assert health["model_sha256"].startswith("b179c95")
        assert health["layer"] == 12
        assert health["embedder"] == "all-MiniLM-L6-v2"
        assert health["calibrated"] is True
        assert health["version"] == "0.1.0"
        assert client.get("/docs").status_code == 200
        paths = client.get("/openapi.json").json()["paths"]
        assert {"/v1/risk", "/v1/verify", "/v1/choose", "/healthz"} <= set(paths)


@pytest.mark.slow
def test_risk_verify_and_choose_match_the_scorer(server: tuple[str, FastAPI]) -> None:
    url, app = server
    scorer = app.state.service.scorer
    with httpx.Client(base_url=url, timeout=60) as client:
        body = client.post("/v1/risk", json={"prompts": QUESTIONS[:3]}).json()
        expected = scorer.risk(QUESTIONS[:3])
        np.testing.assert_allclose(body["entropies"], expected, rtol=1e-9)
        np.testing.assert_allclose(
            body["probabilities"], scorer.calibration.probability(expected), rtol=1e-9
        )
        assert body["calibration"] == "isotonic"

        question, answers = "Who wrote Hamlet?", ["Shakespeare", "a cheese", "Marlowe"]
        verify = client.post("/v1/verify", json={"prompt": question, "answers": answers})
        assert verify.status_code == 200
        np.testing.assert_allclose(
            verify.json()["log_likelihoods"], scorer.verify(question, answers), rtol=1e-9
        )
        ranking = client.post("/v1/choose", json={"prompt": question, "options": answers}).json()
        assert [(r["option"], pytest.approx(r["log_likelihood"])) for r in ranking["ranking"]] == (
            scorer.choose(question, answers)
        )


@pytest.mark.slow
def test_concurrent_requests_are_batched_and_answer_like_sequential_ones(
    server: tuple[str, FastAPI],
) -> None:
    url, app = server
    requests = [{"prompts": [q]} for q in QUESTIONS[:8]]

    async def concurrently() -> list[list[float]]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            replies = await asyncio.gather(*(client.post("/v1/risk", json=r) for r in requests))
        assert all(reply.status_code == 200 for reply in replies)
        return [reply.json()["entropies"] for reply in replies]

    batcher = app.state.service.risk
    batches_before = batcher.batches
    together = asyncio.run(concurrently())
    assert batcher.batches - batches_before < len(requests)  # some requests shared a prefill
    with httpx.Client(base_url=url, timeout=60) as client:
        alone = [client.post("/v1/risk", json=r).json()["entropies"] for r in requests]
    assert [len(x) for x in together] == [1] * 8
    # A prompt's risk is a function of that prompt alone: batch-mates move it by < 0.01 nats.
    np.testing.assert_allclose(np.ravel(together), np.ravel(alone), rtol=0, atol=0.01)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "payload", "status", "message"),
    [
        ("/v1/risk", {"prompts": [""]}, 422, "prompts[0] is empty"),
        ("/v1/risk", {"prompts": ["ok", "   "]}, 422, "prompts[1] is empty"),
        ("/v1/risk", {"prompts": []}, 422, "prompts must not be empty"),
        ("/v1/risk", {"prompts": ["q?"] * 5}, 413, "limit of 4 (max_prompts)"),
        ("/v1/risk", {"prompts": ["x" * 201]}, 413, "limit of 200 (max_chars)"),
        ("/v1/risk", {"prompts": "What is two plus two?"}, 422, "valid list"),
        ("/v1/risk", {"prompts": [1, 2]}, 422, "valid string"),
        ("/v1/risk", {}, 422, "Field required"),
        ("/v1/risk", {"prompts": ["q?"], "extra": 1}, 422, "Extra inputs"),
        ("/v1/verify", {"prompt": "Who?"}, 422, "Field required"),
        ("/v1/verify", {"prompt": "", "answers": ["a"]}, 422, "prompt is empty"),
        ("/v1/verify", {"prompt": "Who?", "answers": ["a"] * 4}, 413, "(max_answers)"),
        ("/v1/verify", {"prompt": "Who?", "answers": ["a", "y" * 201]}, 413, "answers[1]"),
        ("/v1/choose", {"prompt": "Who?", "options": []}, 422, "options must not be empty"),
        ("/v1/choose", {"prompt": 3, "options": ["a"]}, 422, "valid string"),
    ],
)
def test_bad_requests_get_4xx_naming_the_problem(
    server: tuple[str, FastAPI], path: str, payload: object, status: int, message: str
) -> None:
    url, _ = server
    with httpx.Client(base_url=url, timeout=60) as client:
        reply = client.post(path, json=payload)
    assert reply.status_code == status, reply.text
    assert message in reply.text


@pytest.mark.slow
def test_invalid_json_and_uncalibrated_service(server: tuple[str, FastAPI]) -> None:
    url, app = server
    with httpx.Client(base_url=url, timeout=60) as client:
        reply = client.post(
            "/v1/risk", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert reply.status_code == 422
    uncalibrated = copy.copy(app.state.service.scorer)
    uncalibrated.calibration = None
    with (
        serving(create_app(uncalibrated, LIMITS)) as other,
        httpx.Client(base_url=other, timeout=60) as client,
    ):
        body = client.post("/v1/risk", json={"prompts": QUESTIONS[:1]}).json()
        assert body["probabilities"] is None and body["calibration"] is None
        assert len(body["entropies"]) == 1
        assert client.get("/healthz").json()["calibrated"] is False


@pytest.mark.slow
def test_serve_command_starts_a_server(ssd_dir: Path) -> None:
    port = free_port()
    command = [str(Path(sys.executable).with_name("semdistill")), "serve", str(ssd_dir)]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--max-prompts", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        health = wait_healthy(port, process)
        assert health["model"] == "smollm2-135m"
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/risk", json={"prompts": ["a?", "b?", "c?"]}, timeout=60
        )
        assert reply.status_code == 413 and "(max_prompts)" in reply.text
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_command_reports_a_bad_directory(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from semdistill.cli import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path)])
    assert result.exit_code == 2
    assert "ssd.json: no such file" in result.output
