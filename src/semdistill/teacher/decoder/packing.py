"""Linear layers packed in place for the CPU's kernels: one copy of each weight, faster calls.

oneDNN reorders a plain bfloat16 weight on every call (what that costs: ``docs/engine.md``);
a weight packed once avoids that. :func:`pack_linears` replaces a model's ``nn.Linear`` modules
by :class:`PackedLinear` modules holding the packed weight instead of the plain one, so the
model's own forward and the lean forward both run on it, and memory holds one copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

import torch
from torch import nn


def packing_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether oneDNN can pack linear weights of ``dtype`` for ``device`` (bfloat16 needs
    AVX-512 or AVX-NE-CONVERT cores: on AVX2-only ones the weights stay plain)."""
    return (
        device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and _packs(dtype)
    )


@cache
def _packs(dtype: torch.dtype) -> bool:
    """Whether this CPU's oneDNN packs and multiplies a small ``dtype`` weight."""
    try:
        PackedLinear(nn.Linear(8, 8, dtype=dtype))(torch.ones(2, 8, dtype=dtype))
    except RuntimeError:
        return False
    return True


class PackedLinear(nn.Module):
    """``x @ W.T + b`` on a weight packed for oneDNN; a drop-in for an ``nn.Linear``.

    Packed float32 kernels give a row the same bits in any batch of two or more rows; a lone
    row is computed beside a copy of itself, so it gets those bits too.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.dtype = weight.dtype
        self.pair_single = weight.dtype == torch.float32
        # the batch-size hint that keeps results row-invariant (bench_invariance.py)
        hint = 16 if weight.dtype == torch.float32 else 1
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), hint)
        self.register_buffer("packed", packed, persistent=False)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.in_features)
        single = self.pair_single and x.shape[0] == 1
        if single:
            x = x.expand(2, -1)
        out = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        if single:
            out = out[:1]
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


def release_mapped_weights(model: nn.Module) -> None:
    """Give every parameter and buffer of ``model`` (packed weights aside) memory of its own.

    transformers maps a checkpoint's file and its tensors are views of that mapping: while any
    of them lives, the whole file's pages stay resident beside the packed copies. Copying the
    few that are left (embeddings, norms) lets the mapping go.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, PackedLinear):
                continue
            for parameter in module.parameters(recurse=False):
                parameter.data = parameter.data.clone()
            for name, buffer in module.named_buffers(recurse=False):
                module._buffers[name] = buffer.clone()


def pack_linears(modules: Iterable[tuple[nn.Module, str]]) -> int:
    """Replace each ``parent.name`` ``nn.Linear`` by its :class:`PackedLinear`, one at a time
    (each plain weight is freed as its packed copy is made); how many were replaced."""
    count = 0
    for parent, name in modules:
        linear = getattr(parent, name)
        if isinstance(linear, nn.Linear):
            setattr(parent, name, PackedLinear(linear))
            count += 1
    return count
