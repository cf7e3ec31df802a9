"""The request and response bodies of the scoring routes and ``/healthz``.

Requests are strict (no coercion between strings, numbers and booleans), refuse unknown
fields, and hold only encodable text (:data:`~semdistill.serve.openai_schema.Text`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from semdistill.scoring.calibration import MEANING
from semdistill.serve.openai_schema import Text


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RiskRequest(_Request):
    """Questions to score before generating any answer."""

    prompts: list[Text] = Field(description="question texts (the prompt template is applied)")
    seed: int | None = Field(
        None, ge=0, description="fixes the refined questions' samples (sample j: [seed, j])"
    )


class RiskResponse(BaseModel):
    """Rényi-2 entropy per question (nats, higher = riskier), and probabilities if calibrated."""

    entropies: list[float]
    probabilities: list[float] | None = Field(
        None, description=f"{MEANING}; present only when the SSD is calibrated"
    )
    calibration: str | None = Field(None, description="the calibration method, if any")
    familiarity: list[float] | None = Field(
        None,
        description="per question, the share of the scorer's validation prompts farther from "
        "its training prompts (low = unlike its training set); present when the scorer has a "
        "familiarity model",
    )
    refined: list[bool] | None = Field(
        None, description="per question, whether it was refined; present when the server refines"
    )
    semantic_entropies: list[float | None] | None = Field(
        None, description="per question, the Semantic Entropy (nats) of its samples, if refined"
    )
    samples: list[list[str] | None] | None = Field(
        None, description="per question, its sampled answers, if refined"
    )


class VerifyRequest(_Request):
    """Candidate answers to one question."""

    prompt: Text
    answers: list[Text]


class VerifyResponse(BaseModel):
    """Log-likelihood of each answer under the SSD (higher = more plausible), in input order."""

    log_likelihoods: list[float]


class ChooseRequest(_Request):
    """Options to rank for one question."""

    prompt: Text
    options: list[Text]


class RankedOption(BaseModel):
    """One option and its log-likelihood."""

    option: str
    log_likelihood: float


class ChooseResponse(BaseModel):
    """Options ranked by log-likelihood, most likely first."""

    ranking: list[RankedOption]


class Load(BaseModel):
    """The decoder's load now."""

    queued: int = Field(
        description="completions waiting for their prefill and scoring requests admitted"
    )
    max_queue: int
    requests_in_flight: int = Field(description="completions prefilled or decoding")
    rows_in_flight: int = Field(description="answer rows being decoded")
    max_rows: int
    decoded_tokens: int = Field(description="answer tokens decoded since the start")


class Health(BaseModel):
    """What the service scores with, and its load."""

    status: str
    model: str
    model_sha256: str | None
    model_revision: str | None
    dtype: str
    layer: int
    layers: list[int]
    embedder: str
    prompt_version: str
    calibrated: bool
    policy: dict[str, object]
    refine: dict[str, object] | None = Field(
        None, description="the sampling cascade's threshold and sampling, when it is on"
    )
    load: Load
    version: str
