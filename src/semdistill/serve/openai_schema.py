"""The OpenAI chat-completion schema the guarded endpoint reads and writes.

The request is OpenAI's: the fields the server honours, and the other standard fields, which
are accepted at their neutral values (:meth:`ChatCompletionRequest.unsupported` names one set
to a value the server cannot honour); unknown fields are refused, and types are strict (no
``"5"`` for 5, no ``true`` for 1.0, no ``"yes"`` for true). Every string must be encodable
text (:data:`Text`: no lone surrogates). The response is OpenAI's, plus the ``semdistill``
object (risk, verdict, verification).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr

from semdistill.scoring.policy import Verdict


# ---------------------------------------------------------------------- request schema
def encodable(text: str) -> str:
    """``text`` if it can be encoded as UTF-8 (what the tokenizers need), else a ValueError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"not valid Unicode text: a lone surrogate at character {err.start}"
        ) from None
    return text


Text = Annotated[StrictStr, AfterValidator(encodable)]
"""A string of encodable text: a lone surrogate (``"\\ud800"``) is a validation error."""

_STRICT = ConfigDict(strict=True)


class TextPart(BaseModel):
    """A text part of a message's content."""

    model_config = _STRICT

    type: Literal["text"]
    text: Text


class Message(BaseModel):
    """One chat message; only the last user message is read."""

    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None

    def text(self) -> str:
        """The message's text (text parts joined by newlines)."""
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    """Options of a streamed completion (others, such as ``include_obfuscation``, ignored)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = False


class ResponseFormat(BaseModel):
    """The response format; only plain text is produced."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Text = "text"


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat-completion request; fields not in OpenAI's schema are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: Text
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2, description="0 = greedy decoding")
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Text | None = None
    # Standard fields accepted at their neutral values (see unsupported()) or ignored.
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Text | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: Text | dict[str, Any] | None = None
    modalities: list[Text] | None = None
    audio: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    metadata: dict[str, Text] | None = None
    store: bool | None = None
    service_tier: Text | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: Text | None = None
    verbosity: Text | None = None
    prompt_cache_key: Text | None = None
    safety_identifier: Text | None = None

    def unsupported(self) -> tuple[str, str] | None:
        """The first field set to a value this server cannot honour, and why; else None."""
        refused = [
            ("frequency_penalty", bool(self.frequency_penalty), "penalties are not supported"),
            ("presence_penalty", bool(self.presence_penalty), "penalties are not supported"),
            ("logit_bias", bool(self.logit_bias), "logit_bias is not supported"),
            ("logprobs", bool(self.logprobs), "logprobs are not supported"),
            ("top_logprobs", bool(self.top_logprobs), "logprobs are not supported"),
            (
                "response_format",
                self.response_format is not None and self.response_format.type != "text",
                "only the text response format is supported",
            ),
            ("tools", bool(self.tools), "tools are not supported"),
            ("tool_choice", self.tool_choice not in (None, "none", "auto"), "no tools to call"),
            ("functions", bool(self.functions), "functions are not supported"),
            ("function_call", self.function_call not in (None, "none", "auto"), "no functions"),
            (
                "modalities",
                self.modalities is not None and set(self.modalities) - {"text"},
                "only text output is supported",
            ),
            ("audio", self.audio is not None, "audio output is not supported"),
            ("web_search_options", self.web_search_options is not None, "no web search"),
        ]
        for field, set_, why in refused:
            if set_:
                return field, why
        return None


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
    familiarity: float | None = Field(
        None,
        description="share of the scorer's validation prompts farther from its training "
        "prompts than this one (0-1; low = unlike its training set, the risk extrapolates); "
        "absent for a scorer without a familiarity model",
    )
    verdict: Verdict
    policy: dict[str, Any]
    verification: list[Verification] | None = None
    refined: bool = Field(
        False,
        description="whether N answers were sampled to measure Semantic Entropy (the risk was "
        "above the server's refine threshold); in a stream's first event the entropy is still "
        "to come, in its last one",
    )
    semantic_entropy: float | None = Field(
        None, description="Semantic Entropy (nats) of the sampled answers, when refined"
    )
    samples: list[str] | None = Field(None, description="the sampled answers, when refined")
    layer: int = Field(description="the layer selected for the paper's single-layer input")
    layers: list[int] = Field(description="the hidden-state indices the students read")


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
