"""The question record every loader yields and every later stage reads."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Question:
    """One question of a question set.

    ``answers`` are the accepted reference answers (aliases); empty for an unlabelled
    question, which is collected and distilled but never judged. ``options`` holds the
    multiple-choice options where the set has them, and ``correct_option`` the index
    of the right one in ``options``.
    """

    id: str
    question: str
    answers: tuple[str, ...]
    source: str
    options: tuple[str, ...] | None = None
    correct_option: int | None = None
    metadata: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def labelled(self) -> bool:
        """Whether the question has reference answers to judge the model's answers by."""
        return bool(self.answers)

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("Question.id must be a non-empty string")
        if not self.question or not self.question.strip():
            raise ValueError(f"question {self.id!r} has an empty question text")
        if (
            self.options is not None
            and self.correct_option is not None
            and not (0 <= self.correct_option < len(self.options))
        ):
            raise ValueError(
                f"question {self.id!r}: correct_option {self.correct_option} is outside "
                f"its {len(self.options)} options"
            )


def check_unique_ids(questions: Sequence[Question]) -> None:
    """A ValueError naming the ids that occur more than once."""
    counts = Counter(q.id for q in questions)
    repeated = sorted(i for i, count in counts.items() if count > 1)
    if repeated:
        raise ValueError(f"questions has repeated ids: {repeated[:5]}")
