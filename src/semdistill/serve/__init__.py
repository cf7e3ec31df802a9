"""Serving stage: the FastAPI app, its OpenAI-compatible routes and the guarded model.

The names below are imported from their modules on first use, so FastAPI is loaded only by
what serves (``semdistill serve`` imports this package inside the command).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from semdistill.serve.app import create_app
    from semdistill.serve.limits import default_allowed_hosts, exposure_warning
    from semdistill.serve.service_limits import ServiceLimits

_MODULES = {
    "ServiceLimits": "semdistill.serve.service_limits",
    "create_app": "semdistill.serve.app",
    "default_allowed_hosts": "semdistill.serve.limits",
    "exposure_warning": "semdistill.serve.limits",
}

__all__ = ["ServiceLimits", "create_app", "default_allowed_hosts", "exposure_warning"]


def __getattr__(name: str) -> object:
    """The names of ``__all__``, each imported from its module on first use."""
    if name in _MODULES:
        return getattr(importlib.import_module(_MODULES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
