"""The decode batch's keys and values: one buffer per layer, written in place.

Rows are kept packed at the front of the buffers, ``(row capacity, kv_heads, length capacity,
head_dim)``, each row's tokens from position 0 up to its own length. A step writes one token
per row at its length; attention reads ``[:rows, :, :longest + 1]`` under a mask built from the
lengths. Admitting a prompt copies its keys and values into new rows; a finished row is
replaced by the last one. The buffers grow (and shrink) by reallocation, rarely.
"""

from __future__ import annotations

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer, keys and values ``(kv_heads, length, head_dim)`` of one prompt."""

_LENGTH_STEP = 64


class SlotCache:
    """Keys and values of the decode rows of a model of ``n_layers`` layers; room for more
    rows grows by doubling, up to ``max_rows`` (or the rows asked for, if more)."""

    def __init__(
        self,
        n_layers: int,
        kv_heads: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
        max_rows: int | None = None,
    ) -> None:
        self.max_rows = max_rows
        self.n_layers, self.kv_heads, self.head_dim = n_layers, kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.rows = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.lengths = torch.zeros(0, dtype=torch.long, device=device)
        self._allocate(0, 0)

    @property
    def capacity(self) -> tuple[int, int]:
        """(rows, tokens per row) the buffers hold now."""
        return int(self.lengths.shape[0]), int(self.keys[0].shape[2]) if self.keys else 0

    def _allocate(self, rows: int, length: int) -> None:
        """Reallocate to ``rows`` x ``length``, keeping the live rows."""
        shape = (rows, self.kv_heads, length, self.head_dim)
        live, kept = self.rows, min(length, self.capacity[1])
        keys, values = [], []
        for i in range(self.n_layers):
            k = torch.zeros(shape, dtype=self.dtype, device=self.device)
            v = torch.zeros(shape, dtype=self.dtype, device=self.device)
            if live:
                k[:live, :, :kept] = self.keys[i][:live, :, :kept]
                v[:live, :, :kept] = self.values[i][:live, :, :kept]
            keys.append(k)
            values.append(v)
        self.keys, self.values = keys, values
        lengths = torch.zeros(rows, dtype=torch.long, device=self.device)
        lengths[:live] = self.lengths[:live]
        self.lengths = lengths

    def reserve(self, rows: int, length: int) -> None:
        """Make room for ``rows`` live rows of up to ``length`` tokens each."""
        have_rows, have_length = self.capacity
        if rows <= have_rows and length <= have_length:
            return
        doubled = 2 * have_rows if self.max_rows is None else min(2 * have_rows, self.max_rows)
        new_rows = max(rows, doubled, 1)
        new_length = max(length, have_length)
        new_length = -(-new_length // _LENGTH_STEP) * _LENGTH_STEP
        self._allocate(new_rows, new_length)

    def shrink(self, length: int) -> None:
        """Give back memory: at most twice the rows and ``length`` tokens the live rows need."""
        have_rows, have_length = self.capacity
        rows = max(self.rows, 1)
        target = -(-max(length, 1) // _LENGTH_STEP) * _LENGTH_STEP
        if have_rows > 4 * rows or have_length > 2 * target:
            self._allocate(min(have_rows, 2 * rows), min(have_length, target))

    def add(self, kv: KV, copies: int) -> None:
        """Append ``copies`` rows holding the keys and values ``kv`` of one prompt."""
        length = int(kv[0][0].shape[1])
        start = self.rows
        self.reserve(start + copies, length)
        for i, (k, v) in enumerate(kv):
            self.keys[i][start : start + copies, :, :length] = k
            self.values[i][start : start + copies, :, :length] = v
        self.lengths[start : start + copies] = length
        self.rows += copies

    def remove(self, drop: list[int]) -> torch.Tensor:
        """Remove the rows ``drop``, moving the last live rows into their places.

        Returns the new order: ``order[i]`` is the old index of the row now at ``i``; apply it
        to anything kept per row.
        """
        order, moves = compaction(self.rows, drop)
        for hole, source in moves:
            length = int(self.lengths[source])
            for buffers in (self.keys, self.values):
                for buffer in buffers:
                    buffer[hole, :, :length] = buffer[source, :, :length]
            self.lengths[hole] = length
        self.rows = len(order)
        return torch.tensor(order, dtype=torch.long, device=self.device)


def compaction(rows: int, drop: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
    """How ``rows`` rows close up once ``drop`` leave: the last kept rows fill the holes.

    Returns ``order`` (``order[i]`` is the old index of the row that ends at ``i``) and the
    ``(hole, source)`` moves that make it.
    """
    dropped = set(drop)
    kept = rows - len(dropped)
    holes = sorted(r for r in dropped if r < kept)
    sources = [r for r in range(kept, rows) if r not in dropped]
    order = list(range(kept))
    for hole, source in zip(holes, sources, strict=True):
        order[hole] = source
    return order, list(zip(holes, sources, strict=True))
