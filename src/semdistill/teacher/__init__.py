"""Base LLM teachers: last-prompt-token hidden states, sampled and greedy answers."""

from semdistill.teacher.base import ModelSpec, Teacher
from semdistill.teacher.loader import load_teacher, resolve_model

__all__ = ["ModelSpec", "Teacher", "load_teacher", "resolve_model"]
