"""Named, timed stages: wall seconds summed per stage name, optionally reported as each ends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console


class StageTimer:
    """Sums wall time per stage name; with a ``console``, reports each stage as it starts and
    ends."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed block as (more of) stage ``name``."""
        if self.console is not None:
            self.console.print(f"[bold cyan]▶[/] {name}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        if self.console is not None:
            self.console.print(f"[green]✓[/] {name} ({self.seconds[name]:.1f} s)")

    def note(self, text: str) -> None:
        """Report ``text`` between stages (nothing without a console)."""
        if self.console is not None:
            self.console.print(text)
