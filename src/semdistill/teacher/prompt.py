"""The short-answer prompt every teacher sees: a versioned instruction in the chat template."""

from __future__ import annotations

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
