"""Student persistence: weights as safetensors, architecture and standardisation as JSON.

These functions write and read the pieces of a student (its fitted network, training
hyper-parameters, best epoch and metadata); ``SSDStudent.save`` / ``SSDStudent.load`` build
on them, so this module does not know the estimator.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from semdistill.formats import FileFormat
from semdistill.student.mdn import MDNConfig, MixtureDensityNetwork

FORMAT = FileFormat("semdistill.student", 2, "student config")
WEIGHTS_FILE = "student.safetensors"
CONFIG_FILE = "student.json"
_STANDARDISATION = ("input_mean", "input_std", "target_mean", "target_std")
HYPERPARAMETERS = (
    "targets",
    "learning_rate",
    "weight_decay",
    "batch_size",
    "max_epochs",
    "patience",
    "validation_fraction",
    "seed",
)


@dataclass(frozen=True)
class SavedStudent:
    """What a saved student holds: the network, the training hyper-parameters
    (:data:`HYPERPARAMETERS`), the best epoch and the metadata it was saved with."""

    model: MixtureDensityNetwork
    training: dict[str, Any]
    best_epoch: int | None
    metadata: dict[str, Any]


def save_student(
    path: str | os.PathLike,
    model: MixtureDensityNetwork,
    training: dict[str, Any],
    best_epoch: int | None,
    *,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write a fitted network and its training settings into the directory ``path``."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {
        name: tensor.detach().contiguous()
        for name, tensor in model.state_dict().items()
        if name not in _STANDARDISATION
    }
    weights_path = directory / WEIGHTS_FILE
    _atomic_write(weights_path, lambda tmp: save_file(weights, str(tmp)))
    document = {
        **FORMAT.header(),
        "library_version": version("semdistill"),
        "architecture": model.config.to_dict(),
        "standardisation": {name: getattr(model, name).tolist() for name in _STANDARDISATION},
        "training": {name: training[name] for name in HYPERPARAMETERS},
        "best_epoch": best_epoch,
        "weights_sha256": _sha256(weights_path),
        "metadata": metadata or {},
    }
    _atomic_write(
        directory / CONFIG_FILE,
        lambda tmp: tmp.write_text(json.dumps(document, indent=2)),
    )


def load_student(path: str | os.PathLike) -> SavedStudent:
    """The pieces written by :func:`save_student`, refusing corrupt or mismatched files."""
    directory = Path(path)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for file in (config_path, weights_path):
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no such file (is {directory} a saved student?)")
    document = _read_config(config_path)
    try:
        config = MDNConfig(**document["architecture"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{config_path}: invalid architecture: {err}") from err
    if _sha256(weights_path) != document["weights_sha256"]:
        raise ValueError(
            f"{weights_path}: contents do not match the checksum recorded in {config_path} "
            "(the file is corrupt or was replaced)"
        )
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights_path}: not a readable safetensors file: {err}") from err

    model = MixtureDensityNetwork(config)
    expected = {k: v.shape for k, v in model.state_dict().items() if k not in _STANDARDISATION}
    found = {k: v.shape for k, v in weights.items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()))
        raise ValueError(
            f"{weights_path}: tensors do not match the architecture in {config_path}: {diff[:4]}"
        )
    standardisation = document["standardisation"]
    for name in _STANDARDISATION:
        values = torch.as_tensor(standardisation.get(name, []), dtype=torch.float32)
        if values.shape != getattr(model, name).shape:
            raise ValueError(
                f"{config_path}: standardisation '{name}' has shape {tuple(values.shape)}, "
                f"expected {tuple(getattr(model, name).shape)}"
            )
        weights[name] = values
    model.load_state_dict(weights)
    model.eval()

    training = document["training"]
    return SavedStudent(
        model=model,
        training={name: training[name] for name in HYPERPARAMETERS},
        best_epoch=document.get("best_epoch"),
        metadata=document.get("metadata", {}),
    )


def _read_config(config_path: Path) -> dict[str, Any]:
    try:
        document = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path}: not valid JSON: {err}") from err
    FORMAT.check(document, config_path)
    missing = [
        key
        for key in ("architecture", "standardisation", "training", "weights_sha256")
        if key not in document
    ]
    if missing:
        raise ValueError(f"{config_path}: missing field(s) {', '.join(missing)}")
    return document


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
