"""TriviaQA and MMLU from the Hugging Face Hub, for users who are online."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from semdistill.data.mmlu import MmluRow, mmlu_questions
from semdistill.data.question import Question

TRIVIAQA_HUB = ("mandarjoshi/trivia_qa", "rc.nocontext")
MMLU_HUB = ("cais/mmlu", "all")


def triviaqa_hub_question(row: Mapping[str, Any], *, source: str = "triviaqa-hub") -> Question:
    """A Question from one ``mandarjoshi/trivia_qa`` row: its answer value, then its aliases."""
    question_id = str(row.get("question_id", "")).strip()
    if not question_id:
        raise ValueError(f"TriviaQA row has no question_id: {str(row.get('question'))[:80]!r}")
    answer = row.get("answer") or {}
    candidates = [answer.get("value"), *(answer.get("aliases") or [])]
    answers = tuple(dict.fromkeys(str(a).strip() for a in candidates if a and str(a).strip()))
    if not answers:
        raise ValueError(
            f"TriviaQA question {question_id!r} has no answer (the hub's test split is unlabelled)"
        )
    return Question(
        id=f"triviaqa/{question_id}",
        question=" ".join(str(row.get("question", "")).split()),
        answers=answers,
        source=source,
        metadata={"question_source": str(row.get("question_source", ""))},
    )


def mmlu_hub_row(row: Mapping[str, Any]) -> MmluRow:
    """An MmluRow from one ``cais/mmlu`` row (``choices`` and an integer ``answer``)."""
    choices = tuple(str(c).strip() for c in row["choices"])
    answer = row["answer"]
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise ValueError(
            f"MMLU row {str(row.get('question'))[:80]!r}: answer {answer!r} is not an index "
            f"into its {len(choices)} choices"
        )
    return MmluRow(
        question=str(row["question"]).strip(),
        subject=str(row["subject"]).strip().replace(" ", "_"),
        options=choices,
        correct=answer,
    )


def _hub_rows(name: str, config: str, split: str) -> Iterable[Mapping[str, Any]]:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"loading {name} from the Hugging Face Hub needs `datasets` "
            "(pip install 'semdistill[hub]')"
        ) from err
    return datasets.load_dataset(name, config, split=split)


def load_triviaqa_hub(*, split: str = "validation", source: str = "triviaqa-hub") -> list[Question]:
    """TriviaQA (rc.nocontext) questions of one hub split; validation by default."""
    return [triviaqa_hub_question(row, source=source) for row in _hub_rows(*TRIVIAQA_HUB, split)]


def load_mmlu_hub(*, open_style: bool, source: str, split: str = "test") -> list[Question]:
    """MMLU (all subjects) questions of one hub split, all or only the open-style ones."""
    rows = (mmlu_hub_row(row) for row in _hub_rows(*MMLU_HUB, split))
    return mmlu_questions(rows, open_style=open_style, source=source)
