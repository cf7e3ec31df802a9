"""Semantic entropy (Farquhar et al. 2024), discrete count-based variant, with pluggable judges.

Answers are clustered greedily by bidirectional equivalence and SE is the Shannon entropy
(natural log) of the cluster frequencies. Three judges share the `Equivalence` protocol:
an NLI checkpoint (`NLIEquivalence`), the base LLM asked a yes/no question
(`LLMEquivalence`) and a cheap rule (`RuleEquivalence`: normalised string match or embedding
cosine similarity).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from scipy.stats import entropy

from semdistill.semantics.judge import GreedyGenerator, normalize_answer, parse_yes_no


class Equivalence(Protocol):
    """A judge of whether two answers (to one question) mean the same."""

    @property
    def name(self) -> str:
        """Identifier of the judge, including anything that changes its verdicts."""
        ...

    def equivalent(
        self, pairs: Sequence[tuple[str, str]], *, question: str | None = None
    ) -> np.ndarray:
        """Boolean array, one per pair: True iff each answer entails the other."""
        ...


def _check_pairs(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    checked = list(pairs)
    for pair in checked:
        if len(pair) != 2 or not all(isinstance(text, str) for text in pair):
            raise ValueError(f"pairs must hold (str, str) tuples, got {pair!r}")
    return checked


class _EmbeddingLookup:
    """Embedding function backed by precomputed vectors keyed by answer text."""

    def __init__(self, texts: Sequence[str], embeddings: np.ndarray) -> None:
        vectors = np.asarray(embeddings, dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise ValueError(
                f"embeddings must have shape ({len(texts)}, e) to match the answers, "
                f"got {vectors.shape}"
            )
        self._table: dict[str, np.ndarray] = {}
        for text, vector in zip(texts, vectors, strict=True):
            self._table.setdefault(text, vector)

    def __call__(self, texts: list[str]) -> np.ndarray:
        missing = [text for text in texts if text not in self._table]
        if missing:
            raise ValueError(f"no precomputed embedding for answer {missing[0]!r}")
        return np.stack([self._table[text] for text in texts])


class RuleEquivalence:
    """Equivalent iff the normalised strings match, or (with ``embed``) cosine >= threshold.

    ``embed`` maps a list of texts to an ``(m, e)`` array of sentence embeddings; without it
    only the string rule is used. ``question`` is ignored. A zero embedding vector has cosine
    similarity 0 with everything.
    """

    def __init__(
        self,
        embed: Callable[[list[str]], np.ndarray] | None = None,
        threshold: float = 0.85,
    ) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
        self.embed = embed
        self.threshold = float(threshold)

    @property
    def name(self) -> str:
        """Judge identifier, e.g. ``rule-v1(string|cosine>=0.85)``."""
        if self.embed is None:
            return "rule-v1(string)"
        return f"rule-v1(string|cosine>={self.threshold:g})"

    def with_embeddings(self, texts: Sequence[str], embeddings: np.ndarray) -> RuleEquivalence:
        """The same rule, embedding answers by lookup in precomputed ``(len(texts), e)`` rows."""
        return RuleEquivalence(_EmbeddingLookup(texts, embeddings), self.threshold)

    def equivalent(
        self, pairs: Sequence[tuple[str, str]], *, question: str | None = None
    ) -> np.ndarray:
        """Boolean array, one per pair (see class docstring)."""
        checked = _check_pairs(pairs)
        result = np.array([normalize_answer(a) == normalize_answer(b) for a, b in checked])
        if self.embed is None or result.all():
            return result.astype(bool)
        todo = np.flatnonzero(~result)
        texts = list(dict.fromkeys(t for k in todo for t in checked[k]))
        vectors = np.asarray(self.embed(texts), dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise ValueError(
                f"embed must return shape ({len(texts)}, e) for {len(texts)} texts, "
                f"got {vectors.shape}"
            )
        if not np.all(np.isfinite(vectors)):
            raise ValueError("embed returned NaN or infinite values")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
        row = {text: i for i, text in enumerate(texts)}
        a_idx = np.array([row[checked[k][0]] for k in todo])
        b_idx = np.array([row[checked[k][1]] for k in todo])
        cosine = np.sum(unit[a_idx] * unit[b_idx], axis=1)
        result[todo] = cosine >= self.threshold
        return result.astype(bool)


class NLIEquivalence:
    """Bidirectional entailment under a transformers MNLI sequence-classification checkpoint.

    ``model`` is a hub id (e.g. ``microsoft/deberta-large-mnli``) or a local directory. A
    direction (premise -> hypothesis) holds iff the argmax class is the label named
    ``entailment`` in ``config.id2label`` (case-insensitive). ``question`` is ignored, as in
    the SE research code's DeBERTa judge.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        batch_size: int = 32,
        device: str = "cpu",
        max_length: int = 256,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._model_id = str(model)
        self._tokenizer = AutoTokenizer.from_pretrained(model)
        self._model = AutoModelForSequenceClassification.from_pretrained(model).to(device).eval()
        id2label = self._model.config.id2label
        matches = [int(i) for i, label in id2label.items() if str(label).lower() == "entailment"]
        if len(matches) != 1:
            raise ValueError(
                f"model {self._model_id!r}: config.id2label {id2label} must name exactly one "
                "'entailment' label"
            )
        self.entailment_index = matches[0]
        self.batch_size = batch_size
        self.max_length = max_length

    @property
    def name(self) -> str:
        """Judge identifier, ``nli(<model>)``."""
        return f"nli({self._model_id})"

    def _entails(self, premises: list[str], hypotheses: list[str]) -> np.ndarray:
        out = np.zeros(len(premises), dtype=bool)
        device = self._model.device
        with torch.inference_mode():
            for start in range(0, len(premises), self.batch_size):
                stop = start + self.batch_size
                batch = self._tokenizer(
                    premises[start:stop],
                    hypotheses[start:stop],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(device)
                logits = self._model(**batch).logits
                out[start:stop] = (logits.argmax(dim=-1) == self.entailment_index).cpu().numpy()
        return out

    def equivalent(
        self, pairs: Sequence[tuple[str, str]], *, question: str | None = None
    ) -> np.ndarray:
        """Boolean array, one per pair: entailment predicted in both directions."""
        checked = _check_pairs(pairs)
        if not checked:
            return np.zeros(0, dtype=bool)
        firsts = [a for a, _ in checked]
        seconds = [b for _, b in checked]
        entails = self._entails(firsts + seconds, seconds + firsts)
        return entails[: len(checked)] & entails[len(checked) :]


LLM_PROMPT_VERSION = "v1"


def llm_equivalence_prompt(first: str, second: str, question: str | None) -> str:
    """The yes/no prompt `LLMEquivalence` sends for one ordered pair of answers."""
    context = f'We are evaluating answers to the question "{question}".\n' if question else ""
    return (
        f"{context}Answer A: {first}\nAnswer B: {second}\n"
        "Do Answer A and Answer B mean the same thing? Respond with only yes or no.\n"
        "Response:"
    )


class LLMEquivalence:
    """Asks an LLM whether two answers mean the same, in both orders; both must say yes.

    Replies are parsed with `parse_yes_no`; an unparseable reply counts as "no" and is
    counted in ``n_unparsed``. Verdicts are cached in memory per (question, A, B).
    """

    def __init__(self, model: GreedyGenerator, *, max_new_tokens: int = 8) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.n_unparsed = 0
        self._cache: dict[tuple[str | None, str, str], bool] = {}

    @property
    def name(self) -> str:
        """Judge identifier including the prompt version."""
        return f"llm-same-meaning-{LLM_PROMPT_VERSION}"

    def equivalent(
        self, pairs: Sequence[tuple[str, str]], *, question: str | None = None
    ) -> np.ndarray:
        """Boolean array, one per pair: the LLM said yes for A-vs-B and for B-vs-A."""
        checked = _check_pairs(pairs)
        directed = [(question, a, b) for a, b in checked] + [(question, b, a) for a, b in checked]
        todo = [key for key in dict.fromkeys(directed) if key not in self._cache]
        if todo:
            replies = self.model.greedy(
                [llm_equivalence_prompt(a, b, q) for q, a, b in todo],
                max_new_tokens=self.max_new_tokens,
            )
            if len(replies) != len(todo):
                raise ValueError(
                    f"model.greedy returned {len(replies)} replies for {len(todo)} prompts"
                )
            for key, reply in zip(todo, replies, strict=True):
                verdict = parse_yes_no(reply)
                self.n_unparsed += verdict is None
                self._cache[key] = bool(verdict)
        return np.array(
            [self._cache[(question, a, b)] and self._cache[(question, b, a)] for a, b in checked],
            dtype=bool,
        )


def _check_answers(answers: Sequence[str], argument: str) -> list[str]:
    checked = list(answers)
    if not checked:
        raise ValueError(f"{argument} is empty")
    if not all(isinstance(text, str) for text in checked):
        raise ValueError(f"{argument} must contain only strings")
    return checked


def cluster_answers(
    answers: Sequence[str],
    equivalence: Equivalence,
    *,
    question: str | None = None,
    embeddings: np.ndarray | None = None,
) -> list[int]:
    """Greedy semantic clustering; returns a cluster id (0, 1, ... in order of appearance).

    Each answer joins the first cluster whose representative (its first member) it is
    equivalent to, else starts a new cluster. Identical strings are judged once and are
    assumed equivalent to each other. Judge calls are batched: one call per cluster,
    comparing its representative with every not-yet-clustered distinct answer.

    ``embeddings`` (``(len(answers), e)``, precomputed sentence embeddings) is only
    accepted with a `RuleEquivalence` judge, which then uses them instead of its ``embed``.
    """
    texts = _check_answers(answers, "answers")
    if embeddings is not None:
        if not isinstance(equivalence, RuleEquivalence):
            raise ValueError(
                f"embeddings are only used by RuleEquivalence, got judge {equivalence.name!r}"
            )
        equivalence = equivalence.with_embeddings(texts, embeddings)
    distinct = list(dict.fromkeys(texts))
    cluster = [-1] * len(distinct)
    n_clusters = 0
    for i, representative in enumerate(distinct):
        if cluster[i] != -1:
            continue
        cluster[i] = n_clusters
        rest = [j for j in range(i + 1, len(distinct)) if cluster[j] == -1]
        if rest:
            verdicts = np.asarray(
                equivalence.equivalent(
                    [(representative, distinct[j]) for j in rest], question=question
                )
            )
            if verdicts.shape != (len(rest),):
                raise ValueError(
                    f"judge {equivalence.name!r} returned shape {verdicts.shape} "
                    f"for {len(rest)} pairs"
                )
            for j, same in zip(rest, verdicts, strict=True):
                if same:
                    cluster[j] = n_clusters
        n_clusters += 1
    index = {text: i for i, text in enumerate(distinct)}
    return [cluster[index[text]] for text in texts]


def semantic_entropy(cluster_ids: Sequence[int]) -> float:
    """Shannon entropy (nats) of the cluster frequencies: -sum_c p_c log p_c."""
    ids = np.asarray(cluster_ids)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"cluster_ids must be a non-empty 1-D sequence, got shape {ids.shape}")
    if ids.dtype.kind not in "iu":
        raise ValueError(f"cluster_ids must be integers, got dtype {ids.dtype}")
    _, counts = np.unique(ids, return_counts=True)
    return float(entropy(counts))


def semantic_entropies(
    answer_sets: Sequence[Sequence[str]],
    equivalence: Equivalence,
    *,
    questions: Sequence[str] | None = None,
    embeddings: np.ndarray | Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Semantic entropy per prompt, ``(n,)`` float64.

    ``answer_sets[i]`` are the sampled answers of prompt i; ``questions[i]`` its question
    (passed to the judge); ``embeddings[i]`` their ``(len(answer_sets[i]), e)`` embeddings
    (an ``(n, N, e)`` array or a list; `RuleEquivalence` only).
    """
    n = len(answer_sets)
    if n == 0:
        raise ValueError("answer_sets is empty")
    if questions is not None and len(questions) != n:
        raise ValueError(f"questions has {len(questions)} entries for {n} answer sets")
    if embeddings is not None and len(embeddings) != n:
        raise ValueError(f"embeddings has {len(embeddings)} entries for {n} answer sets")
    for i, answers in enumerate(answer_sets):
        _check_answers(answers, f"answer_sets[{i}]")
    return np.array(
        [
            semantic_entropy(
                cluster_answers(
                    answers,
                    equivalence,
                    question=None if questions is None else questions[i],
                    embeddings=None if embeddings is None else embeddings[i],
                )
            )
            for i, answers in enumerate(answer_sets)
        ],
        dtype=np.float64,
    )
