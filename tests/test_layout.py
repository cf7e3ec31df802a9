"""The package layout: stages import only earlier stages, no module grows past 400 lines,
serving and scoring reach the teacher through its public interface, imports have no side
effects."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "semdistill"

# The pipeline's stages in order; a module may import its own stage or an earlier one.
STAGES = (
    ("_validation", "formats", "metrics", "timing"),
    ("data",),
    ("semantics",),
    ("student",),
    ("teacher",),
    ("store",),
    ("collect",),
    ("training",),
    ("scoring",),
    ("serve",),
    ("evaluate",),
    ("pipeline",),
    ("cli",),
)
RANK = {name: rank for rank, names in enumerate(STAGES) for name in names}
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _stage(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``semdistill`` import in ``path``, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names[:1] if n.startswith("semdistill.")]
    return found


def test_every_module_belongs_to_a_stage() -> None:
    stages = {_stage(path) for path in _modules() if path != PACKAGE / "__init__.py"}
    assert stages <= set(RANK), f"modules outside the declared stages: {stages - set(RANK)}"


def test_no_stage_imports_a_later_one() -> None:
    backwards = []
    for path in _modules():
        if path == PACKAGE / "__init__.py":
            continue  # the package's facade (SSDStudent, Scorer)
        here = _stage(path)
        for line, module in _imports(path):
            there = module.split(".")[1]
            if RANK[there] > RANK[here]:
                backwards.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert not backwards, "imports from a later stage:\n" + "\n".join(backwards)


def test_no_module_is_longer_than_the_limit() -> None:
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in _modules()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_two_modules_share_a_file_name() -> None:
    seen: dict[str, list[str]] = {}
    for path in _modules():
        if path.name != "__init__.py":
            seen.setdefault(path.name, []).append(str(path.relative_to(PACKAGE)))
    shared = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not shared, f"modules sharing a file name: {shared}"


def test_no_two_public_classes_share_a_name() -> None:
    seen: dict[str, list[str]] = {}
    for path in _modules():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                seen.setdefault(node.name, []).append(str(path.relative_to(PACKAGE)))
    shared = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not shared, f"public classes sharing a name: {shared}"


@pytest.mark.parametrize("stage", ["serve", "scoring"])
def test_serving_and_scoring_use_the_teachers_interface(stage: str) -> None:
    private = ("semdistill.teacher.hf", "semdistill.teacher.decoder.engine")
    reaching = [
        f"{path.relative_to(PACKAGE)}:{line} imports {module}"
        for path in (PACKAGE / stage).rglob("*.py")
        for line, module in _imports(path)
        if module.startswith(private)
    ]
    assert not reaching, "\n".join(reaching)


def test_importing_every_module_has_no_side_effects() -> None:
    script = """
import importlib, json, os, pkgutil, sys
# third-party libraries set variables of their own when they load (sklearn, torch)
import fastapi, matplotlib, scipy, sentence_transformers, sklearn.linear_model, torch, transformers
environ, argv = dict(os.environ), list(sys.argv)
import semdistill
for info in pkgutil.walk_packages(semdistill.__path__, "semdistill."):
    importlib.import_module(info.name)
changed = sorted(k for k in set(environ) | set(os.environ) if environ.get(k) != os.environ.get(k))
print(json.dumps({"environ": changed, "argv": sys.argv == argv,
                  "pyplot": "matplotlib.pyplot" in sys.modules}))
"""
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"environ": [], "argv": True, "pyplot": False}
