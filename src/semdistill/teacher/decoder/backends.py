"""Which forward runs a model: the lean one where it is verified, the model's own elsewhere.

The lean forward (:mod:`~semdistill.teacher.decoder.lean`) reimplements a Llama-layout decoder, so
it must prove itself per model, not per family name. A model takes it only if

1. its model type is one it is known to compute (:data:`LEAN_MODEL_TYPES`);
2. no configuration key rules it out (sliding windows shorter than the context, layers
   without rotary positions or of other attention types, multipliers, soft-caps, ``clip_qkv``,
   partial or length-dependent rotary embeddings) and its layers hold no module it ignores;
3. it reproduces the model's own forward on a prompt longer than the template: every layer's
   last-token state and the logits of a few decoding steps, within a tolerance set by the
   dtype (:data:`TOLERANCE`).

Everything else takes the generic forward (:mod:`~semdistill.teacher.decoder.generic`), which is the
model's own. :class:`DecoderPath` records which was taken and why.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from transformers import PreTrainedModel

from semdistill.teacher.decoder.generic import GenericForward
from semdistill.teacher.decoder.lean import LeanForward
from semdistill.teacher.decoder.packing import (
    pack_linears,
    packing_available,
    release_mapped_weights,
)

_log = logging.getLogger(__name__)

DECODERS = ("auto", "lean", "generic")
LEAN_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
"""Model types whose layers the lean forward computes (each still checked per model)."""

TOLERANCE: dict[torch.dtype, float] = {
    torch.float32: 1e-4,
    torch.bfloat16: 0.1,
    torch.float16: 0.02,
}
"""Largest relative RMS difference from the model's own forward, per dtype, at any layer's
state or decoding step's logits: above what two correct forwards differ by in that dtype,
below what a forward computing another model differs by. Set on measurements, see
``docs/engine.md`` ("Tolerances")."""

_RULED_OUT_KEYS = (
    "embedding_multiplier",
    "residual_multiplier",
    "attention_multiplier",
    "logits_scaling",
    "logit_scale",
    "final_logit_softcapping",
    "attn_logit_softcapping",
    "clip_qkv",
)
_STATIC_ROPE = ("default", "linear", "llama3", "yarn")
_LAYER_PARTS = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
_ATTENTION_PARTS = {"q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"}
_MLP_PARTS = {"gate_proj", "up_proj", "down_proj", "act_fn"}


@dataclass(frozen=True)
class DecoderPath:
    """Which forward runs the model (``"lean"`` or ``"generic"``) and why."""

    path: Literal["lean", "generic"]
    reason: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return asdict(self)


Forward = LeanForward | GenericForward


def lean_refusal(model: PreTrainedModel) -> str | None:
    """Why the lean forward must not compute ``model``, or None if nothing rules it out."""
    config = model.config
    if config.get_text_config() is not config:
        return f"{type(model).__name__} is not a text-only decoder"
    kind = getattr(config, "model_type", None)
    if kind not in LEAN_MODEL_TYPES:
        return f"model type {kind!r} is not one it is verified for ({', '.join(LEAN_MODEL_TYPES)})"
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", None) is False:
        window = None
    context = getattr(config, "max_position_embeddings", None)
    if window is not None and (context is None or window < context):
        return f"its sliding window ({window} tokens) is shorter than its context ({context})"
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"}:
        return f"it has layers of other attention types ({', '.join(sorted(layer_types))})"
    no_rope = getattr(config, "no_rope_layers", None)
    if no_rope is not None and not all(no_rope):
        return "some of its layers have no rotary positions"
    for key in _RULED_OUT_KEYS:
        if getattr(config, key, None) is not None:
            return f"its config sets {key}"
    rope = getattr(config, "rope_parameters", None) or {}
    partial = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None))
    if partial not in (None, 1, 1.0):
        return f"its rotary embedding covers part of each head ({partial})"
    if rope.get("rope_type", "default") not in _STATIC_ROPE:
        return f"its rotary embedding ({rope.get('rope_type')!r}) depends on the sequence length"
    return _unknown_parts(model)


def _unknown_parts(model: PreTrainedModel) -> str | None:
    layers = getattr(model.base_model, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not hasattr(model.base_model, "norm"):
        return "it has no decoder `layers` list and final `norm`"
    for layer in layers:
        for module, known in (
            (layer, _LAYER_PARTS),
            (getattr(layer, "self_attn", None), _ATTENTION_PARTS),
            (getattr(layer, "mlp", None), _MLP_PARTS),
        ):
            if module is None:
                return "its layers lack self_attn or mlp"
            extra = ", ".join(sorted({name for name, _ in module.named_children()} - known))
            if extra:
                return f"its layers hold modules the lean forward ignores ({extra})"
    return None


def relative_difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    """``||got - expected|| / ||expected||`` in float64: a relative RMS difference."""
    got, expected = got.double(), expected.double()
    return float((got - expected).norm() / expected.norm().clamp_min(1e-30))


@torch.inference_mode()
def lean_difference(lean: LeanForward, model: PreTrainedModel, probe: Sequence[int]) -> float:
    """The largest relative RMS difference between ``lean`` and the model's own forward on
    the token ids ``probe``: every layer's last-token state, then the logits of 4 decoding
    steps, each side from its own cache, fed the model's own greedy tokens."""
    ids = torch.tensor([list(probe)], device=lean.device)
    own = model(input_ids=ids, output_hidden_states=True, use_cache=True)
    expected = torch.stack([h[0, -1] for h in own.hidden_states]).float()
    out = lean.prefill([list(probe)], None, range(lean.n_layers + 1), full=True)
    assert out.logits is not None and out.kv is not None
    worst = max(
        relative_difference(out.states[0], expected),
        relative_difference(out.logits[0], own.logits[0, -1].float()),
    )
    cache = lean.new_cache()
    cache.add(out.kv[0], 1)
    for _ in range(4):
        token = own.logits[:, -1].argmax(-1)
        own = model(input_ids=token[:, None], cache=own.cache, use_cache=True)
        worst = max(
            worst, relative_difference(lean.decode(token, cache)[0], own.logits[0, -1].float())
        )
    return worst


def choose_forward(
    model: PreTrainedModel, probe: Sequence[int], decoder: str = "auto"
) -> tuple[Forward, DecoderPath]:
    """The forward that runs ``model`` and why (see the module); ``decoder`` ``"lean"``
    insists on the lean one (a ValueError naming the reason where it does not apply),
    ``"generic"`` takes the model's own.

    On a CPU whose kernels pack weights, a model taking the lean path has its decoder's
    linear layers packed in place (:mod:`~semdistill.teacher.decoder.packing`): its own forward
    then runs on the packed weights too, and memory holds one copy.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    name = type(model).__name__
    if decoder == "generic":
        return _generic(model, "asked for")
    refusal = lean_refusal(model)
    if refusal is None and getattr(model, "hf_device_map", None):
        refusal = "the model is spread over devices (device_map)"
    if refusal is None:
        try:
            lean = _lean(model)
            difference = lean_difference(lean, model, probe)
        except (AttributeError, TypeError, ValueError, RuntimeError) as err:
            lean, difference = None, float("nan")
            refusal = f"it is not laid out like Llama ({type(err).__name__}: {err})"
        tolerance = TOLERANCE.get(model.dtype, TOLERANCE[torch.bfloat16])
        if lean is not None and difference <= tolerance:
            path = DecoderPath(
                "lean",
                f"model type {model.config.model_type!r}, reproduces the model's own forward "
                f"within {difference:.2g} (tolerance {tolerance:g} in {str(lean.dtype)[6:]})",
            )
            _log.info("%s runs on the lean forward: %s", name, path.reason)
            return lean, path
        if lean is not None:
            refusal = (
                f"it differs from the model's own forward by {difference:.2g} "
                f"(tolerance {tolerance:g} in {str(lean.dtype)[6:]})"
            )
    if decoder == "lean":
        raise ValueError(f"the lean forward cannot run {name}: {refusal}")
    return _generic(model, f"lean forward not used: {refusal}")


def _lean(model: PreTrainedModel) -> LeanForward:
    if packing_available(model.device, model.dtype):
        parts = [
            (module, name)
            for layer in model.base_model.layers
            for module, names in (
                (layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
                (layer.mlp, ("gate_proj", "up_proj", "down_proj")),
            )
            for name in names
        ]
        pack_linears([*parts, (model, _head_name(model))])
        release_mapped_weights(model)
    return LeanForward(model)


def _head_name(model: PreTrainedModel) -> str:
    head = model.get_output_embeddings()
    return next(name for name, module in model.named_children() if module is head)


def _generic(model: PreTrainedModel, reason: str) -> tuple[GenericForward, DecoderPath]:
    forward = GenericForward(model)
    path = DecoderPath("generic", reason)
    _log.info("%s runs on the generic forward: %s", type(model).__name__, reason)
    return forward, path
