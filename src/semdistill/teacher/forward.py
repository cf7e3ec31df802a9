"""A lean forward pass of a Llama-family decoder, on weights packed once for the CPU's kernels.

The engine and the packed prefill run the model through this instead of the transformers
forward: per layer one fused q/k/v matmul, one o matmul, one fused gate/up matmul and one down
matmul, on weights packed once for oneDNN on CPU (plain ``F.linear`` elsewhere); attention is
computed per prompt during prefill and per row during decoding, never across them.

- **less per-step work**: no per-call weight reordering (oneDNN reorders plain bfloat16
  weights on every call, which halves its speed on a single row), no cache concatenation, no
  mask tensors beyond one comparison per step;
- **batch invariance where the kernels allow it**: packed float32 matmuls give a row the same
  bits in any batch of two or more rows (a lone row is computed beside a copy of itself), and
  attention never mixes prompts or rows; float32 decoding attends by two matmuls and a softmax,
  since the fused kernel's bits for a row depend on its batch-mates' lengths on more than one
  thread. So in float32 a prompt's states, logits and answers do not depend on its
  batch-mates at all. Packed bfloat16 kernels are invariant for some
  matrix shapes and not for others (``benchmarks/bench_invariance.py`` measures it).

:meth:`LeanForward.build` compares the lean forward with the model's own on a few tokens and
refuses a model it does not reproduce.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from semdistill.teacher.kvcache import KV, SlotCache

ATTENTION_BLOCK = 64
"""Decoding attends over a multiple of this many positions (see :meth:`LeanForward.decode`)."""


def packing_available(device: torch.device) -> bool:
    """Whether oneDNN can pack linear weights for ``device``."""
    return (
        device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


class Linear:
    """``x @ W.T + b`` over the row-concatenation of ``weights`` (fused projections)."""

    def __init__(
        self,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor | None],
        *,
        pack: bool,
    ) -> None:
        weight = torch.cat([w.detach() for w in weights]).contiguous()
        self.bias = (
            None
            if all(b is None for b in biases)
            else torch.cat(
                [
                    w.new_zeros(w.shape[0]) if b is None else b.detach()
                    for w, b in zip(weights, biases, strict=True)
                ]
            )
        )
        self.pack = pack
        # float32 kernels give a lone row other bits than a row among others: pair it up
        self.pair_single = pack and weight.dtype == torch.float32
        # the batch-size hint that keeps results row-invariant (bench_invariance.py)
        hint = 16 if weight.dtype == torch.float32 else 1
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, hint) if pack else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pack:
            return F.linear(x, self.weight, self.bias)
        single = self.pair_single and x.shape[0] == 1
        if single:
            x = x.expand(2, -1)
        out = torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return out[:1] if single else out


@dataclass(frozen=True)
class _Layer:
    norm_in: torch.nn.Module
    qkv: Linear
    q_norm: torch.nn.Module | None
    k_norm: torch.nn.Module | None
    o: Linear
    norm_post: torch.nn.Module
    gate_up: Linear
    act: torch.nn.Module
    down: Linear


@dataclass(frozen=True)
class PrefillOutput:
    """Per prompt: states ``(prompts, layers, hidden)`` float32, next-token logits
    ``(prompts, vocab)`` float32 or None, and its keys and values or None."""

    states: torch.Tensor
    logits: torch.Tensor | None
    kv: list[KV] | None


class LeanForward:
    """The forward pass of a Llama-family ``model``: embedding, pre-norm attention and gated
    MLP layers with rotary positions, final norm and output head. Build it with :meth:`build`.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        base = model.base_model
        config = model.config
        self.device = model.device
        self.dtype = model.dtype
        pack = packing_available(self.device)
        self.embed = base.embed_tokens
        self.rotary = base.rotary_emb
        self.norm = base.norm
        head = model.get_output_embeddings()
        self.head = Linear([head.weight], [getattr(head, "bias", None)], pack=pack)
        self.vocab = int(head.weight.shape[0])
        self.n_layers = len(base.layers)
        self.hidden_size = int(config.hidden_size)
        first = base.layers[0].self_attn
        self.head_dim = int(first.head_dim)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.scaling = float(first.scaling)
        self.layers = [self._layer(layer, pack) for layer in base.layers]
        self._rotary_table: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def build(cls, model: PreTrainedModel, probe: Sequence[int]) -> LeanForward:
        """The lean forward of ``model``, checked against the model's own forward on the
        token ids ``probe``; a ValueError if the model is not laid out like Llama or computes
        something else."""
        name = type(model).__name__
        try:
            forward = cls(model)
        except (AttributeError, TypeError, ValueError) as err:
            raise ValueError(f"{name} is not a Llama-family decoder: {err}. {_SUPPORTED}") from err
        with torch.inference_mode():
            ids = torch.tensor([list(probe)], device=model.device)
            expected = model(input_ids=ids).logits[0, -1].float()
            got = forward.prefill([list(probe)], None, [forward.n_layers], full=True).logits
        assert got is not None
        difference = float((got[0] - expected).abs().max())
        scale = float(expected.abs().max())
        tolerance = 1e-3 if model.dtype == torch.float32 else 0.1
        if not difference <= tolerance * scale:
            raise ValueError(
                f"{name} computes something else than a Llama-family decoder (largest logit "
                f"difference {difference:.3g} against logits up to {scale:.3g}). {_SUPPORTED}"
            )
        return forward

    @staticmethod
    def _layer(layer: torch.nn.Module, pack: bool) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp
        if getattr(attn, "sliding_window", None) is not None:
            raise ValueError("sliding-window attention is not supported")
        projections = [attn.q_proj, attn.k_proj, attn.v_proj]
        return _Layer(
            norm_in=layer.input_layernorm,
            qkv=Linear([p.weight for p in projections], [p.bias for p in projections], pack=pack),
            q_norm=getattr(attn, "q_norm", None),
            k_norm=getattr(attn, "k_norm", None),
            o=Linear([attn.o_proj.weight], [attn.o_proj.bias], pack=pack),
            norm_post=layer.post_attention_layernorm,
            gate_up=Linear(
                [mlp.gate_proj.weight, mlp.up_proj.weight],
                [mlp.gate_proj.bias, mlp.up_proj.bias],
                pack=pack,
            ),
            act=mlp.act_fn,
            down=Linear([mlp.down_proj.weight], [mlp.down_proj.bias], pack=pack),
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
            self._rotary_table = (cos[0], sin[0])
        cos, sin = self._rotary_table
        return cos[positions], sin[positions]

    def _qkv(
        self, layer: _Layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries ``(tokens, heads, dim)``, keys and values ``(tokens, kv_heads, dim)``."""
        d, hq, hk = self.head_dim, self.heads, self.kv_heads
        qkv = layer.qkv(layer.norm_in(h))
        q = qkv[:, : hq * d].view(-1, hq, d)
        k = qkv[:, hq * d : (hq + hk) * d].view(-1, hk, d)
        v = qkv[:, (hq + hk) * d :].view(-1, hk, d)
        if layer.q_norm is not None:
            q = layer.q_norm(q)
        if layer.k_norm is not None:
            k = layer.k_norm(k)
        cos, sin = cos[:, None], sin[:, None]
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v

    def _mlp(self, layer: _Layer, h: torch.Tensor) -> torch.Tensor:
        gate, up = layer.gate_up(layer.norm_post(h)).chunk(2, dim=-1)
        return layer.down(layer.act(gate) * up)

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


_SUPPORTED = (
    "The transformers backend decodes Llama-family models (Llama, Mistral without sliding "
    "windows, Qwen2, Qwen3, SmolLM)"
)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _causal(n: int, prefix: int, device: torch.device) -> torch.Tensor:
    """``(1, 1, n, prefix + n)``: query ``t`` sees the prefix and suffix tokens up to ``t``."""
    keys = torch.arange(prefix + n, device=device)
    return (keys[None] <= prefix + torch.arange(n, device=device)[:, None])[None, None]
