"""The ``semdistill`` command line: thin wrappers around the pipeline jobs and the server."""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from semdistill.cli.commands import app

__all__ = ["app", "main"]


def main() -> None:
    """The console script: set the process's OpenMP wait policy, then run the CLI.

    torch and llama.cpp share one OpenMP runtime; with its default busy-wait policy their
    idle threads spin and starve each other on a small CPU. The policy is read when torch
    loads, so it is set here, before any import of torch, and only for this process.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    importlib.import_module("semdistill.cli.commands").app()


def __getattr__(name: str) -> object:
    """``app`` (the typer application), imported on first use."""
    if name == "app":
        return importlib.import_module("semdistill.cli.commands").app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
