"""The sampling cascade: above a risk threshold, N sampled answers and their Semantic Entropy,
from `Scorer.refine`, the guarded chat endpoint and `/v1/risk`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from semdistill.scoring.artifacts import MANIFEST
from semdistill.scoring.checksums import write_checksums
from semdistill.scoring.refine import REFINE_KEY, RefineSettings
from semdistill.semantics.semantic_entropy import RuleEquivalence, semantic_entropies
from test_evaluation import SETTINGS, _synthetic_config, synthetic_collection
from tiny_ssd import QUESTIONS, Built, copy_of

N, MAX_NEW_TOKENS, COSINE = 4, 8, 0.85
CALIBRATION = QUESTIONS[8:]  # the prompts whose risk the budget reads; the others never


def _settings(values: list[float]) -> RefineSettings:
    return RefineSettings(N, 1.0, MAX_NEW_TOKENS, COSINE, tuple(sorted(values)))


def independent_se(embedder, samples) -> float:
    """SE as the evaluation computes it: the rule judge over the answers' embeddings."""
    judge = RuleEquivalence(None, threshold=COSINE)
    return float(
        semantic_entropies([samples], judge, embeddings=[embedder.encode(list(samples))])[0]
    )


# ---------------------------------------------------------------------------- no model
def test_a_budget_is_a_quantile_of_the_recorded_validation_risk() -> None:
    settings = _settings([3.0, 1.0, 2.0, 4.0, 5.0])
    assert settings.threshold(budget=0.2) == pytest.approx(np.quantile([1, 2, 3, 4, 5], 0.8))
    assert settings.threshold(above=-1.5) == -1.5
    for kwargs, words in (
        ({}, "exactly one"),
        ({"above": 1.0, "budget": 0.2}, "exactly one"),
        ({"budget": 1.0}, "(0, 1)"),
        ({"budget": 0.0}, "(0, 1)"),
        ({"above": float("nan")}, "finite"),
    ):
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
            settings.threshold(**kwargs)


def test_rows_sample_as_the_collection_did() -> None:
    rows = _settings([0.0]).rows(seed=2**64 + 7)
    assert [r.seed for r in rows] == [(7, j) for j in range(1, N + 1)]
    assert all(r.first_line and r.temperature == 1.0 for r in rows)
    assert all(r.max_new_tokens == MAX_NEW_TOKENS for r in rows)
    assert all(r.seed is None for r in _settings([0.0]).rows(seed=None))


def test_an_old_record_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="records no sampling settings") as err:
        RefineSettings.from_extra({}, "dir/ssd.json")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="invalid 'refine' record"):
        RefineSettings.from_extra({REFINE_KEY: {"n_samples": 3}}, "dir/ssd.json")


def test_semantic_entropy_is_the_evaluations() -> None:
    class Embedder:  # answers mapped to fixed directions
        def encode(self, texts: list[str]) -> np.ndarray:
            table = {"Paris": [1, 0], "paris, france": [0.95, 0.3], "Lyon": [0, 1], "": [0, 0]}
            return np.array([table[t] for t in texts], dtype=np.float32)

    sets = [["Paris", "paris, france", "Lyon", "Paris"], ["Lyon", ""], ["Paris"]]
    got = _settings([0.0]).semantic_entropies(Embedder(), sets)
    judge = RuleEquivalence(None, threshold=COSINE)
    want = semantic_entropies(sets, judge, embeddings=[Embedder().encode(s) for s in sets])
    np.testing.assert_array_equal(got, want)
    assert got[0] == pytest.approx(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))


def test_export_records_the_sampling_the_judge_and_only_validation_risk(tmp_path: Path) -> None:
    from semdistill.scoring.artifacts import load_artifacts
    from semdistill.scoring.export import save_trained
    from semdistill.training.trained import train_question_set

    train = dataclasses.replace(
        SETTINGS.train, seeds=(0,), se_cosine=0.8, min_scales=(1e-3,), layer_offsets=((0,),)
    )
    trained = train_question_set("s", synthetic_collection(e=48), train)
    config = _synthetic_config()
    save_trained(trained, config, "synthetic", tmp_path)
    extra = load_artifacts(tmp_path).artifacts.extra
    settings = RefineSettings.from_extra(extra, "ssd.json")
    assert (settings.n_samples, settings.temperature, settings.max_new_tokens) == (
        config.n_samples,
        config.temperature,
        config.max_new_tokens,
    )
    assert settings.se_cosine == 0.8 and extra[REFINE_KEY]["se_judge"] == trained.prepared.se_judge
    p = trained.prepared
    want = np.sort(trained.risk.renyi2_entropy(p.collection.hidden[p.validation]))
    np.testing.assert_allclose(settings.validation_risk, want)


# ---------------------------------------------------------------------------- SmolLM2
@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_ssd_built: Built):
    return copy_of(tiny_ssd_built, tmp_path_factory.mktemp("ssd-old"))


@pytest.fixture(scope="module")
def scorer(built, tmp_path_factory: pytest.TempPathFactory):
    """The tiny SSD with a refine record whose validation risk is that of CALIBRATION."""
    from semdistill import Scorer

    old = Scorer.load(built.directory, model=built.teacher, embedder=built.embedder)
    directory = tmp_path_factory.mktemp("ssd-refine") / "ssd"
    shutil.copytree(built.directory, directory)
    manifest = json.loads((directory / MANIFEST).read_text())
    config = dataclasses.replace(_synthetic_config(), n_samples=N, max_new_tokens=MAX_NEW_TOKENS)
    manifest["extra"][REFINE_KEY] = RefineSettings.record(config, COSINE, old.risk(CALIBRATION))
    (directory / MANIFEST).write_text(json.dumps(manifest))
    write_checksums(directory)
    return Scorer.load(directory, model=built.teacher, embedder=built.embedder)


@pytest.fixture(scope="module")
def risks(scorer) -> np.ndarray:
    return scorer.risk(QUESTIONS)


@pytest.mark.slow
def test_an_old_scorer_refuses_only_refinement(built) -> None:
    from semdistill import Scorer

    old = Scorer.load(built.directory, model=built.teacher, embedder=built.embedder)
    assert old.risk(QUESTIONS[:1]).shape == (1,)
    with pytest.raises(ValueError, match="retrain it with `semdistill train` to refine"):
        old.refine(QUESTIONS[:1], above=0.0)


@pytest.mark.slow
def test_refine_samples_above_the_threshold_only(scorer, risks: np.ndarray) -> None:
    threshold = float(np.median(risks))
    refined = scorer.refine(QUESTIONS, above=threshold, seed=11)
    assert [r.refined for r in refined] == list(risks > threshold)
    for r, risk in zip(refined, risks, strict=True):
        assert r.risk == pytest.approx(risk, abs=1e-5)
        if not r.refined:
            assert (r.semantic_entropy, r.samples, r.n_samples) == (None, (), 0)
            continue
        assert r.n_samples == N
        assert r.semantic_entropy == pytest.approx(independent_se(scorer.embedder, r.samples))
    again = scorer.refine(QUESTIONS, above=threshold, seed=11)
    assert [r.samples for r in again] == [r.samples for r in refined]


@pytest.mark.slow
def test_a_budget_refines_that_share_of_the_calibration_prompts(scorer) -> None:
    threshold = scorer.refinement.threshold(budget=0.25)
    calibration = scorer.risk(CALIBRATION)
    assert threshold == pytest.approx(float(np.quantile(calibration, 0.75)), abs=1e-6)
    refined = scorer.refine(CALIBRATION, budget=0.25, seed=0)
    assert sum(r.refined for r in refined) == 1  # a quarter of 4 prompts


# ---------------------------------------------------------------------------- the server
MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def server(scorer, risks: np.ndarray):
    from semdistill.serve import ServiceLimits, create_app
    from serving import serving

    limits = ServiceLimits(max_new_tokens=8, batch_window_ms=20)
    app = create_app(scorer, limits, refine_above=float(np.median(risks)))
    with serving(app) as url:
        yield url


def _chat(url: str, question: str, **extra) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": question}], **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def _decoded(url: str) -> int:
    return httpx.get(f"{url}/healthz", timeout=30).json()["load"]["decoded_tokens"]


@pytest.mark.slow
def test_a_risky_completion_carries_the_se_of_its_samples(
    server: str, scorer, risks: np.ndarray
) -> None:
    question = QUESTIONS[int(np.argmax(risks))]
    before = _decoded(server)
    reply = _chat(server, question, temperature=0, max_tokens=8, seed=5)
    assert reply.status_code == 200, reply.text
    ssd = reply.json()["semdistill"]
    assert ssd["refined"] is True and len(ssd["samples"]) == N
    assert ssd["semantic_entropy"] == pytest.approx(independent_se(scorer.embedder, ssd["samples"]))
    assert reply.headers["x-semdistill-refined"] == "true"
    assert float(reply.headers["x-semdistill-semantic-entropy"]) == pytest.approx(
        ssd["semantic_entropy"], rel=1e-5
    )
    assert _decoded(server) - before > reply.json()["usage"]["completion_tokens"]
    (alone,) = scorer.refine([question], above=-1e9, seed=5)
    assert list(alone.samples) == ssd["samples"]  # the same rows, seeded alike


@pytest.mark.slow
def test_a_safe_completion_decodes_no_extra_rows(server: str, risks: np.ndarray) -> None:
    before = _decoded(server)
    reply = _chat(server, QUESTIONS[int(np.argmin(risks))], temperature=0, max_tokens=8)
    assert reply.status_code == 200, reply.text
    ssd = reply.json()["semdistill"]
    assert (ssd["refined"], ssd["semantic_entropy"], ssd["samples"]) == (False, None, None)
    assert reply.headers["x-semdistill-refined"] == "false"
    assert "x-semdistill-semantic-entropy" not in reply.headers
    assert _decoded(server) - before <= reply.json()["usage"]["completion_tokens"]


@pytest.mark.slow
def test_only_a_job_above_the_threshold_gets_sample_rows(scorer, risks: np.ndarray) -> None:
    from semdistill.scoring.policy import Policy
    from semdistill.serve.guarded import Decoding, GuardedJob, GuardedModel

    threshold = float(np.median(risks))
    loop = asyncio.new_event_loop()
    try:
        for abstains in (False, True):
            policy = Policy(abstain_above_entropy=threshold if abstains else None)
            model = GuardedModel(scorer, policy, threshold)
            for question, risk in zip(QUESTIONS, risks, strict=True):
                job = GuardedJob(
                    model, question, Decoding(8, n=2), stream=False, loop=loop, deadline=None
                )
                rows = job.prefilled(scorer.states([question])[0].astype(np.float32))
                above = bool(risk > threshold)
                assert job.width == 2 + N
                assert job.assessment.refine == (above and not abstains)
                if abstains:  # an abstention decodes nothing, samples included
                    assert len(rows) == (0 if above else 2)
                else:
                    assert len(rows) == 2 + (N if above else 0)
                    assert all(r.first_line for r in rows[2:])
    finally:
        loop.close()


@pytest.mark.slow
def test_a_stream_says_pending_and_carries_the_se_last(
    server: str, scorer, risks: np.ndarray
) -> None:
    question = QUESTIONS[int(np.argmax(risks))]
    body = {"model": MODEL, "messages": [{"role": "user", "content": question}]}
    with httpx.stream(
        "POST", f"{server}/v1/chat/completions", json={**body, "stream": True}, timeout=120
    ) as reply:
        assert reply.headers["x-semdistill-refined"] == "pending"
        assert "x-semdistill-semantic-entropy" not in reply.headers
        events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]"
    first, last = chunks[0]["semdistill"], chunks[-1]["semdistill"]
    assert first["refined"] is True and first["semantic_entropy"] is None
    assert last["refined"] is True and len(last["samples"]) == N
    assert last["semantic_entropy"] == pytest.approx(
        independent_se(scorer.embedder, last["samples"])
    )


@pytest.mark.slow
def test_risk_route_refines_above_the_threshold(server: str, scorer, risks: np.ndarray) -> None:
    body = {"prompts": QUESTIONS[:6], "seed": 3}
    reply = httpx.post(f"{server}/v1/risk", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    got = reply.json()
    threshold = float(np.median(risks))
    assert got["refined"] == [bool(r > threshold) for r in got["entropies"]]
    for refined, entropy, samples in zip(
        got["refined"], got["semantic_entropies"], got["samples"], strict=True
    ):
        if refined:
            assert entropy == pytest.approx(independent_se(scorer.embedder, samples))
        else:
            assert entropy is None and samples is None
    assert httpx.post(f"{server}/v1/risk", json=body, timeout=120).json() == got
    health = httpx.get(f"{server}/healthz", timeout=30).json()
    assert health["refine"]["n_samples"] == N


def test_serve_refuses_both_refine_options_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from semdistill.cli import app

    args = ["serve", str(tmp_path), "--refine-above", "1", "--refine-budget", "0.2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "--refine-above and --refine-budget are mutually exclusive" in result.output
