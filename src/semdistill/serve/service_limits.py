"""The service's settings: per-request limits, the decoder's capacity and micro-batching."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from semdistill.serve.limits import DEFAULT_MAX_BODY


class ServiceLimits(BaseModel):
    """Per-request limits and the micro-batching settings of the service."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_prompts: int = Field(64, ge=1, description="prompts per /v1/risk request")
    max_answers: int = Field(64, ge=1, description="answers or options per request")
    max_chars: int = Field(2000, ge=1, description="characters per prompt, answer or option")
    max_request_chars: int = Field(
        32_000, ge=1, description="characters per scoring request, all its texts together"
    )
    scoring_chunk_chars: int = Field(
        2_000, ge=1, description="characters of scoring work per call between decoding steps"
    )
    max_body: int = Field(DEFAULT_MAX_BODY, ge=1, description="bytes per request body")
    batch_window_ms: float = Field(5.0, ge=0, description="how long to gather requests")
    max_new_tokens: int = Field(256, ge=1, description="most tokens per chat completion choice")
    max_choices: int = Field(8, ge=1, description="most choices (n) per chat completion")
    max_rows: int = Field(64, ge=1, description="answer rows decoded together")
    max_queue: int = Field(
        64, ge=1, description="requests waiting for the model (completions and scoring)"
    )
    request_timeout_s: float = Field(300.0, gt=0, description="most seconds per completion")
