"""The guarded server under a bounded mixed load and under schema fuzzing, on loopback."""

from __future__ import annotations

import asyncio

import pytest

from load import fuzz, mixed_load, resident_mb
from semdistill.serve import ServiceLimits, create_app
from serving import serving
from tiny_ssd import QUESTIONS, Built, copy_of

MODEL = "smollm2-135m"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory, tiny_ssd_built: Built):
    from semdistill import Scorer

    return Scorer.load(copy_of(tiny_ssd_built, tmp_path_factory.mktemp("ssd-load")).directory)


def test_a_mixed_load_gets_no_server_error_and_leaks_nothing(scorer) -> None:
    limits = ServiceLimits(max_new_tokens=24, max_choices=3, max_rows=32)
    with serving(create_app(scorer, limits)) as url:
        warm = asyncio.run(mixed_load(url, MODEL, QUESTIONS, requests=16, concurrency=16, seed=1))
        before = resident_mb()
        result = asyncio.run(mixed_load(url, MODEL, QUESTIONS, requests=96, concurrency=16))
        after = resident_mb()
    assert warm.server_errors == 0 and result.server_errors == 0, result.statuses
    assert set(result.statuses) == {200}, result.statuses
    assert result.malformed == [] and result.disconnected > 0
    assert after - before < 300, (before, after)  # MB: caches may grow, nothing per request


def test_schema_fuzzing_gets_no_server_error(scorer) -> None:
    limits = ServiceLimits(max_new_tokens=4, max_choices=2, max_prompts=4, max_answers=4)
    with serving(create_app(scorer, limits)) as url:
        statuses = fuzz(url, examples=25)
    assert sum(statuses.values()) > 100
    assert not [status for status in statuses if status >= 500], statuses
