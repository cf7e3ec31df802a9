"""What every command shares: one-line errors on stderr and the errors a user can cause."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

err_console = Console(stderr=True)
USER_ERRORS = (ValueError, FileNotFoundError, ImportError)


def fail(err: Exception) -> typer.Exit:
    """Print ``err`` as one red line on stderr; the caller raises the returned exit (code 2)."""
    message = escape(" ".join(str(err).split()))  # "[ray]" is text, not rich markup
    err_console.print(
        f"[bold red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True
    )
    return typer.Exit(code=2)


def command_line() -> str:
    """The ``semdistill`` command line this process runs, as the report records it."""
    return " ".join(["semdistill", *sys.argv[1:]])
