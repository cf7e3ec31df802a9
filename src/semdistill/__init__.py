"""Semantic Self-Distillation: single-pass semantic uncertainty for language models."""

from semdistill.student import SSDStudent

__version__ = "0.1.0"

__all__ = ["SSDStudent", "__version__"]
