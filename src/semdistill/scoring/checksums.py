"""Checksums of a scorer directory: no file of it can change without :func:`verify_checksums`
refusing it.

``checksums.json`` maps every file that :func:`~semdistill.scoring.artifacts.save_artifacts`
wrote (``ssd.json``, the PCA basis, each student's ``student.json`` and weights, the inputs
and the probes) to its sha256. ``calibration.json`` carries its own checksum
(:mod:`semdistill.scoring.calibration`), since it is written later, and records the
fingerprint of the artifacts it was fitted for. A file in the directory that the list does
not name is refused too, so nothing can be slipped in beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CHECKSUMS = "checksums.json"
NOT_COVERED = frozenset({CHECKSUMS, "calibration.json"})


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _covered(root: Path) -> list[str]:
    """The files under ``root`` that the checksums cover, as relative POSIX paths."""
    names = (path.relative_to(root).as_posix() for path in sorted(root.rglob("*")))
    return [
        name
        for name in names
        if (root / name).is_file() and name not in NOT_COVERED and not name.endswith(".tmp")
    ]


def write_checksums(directory: str | os.PathLike) -> dict[str, str]:
    """Record the sha256 of every file under ``directory`` (but ``checksums.json``,
    ``calibration.json`` and ``*.tmp``) in ``checksums.json``; returns what it wrote."""
    root = Path(directory)
    sums = {name: _sha256(root / name) for name in _covered(root)}
    tmp = root / (CHECKSUMS + ".tmp")
    tmp.write_text(json.dumps({"sha256": sums}, indent=2))
    os.replace(tmp, root / CHECKSUMS)
    return sums


def verify_checksums(directory: str | os.PathLike) -> None:
    """Refuse (ValueError, FileNotFoundError) a directory whose ``checksums.json`` is missing
    or malformed, one of whose listed files is missing or has another sha256, or that holds
    a file the list does not name."""
    root = Path(directory)
    listing = root / CHECKSUMS
    if not listing.is_file():
        raise FileNotFoundError(
            f"{listing}: no such file, so the scorer's files cannot be verified (saved by an "
            "older semdistill? retrain, or if you trust its files run "
            f"semdistill.scoring.checksums.write_checksums({str(root)!r}))"
        )
    try:
        sums = json.loads(listing.read_text())["sha256"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{listing}: not a checksum list: {err}") from err
    if not isinstance(sums, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in sums.items()
    ):
        raise ValueError(f"{listing}: not a checksum list (expected file name: sha256)")
    for name, expected in sums.items():
        path = root / name
        if ".." in Path(name).parts or not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {listing} but missing")
        if _sha256(path) != expected:
            raise ValueError(
                f"{path}: contents do not match the sha256 recorded in {listing} "
                "(the file was edited or corrupted)"
            )
    extra = sorted(set(_covered(root)) - set(sums))
    if extra:
        raise ValueError(f"{root / extra[0]}: not listed in {listing} (added after saving?)")
