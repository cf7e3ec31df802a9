"""Tiny random-weight decoders of many families, built offline from transformers configs.

Each is saved as a model folder with the SmolLM2 tokenizer (hidden 64, 4 layers, 4 heads),
so a test loads it exactly as a user's model: ``load_teacher(folder, ...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import transformers as tf
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from semdistill.teacher import registry
from semdistill.teacher.base import clean_answer
from semdistill.teacher.hf import HFTeacher

_SIZE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}


def _llama31() -> tf.PreTrainedConfig:
    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    }
    return tf.LlamaConfig(**_SIZE, rope_parameters=rope, tie_word_embeddings=False)


def _gemma3_multimodal() -> tf.PreTrainedConfig:
    text = {**_SIZE, "head_dim": 16, "sliding_window": 32, "model_type": "gemma3_text"}
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 28,
        "patch_size": 14,
    }
    return tf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)


def _gpt2() -> tf.PreTrainedConfig:
    return tf.GPT2Config(n_embd=64, n_layer=4, n_head=4, n_positions=2048)


CONFIGS: dict[str, Callable[[], tf.PreTrainedConfig]] = {
    "llama-3.1": _llama31,
    "llama-3.2-tied": lambda: tf.LlamaConfig(**_SIZE, tie_word_embeddings=True),
    "mistral": lambda: tf.MistralConfig(**_SIZE, sliding_window=None),
    "mistral-window-context": lambda: tf.MistralConfig(**_SIZE, sliding_window=2048),
    "mistral-window-48": lambda: tf.MistralConfig(**_SIZE, sliding_window=48),
    "mistral-window-16": lambda: tf.MistralConfig(**_SIZE, sliding_window=16),
    "ministral": lambda: tf.MinistralConfig(**_SIZE, head_dim=16, sliding_window=32),
    "qwen2": lambda: tf.Qwen2Config(**_SIZE),
    "qwen3": lambda: tf.Qwen3Config(**_SIZE, head_dim=16),
    "olmo": lambda: tf.OlmoConfig(**_SIZE),
    "olmo-clip-qkv": lambda: tf.OlmoConfig(**_SIZE, clip_qkv=0.5),
    "olmo2": lambda: tf.Olmo2Config(**_SIZE),
    "gemma2": lambda: tf.Gemma2Config(**_SIZE, head_dim=16, sliding_window=32),
    "gemma3-text": lambda: tf.Gemma3TextConfig(**_SIZE, head_dim=16, sliding_window=32),
    "gemma3-multimodal": _gemma3_multimodal,
    "phi3": lambda: tf.Phi3Config(**_SIZE, pad_token_id=0),
    "granite": lambda: tf.GraniteConfig(
        **_SIZE,
        embedding_multiplier=12.0,
        residual_multiplier=0.22,
        logits_scaling=8.0,
        attention_multiplier=0.015625,
    ),
    "gpt2": _gpt2,
    "smollm3": lambda: tf.SmolLM3Config(**_SIZE, no_rope_layer_interval=4),
    "cohere": lambda: tf.CohereConfig(**_SIZE, logit_scale=0.0625),
}
"""Configurations users bring: the paper's families and their neighbours."""


def smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer, read from the packaged GGUF."""
    path = registry.registered_gguf("smollm2-135m")
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def build(name: str, root: Path, tokenizer: PreTrainedTokenizerBase) -> Path:
    """Save a random-weight model of configuration ``name`` (float32) and the tokenizer."""
    config = CONFIGS[name]()
    text = config.get_text_config()
    text.vocab_size = len(tokenizer)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(text, key, getattr(tokenizer, key))
    torch.manual_seed(0)
    if isinstance(config, tf.Gemma3Config):
        model = tf.Gemma3ForConditionalGeneration(config)
    else:
        model = tf.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger weights than the init's, so tokens are not near-tied
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.2)
    folder = root / name
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def reference(folder: Path, dtype: str) -> tf.PreTrainedModel:
    """A fresh copy of the model in ``folder`` (never packed): the model's own forward."""
    config = tf.AutoConfig.from_pretrained(folder)
    kind = (
        tf.Gemma3ForConditionalGeneration
        if isinstance(config, tf.Gemma3Config)
        else tf.AutoModelForCausalLM
    )
    return kind.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()


def greedy_answer(
    model: tf.PreTrainedModel, teacher: HFTeacher, ids: torch.Tensor, max_new_tokens: int
) -> str:
    """``model.generate``'s greedy answer to the prompt ``ids`` ``(1, tokens)``, cleaned as
    collection cleans answers, with the teacher's end-of-sequence tokens."""
    output = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=teacher.eos_ids,
        pad_token_id=teacher.eos_ids[0],
    )
    new = output[0, ids.shape[1] :]
    return clean_answer(teacher.tokenizer.decode(new, skip_special_tokens=True))
