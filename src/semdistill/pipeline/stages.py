"""Named, timed stages of a run, each reported as it starts and ends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console


class Stages:
    """Times named stages and reports each one as it ends."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed block as stage ``name``."""
        self.console.print(f"[bold cyan]▶[/] {name}")
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        self.console.print(f"[green]✓[/] {name} ({self.seconds[name]:.1f} s)")
