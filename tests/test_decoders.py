"""Any decoder: tiny random-weight models of many families, each computed exactly or refused.

Every configuration of ``tiny_decoders.CONFIGS`` loads as a user's model folder. In float32
and bfloat16 the states collection stores must match the model's own forward (a fresh copy,
never packed) at every layer within the dtype's tolerance, and in float32 the greedy answers
must equal ``generate``. The lean forward must take only the models it computes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as tf
from typer.testing import CliRunner

import tiny_decoders
from semdistill.cli import app
from semdistill.teacher import load_teacher
from semdistill.teacher.checkpoint import load_hf_model
from semdistill.teacher.decoder import backends, packing
from semdistill.teacher.decoder.generic import GroupCache
from semdistill.teacher.decoder.kvcache import SlotCache
from semdistill.teacher.hf import HFTeacher
from semdistill.teacher.loader import resolve_model

QUESTIONS = [
    "What is the capital of France?",
    "Who wrote the play Hamlet?",
    "Which planet is known as the Red Planet?",
    "In which year did the Berlin Wall fall?",
]
LEAN = {"llama-3.1", "llama-3.2-tied", "mistral", "mistral-window-context", "qwen2", "qwen3"}
STATE_TOLERANCE = {"float32": 1e-5, "bfloat16": backends.TOLERANCE[torch.bfloat16]}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decoders")
    tokenizer = tiny_decoders.smollm2_tokenizer()
    return {name: tiny_decoders.build(name, root, tokenizer) for name in tiny_decoders.CONFIGS}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(tiny_decoders.CONFIGS))
def test_collection_matches_the_models_own_forward(
    name: str, dtype: str, folders: dict[str, Path]
) -> None:
    teacher = load_teacher(str(folders[name]), dtype=dtype, device="cpu")
    assert isinstance(teacher, HFTeacher)
    assert teacher.decoder.path == ("lean" if name in LEAN else "generic"), teacher.decoder
    prompts = [teacher.format_prompt(q) for q in QUESTIONS]
    sets = dict(
        teacher.answer_sets(prompts, n=2, temperature=1.0, seeds=[0, 1, 2, 3], max_new_tokens=6)
    )
    reference = tiny_decoders.reference(folders[name], dtype)
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([teacher.prompt_token_ids(prompt)])
        with torch.inference_mode():
            own = reference(input_ids=ids, output_hidden_states=True).hidden_states
            expected = torch.stack([h[0, -1] for h in own]).float()
            stored = torch.from_numpy(sets[i].hidden)
            assert stored.shape == expected.shape
            for layer in range(expected.shape[0]):
                difference = backends.relative_difference(stored[layer], expected[layer])
                assert difference <= STATE_TOLERANCE[dtype], (layer, difference)
            if dtype == "float32":
                answer = tiny_decoders.greedy_answer(reference, teacher, ids, 6)
                assert sets[i].greedy == answer


@pytest.mark.parametrize(
    "name", ["smollm3", "mistral-window-48", "granite", "olmo-clip-qkv", "phi3", "gemma3-text"]
)
def test_the_lean_forward_never_takes_a_model_it_does_not_compute(
    name: str, folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # with every configuration rule switched off, the check against the model's own forward
    # (or the layout itself) still sends these models to the generic forward
    monkeypatch.setattr(backends, "lean_refusal", lambda model: None)
    for dtype in ("float32", "bfloat16"):
        model, tokenizer, spec = load_hf_model(resolve_model(str(folders[name])), dtype, "cpu")
        teacher = HFTeacher(model, tokenizer, spec, dtype=dtype)
        assert teacher.decoder.path == "generic", teacher.decoder
        assert "differs" in teacher.decoder.reason or "not laid out" in teacher.decoder.reason


def test_a_cpu_that_cannot_pack_a_dtype_runs_the_lean_forward_on_plain_weights(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # AVX2-only cores: oneDNN refuses to pack bfloat16 weights ("bf16 path needs the cpu
    # support avx_ne_convert or avx512bw, avx512vl and avx512dq")
    def refuse(weight: torch.Tensor, hint: int) -> torch.Tensor:
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support")

    monkeypatch.setattr(packing.torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    packing._packs.cache_clear()
    try:
        teacher = load_teacher(str(folders["qwen2"]), dtype="float32", device="cpu")
    finally:
        packing._packs.cache_clear()
    assert teacher.decoder.path == "lean", teacher.decoder
    assert not any(isinstance(m, packing.PackedLinear) for m in teacher.model.modules())


def test_configuration_rules_name_their_reason(folders: dict[str, Path]) -> None:
    reasons = {
        "mistral-window-48": "sliding window (48 tokens) is shorter than its context",
        "smollm3": "model type 'smollm3'",
        "gemma3-multimodal": "not a text-only decoder",
        "ministral": "model type 'ministral'",
    }
    for name, reason in reasons.items():
        model, *_ = load_hf_model(resolve_model(str(folders[name])), "float32", "cpu")
        assert reason in str(backends.lean_refusal(model))
    config = tf.LlamaConfig(**tiny_decoders._SIZE)
    for key, value, reason in [
        ("sliding_window", 16, "sliding window"),
        ("no_rope_layers", [1, 0, 1, 1], "no rotary positions"),
        ("layer_types", ["full_attention", "sliding_attention"] * 2, "other attention types"),
        ("final_logit_softcapping", 30.0, "final_logit_softcapping"),
        ("residual_multiplier", 0.2, "residual_multiplier"),
        ("clip_qkv", 8.0, "clip_qkv"),
    ]:
        changed = tf.LlamaConfig(**{**config.to_dict(), key: value})
        assert reason in str(backends.lean_refusal(tf.LlamaForCausalLM(changed))), key
    dynamic = tf.LlamaConfig(
        **tiny_decoders._SIZE, rope_parameters={"rope_type": "dynamic", "factor": 2.0}
    )
    assert "depends on the sequence length" in str(
        backends.lean_refusal(tf.LlamaForCausalLM(dynamic))
    )
    assert backends.lean_refusal(tf.LlamaForCausalLM(config)) is None


def test_asking_for_the_lean_forward_where_it_does_not_apply_names_the_reason(
    folders: dict[str, Path],
) -> None:
    with pytest.raises(ValueError, match=r"lean forward cannot run .*sliding window \(48"):
        load_teacher(str(folders["mistral-window-48"]), dtype="float32", decoder="lean")
    with pytest.raises(ValueError, match="decoder must be one of auto, lean, generic"):
        load_teacher(str(folders["mistral"]), dtype="float32", decoder="fast")


def test_group_cache_closes_up_like_the_slot_cache() -> None:
    # the engine applies the order either cache returns to its per-row state
    def kv(length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.randn(2, length, 4), torch.randn(2, length, 4))]

    slots = SlotCache(1, 2, 4, dtype=torch.float32, device=torch.device("cpu"))
    groups = GroupCache(torch.device("cpu"))
    for copies, length in [(3, 5), (2, 7), (4, 6)]:
        slots.add(kv(length), copies)
        cache = tf.DynamicCache()
        cache.update(torch.randn(1, 2, length, 4), torch.randn(1, 2, length, 4), 0)
        groups.add(cache, copies)
    for drop in ([1, 7], [0, 1, 2], [2]):
        assert groups.remove(drop).tolist() == slots.remove(drop).tolist()
        assert groups.rows == slots.rows
        assert sorted(r for g in groups.groups for r in g.rows) == list(range(groups.rows))
        for group in groups.groups:
            assert group.cache.layers[0].keys.shape[0] == len(group.rows)


def test_a_model_that_cannot_load_gets_one_line_and_exit_2(tmp_path: Path) -> None:
    folder = tmp_path / "t5"
    tf.T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, vocab_size=64).save_pretrained(
        folder
    )
    result = CliRunner().invoke(
        app,
        ["collect", "--model", str(folder), "--questions", "trivia", "--out", str(tmp_path / "s")],
    )
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "t5" in result.output and "causal language model" in result.output


@pytest.mark.slow
def test_an_image_text_checkpoint_collects_end_to_end_on_the_generic_forward(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "store"
    args = ["collect", "--model", str(folders["gemma3-multimodal"]), "--questions", "trivia"]
    args += ["--out", str(out), "--limit", "4", "--samples", "2", "--max-new-tokens", "4"]
    args += ["--dtype", "bfloat16", "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["decoder"]["path"] == "generic"
    assert "not a text-only decoder" in manifest["decoder"]["reason"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_generic_answers_do_not_depend_on_other_prompts(
    dtype: str, folders: dict[str, Path]
) -> None:
    # each job decodes in a batch of its own: one prompt at a time, a narrow batch that
    # refills as rows end, or all prompts at once give the same states and answers
    teacher = load_teacher(str(folders["gemma3-text"]), dtype=dtype, device="cpu")
    assert isinstance(teacher, HFTeacher) and teacher.decoder.path == "generic"
    prompts = [teacher.format_prompt(q) for q in [*QUESTIONS, "Who painted the Mona Lisa?"]]
    settings = {"n": 3, "temperature": 1.0, "max_new_tokens": 8}

    def collect(rows: int, indices: list[int]) -> dict[int, tuple]:
        narrow = HFTeacher(
            teacher.model, teacher.tokenizer, teacher.spec, dtype=dtype, decode_rows=rows
        )
        chosen = [prompts[i] for i in indices]
        sets = narrow.answer_sets(chosen, seeds=indices, **settings)
        return {indices[i]: (s.greedy, s.samples, s.hidden.tobytes()) for i, s in sets}

    together = collect(64, list(range(len(prompts))))
    assert collect(5, list(range(len(prompts)))) == together
    alone = {}
    for i in range(len(prompts)):
        alone.update(collect(64, [i]))
    assert alone == together
