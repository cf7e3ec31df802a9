"""The match judge, token F1 and the cached LLM judge (with a fake chat model)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from semdistill.semantics.judge import (
    LLM_JUDGE_PROMPT_VERSION,
    Judge,
    LLMJudge,
    MatchJudge,
    _f1,
    normalize_answer,
    parse_yes_no,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Beatles", "beatles"),
        ("  An   apple a day ", "apple day"),
        ("Dead man's hand!", "dead man s hand"),
        ("“Quoted” — text…", "quoted text"),
        ("snake_case", "snake case"),
        ("Theatre", "theatre"),
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


CASES = [
    # (answer, aliases, expected)
    ("Paris", ["Paris"], True),
    ("paris.", ["Paris"], True),
    ("The Eiffel Tower", ["Eiffel Tower"], True),
    ("An Eiffel tower!", ["the eiffel tower"], True),
    ("It is Paris, France.", ["Paris"], True),  # alias inside the answer, whole words
    ("Parisian", ["Paris"], False),  # not a whole word, F1 0
    ("Lyon", ["Paris", "City of Light"], False),
    ("City of Light", ["Paris", "City of Light"], True),
    ("4", ["four"], True),
    ("four", ["4"], True),
    ("Twenty", ["20"], True),
    ("There are 7 days", ["seven"], True),
    ("twenty-one", ["21"], False),  # only 0-20 are spelled out
    ("Montreal", ["Montréal Canadiens", "Montréal"], True),  # accents folded
    ("", ["Paris"], False),
    ("   ", ["Paris"], False),
    ("the", ["The"], False),  # normalises to nothing
    ("Paris", ["the", "Paris"], True),
    ("Paris", ["the"], False),  # an alias that normalises to nothing never matches
    ("John Smith", ["John Smith Jr"], True),  # F1 = 0.8
    ("John", ["John Smith Jr"], True),  # F1 = 0.5, exactly the threshold
    ("John", ["John Smith Jr Esq"], False),  # F1 = 0.4
    ("Smith Jones", ["Smith Brown"], True),  # F1 = 0.5
    ("Smith Jones Lee", ["Smith Brown"], False),  # F1 = 0.4
]


@pytest.mark.parametrize(("answer", "aliases", "expected"), CASES)
def test_match_judge_cases(answer: str, aliases: list[str], expected: bool) -> None:
    assert MatchJudge().is_correct(answer, aliases) is expected


def test_match_judge_batch_threshold_and_name() -> None:
    answers = [c[0] for c in CASES]
    references = [c[1] for c in CASES]
    verdicts = MatchJudge().judge(answers, references)
    assert verdicts.dtype == np.bool_
    assert verdicts.tolist() == [c[2] for c in CASES]
    strict = MatchJudge(f1_threshold=0.8)
    assert strict.name == "match-v1(f1=0.8)"
    assert MatchJudge().name == "match-v1(f1=0.5)"
    assert strict.judge(["John Smith", "John"], [["John Smith Jr"]] * 2).tolist() == [True, False]
    judge: Judge = strict
    assert judge.name.startswith("match-v1")


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5])
def test_bad_threshold(threshold: float) -> None:
    with pytest.raises(ValueError, match="f1_threshold"):
        MatchJudge(f1_threshold=threshold)


def test_bad_references() -> None:
    judge = MatchJudge()
    with pytest.raises(ValueError, match="references has 1 entries but answers has 2"):
        judge.judge(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="not strings"):
        judge.judge(["a"], ["a"])
    with pytest.raises(ValueError, match=r"references\[1\] holds no non-empty alias"):
        judge.judge(["a", "b"], [["a"], ["", " "]])


def _brute_force_f1(prediction: list[str], reference: list[str]) -> float:
    remaining = list(reference)
    common = 0
    for token in prediction:
        if token in remaining:
            remaining.remove(token)
            common += 1
    if common == 0:
        return 0.0
    p, r = common / len(prediction), common / len(reference)
    return 2 * p * r / (p + r)


def test_token_f1_matches_brute_force() -> None:
    """The SQuAD token F1 behind MatchJudge's threshold."""
    rng = random.Random(0)
    vocabulary = ["cat", "dog", "red", "blue", "sun", "moon"]
    for _ in range(500):
        prediction = [rng.choice(vocabulary) for _ in range(rng.randint(1, 7))]
        reference = [rng.choice(vocabulary) for _ in range(rng.randint(1, 7))]
        expected = _brute_force_f1(prediction, reference)
        assert _f1(prediction, reference) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("YES", True),
        ("no.", False),
        ("**Yes**, it matches.", True),
        ("No, yes is wrong here", False),  # the first word decides
        ("<think>maybe yes, maybe no</think>\nNO", False),
        ("The answer is correct: yes", True),  # the only yes/no word
        ("Correct.", None),
        ("I would say yes and no", None),
        ("", None),
    ],
)
def test_parse_yes_no(reply: str, expected: bool | None) -> None:
    assert parse_yes_no(reply) is expected


class FakeChatModel:
    """Says YES when the reference text appears in the prompt's answer line, else a reply."""

    def __init__(self, unparseable_for: str = "") -> None:
        self.prompts: list[str] = []
        self.unparseable_for = unparseable_for

    def greedy(self, prompts: list[str], *, max_new_tokens: int) -> list[str]:
        assert max_new_tokens == 8
        self.prompts.extend(prompts)
        replies = []
        for prompt in prompts:
            lines = dict(line.split(": ", 1) for line in prompt.splitlines() if ": " in line)
            answer, accepted = lines["Proposed answer"], lines["Accepted answers"]
            if self.unparseable_for and self.unparseable_for in answer:
                replies.append("Hmm, hard to say.")
            elif any(a.lower() in answer.lower() for a in accepted.split(" | ")):
                replies.append("Yes.")
            else:
                replies.append("NO")
        return replies


def test_llm_judge_verdicts_and_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "judge.json"
    model = FakeChatModel(unparseable_for="Lutetia")
    judge = LLMJudge(model, model_name="fake-chat", cache_path=cache)
    assert judge.name == f"llm-{LLM_JUDGE_PROMPT_VERSION}(fake-chat;fallback=match-v1(f1=0.5))"
    questions = ["Capital of France?", "Capital of France?", "Capital of France?", "Q?", "Q?"]
    answers = ["Paris", "Lyon", "Lutetia Paris", "", "Paris"]
    references = [["Paris"], ["Paris"], ["Paris"], ["x"], ["Paris"]]
    verdicts = judge.judge_verdicts(answers, references, questions=questions)
    assert [v.correct for v in verdicts] == [True, False, True, False, True]
    assert [v.method for v in verdicts] == ["llm", "llm", "match-fallback", "empty-answer", "llm"]
    assert verdicts[2].reply == "Hmm, hard to say."
    # The empty answer is never sent: four prompts in all.
    assert len(model.prompts) == 4
    assert "Proposed answer: Lyon" in model.prompts[1]
    stored = json.loads(cache.read_text())
    assert stored["format"] == 1 and len(stored["replies"]) == 4
    assert not list(cache.parent.glob("*.tmp"))

    # A rerun, even from a fresh judge on the same cache file, asks the model nothing.
    again = judge.judge(answers, references, questions=questions)
    fresh_model = FakeChatModel()
    fresh = LLMJudge(fresh_model, model_name="fake-chat", cache_path=cache)
    assert fresh.judge(answers, references, questions=questions).tolist() == again.tolist()
    assert len(model.prompts) == 4 and fresh_model.prompts == []

    # A different judge model has its own cache keys.
    other_model = FakeChatModel()
    other = LLMJudge(other_model, model_name="other-chat", cache_path=cache)
    other.judge(["Paris"], [["Paris"]], questions=["Capital of France?"])
    assert len(other_model.prompts) == 1
    assert len(json.loads(cache.read_text())["replies"]) == 5


def test_llm_judge_deduplicates_within_a_batch() -> None:
    model = FakeChatModel()
    judge = LLMJudge(model, model_name="fake-chat")
    verdicts = judge.judge(["Paris", "Paris"], [["Paris"]] * 2, questions=["Q?", "Q?"])
    assert verdicts.tolist() == [True, True]
    assert len(model.prompts) == 1


def test_llm_judge_bad_input(tmp_path: Path) -> None:
    judge = LLMJudge(FakeChatModel(), model_name="fake-chat")
    with pytest.raises(ValueError, match="needs the questions"):
        judge.judge(["a"], [["a"]])
    with pytest.raises(ValueError, match="questions has 2 entries but answers has 1"):
        judge.judge(["a"], [["a"]], questions=["q", "q"])
    with pytest.raises(ValueError, match="model_name"):
        LLMJudge(FakeChatModel(), model_name=" ")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON"):
        LLMJudge(FakeChatModel(), model_name="fake-chat", cache_path=broken)

    class ShortModel:
        def greedy(self, prompts: list[str], *, max_new_tokens: int) -> list[str]:
            return []

    with pytest.raises(ValueError, match="returned 0 replies for 1 prompts"):
        LLMJudge(ShortModel(), model_name="short").judge(["a"], [["a"]], questions=["q"])
