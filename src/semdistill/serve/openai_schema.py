"""The OpenAI chat-completion schema the guarded endpoint reads and writes.

The request is the supported subset of OpenAI's (unknown fields are refused); the response is
OpenAI's, plus the ``semdistill`` object (risk, verdict, verification).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from semdistill.scoring.policy import Verdict


# ---------------------------------------------------------------------- request schema
class TextPart(BaseModel):
    """A text part of a message's content."""

    type: Literal["text"]
    text: StrictStr


class Message(BaseModel):
    """One chat message; only the last user message is read."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None

    def text(self) -> str:
        """The message's text (text parts joined by newlines)."""
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    """Options of a streamed completion."""

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The supported subset of OpenAI's chat-completion request; other fields are refused."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2, description="0 = greedy decoding")
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stop: StrictStr | list[StrictStr] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None


# ---------------------------------------------------------------------- response schema
class Verification(BaseModel):
    """A choice's answer (its first line, as the student was trained on) and its score."""

    index: int
    answer: str
    log_likelihood: float | None = Field(
        description="log-density under the likelihood student; higher = more plausible"
    )


class Semdistill(BaseModel):
    """What SSD says about the answer, beside the standard fields."""

    question: str = Field(description="the text that was asked and scored")
    risk_entropy: float = Field(
        description="Rényi-2 entropy (nats) of the predicted answer distribution; "
        "higher = more likely wrong"
    )
    risk_probability: float | None = Field(
        description="calibrated probability of a wrong answer, when the SSD is calibrated"
    )
    calibration: str | None
    verdict: Verdict
    policy: dict[str, Any]
    verification: list[Verification] | None = None
    layer: int


class ResponseMessage(BaseModel):
    """The assistant's reply."""

    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    """One choice; ``finish_reason`` is ``"abstained"`` when the policy held the answer back."""

    index: int
    message: ResponseMessage
    finish_reason: str
    logprobs: None = None


class Usage(BaseModel):
    """Token counts of the request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """OpenAI's chat completion, plus the ``semdistill`` object."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[Choice]
    usage: Usage
    semdistill: Semdistill
