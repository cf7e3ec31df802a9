"""Versioned JSON files: the ``format``/``format_version`` header every file semdistill writes
carries, and the one check every reader makes of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HEADER_KEYS = ("format", "format_version")


@dataclass(frozen=True)
class FileFormat:
    """One kind of semdistill file: its ``name`` and ``version`` as written in the header,
    ``what`` it is called in errors, and ``remedy``, what to do with another version."""

    name: str
    version: int
    what: str
    remedy: str = ""

    def header(self) -> dict[str, Any]:
        """The header a file of this kind starts with."""
        return {"format": self.name, "format_version": self.version}

    def check(self, document: object, source: object) -> dict[str, Any]:
        """``document`` without its header, once the header says it is this kind and version;
        a ValueError naming ``source`` otherwise."""
        if not isinstance(document, dict) or document.get("format") != self.name:
            raise ValueError(f"{source}: not a semdistill {self.what} (format != {self.name!r})")
        if document.get("format_version") != self.version:
            remedy = f" ({self.remedy})" if self.remedy else ""
            raise ValueError(
                f"{source}: {self.what} has format version {document.get('format_version')!r}; "
                f"this semdistill reads version {self.version}{remedy}"
            )
        return {k: v for k, v in document.items() if k not in HEADER_KEYS}
