"""The collection config: everything that changes the collected data, stored in the manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from semdistill.teacher.base import ModelSpec


@dataclass(frozen=True)
class CollectConfig:
    """Everything that changes the collected data; two runs may share a store only if equal.

    ``questions`` is the question source (a set name or an absolute file path),
    ``question_seed`` the seed the loader used to pick ``limit`` questions and
    ``split_seed`` the seed of the train/validation/test assignment.
    """

    model: ModelSpec
    backend: str
    dtype: str
    prompt_template: str
    prompt_version: str
    n_samples: int
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    seed: int
    embedder: str
    embedding_dim: int
    judge: str
    questions: str
    limit: int | None
    question_seed: int
    split_seed: int
    n_layers: int
    hidden_size: int

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict (the model spec nested)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CollectConfig:
        """The config stored by :meth:`to_dict`; a ValueError names missing or unknown keys."""
        names = {field.name for field in fields(cls)}
        missing = sorted(names - data.keys())
        unknown = sorted(data.keys() - names)
        if missing or unknown:
            raise ValueError(
                f"collect config has missing keys {missing} and unknown keys {unknown}"
            )
        return cls(**{**data, "model": ModelSpec.from_dict(data["model"])})

    def pools_with(self, other: CollectConfig) -> bool:
        """Whether the two collections' rows can be pooled: same model, dtype, prompt,
        embedder and N."""
        return (self.model, self.dtype, self.prompt_version, self.embedder, self.n_samples) == (
            other.model,
            other.dtype,
            other.prompt_version,
            other.embedder,
            other.n_samples,
        )

    def differences(self, other: CollectConfig) -> list[str]:
        """One ``field: self-value != other-value`` line per differing field.

        A GGUF model's location is not compared when both hashes are known and equal: the
        same file may sit at another path on another machine.
        """
        mine, theirs = _flatten(self.to_dict()), _flatten(other.to_dict())
        if self.model.sha256 is not None and self.model.sha256 == other.model.sha256:
            mine.pop("model.location")
            theirs.pop("model.location")
        return [
            f"{key}: {mine[key]!r} != {theirs[key]!r}" for key in mine if mine[key] != theirs[key]
        ]


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
