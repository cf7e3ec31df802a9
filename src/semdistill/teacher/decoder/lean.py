"""A lean forward pass of a Llama-layout decoder, on the model's own (packed) modules.

The engine and the packed prefill run a model that :mod:`~semdistill.teacher.decoder.backends` has
verified through this instead of the transformers forward: per layer the model's own norms,
q/k/v/o and gate/up/down projections (packed in place for oneDNN on CPU, see
:mod:`~semdistill.teacher.decoder.packing`), activation and rotary table; attention is computed per
prompt during prefill and per row during decoding, never across them.

- **less per-step work**: no cache concatenation, no mask tensors beyond one comparison per
  step, no per-call weight reordering;
- **batch invariance where the kernels allow it**: packed float32 matmuls give a row the same
  bits in any batch of two or more rows (a lone row is computed beside a copy of itself), and
  attention never mixes prompts or rows; float32 decoding attends by two matmuls and a softmax,
  since the fused kernel's bits for a row depend on its batch-mates' lengths on more than one
  thread. So in float32 a prompt's states, logits and answers do not depend on its
  batch-mates at all. Packed bfloat16 kernels are invariant for some
  matrix shapes and not for others (``benchmarks/bench_invariance.py`` measures it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from semdistill.teacher.decoder.kvcache import KV, SlotCache

ATTENTION_BLOCK = 64
"""Decoding attends over a multiple of this many positions (see :meth:`LeanForward.decode`)."""


@dataclass(frozen=True)
class _Layer:
    norm_in: nn.Module
    q: nn.Module
    k: nn.Module
    v: nn.Module
    q_norm: nn.Module | None
    k_norm: nn.Module | None
    o: nn.Module
    norm_post: nn.Module
    gate: nn.Module
    up: nn.Module
    act: nn.Module
    down: nn.Module


@dataclass(frozen=True)
class PrefillOutput:
    """Per prompt: states ``(prompts, layers, hidden)`` float32, next-token logits
    ``(prompts, vocab)`` float32 or None, and its cache (what the backend's decode cache
    ``add`` takes: keys and values per layer here) or None."""

    states: torch.Tensor
    logits: torch.Tensor | None
    kv: list[Any] | None


class LeanForward:
    """The forward pass of a Llama-layout ``model``: embedding, pre-norm attention and gated
    MLP layers with rotary positions, final norm and output head, on the model's own modules.

    Whether it computes a given model is for :func:`~semdistill.teacher.decoder.backends.
    choose_forward` to decide (known model types, configuration, and a check against the
    model's own forward); built on anything else it raises AttributeError or TypeError.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        base = model.base_model
        config = model.config
        self.device = model.device
        self.dtype = model.dtype
        self.embed = base.embed_tokens
        self.rotary = base.rotary_emb
        self.norm = base.norm
        self.head = model.get_output_embeddings()
        self.vocab = int(self.head.out_features)
        self.n_layers = len(base.layers)
        self.hidden_size = int(config.hidden_size)
        first = base.layers[0].self_attn
        self.head_dim = int(first.head_dim)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.scaling = float(first.scaling)
        self.layers = [self._layer(layer) for layer in base.layers]
        self._rotary_table: tuple[torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def _layer(layer: nn.Module) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp
        return _Layer(
            norm_in=layer.input_layernorm,
            q=attn.q_proj,
            k=attn.k_proj,
            v=attn.v_proj,
            q_norm=getattr(attn, "q_norm", None),
            k_norm=getattr(attn, "k_norm", None),
            o=attn.o_proj,
            norm_post=layer.post_attention_layernorm,
            gate=mlp.gate_proj,
            up=mlp.up_proj,
            act=mlp.act_fn,
            down=mlp.down_proj,
        )

    def new_cache(self, max_rows: int | None = None) -> SlotCache:
        """An empty cache for a decode batch of usually at most ``max_rows`` rows."""
        return SlotCache(
            self.n_layers,
            self.kv_heads,
            self.head_dim,
            dtype=self.dtype,
            device=self.device,
            max_rows=max_rows,
        )

    # ------------------------------------------------------------------ pieces
    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``(tokens, head_dim)`` at ``positions``, from a table grown as needed."""
        needed = int(positions.max()) + 1
        if self._rotary_table is None or self._rotary_table[0].shape[0] < needed:
            size = max(256, 1 << (needed - 1).bit_length())
            probe = torch.zeros(1, 1, self.head_dim, dtype=self.dtype, device=self.device)
            ids = torch.arange(size, device=self.device)[None]
            cos, sin = self.rotary(probe, ids)
            self._rotary_table = (cos[0].to(self.dtype), sin[0].to(self.dtype))
        cos, sin = self._rotary_table
        return cos[positions], sin[positions]

    def _qkv(
        self, layer: _Layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries ``(tokens, heads, dim)``, keys and values ``(tokens, kv_heads, dim)``."""
        d = self.head_dim
        x = layer.norm_in(h)
        q = layer.q(x).view(-1, self.heads, d)
        k = layer.k(x).view(-1, self.kv_heads, d)
        v = layer.v(x).view(-1, self.kv_heads, d)
        if layer.q_norm is not None:
            q = layer.q_norm(q)
        if layer.k_norm is not None:
            k = layer.k_norm(k)
        cos, sin = cos[:, None], sin[:, None]
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v

    def _mlp(self, layer: _Layer, h: torch.Tensor) -> torch.Tensor:
        x = layer.norm_post(h)
        return layer.down(layer.act(layer.gate(x)) * layer.up(x))

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor,
        *,
        fused: bool = True,
    ) -> torch.Tensor:
        """Attention of ``q`` ``(batch, heads, queries, dim)`` over ``k``, ``v``
        ``(batch, kv_heads, keys, dim)``; ``(batch, queries, heads * dim)``.

        Each key head serves its group of query heads without being copied: the group's
        queries go one after the other, and ``mask`` ``(batch, 1, group * queries, keys)``
        says which keys each of them sees. ``fused`` runs PyTorch's fused kernel, which keeps
        the scores in float32 in any dtype; otherwise two matmuls and a softmax, whose result
        for a row does not depend on its batch-mates (the fused kernel's does on more than one
        thread when the rows' lengths differ)."""
        batch, heads, queries, dim = q.shape
        grouped = q.reshape(batch, self.kv_heads, heads // self.kv_heads * queries, dim)
        if fused:
            out = F.scaled_dot_product_attention(grouped, k, v, attn_mask=mask, scale=self.scaling)
        else:
            scores = torch.matmul(grouped, k.transpose(-1, -2)) * self.scaling
            out = torch.matmul(torch.softmax(scores.masked_fill(~mask, float("-inf")), -1), v)
        return out.view(batch, heads, queries, dim).transpose(1, 2).reshape(batch, queries, -1)

    # ------------------------------------------------------------------ prefill
    @torch.inference_mode()
    def prefill(
        self,
        suffixes: Sequence[Sequence[int]],
        prefix: KV | None,
        layers: Sequence[int],
        *,
        full: bool,
    ) -> PrefillOutput:
        """Run ``suffixes`` (each after the ``prefix`` keys and values every one attends to)
        as one batch of tokens, attention kept within each prompt.

        Captures each prompt's last-token state at ``layers`` (0: embedding output, ``i``:
        output of decoder layer ``i``, the last: after the final norm). With ``full`` the whole
        model runs and the next-token logits and each prompt's keys and values (prefix
        included) are returned; without, the forward stops after the deepest of ``layers``.
        """
        lengths = [len(s) for s in suffixes]
        if not lengths or min(lengths) < 1:
            raise ValueError("every prompt must have at least one token after the shared prefix")
        p = 0 if prefix is None else int(prefix[0][0].shape[1])
        ids = torch.tensor([t for s in suffixes for t in s], device=self.device)
        starts = torch.tensor([0, *lengths[:-1]]).cumsum(0).tolist()
        ends = torch.tensor([s + n - 1 for s, n in zip(starts, lengths, strict=True)])
        positions = torch.cat([torch.arange(p, p + n) for n in lengths]).to(self.device)
        cos, sin = self._rotary(positions)
        group = self.heads // self.kv_heads
        masks = {n: _causal(n, p, self.device).repeat(1, 1, group, 1) for n in set(lengths)}
        wanted = set(layers)
        deepest = self.n_layers if full else max(layers)
        captured: dict[int, torch.Tensor] = {}
        kv: list[KV] = [[] for _ in lengths]
        h = self.embed(ids)
        if 0 in wanted:
            captured[0] = h[ends].float()
        for index, layer in enumerate(self.layers[: min(deepest, self.n_layers)], start=1):
            q, k, v = self._qkv(layer, h, cos, sin)
            attended = []
            for slot, (start, n) in enumerate(zip(starts, lengths, strict=True)):
                keys = k[start : start + n].transpose(0, 1)
                values = v[start : start + n].transpose(0, 1)
                if prefix is not None:
                    keys = torch.cat([prefix[index - 1][0], keys], dim=1)
                    values = torch.cat([prefix[index - 1][1], values], dim=1)
                if full:
                    kv[slot].append((keys, values))
                queries = q[start : start + n].transpose(0, 1)[None]
                attended.append(self._attend(queries, keys[None], values[None], masks[n])[0])
            h = h + layer.o(torch.cat(attended))
            h = h + self._mlp(layer, h)
            if index in wanted and index < self.n_layers:
                captured[index] = h[ends].float()
        logits = None
        if deepest == self.n_layers:
            last = self.norm(h[ends])  # the norm is per token: only the last ones are needed
            captured[self.n_layers] = last.float()
            if full:
                logits = self.head(last).float()
        states = torch.stack([captured[layer] for layer in layers], dim=1)
        return PrefillOutput(states, logits, kv if full else None)

    # ------------------------------------------------------------------ decoding
    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, cache: SlotCache) -> torch.Tensor:
        """Feed each of the cache's rows its next token; ``(rows, vocab)`` float32 logits.

        The new keys and values are written at each row's length, which then grows by one.
        """
        n = cache.rows
        positions = cache.lengths[:n]
        # Attention reads a width rounded up to whole kernel blocks: a row's result then does
        # not depend on how far its batch-mates reach (the kernel's vector tail would).
        width = -(-(int(positions.max()) + 1) // ATTENTION_BLOCK) * ATTENTION_BLOCK
        cache.reserve(n, width)
        positions = cache.lengths[:n]
        cos, sin = self._rotary(positions)
        mask = torch.arange(width, device=self.device)[None] <= positions[:, None]
        mask = mask[:, None, None].expand(n, 1, self.heads // self.kv_heads, width)
        rows = torch.arange(n, device=self.device)
        # float32 rows attend by matmuls, so a row's bits do not depend on its batch-mates
        exact = self.dtype == torch.float32
        h = self.embed(tokens)
        for index, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, h, cos, sin)
            keys, values = cache.keys[index], cache.values[index]
            keys[rows, :, positions] = k
            values[rows, :, positions] = v
            attended = self._attend(
                q[:, :, None], keys[:n, :, :width], values[:n, :, :width], mask, fused=not exact
            )
            h = h + layer.o(attended[:, 0])
            h = h + self._mlp(layer, h)
        cache.lengths[:n] += 1
        return self.head(self.norm(h)).float()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _causal(n: int, prefix: int, device: torch.device) -> torch.Tensor:
    """``(1, 1, n, prefix + n)``: query ``t`` sees the prefix and suffix tokens up to ``t``."""
    keys = torch.arange(prefix + n, device=device)
    return (keys[None] <= prefix + torch.arange(n, device=device)[:, None])[None, None]
