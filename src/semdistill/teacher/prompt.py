"""The short-answer prompt every teacher sees: a versioned instruction in the chat template.

:func:`message_span` reports where the user's message lies in a formatted prompt, so that
the tokenizer can keep it literal (:mod:`semdistill.teacher.literal`).
"""

from __future__ import annotations

import weakref
from typing import Protocol

PROMPT_VERSION = "short-answer-v1"
PROMPT_TEMPLATE = "Answer the following question in a few words, with no explanation.\n{question}"


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer the prompt needs."""

    chat_template: str | None

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: object) -> str: ...


def user_message(question: str) -> str:
    """The user turn for ``question``: the short-answer instruction and the question."""
    text = question.strip()
    if not text:
        raise ValueError("question must be a non-empty string")
    return PROMPT_TEMPLATE.format(question=text)


def chat_prompt(tokenizer: ChatTokenizer, message: str) -> str:
    """``message`` as one user turn, ending where the model's reply starts.

    Uses the tokenizer's chat template with a generation prompt; a tokenizer without a
    chat template (a base model) gets the message followed by ``"\\nAnswer:"``.
    """
    if not tokenizer.chat_template:
        return f"{message}\nAnswer:"
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
    )


def format_prompt(tokenizer: ChatTokenizer, question: str) -> str:
    """The full short-answer prompt for ``question`` (see :func:`chat_prompt`)."""
    return chat_prompt(tokenizer, user_message(question))


_PROBES = ("SEMDISTILL_MESSAGE_PROBE", "semdistill message probe 2")
_frames: weakref.WeakKeyDictionary[object, tuple[str, str] | None] = weakref.WeakKeyDictionary()


def template_frame(tokenizer: ChatTokenizer) -> tuple[str, str] | None:
    """The text :func:`chat_prompt` puts before and after a message; None when the template
    does not insert the message verbatim (then no span can be told). Cached per tokenizer."""
    if tokenizer in _frames:
        return _frames[tokenizer]
    first = chat_prompt(tokenizer, _PROBES[0])
    frame = None
    if first.count(_PROBES[0]) == 1:
        head, tail = first.split(_PROBES[0])
        if chat_prompt(tokenizer, _PROBES[1]) == head + _PROBES[1] + tail:
            frame = (head, tail)
    _frames[tokenizer] = frame
    return frame


def message_span(tokenizer: ChatTokenizer, prompt: str) -> tuple[int, int] | None:
    """The characters of ``prompt`` that are the user's message (the instruction and the
    question of :func:`format_prompt`), if ``prompt`` is a :func:`chat_prompt`; else None."""
    frame = template_frame(tokenizer)
    if frame is None:
        return None
    head, tail = frame
    end = len(prompt) - len(tail)
    if end < len(head) or not (prompt.startswith(head) and prompt.endswith(tail)):
        return None
    return len(head), end
