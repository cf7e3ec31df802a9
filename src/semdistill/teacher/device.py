"""The device a transformers model runs on and the dtype it runs in: names checked, auto
choices made."""

from __future__ import annotations

from pathlib import Path

import torch

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}


def torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype named ``dtype``, or a ValueError listing the accepted names."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def auto_dtype(device: torch.device) -> str:
    """The fastest dtype whose scores we trust on ``device``.

    bfloat16 on CUDA and on CPUs with native bf16 matrix units (AMX or AVX-512 BF16);
    float32 elsewhere, where bf16 matmuls are emulated (``benchmarks/bench_matmul.py``
    measures both).
    """
    if device.type == "cuda":
        return "bfloat16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "bfloat16" if ("amx_bf16" in flags or "avx512_bf16" in flags) else "float32"


def resolve_device(device: str) -> torch.device:
    """``device`` (auto, cpu, cuda, cuda:N, map) as a torch device; auto takes CUDA where
    present, map (a model spread over the GPUs) the first GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device("cuda" if device == "map" else device)
    except RuntimeError as err:
        raise ValueError(f"device must be auto, cpu, cuda[:N] or map, got {device!r}") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device here")
    if chosen.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda[:N] or map, got {device!r}")
    return chosen
