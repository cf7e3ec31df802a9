"""Collection sharded over Ray: the same store as a local run; a clear error without Ray."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from semdistill.cli import app
from semdistill.collect import CollectSettings, SamplingSettings, run_collection
from semdistill.store import Store
from test_greedy_scores import as_format_1

SETTINGS = CollectSettings(
    "smollm2-135m",
    "trivia",
    limit=4,
    sampling=SamplingSettings(n_samples=2, seed=7, max_new_tokens=6),
    batch_size=2,
    dtype="float32",
)


def test_without_ray_the_flag_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from semdistill.collect.distributed import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(ImportError, match=r"pip install 'semdistill\[ray\]'"):
        import_ray()
    args = ["collect", "--model", "smollm2-135m", "--questions", "trivia", "--limit", "2"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "s"), "--ray"])
    assert result.exit_code == 2
    assert "pip install 'semdistill[ray]'" in result.output
    assert not (tmp_path / "s").exists()


def test_ray_options_need_the_ray_flag(tmp_path: Path) -> None:
    args = ["collect", "--model", "smollm2-135m", "--questions", "trivia", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--ray-workers", "2"])
    assert result.exit_code == 2
    assert "need --ray" in result.output


@pytest.mark.slow
def test_two_ray_workers_write_the_store_a_local_run_writes(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from semdistill.collect.distributed import run_collection_on_ray

    local_stats = run_collection(tmp_path / "local", SETTINGS, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        stats = run_collection_on_ray(tmp_path / "ray", SETTINGS, n_workers=2, progress=False)
        assert stats.n_written == 4 and stats.n_skipped == 0
        assert stats.n_default_correct == local_stats.n_default_correct
        assert stats.generation > 0 and stats.writing > 0
        decoded = Store.open(tmp_path / "ray").load().greedy
        as_format_1(Store.open(tmp_path / "ray"))  # as if collected before greedy scores
        again = run_collection_on_ray(tmp_path / "ray", SETTINGS, n_workers=1, progress=False)
        assert again.n_written == 0 and again.n_skipped == 4  # resume: nothing left to do
        assert again.n_scored == 4  # but the greedy answers' scores were added
        with pytest.raises(ValueError, match="n_samples"):
            more = replace(SETTINGS, sampling=replace(SETTINGS.sampling, n_samples=4))
            run_collection_on_ray(tmp_path / "ray", more, n_workers=1, progress=False)
    finally:
        ray.shutdown()

    local, remote = Store.open(tmp_path / "local"), Store.open(tmp_path / "ray")
    assert remote.complete and local.complete
    assert remote.config == local.config
    a, b = local.load(), remote.load()
    assert list(b.ids) == list(a.ids)
    assert list(b.splits) == list(a.splits)
    assert b.samples == a.samples
    assert list(b.default_answer) == list(a.default_answer)
    np.testing.assert_array_equal(b.sample_correct, a.sample_correct)
    np.testing.assert_array_equal(b.default_correct, a.default_correct)
    assert b.hidden.shape == a.hidden.shape == (4, 31, 576)
    np.testing.assert_allclose(
        b.hidden.astype(np.float32), a.hidden.astype(np.float32), rtol=2e-2, atol=2e-2
    )
    np.testing.assert_allclose(b.sample_embeddings, a.sample_embeddings, atol=1e-5)
    assert a.greedy is not None and b.greedy is not None and decoded is not None
    assert (a.greedy.route, decoded.route, b.greedy.route) == ("decoder",) * 2 + ("teacher-forced",)
    np.testing.assert_array_equal(decoded.tokens, a.greedy.tokens)
    np.testing.assert_allclose(decoded.logprob, a.greedy.logprob, atol=0.1)
