"""The sampling cascade's recorded settings: how a risky prompt's answers are sampled and judged.

Above a risk threshold, a prompt is *refined*: N answers are sampled as the scorer's collection
sampled them (its N, temperature and token budget, each answer cut at its first line) and their
Semantic Entropy is computed with the rule judge and cosine threshold its training used. A
threshold may also come from a budget, the share of prompts to refine: the (1 - budget)
quantile of the risk of the scorer's validation prompts, recorded at export.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from semdistill.semantics.embed import Embedder
from semdistill.semantics.semantic_entropy import RuleEquivalence, semantic_entropies
from semdistill.store import CollectConfig
from semdistill.teacher.base import Teacher
from semdistill.teacher.decoder.jobs import RowSpec
from semdistill.training.prepare import se_judge_name

REFINE_KEY = "refine"


@dataclass(frozen=True)
class RefinedRisk:
    """A prompt's risk (Rényi-2 entropy, nats) and, when it was above the threshold and so
    refined, the Semantic Entropy (nats) of its sampled answers ``samples``."""

    risk: float
    refined: bool
    semantic_entropy: float | None
    samples: tuple[str, ...]

    @property
    def n_samples(self) -> int:
        """How many answers were sampled (0 when not refined)."""
        return len(self.samples)


@dataclass(frozen=True)
class RefineSettings:
    """How a refined prompt's answers are drawn and judged, as the scorer's collection and
    training did: ``n_samples`` answers at ``temperature`` of at most ``max_new_tokens``
    tokens, clustered by the rule judge at cosine ``se_cosine``. ``validation_risk`` holds the
    risk of the scorer's validation prompts, ascending, for :meth:`threshold`."""

    n_samples: int
    temperature: float
    max_new_tokens: int
    se_cosine: float
    validation_risk: tuple[float, ...]

    @classmethod
    def record(
        cls, config: CollectConfig, se_cosine: float, validation_risk: np.ndarray
    ) -> dict[str, Any]:
        """The JSON record of a scorer trained on a collection made with ``config``."""
        values = np.sort(np.asarray(validation_risk, dtype=np.float64))
        return {
            "n_samples": config.n_samples,
            "temperature": config.temperature,
            "max_new_tokens": config.max_new_tokens,
            "se_judge": se_judge_name(se_cosine),
            "se_cosine": float(se_cosine),
            "validation_risk": values.tolist(),
        }

    @classmethod
    def from_extra(cls, extra: dict[str, Any], source: str) -> RefineSettings:
        """The settings recorded in a manifest's ``extra``; a one-line ValueError naming
        ``source`` when it predates them or they are malformed."""
        record = extra.get(REFINE_KEY)
        if record is None:
            raise ValueError(
                f"{source} records no sampling settings for refinement (trained before they "
                "were recorded); retrain it with `semdistill train` to refine"
            )
        try:
            values = tuple(float(v) for v in record["validation_risk"])
            settings = cls(
                n_samples=int(record["n_samples"]),
                temperature=float(record["temperature"]),
                max_new_tokens=int(record["max_new_tokens"]),
                se_cosine=float(record["se_cosine"]),
                validation_risk=values,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: invalid '{REFINE_KEY}' record: {err}") from err
        if settings.n_samples < 1 or settings.max_new_tokens < 1 or not values:
            raise ValueError(f"{source}: invalid '{REFINE_KEY}' record")
        return settings

    def threshold(self, *, above: float | None = None, budget: float | None = None) -> float:
        """The risk above which a prompt is refined: ``above`` itself, or for ``budget`` (the
        share of prompts to refine, in (0, 1)) the (1 - budget) quantile of the validation
        prompts' risk. Exactly one of the two."""
        if (above is None) == (budget is None):
            raise ValueError("give exactly one of a refine threshold and a refine budget")
        if budget is None:
            assert above is not None
            if not np.isfinite(above):
                raise ValueError(f"the refine threshold must be finite, got {above}")
            return float(above)
        if not 0 < budget < 1:
            raise ValueError(f"the refine budget is a share of prompts in (0, 1), got {budget}")
        return float(np.quantile(self.validation_risk, 1 - budget))

    def rows(self, seed: int | None) -> list[RowSpec]:
        """The decoder rows of one refined prompt; sample ``j`` (1..N) draws the uniforms of
        ``default_rng([seed mod 2**64, j])``, or fresh ones without a seed."""
        return [
            RowSpec(
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                seed=None if seed is None else (seed % 2**64, j),
                first_line=True,
            )
            for j in range(1, self.n_samples + 1)
        ]

    def semantic_entropies(
        self, embedder: Embedder, answer_sets: Sequence[Sequence[str]]
    ) -> np.ndarray:
        """Semantic Entropy (nats) of each set of cleaned answers, ``(n,)``: the training's
        rule judge over ``embedder``'s embeddings."""
        flat = [answer for answers in answer_sets for answer in answers]
        embedded = embedder.encode(flat)
        splits = np.split(embedded, np.cumsum([len(a) for a in answer_sets])[:-1])
        judge = RuleEquivalence(None, threshold=self.se_cosine)
        return semantic_entropies(answer_sets, judge, embeddings=splits)

    def sample(
        self, teacher: Teacher, embedder: Embedder, prompts: Sequence[str], *, seed: int | None
    ) -> list[tuple[float, tuple[str, ...]]]:
        """Per formatted prompt, the Semantic Entropy of its N sampled answers and the answers
        (sample ``j`` seeded as in :meth:`rows`)."""
        if not prompts:
            return []
        fresh = np.random.default_rng().integers(2**63, size=len(prompts))
        samples = teacher.sample(
            list(prompts),
            n=self.n_samples,
            temperature=self.temperature,
            seeds=[int(s) for s in fresh] if seed is None else [seed % 2**64] * len(prompts),
            max_new_tokens=self.max_new_tokens,
        )
        entropies = self.semantic_entropies(embedder, samples)
        return [(float(h), tuple(a)) for h, a in zip(entropies, samples, strict=True)]
