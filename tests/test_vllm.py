"""The vLLM backend on SmolLM2-135M: states from vLLM's forward through the capture extension,
answers from the server, a collection through it, and the check that refuses another model.

The server (``vllm_url``, conftest.py) is started once per session from .venv-vllm; the tests
that need it skip without it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from semdistill.collect import CollectSettings, SamplingSettings, run_collection
from semdistill.teacher import load_teacher
from semdistill.teacher.hf import HFTeacher
from semdistill.teacher.vllm_client import VLLMServer
from semdistill.teacher.vllm_teacher import VLLMTeacher, check_server
from test_teacher import _frequencies
from tiny_ssd import QUESTIONS

CAPTURE = (
    Path(__file__).resolve().parents[1] / "src/semdistill/teacher/vllm_server/state_capture.py"
)


def _capture_module():
    spec = importlib.util.spec_from_file_location("state_capture", CAPTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_capture_finds_each_finishing_prompts_last_row_in_a_mixed_batch() -> None:
    capture = _capture_module()
    prefix = capture.PREFIX
    # a decoding request, a prompt finishing its prefill, a chunked prompt not yet done, and a
    # finishing prompt that is not the capture's: rows [0], [1..4], [5..7], [8..9]
    batch = SimpleNamespace(
        num_reqs=4,
        req_ids=["other-1", f"{prefix}a-x1", f"{prefix}b-x2", "other-2"],
        num_computed_tokens_cpu=np.array([12, 3, 0, 0]),
        num_prompt_tokens=np.array([10, 7, 9, 2]),
    )
    runner = SimpleNamespace(
        input_batch=batch, query_start_loc=SimpleNamespace(np=np.array([0, 1, 5, 8, 10]))
    )
    worker = capture.StateCapture()
    worker.model_runner = runner
    assert worker._finishing_prefills() == [(f"{prefix}a-x1", 4)]
    batch.num_computed_tokens_cpu = np.array([12, 3, 3, 0])  # b's last chunk: rows 5..10
    runner.query_start_loc.np = np.array([0, 1, 5, 11, 13])
    assert worker._finishing_prefills() == [(f"{prefix}a-x1", 4), (f"{prefix}b-x2", 10)]


@pytest.fixture(scope="module")
def hf_teacher() -> HFTeacher:
    teacher = load_teacher("smollm2-135m", dtype="float32", device="cpu")
    assert isinstance(teacher, HFTeacher)
    return teacher


@pytest.fixture(scope="module")
def vllm_teacher(vllm_url: str) -> VLLMTeacher:
    teacher = load_teacher("smollm2-135m", backend="vllm", dtype="float32", vllm_url=vllm_url)
    assert isinstance(teacher, VLLMTeacher)
    return teacher


class _Shifted:
    """A server whose states are another model's: the served ones, scaled."""

    def __init__(self, server: VLLMServer) -> None:
        self.url, self.model, self.version, self.has_states = (
            server.url,
            server.model,
            server.version,
            True,
        )
        self.server = server

    def states(self, prompts: list[list[int]]) -> np.ndarray:
        return self.server.states(prompts) * 1.01


@pytest.mark.slow
def test_vllm_states_greedy_answers_and_samples_match_the_engine(
    vllm_teacher: VLLMTeacher, hf_teacher: HFTeacher
) -> None:
    from scipy.stats import chi2_contingency

    assert vllm_teacher.route.states == "vllm" and vllm_teacher.route.difference < 1e-4
    prompts = [hf_teacher.format_prompt(q) for q in QUESTIONS[:6]]
    settings = {"n": 2, "temperature": 1.0, "seeds": range(6), "max_new_tokens": 16}
    served = dict(vllm_teacher.answer_sets(prompts, **settings))
    engine = dict(hf_teacher.answer_sets(prompts, **settings))
    for i in range(len(prompts)):
        got, expected = served[i].hidden, engine[i].hidden
        assert got.shape == expected.shape and got.dtype == np.float32
        assert np.linalg.norm(got - expected) / np.linalg.norm(expected) <= 1e-3
        assert served[i].greedy == engine[i].greedy
        assert len(served[i].samples) == 2
    # one prompt's sampled answers come from the engine's distribution (test_teacher's test)
    prompt, draws = [hf_teacher.format_prompt("Name a colour.")], 300
    (vllm_answers,) = vllm_teacher.sample(
        prompt, n=draws, temperature=1.0, seeds=[5], max_new_tokens=3
    )
    (engine_answers,) = hf_teacher.sample(
        prompt, n=draws, temperature=1.0, seeds=[5], max_new_tokens=3
    )
    assert chi2_contingency(_frequencies(vllm_answers, engine_answers)).pvalue > 1e-3
    (cold,) = hf_teacher.sample(prompt, n=draws, temperature=0.5, seeds=[5], max_new_tokens=3)
    assert chi2_contingency(_frequencies(vllm_answers, cold)).pvalue < 1e-3


@pytest.mark.slow
def test_a_server_computing_other_states_is_refused(
    vllm_teacher: VLLMTeacher, hf_teacher: HFTeacher
) -> None:
    with pytest.raises(ValueError, match=r"differs from smollm2-135m's own forward by 0\.01"):
        check_server(hf_teacher, _Shifted(vllm_teacher.server))  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_plain_vllm_server_is_checked_on_logprobs_and_states_come_from_the_prefill(
    vllm_teacher: VLLMTeacher, hf_teacher: HFTeacher
) -> None:
    plain = vllm_teacher.server
    plain.has_states = False  # as `vllm serve` without the extension
    try:
        route = check_server(hf_teacher, plain)
    finally:
        plain.has_states = True
    assert route.states == "prefill" and route.checked == "first-token logprobs"
    assert route.difference <= route.tolerance


@pytest.mark.slow
def test_a_collection_through_vllm_records_its_route(vllm_url: str, tmp_path: Path) -> None:
    settings = CollectSettings(
        model="smollm2-135m",
        questions="trivia",
        limit=4,
        sampling=SamplingSettings(n_samples=2, max_new_tokens=8),
        backend="vllm",
        dtype="float32",
        device="cpu",
        vllm_url=vllm_url,
    )
    stats = run_collection(tmp_path / "store", settings, progress=False)
    assert stats.n_written == 4
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["config"]["backend"] == "vllm" and manifest["complete"]
    assert manifest["vllm"]["states"] == "vllm" and manifest["vllm"]["url"] == vllm_url


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"backend": "vllm"}, "exactly one of --vllm-url and --vllm-python"),
        ({"backend": "vllm", "vllm_url": "u", "vllm_python": "p"}, "exactly one"),
        ({"vllm_url": "http://localhost:8000"}, "need --backend vllm"),
    ],
)
def test_vllm_settings_are_checked(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CollectSettings(model="smollm2-135m", questions="trivia", **fields).check()
