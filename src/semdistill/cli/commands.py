"""The ``semdistill`` command line: thin wrappers around the library functions."""

from __future__ import annotations

import typer

from semdistill.cli.pipeline import collect, evaluate, presets, run, train, update
from semdistill.cli.serve import serve

app = typer.Typer(
    name="semdistill",
    help="Semantic Self-Distillation: single-pass semantic uncertainty for language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def root() -> None:
    """Semantic Self-Distillation: single-pass semantic uncertainty for language models."""


for command in (collect, serve, run, presets, train, update, evaluate):
    app.command()(command)
