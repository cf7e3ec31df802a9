"""Questions from a user's own file: JSON Lines, CSV or Parquet."""

from __future__ import annotations

import csv
import io
import json
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from semdistill.data.question import Question

USER_FILE_SUFFIXES = (".jsonl", ".csv", ".parquet")
LIST_SEPARATOR = "|"
_RESERVED = frozenset({"id", "question", "answers", "options", "correct"})


def _read_text(path: Path) -> str:
    """The file's text, or a ValueError naming the line and byte that are not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(
            f"{path}: line {line} is not UTF-8 text (byte 0x{data[err.start]:02x} at column "
            f"{column}); save the file as UTF-8"
        ) from err


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for line_number, line in enumerate(_read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {line_number} is not valid JSON: {err}") from err
            if not isinstance(record, dict):
                raise ValueError(f"{path}: line {line_number} is not a JSON object")
            rows.append(record)
        return rows
    if suffix == ".csv":
        return list(csv.DictReader(io.StringIO(_read_text(path), newline="")))
    return pq.read_table(path).to_pylist()


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text_list(value: Any, where: str, column: str) -> tuple[str, ...]:
    """A list column as stripped, non-empty strings; a string is split on ``|``."""
    if isinstance(value, str):
        items: list[Any] = value.split(LIST_SEPARATOR)
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError(f"{where}: {column!r} must be a list or a '|'-separated string")
    texts = [str(item).strip() for item in items if item is not None]
    return tuple(t for t in texts if t)


def _correct_index(value: Any, options: tuple[str, ...] | None, where: str) -> int:
    """``correct`` as an index into ``options``: a 0-based index or a letter A, B, ..."""
    if options is None:
        raise ValueError(f"{where}: 'correct' is given but 'options' is missing")
    text = str(value).strip()
    if isinstance(value, bool):
        index = -1
    elif isinstance(value, int) or text.isdigit():
        index = int(text)
    elif len(text) == 1 and text.upper() in string.ascii_uppercase:
        index = string.ascii_uppercase.index(text.upper())
    else:
        raise ValueError(f"{where}: 'correct' must be an option index or a letter, got {value!r}")
    if not 0 <= index < len(options):
        raise ValueError(
            f"{where}: 'correct' {value!r} does not name one of its {len(options)} options"
        )
    return index


def user_row_question(row: Mapping[str, Any], *, source: str, index: int) -> Question:
    """A Question from one row of a user file; ``index`` is the row's 0-based position.

    ``answers`` may be left out when ``options`` and ``correct`` are given: the right
    option's text is then the answer; a row with neither is an unlabelled question (no
    reference answers: collected and distilled, never judged). Columns other than the
    reserved ones go to metadata.
    """
    where = f"{source}: row {index}"
    if "question" not in row:
        raise ValueError(f"{where}: column 'question' is missing")
    if _missing(row["question"]):
        raise ValueError(f"{where}: 'question' is empty")
    question_id = f"{source}/{index}" if _missing(row.get("id")) else str(row["id"]).strip()
    options = None if _missing(row.get("options")) else _text_list(row["options"], where, "options")
    if options == ():
        raise ValueError(f"{where}: 'options' holds no non-empty option")
    correct = (
        None if _missing(row.get("correct")) else _correct_index(row["correct"], options, where)
    )
    if not _missing(row.get("answers")):
        answers = _text_list(row["answers"], where, "answers")
    elif options is not None and correct is not None:
        answers = (options[correct],)
    else:
        answers = ()
    if not answers and not _missing(row.get("answers")):
        raise ValueError(f"{where}: 'answers' holds no non-empty answer")
    metadata = {str(k): str(v) for k, v in row.items() if k not in _RESERVED and not _missing(v)}
    texts = [("question", str(row["question"]))]
    texts += [("answers", a) for a in answers] + [("options", o) for o in options or ()]
    for column, text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{where}: {column!r} is not valid Unicode text (a lone surrogate)"
            ) from None
    return Question(
        id=question_id,
        question=" ".join(str(row["question"]).split()),
        answers=answers,
        source=source,
        options=options,
        correct_option=correct,
        metadata=metadata,
    )


def load_user_file(path: str | Path) -> list[Question]:
    """Questions from a ``.jsonl``, ``.csv`` or ``.parquet`` file, in file order.

    Columns: ``question``, optional ``answers`` (a list, or a ``|``-separated string; left out
    or empty for unlabelled questions), optional ``id`` (default ``<file stem>/<row>``),
    ``options`` (list or ``|``-separated), ``correct`` (0-based index or letter). The source
    name is the file's stem.
    """
    file = Path(path)
    if file.suffix.lower() not in USER_FILE_SUFFIXES:
        raise ValueError(f"question file {file} must end in one of {', '.join(USER_FILE_SUFFIXES)}")
    if not file.is_file():
        raise FileNotFoundError(f"question file {file} does not exist")
    questions = [
        user_row_question(row, source=file.stem, index=i) for i, row in enumerate(_read_rows(file))
    ]
    if not questions:
        raise ValueError(f"question file {file} holds no rows")
    first_row: dict[str, int] = {}
    for i, question in enumerate(questions):
        if question.id in first_row:
            raise ValueError(
                f"question file {file}: id {question.id!r} appears in rows "
                f"{first_row[question.id]} and {i}"
            )
        first_row[question.id] = i
    return questions
