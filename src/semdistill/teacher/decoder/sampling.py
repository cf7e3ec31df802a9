"""Each row's next token: the argmax, or an inverse-CDF draw at a uniform fixed for that row.

A sampled row draws its ``t``-th token by inverting the CDF of ``softmax(logits / T)`` at its
``t``-th uniform number. With ``top_p`` below 1 the tokens are first sorted by probability and
cut to the smallest set holding ``top_p`` of the mass (the nucleus), then the CDF is taken over
that set. Rows share the computation but never each other's numbers, so a row's tokens depend
on its logits and uniforms alone.

A temperature below :data:`MIN_TEMPERATURE` is greedy. Rows whose ``logits / T`` overflow in
the logits' dtype (tiny temperatures) are divided again in float64, where no float32 logit
over a float32 temperature overflows; other rows keep the logits' dtype, so their draws are
unchanged.

:func:`token_scores` gives a chosen token's log-probability and the entropy of the
distribution it came from, at temperature 1, in float64: what a scored row records.
"""

from __future__ import annotations

import numpy as np
import torch

MIN_TEMPERATURE = float(torch.finfo(torch.float32).tiny)
"""1.18e-38, float32's smallest normal number: lower (subnormal) temperatures decode greedily.
Nothing is lost: two distinct float32 logits of magnitude ~1 differ by at least 6e-8, which
over such a temperature is a gap of 5e30 nats, so the softmax is one-hot (up to exact ties)
and a draw would take the argmax anyway."""


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

    ``temperature`` ``(rows,)`` float32: below :data:`MIN_TEMPERATURE` (0 included) takes the
    argmax; ``top_p`` ``(rows,)`` float64; ``uniforms`` ``(rows,)`` float64, the draw of each
    sampled row.
    """
    chosen = logits.argmax(-1)
    sampled = (temperature >= MIN_TEMPERATURE).nonzero().squeeze(1)
    if not len(sampled):
        return chosen
    scaled = logits[sampled] / temperature[sampled, None]
    probs = torch.softmax(scaled, dim=-1, dtype=torch.float64)
    overflowed = (~torch.isfinite(scaled).all(-1)).nonzero().squeeze(1)
    if len(overflowed):
        rows = sampled[overflowed]
        wide = logits[rows].double() / temperature[rows, None].double()
        probs[overflowed] = torch.softmax(wide, dim=-1)
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


def token_scores(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``logits`` ``(rows, vocab)``: the log-probability of ``tokens[row]`` under
    ``softmax(logits)`` and that distribution's entropy (nats), both float64 ``(rows,)``."""
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    chosen = logprobs.gather(-1, tokens[:, None].to(logprobs.device)).squeeze(1)
    probs = logprobs.exp()
    entropy = -torch.where(probs > 0, probs * logprobs, 0.0).sum(-1)
    return chosen, entropy
