"""Each row's next token: the argmax, or an inverse-CDF draw at a uniform fixed for that row.

A sampled row draws its ``t``-th token by inverting the CDF of ``softmax(logits / T)`` at its
``t``-th uniform number. With ``top_p`` below 1 the tokens are first sorted by probability and
cut to the smallest set holding ``top_p`` of the mass (the nucleus), then the CDF is taken over
that set. Rows share the computation but never each other's numbers, so a row's tokens depend
on its logits and uniforms alone.
"""

from __future__ import annotations

import numpy as np
import torch


def row_uniforms(seed: tuple[int, int] | None, count: int) -> np.ndarray:
    """``count`` uniforms in [0, 1): those of ``default_rng([seed, stream])`` for
    ``seed = (seed, stream)``, fresh ones from the operating system's entropy for None."""
    if seed is None:
        return np.random.default_rng().random(count)
    return np.random.default_rng(list(seed)).random(count)


def choose(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    uniforms: torch.Tensor,
) -> torch.Tensor:
    """One token per row of ``logits`` ``(rows, vocab)``.

    ``temperature`` ``(rows,)`` float32: 0 takes the argmax; ``top_p`` ``(rows,)`` float64;
    ``uniforms`` ``(rows,)`` float64, the draw of each sampled row.
    """
    chosen = logits.argmax(-1)
    sampled = (temperature > 0).nonzero().squeeze(1)
    if not len(sampled):
        return chosen
    probs = torch.softmax(logits[sampled] / temperature[sampled, None], dim=-1, dtype=torch.float64)
    draw = uniforms[sampled, None]
    nucleus = top_p[sampled] < 1
    whole = (~nucleus).nonzero().squeeze(1)
    if len(whole):
        cdf = probs[whole].cumsum(-1)
        picks = torch.searchsorted(cdf, draw[whole] * cdf[:, -1:], right=True).squeeze(1)
        chosen[sampled[whole]] = picks.clamp_(max=logits.shape[-1] - 1)
    cut = nucleus.nonzero().squeeze(1)
    if len(cut):
        ordered, order = probs[cut].sort(dim=-1, descending=True)
        before = ordered.cumsum(-1) - ordered
        ordered = ordered.masked_fill(before >= top_p[sampled[cut], None], 0.0)
        cdf = ordered.cumsum(-1)
        picks = torch.searchsorted(cdf, draw[cut] * cdf[:, -1:], right=True)
        picks = picks.clamp_(max=logits.shape[-1] - 1)
        chosen[sampled[cut]] = order.gather(1, picks).squeeze(1)
    return chosen
