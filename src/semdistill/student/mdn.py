"""The mixture density network: an MLP mapping a prompt representation to a Gaussian mixture."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal
from torch.nn.functional import softplus


@dataclass(frozen=True)
class MDNConfig:
    """Architecture of a :class:`MixtureDensityNetwork` (K, H, D of the paper)."""

    in_dim: int
    out_dim: int
    n_components: int = 5
    hidden_dim: int = 256
    depth: int = 3
    min_scale: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("in_dim", "out_dim", "n_components", "hidden_dim", "depth"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.min_scale > 0:
            raise ValueError(f"min_scale must be > 0, got {self.min_scale}")

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class MixtureDensityNetwork(nn.Module):
    """``x -> Σ_k π_k(x) N(μ_k(x), diag σ_k(x)²)`` with ``σ = softplus(·) + min_scale``.

    Inputs are standardised with the stored ``input_mean``/``input_std``; outputs are produced
    in a standardised target space and mapped back with ``target_mean``/``target_std``, so the
    returned distribution lives in the caller's target space.
    """

    def __init__(self, config: MDNConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.in_dim
        for _ in range(config.depth):
            layers += [nn.Linear(width, config.hidden_dim), nn.GELU()]
            width = config.hidden_dim
        self.body = nn.Sequential(*layers)
        k, d = config.n_components, config.out_dim
        self.head = nn.Linear(width, k + 2 * k * d)
        self.register_buffer("input_mean", torch.zeros(config.in_dim))
        self.register_buffer("input_std", torch.ones(config.in_dim))
        self.register_buffer("target_mean", torch.zeros(d))
        self.register_buffer("target_std", torch.ones(d))

    def forward(self, x: torch.Tensor) -> MixtureSameFamily:
        """The predicted mixture for a batch ``x`` of shape ``(n, in_dim)``."""
        k, d = self.config.n_components, self.config.out_dim
        out = self.head(self.body((x - self.input_mean) / self.input_std))
        logits, loc, raw_scale = out.split([k, k * d, k * d], dim=-1)
        loc = loc.unflatten(-1, (k, d)) * self.target_std + self.target_mean
        scale = (
            softplus(raw_scale.unflatten(-1, (k, d))) + self.config.min_scale
        ) * self.target_std
        return MixtureSameFamily(Categorical(logits=logits), Independent(Normal(loc, scale), 1))
