"""The token ids of a formatted prompt, and the template prefix every short-answer prompt
starts with."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from semdistill.teacher.literal import literal_ids
from semdistill.teacher.prompt import format_prompt, message_span


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The token ids of a formatted prompt: its special tokens come from the template only,
    the user's message is text even where it spells one (see :mod:`semdistill.teacher.
    literal`), and a tokenizer that starts every text with BOS gets it where the template
    leaves it out (a base model's plain prompt)."""
    ids = literal_ids(tokenizer, prompt, message_span(tokenizer, prompt))
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos) and tokenizer("a")["input_ids"][0] == bos:
        ids = [bos, *ids]
    return ids


def template_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The token ids every short-answer prompt starts with (its chat template and instruction)."""
    probes = ["Who?", "7 + 8", "(x) Zebra", "«Éire»"]
    ids = [encode_prompt(tokenizer, format_prompt(tokenizer, q)) for q in probes]
    common = 0
    while all(len(i) > common and i[common] == ids[0][common] for i in ids):
        common += 1
    return ids[0][:common]
