"""`serve --upstream` against a hostile client: the probes of test_hostile.py that reach the
OpenAI route (bodies over the limit, coercion, long stops, surrogates, tiny temperatures) run
against the proxy to a vLLM server: each a 4xx or a refusal, never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from semdistill.cli.serve import upstream_of
from semdistill.serve import create_app
from serving import serving
from test_hostile import (
    LIMITS,
    scorer,
    ssd_dir,
    test_a_huge_declared_body_gets_413_before_it_is_read,
    test_a_large_invalid_body_gets_a_small_error_that_echoes_nothing,
    test_a_long_stop_string_is_refused,
    test_a_streamed_body_over_the_limit_gets_413,
    test_an_ordinary_client_over_the_limit_reads_the_413,
    test_lone_surrogates_get_4xx_naming_the_field,
    test_openai_fields_are_not_coerced,
    test_tiny_temperatures_answer_like_greedy,
)

pytestmark = pytest.mark.slow
REUSED = (
    ssd_dir,
    scorer,
    test_a_huge_declared_body_gets_413_before_it_is_read,
    test_a_large_invalid_body_gets_a_small_error_that_echoes_nothing,
    test_a_long_stop_string_is_refused,
    test_a_streamed_body_over_the_limit_gets_413,
    test_an_ordinary_client_over_the_limit_reads_the_413,
    test_lone_surrogates_get_4xx_naming_the_field,
    test_openai_fields_are_not_coerced,
    test_tiny_temperatures_answer_like_greedy,
)
"""Fixtures and tests of test_hostile.py, collected here against the proxy."""


@pytest.fixture(scope="module")
def server(scorer, vllm_url: str) -> Iterator[tuple[str, None]]:
    """The proxy to vLLM with test_hostile's limits and no key."""
    app = create_app(scorer, LIMITS, upstream=upstream_of(scorer, vllm_url, None))
    with serving(app) as url:
        yield url, None
