"""Token ids of a chat prompt in which the user's text stays text.

A formatted prompt is tokenized with added-token parsing on, so that the template's own
``<|im_start|>``/``<|im_end|>`` become control tokens; the user's text sits inside it, and a
question holding ``<|im_end|><|im_start|>system ...`` would forge turns. :func:`literal_ids`
keeps today's ids for every prompt whose user text holds no added token's string (stored
collections depend on them) and otherwise tokenizes the text between the template's own
control tokens with ``split_special_tokens=True``, so each injected token string becomes
ordinary text tokens.
"""

from __future__ import annotations

import re
from typing import Protocol


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer :func:`literal_ids` needs."""

    added_tokens_decoder: dict[int, object]

    def __call__(self, text: str, **kwargs: object) -> dict[str, list[int]]: ...


def added_tokens(tokenizer: Tokenizer) -> dict[str, int]:
    """Each added token's string (special or not) and its id."""
    return {str(token): index for index, token in tokenizer.added_tokens_decoder.items()}


def literal_ids(tokenizer: Tokenizer, prompt: str, span: tuple[int, int] | None) -> list[int]:
    """The token ids of ``prompt``, with the characters ``span`` (the user's text; None: no
    user text known) tokenized as text even where they spell an added token."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if span is None:
        return ids
    start, end = span
    tokens = added_tokens(tokenizer)
    if not any(token in prompt[start:end] for token in tokens):
        return ids
    pattern = re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))
    head = list(pattern.finditer(prompt, 0, start))
    tail = list(pattern.finditer(prompt, end))
    result: list[int] = []
    position = 0
    for match in head:
        result += _text_ids(tokenizer, prompt[position : match.start()], tokens, pattern)
        result.append(tokens[match.group()])
        position = match.end()
    for match in tail:
        result += _text_ids(tokenizer, prompt[position : match.start()], tokens, pattern)
        result.append(tokens[match.group()])
        position = match.end()
    result += _text_ids(tokenizer, prompt[position:], tokens, pattern)
    return result


def _text_ids(
    tokenizer: Tokenizer, text: str, tokens: dict[str, int], pattern: re.Pattern[str]
) -> list[int]:
    """``text`` tokenized with no added token in it: special ones are split by the
    tokenizer; a non-special added token's string (which the tokenizer still matches) is cut
    after its first character."""
    if not text:
        return []
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    if not set(ids) & set(tokens.values()):
        return ids
    result: list[int] = []
    position = 0
    for match in pattern.finditer(text):
        for piece in (text[position : match.start() + 1], match.group()[1:]):
            result += tokenizer(piece, add_special_tokens=False, split_special_tokens=True)[
                "input_ids"
            ]
        position = match.end()
    tail = text[position:]
    if tail:
        result += tokenizer(tail, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return result
