"""Unit tests of the decoder's parts that need no model: the row cache, the token choice, the
row settings and the streamed text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semdistill.teacher.decoder.jobs import RowSpec, RowText
from semdistill.teacher.decoder.kvcache import SlotCache
from semdistill.teacher.decoder.sampling import choose, row_uniforms


def _kv(length: int, value: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.full((2, length, 4), value), torch.full((2, length, 4), -value))] * 3


def test_the_cache_keeps_rows_packed_and_reports_the_new_order() -> None:
    cache = SlotCache(3, 2, 4, dtype=torch.float32, device=torch.device("cpu"))
    for value, (length, copies) in enumerate([(5, 2), (7, 1), (3, 3)], start=1):
        cache.add(_kv(length, float(value)), copies)
    assert cache.rows == 6 and cache.lengths[:6].tolist() == [5, 5, 7, 3, 3, 3]
    order = cache.remove([0, 2, 5])
    assert order.tolist() == [3, 1, 4]  # the holes below the new end take the live rows above it
    assert cache.rows == 3 and cache.lengths[:3].tolist() == [3, 5, 3]
    for layer in range(3):
        assert torch.equal(cache.keys[layer][0, :, :3], torch.full((2, 3, 4), 3.0))
        assert torch.equal(cache.values[layer][1, :, :5], torch.full((2, 5, 4), -1.0))
    cache.reserve(3, 200)
    assert cache.capacity[1] >= 200 and cache.lengths[:3].tolist() == [3, 5, 3]
    assert torch.equal(cache.keys[2][1, :, :5], torch.full((2, 5, 4), 1.0))


def test_the_cache_grows_by_doubling_up_to_the_batch_it_serves() -> None:
    cache = SlotCache(3, 2, 4, dtype=torch.float32, device=torch.device("cpu"), max_rows=6)
    for copies, rows in [(1, 1), (1, 2), (1, 4), (2, 6), (2, 7)]:
        cache.add(_kv(3, 1.0), copies)
        assert cache.capacity[0] == rows  # a job wider than the batch still gets its rows


def test_choose_takes_the_argmax_or_inverts_the_cdf_within_the_nucleus() -> None:
    probs = torch.tensor([0.1, 0.5, 0.15, 0.25])
    logits = probs.log().expand(4, -1).contiguous()
    temperature = torch.tensor([0.0, 1.0, 1.0, 1.0])
    top_p = torch.tensor([1.0, 1.0, 1.0, 0.7], dtype=torch.float64)
    # natural order: cdf 0.1, 0.6, 0.75, 1.0; nucleus 0.7 keeps 0.5 + 0.25 (sorted: 1, 3)
    uniforms = torch.tensor([0.9, 0.05, 0.7, 0.8], dtype=torch.float64)
    assert choose(logits, temperature, top_p, uniforms).tolist() == [1, 0, 2, 3]
    draws = torch.rand(2000, dtype=torch.float64)
    picks = choose(
        logits[:1].expand(2000, -1),
        torch.ones(2000),
        torch.full((2000,), 0.7, dtype=torch.float64),
        draws,
    )
    assert set(picks.tolist()) == {1, 3}
    assert abs((picks == 1).float().mean().item() - 0.5 / 0.75) < 0.05


def test_row_uniforms_follow_the_collection_scheme() -> None:
    np.testing.assert_array_equal(row_uniforms((7, 3), 5), np.random.default_rng([7, 3]).random(5))
    assert not np.array_equal(row_uniforms(None, 5), row_uniforms(None, 5))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"seed": (-1, 0)}, "non-negative"),
        ({"stop": ("",)}, "non-empty"),
    ],
)
def test_row_settings_are_checked(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RowSpec(**{"max_new_tokens": 4, **settings})


def test_streamed_text_holds_back_a_possible_stop_and_cuts_at_it() -> None:
    pieces = {1: "Hello", 2: " wo", 3: "rld", 4: " END", 5: " more"}
    text = RowText(("END",))

    def decode(ids: list[int]) -> str:
        return "".join(pieces[i] for i in ids)

    sent = []
    for token in (1, 2, 3):
        assert not text.push(token, decode)
        sent.append(text.ready(final=False))
    assert "".join(sent) == "Hello wor"  # the last 2 characters could still start "END"
    assert text.push(4, decode)
    sent.append(text.ready(final=True))
    assert "".join(sent) == text.text == "Hello world "
