"""Tampered files: stores whose shards repeat ids, scorer directories with an edited, added,
misnamed or malformed file, and a user's question file with a lone surrogate; each refused
with one line (exit 2 on the command line)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hostile import SURROGATE
from tiny_ssd import Built, copy_of


@pytest.fixture(scope="module")
def ssd_dir(tmp_path_factory: pytest.TempPathFactory, tiny_ssd_built: Built) -> Path:
    return copy_of(tiny_ssd_built, tmp_path_factory.mktemp("ssd-tampered")).directory


# ---------------------------------------------------------------------- stores and artifacts
def test_a_store_with_a_repeated_shard_is_refused_naming_the_shards(tmp_path: Path) -> None:
    from semdistill.store import Store
    from test_store import make_config, make_rows

    store = Store.create(tmp_path / "store", make_config())
    store.append(make_rows(["a", "b"], with_options=False, seed=1))
    store.append(make_rows(["c"], with_options=False, seed=2))
    manifest = json.loads(store.manifest_path.read_text())
    manifest["shards"].append(manifest["shards"][0])
    store.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"part-00000\.parquet and again in .*part-00000"):
        Store.open(store.path).load()
    manifest["shards"].pop()
    store.manifest_path.write_text(json.dumps(manifest))
    shards = store.path / "shards"
    shutil.copy(shards / "part-00000.parquet", shards / "part-00001.parquet")
    manifest["shards"][1]["rows"] = 2
    store.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"part-00000\.parquet and again in .*part-00001"):
        Store.open(store.path).done_ids()


def _serve_fails(directory: Path) -> str:
    """``semdistill serve DIR``'s output, which must be one error line and exit 2."""
    from typer.testing import CliRunner

    from semdistill.cli import app

    result = CliRunner().invoke(app, ["serve", str(directory)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(edit(data)))


def _scale_std(data: dict) -> dict:
    standardisation = data["standardisation"]
    key = next(k for k in standardisation if "std" in k)
    standardisation[key] = [10 * v for v in standardisation[key]]
    return data


@pytest.mark.slow
@pytest.mark.parametrize("edit", ["student.json", "pca", "inputs", "ssd.json", "extra file"])
def test_an_edited_scorer_file_is_refused(ssd_dir: Path, tmp_path: Path, edit: str) -> None:
    directory = tmp_path / "ssd"
    shutil.copytree(ssd_dir, directory)
    if edit == "student.json":
        _edit_json(directory / "students" / "risk" / "student.json", _scale_std)
    elif edit == "pca":
        path = directory / "pca.safetensors"
        path.write_bytes(path.read_bytes()[:-1] + b"\x01")
    elif edit == "inputs":
        path = directory / "inputs" / "risk.safetensors"
        path.write_bytes(path.read_bytes()[:-1] + b"\x01")
    elif edit == "ssd.json":
        _edit_json(directory / "ssd.json", lambda d: {**d, "layer": 11})
    else:
        (directory / "probes").mkdir()
        (directory / "probes" / "SEP.safetensors").write_bytes(b"planted")
    line = _serve_fails(directory)
    assert "checksums.json" in line


@pytest.mark.slow
def test_an_edited_calibration_is_refused(ssd_dir: Path, tmp_path: Path) -> None:
    from semdistill import Scorer
    from semdistill.scoring.calibration import CALIBRATION_FILE, fit_calibration, save_calibration

    directory = tmp_path / "ssd"
    shutil.copytree(ssd_dir, directory)
    scorer = Scorer.load(directory)
    entropy = np.linspace(-5, -3, 20)
    calibration = fit_calibration(entropy, entropy > -4, fingerprint=scorer.fingerprint)
    save_calibration(directory / CALIBRATION_FILE, calibration)
    _edit_json(directory / CALIBRATION_FILE, lambda d: {**d, "incorrect_rate": 0.01})
    assert "calibrate again" in _serve_fails(directory)


@pytest.mark.slow
@pytest.mark.parametrize(("change", "message"), [
    (lambda d: [d], "expected a JSON object"),
    (lambda d: {**d, "layer": "12"}, "'layer' must be of type int"),
    (lambda d: {**d, "students": {"risk": "4", "likelihood": 8}}, "'students'"),
    (lambda d: {**d, "teacher": {**d["teacher"], "name": "qwen2.5-coder-1.5b"}},
     "its recorded sha256"),
])  # fmt: skip
def test_malformed_or_misnamed_manifests_get_one_line_and_exit_2(
    ssd_dir: Path, tmp_path: Path, change, message: str
) -> None:
    """Manifests edited and re-signed (the checksums are not what is under test)."""
    from semdistill.scoring.checksums import write_checksums

    directory = tmp_path / "ssd"
    shutil.copytree(ssd_dir, directory)
    _edit_json(directory / "ssd.json", change)
    write_checksums(directory)
    assert message in _serve_fails(directory)


def test_a_lone_surrogate_in_a_users_question_file_is_one_value_error(tmp_path: Path) -> None:
    from semdistill.data.userfile import load_user_file

    path = tmp_path / "questions.jsonl"
    rows = [
        {"question": "Who?", "answers": ["Paris"]},
        {"question": "Who?", "answers": [SURROGATE]},
    ]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    with pytest.raises(ValueError, match="row 1: 'answers' is not valid Unicode text"):
        load_user_file(path)
