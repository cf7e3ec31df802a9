"""Correctness judges: TriviaQA-style string matching, and a cached LLM-as-judge."""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

_F1_TOLERANCE = 1e-9  # an F1 that equals the threshold up to rounding counts as reaching it
_TRIVIAQA_EXTRA_PUNCTUATION = frozenset(string.punctuation + "‘’´`")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_NUMBER_NAMES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
)
_NUMBER_WORDS = {word: str(value) for value, word in enumerate(_NUMBER_NAMES.split())}


class Judge(Protocol):
    """Decides whether each answer matches any of its reference answers."""

    @property
    def name(self) -> str:
        """A versioned name, recorded with every label the judge produces."""
        ...

    def judge(
        self,
        answers: Sequence[str],
        references: Sequence[Sequence[str]],
        *,
        questions: Sequence[str] | None = None,
    ) -> np.ndarray:
        """A boolean array, one verdict per answer."""
        ...


def normalize_answer(s: str) -> str:
    """TriviaQA's answer normalisation: lower case, punctuation and articles out, one space."""
    text = s.replace("_", " ").lower()
    text = "".join(
        " " if ch in _TRIVIAQA_EXTRA_PUNCTUATION or unicodedata.category(ch).startswith("P") else ch
        for ch in text
    )
    return " ".join(_ARTICLES.sub(" ", text).split())


def _f1(prediction: Sequence[str], reference: Sequence[str]) -> float:
    if not prediction or not reference:
        return float(prediction == reference)
    common = sum((Counter(prediction) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision = common / len(prediction)
    recall = common / len(reference)
    return 2 * precision * recall / (precision + recall)


def _match_tokens(s: str) -> list[str]:
    """Normalised tokens with accents folded and number words 0-20 written as digits."""
    folded = "".join(ch for ch in unicodedata.normalize("NFKD", s) if not unicodedata.combining(ch))
    return [_NUMBER_WORDS.get(t, t) for t in normalize_answer(folded).split()]


def _contains(tokens: list[str], part: list[str]) -> bool:
    n = len(part)
    return any(tokens[i : i + n] == part for i in range(len(tokens) - n + 1))


def _check_references(
    answers: Sequence[str], references: Sequence[Sequence[str]], questions: Sequence[str] | None
) -> None:
    if isinstance(references, str) or any(isinstance(r, str) for r in references):
        raise ValueError("references must hold one list of aliases per answer, not strings")
    if len(references) != len(answers):
        raise ValueError(f"references has {len(references)} entries but answers has {len(answers)}")
    if questions is not None and len(questions) != len(answers):
        raise ValueError(f"questions has {len(questions)} entries but answers has {len(answers)}")
    for i, aliases in enumerate(references):
        if not any(alias.strip() for alias in aliases):
            raise ValueError(f"references[{i}] holds no non-empty alias")


@dataclass(frozen=True)
class MatchJudge:
    """TriviaQA-style judge: an answer is right if it matches any alias.

    After normalisation (``normalize_answer``, accents folded, number words 0-20 as
    digits) an answer matches an alias when they are equal, when the alias appears in the
    answer as whole words, or when their token F1 reaches ``f1_threshold``. An empty
    answer is wrong.
    """

    f1_threshold: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.f1_threshold <= 1.0:
            raise ValueError(f"f1_threshold must be in (0, 1], got {self.f1_threshold}")

    @property
    def name(self) -> str:
        """The versioned judge name, e.g. ``match-v1(f1=0.5)``."""
        return f"match-v1(f1={self.f1_threshold:g})"

    def is_correct(self, answer: str, aliases: Sequence[str]) -> bool:
        """Whether one answer matches any of its aliases."""
        tokens = _match_tokens(answer)
        if not tokens:
            return False
        for alias in aliases:
            alias_tokens = _match_tokens(alias)
            if alias_tokens and (
                _contains(tokens, alias_tokens)
                or _f1(tokens, alias_tokens) >= self.f1_threshold - _F1_TOLERANCE
            ):
                return True
        return False

    def judge(
        self,
        answers: Sequence[str],
        references: Sequence[Sequence[str]],
        *,
        questions: Sequence[str] | None = None,
    ) -> np.ndarray:
        """One verdict per answer; ``questions`` is accepted for the protocol and unused."""
        _check_references(answers, references, questions)
        return np.array(
            [self.is_correct(a, r) for a, r in zip(answers, references, strict=True)], dtype=bool
        )


class GreedyGenerator(Protocol):
    """Anything that answers prompts by greedy decoding (the teacher backends do)."""

    def greedy(self, prompts: list[str], *, max_new_tokens: int) -> list[str]:
        """One greedy completion per prompt."""
        ...


LLM_JUDGE_PROMPT_VERSION = "v1"
LLM_JUDGE_PROMPT = (
    "You are grading answers to quiz questions.\n"
    "Question: {question}\n"
    "Accepted answers: {references}\n"
    "Proposed answer: {answer}\n"
    "Does the proposed answer mean the same as one of the accepted answers? "
    "Reply with YES or NO only."
)
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_CACHE_FORMAT = 1


def parse_yes_no(reply: str) -> bool | None:
    """YES -> True, NO -> False, from the reply's first word or its only yes/no word.

    ``<think>...</think>`` blocks are ignored. Returns None when the reply is unparseable
    (no yes/no word, or both without a leading one).
    """
    words = re.findall(r"[a-z]+", _THINK_BLOCK.sub(" ", reply).lower())
    if words and words[0] in ("yes", "no"):
        return words[0] == "yes"
    found = {w for w in words if w in ("yes", "no")}
    return (found == {"yes"}) if len(found) == 1 else None


@dataclass(frozen=True)
class Verdict:
    """One LLM-judge decision: the label, where it came from, and the model's raw reply."""

    correct: bool
    method: Literal["llm", "match-fallback", "empty-answer"]
    reply: str


class LLMJudge:
    """Asks a chat model whether each answer matches its references; verdicts are cached.

    The prompt (``LLM_JUDGE_PROMPT``, versioned by ``LLM_JUDGE_PROMPT_VERSION``) is sent
    as plain text to ``model.greedy``; applying a chat template is the backend's job. A
    reply that is neither YES nor NO falls back to ``fallback`` (a MatchJudge by default)
    and is marked ``method="match-fallback"`` in ``judge_verdicts``. Raw replies are cached
    in a JSON file keyed by sha256 of (judge name, question, answer, references), so a
    rerun asks the model nothing; the file is replaced atomically after each batch. An
    empty answer is wrong without asking (``method="empty-answer"``).
    """

    def __init__(
        self,
        model: GreedyGenerator,
        *,
        model_name: str,
        cache_path: str | Path | None = None,
        fallback: MatchJudge | None = None,
        max_new_tokens: int = 8,
    ) -> None:
        if not model_name.strip():
            raise ValueError("model_name must name the judge model, e.g. 'Qwen/Qwen3-8B'")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.model = model
        self.model_name = model_name
        self.fallback = MatchJudge() if fallback is None else fallback
        self.max_new_tokens = max_new_tokens
        self.cache_path = None if cache_path is None else Path(cache_path)
        self._cache: dict[str, str] = self._read_cache()

    @property
    def name(self) -> str:
        """The versioned judge name: prompt version, model and fallback."""
        return f"llm-{LLM_JUDGE_PROMPT_VERSION}({self.model_name};fallback={self.fallback.name})"

    def _read_cache(self) -> dict[str, str]:
        if self.cache_path is None or not self.cache_path.exists():
            return {}
        try:
            content = json.loads(self.cache_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"judge cache {self.cache_path} is not valid JSON: {err}") from err
        if not isinstance(content, dict) or content.get("format") != _CACHE_FORMAT:
            raise ValueError(
                f"judge cache {self.cache_path} is not a format-{_CACHE_FORMAT} judge cache"
            )
        return dict(content["replies"])

    def _write_cache(self) -> None:
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": _CACHE_FORMAT, "replies": self._cache}
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=self.cache_path.parent, suffix=".tmp", delete=False
        ) as handle:
            json.dump(payload, handle, ensure_ascii=False, sort_keys=True)
        os.replace(handle.name, self.cache_path)

    def _key(self, question: str, answer: str, aliases: Sequence[str]) -> str:
        blob = json.dumps([self.name, question, answer, list(aliases)], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def judge_verdicts(
        self,
        answers: Sequence[str],
        references: Sequence[Sequence[str]],
        *,
        questions: Sequence[str] | None = None,
    ) -> list[Verdict]:
        """One Verdict per answer, asking the model only about pairs not in the cache."""
        if questions is None:
            raise ValueError("LLMJudge needs the questions to build its prompts")
        _check_references(answers, references, questions)
        keys = [self._key(q, a, r) for q, a, r in zip(questions, answers, references, strict=True)]
        missing: dict[str, str] = {}
        for key, question, answer, aliases in zip(
            keys, questions, answers, references, strict=True
        ):
            if answer.strip() and key not in self._cache and key not in missing:
                missing[key] = LLM_JUDGE_PROMPT.format(
                    question=question, references=" | ".join(aliases), answer=answer
                )
        if missing:
            replies = self.model.greedy(list(missing.values()), max_new_tokens=self.max_new_tokens)
            if len(replies) != len(missing):
                raise ValueError(
                    f"judge model returned {len(replies)} replies for {len(missing)} prompts"
                )
            self._cache.update(zip(missing, replies, strict=True))
            self._write_cache()
        verdicts = []
        for key, answer, aliases in zip(keys, answers, references, strict=True):
            if not answer.strip():
                verdicts.append(Verdict(False, "empty-answer", ""))
                continue
            reply = self._cache[key]
            parsed = parse_yes_no(reply)
            if parsed is None:
                verdicts.append(
                    Verdict(self.fallback.is_correct(answer, aliases), "match-fallback", reply)
                )
            else:
                verdicts.append(Verdict(parsed, "llm", reply))
        return verdicts

    def judge(
        self,
        answers: Sequence[str],
        references: Sequence[Sequence[str]],
        *,
        questions: Sequence[str] | None = None,
    ) -> np.ndarray:
        """A boolean array, one verdict per answer (see ``judge_verdicts`` for details)."""
        verdicts = self.judge_verdicts(answers, references, questions=questions)
        return np.array([v.correct for v in verdicts], dtype=bool)
